"""Group advantages and policy-gradient losses (all pure and jittable).

Shapes: a batch holds `B = P * G` completions, `G` per prompt, grouped contiguously
(`[p0 g0, p0 g1, ..., p1 g0, ...]`). Per-token arrays are `[B, N]` over the completion
positions; `mask [B, N]` is 1 on generated tokens (including the stop token) and 0 on padding.

The policy loss is built from a per-token surrogate whose *gradient* is the estimator:

- on-policy, no clipping (`old_logp = stop_gradient(logp)`): `-A_i * grad log pi(y_t)` per token,
  aggregated per `LossConfig.aggregation` (the steering paper's REINFORCE/RLOO loss);
- PPO/GRPO clipping: `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)` with
  `rho = pi_theta / pi_old` per token;
- truncated importance weights (RAPID-style off-policy updates): `rho` in the gradient is
  replaced by `min(rho, importance_cap)` (treated as a constant weight);
- optional k3 KL to the reference policy, `exp(ref - logp) - (ref - logp) - 1` per token;
- optional DASH gradient filtering: samples with `|A| <= dash_tau` are left out.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from ..models.decoder import default_positions, embed, run_layers, unembed
from ..models.interventions import as_tuple, check_all
from ..models.params import Model

_sg = jax.lax.stop_gradient

ADVANTAGE_MODES = ("grpo", "rloo", "mean")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")


# --------------------------------------------------------------------------- advantages


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [N], got shape {rewards.shape}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


@functools.partial(jax.jit, static_argnames=("group_size", "mode", "eps", "std_ddof"))
def group_advantages(rewards, group_size: int, mode: str = "grpo", eps: float = 1e-6, *, std_ddof: int = 1) -> jax.Array:
    """Per-sample advantages `[N]` from rewards `[N]` grouped contiguously by prompt.

    - "grpo": `(r - mean_g) / (std_g + eps)`; `std_ddof=1` (sample std, as TRL and verl do with
      `torch.std`); a group of one gets 0.
    - "rloo": `r_i - mean_{j != i} r_j` (= `G / (G - 1) * (r_i - mean_g)`); needs `group_size >= 2`.
    - "mean": `r - mean_g` (Dr. GRPO: no std normalisation).
    """
    r = _grouped(rewards, group_size)
    G = group_size
    mean = jnp.mean(r, axis=1, keepdims=True)
    if mode == "grpo":
        if G == 1:
            return jnp.zeros(r.size, jnp.float32)
        std = jnp.std(r, axis=1, keepdims=True, ddof=std_ddof)
        adv = (r - mean) / (std + eps)
    elif mode == "rloo":
        if G < 2:
            raise ValueError("rloo advantages need group_size >= 2")
        loo_mean = (jnp.sum(r, axis=1, keepdims=True) - r) / (G - 1)
        adv = r - loo_mean
    elif mode == "mean":
        adv = r - mean
    else:
        raise ValueError(f"unknown advantage mode {mode!r}; modes: {ADVANTAGE_MODES}")
    return adv.reshape(-1)


@functools.partial(jax.jit, static_argnames=("group_size",))
def zero_std_fraction(rewards, group_size: int) -> jax.Array:
    """Fraction of groups whose rewards are all equal (no learning signal without a KL term)."""
    r = _grouped(rewards, group_size)
    return jnp.mean((jnp.max(r, axis=1) == jnp.min(r, axis=1)).astype(jnp.float32))


# --------------------------------------------------------------------------- log-probabilities


@functools.partial(jax.jit, static_argnames=("completion_start", "temperature"))
def _sequence_logprobs(model, tokens, mask, interventions, completion_start, temperature):
    positions = default_positions(tokens, mask)
    k_pos = jnp.where(mask.astype(bool), positions, -1)
    h, _, _ = run_layers(model, embed(model, tokens), positions, k_pos, interventions, frozenset())
    # Only the positions that predict completion tokens go through the unembedding.
    logits = unembed(model, h[:, completion_start - 1 : -1])
    if temperature != 1.0:
        logits = logits / jnp.float32(temperature)
    logz = jax.nn.log_softmax(logits, axis=-1)
    target = tokens[:, completion_start:]
    logp = jnp.take_along_axis(logz, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logz) * logz, axis=-1)
    comp = mask[:, completion_start:].astype(bool)
    return jnp.where(comp, logp, 0.0), jnp.where(comp, entropy, 0.0)


def sequence_logprobs(
    model: Model,
    tokens,
    mask,
    interventions: Any = (),
    *,
    completion_start: int,
    temperature: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Per-token `log pi(y_t)` and the policy entropy at each completion position, via one forward.

    tokens, mask `[B, P + N]` (e.g. `Generation.sequences()`; padding on either side);
    completion tokens are the positions `>= completion_start` (= P). Returns `(logp, entropy)`,
    each `[B, N]` float32, zero where `mask` is 0. `temperature` divides the logits (use the
    sampling temperature to score under the sampling distribution). Jittable; gradients flow
    to `model` and `interventions`.
    """
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise ValueError(f"tokens and mask must both be [B, T]; got {tokens.shape} and {mask.shape}")
    if not 1 <= completion_start < tokens.shape[1]:
        raise ValueError(f"completion_start={completion_start} must be in [1, {tokens.shape[1] - 1}]")
    interventions = as_tuple(interventions)
    check_all(interventions, model.config, tokens.shape[1])
    return _sequence_logprobs(model, tokens, mask, interventions, int(completion_start), float(temperature))


# --------------------------------------------------------------------------- losses


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Policy-loss settings (static; hashable).

    clip_eps_low / clip_eps_high: PPO ratio clipping `clip(rho, 1 - low, 1 + high)`; None = off
    (the steering paper's on-policy choice). GRPO: 0.2 / 0.2, DAPO: 0.2 / 0.28. Setting only
    `clip_eps_low` clips symmetrically.
    kl_coef: weight of the k3 KL estimator to the reference policy (0 = off; the steering paper
    uses 0 or 0.01).
    aggregation: "token_mean" (sum over all tokens / total tokens; DAPO and the public steering
    code), "seq_mean_token_mean" (GRPO), "seq_sum_norm" (Dr. GRPO: sum / (B * max_len)).
    max_len: the constant of "seq_sum_norm" (default: the completion width N).
    dash_tau: DASH gradient filtering; when > 0, samples with `|A| <= dash_tau` are dropped
    (masked out, so they leave every denominator too). 0 = off.
    importance_cap: truncate the importance weight `pi_theta / pi_old` at this value and use it as
    a constant weight on `grad log pi` (off-policy minibatch updates, RAPID-style). None = off.
    importance_level: "token" (per-token weight) or "sequence" (one weight per completion, the
    product of the token ratios, `pi_theta(y|x) / pi_old(y|x)`).

    On RAPID (arXiv 2510.03515): its section 3 (the exact estimator) could not be read from this
    workplace. What is implemented is truncated importance sampling on the policy-gradient term,
    `-min(w, cap) * A * grad log pi` with `w = pi_theta / pi_old` held constant, per token by
    default. Per token because the product over a long completion is degenerate (nearly always 0
    or capped); "sequence" gives the trajectory-level weight of a bandit-style derivation. Group
    advantages are computed from the rewards as usual (no importance weighting of the baseline).
    """

    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    aggregation: str = "token_mean"
    max_len: int | None = None
    dash_tau: float = 0.0
    importance_cap: float | None = None
    importance_level: str = "token"

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose from {AGGREGATIONS}")
        if self.clip_eps_high is not None and self.clip_eps_low is None:
            raise ValueError("clip_eps_high is set but clip_eps_low is None; set both (or only clip_eps_low)")
        if self.importance_level not in ("token", "sequence"):
            raise ValueError(f"importance_level must be 'token' or 'sequence', got {self.importance_level!r}")
        if self.importance_cap is not None and self.importance_cap <= 0:
            raise ValueError("importance_cap must be positive")


def aggregate(values, mask, mode: str = "token_mean", *, max_len: int | None = None, denominator=None) -> jax.Array:
    """Reduce per-token values `[B, N]` to a scalar.

    - "token_mean": `sum(v * m) / sum(m)`
    - "seq_mean_token_mean": mean over sequences with at least one token of `sum_t(v * m) / n_i`
    - "seq_sum_norm": `sum(v * m) / (n_seqs * max_len)`, `n_seqs` = sequences with at least one
      token, `max_len` default N (Dr. GRPO's constant normaliser).

    `denominator` overrides the divisor (total tokens / number of sequences / n_seqs * max_len),
    e.g. the global batch's value when a batch is split into micro-batches whose losses are summed.
    """
    values = jnp.asarray(values, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    n_tok = jnp.sum(m, axis=1)
    n_seqs = jnp.sum((n_tok > 0).astype(jnp.float32))
    if mode == "token_mean":
        den = jnp.sum(n_tok) if denominator is None else denominator
        return jnp.sum(values * m) / jnp.maximum(den, 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = jnp.sum(values * m, axis=1) / jnp.maximum(n_tok, 1.0)
        den = n_seqs if denominator is None else denominator
        return jnp.sum(per_seq) / jnp.maximum(den, 1.0)
    if mode == "seq_sum_norm":
        width = values.shape[1] if max_len is None else max_len
        den = n_seqs * width if denominator is None else denominator
        return jnp.sum(values * m) / jnp.maximum(den, 1.0)
    raise ValueError(f"unknown aggregation {mode!r}; choose from {AGGREGATIONS}")


def k3_kl(logp, ref_logp) -> jax.Array:
    """Per-token k3 estimator of KL(pi || ref): `exp(ref - logp) - (ref - logp) - 1` (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def _masked_stats(x, m):
    """Mean, min, max of `x` over the mask (1, 1, 1 when nothing is selected: a ratio's neutral value)."""
    valid = m > 0
    any_valid = jnp.any(valid)
    n = jnp.maximum(jnp.sum(m), 1.0)
    return (
        jnp.where(any_valid, jnp.sum(jnp.where(valid, x, 0.0)) / n, 1.0),
        jnp.where(any_valid, jnp.min(jnp.where(valid, x, jnp.inf)), 1.0),
        jnp.where(any_valid, jnp.max(jnp.where(valid, x, -jnp.inf)), 1.0),
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def policy_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    cfg: LossConfig = LossConfig(),
    *,
    denominator=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Policy-gradient loss and metrics.

    logp `[B, N]` (current policy, differentiable), old_logp `[B, N]` (the sampling policy;
    `stop_gradient(logp)` for a single on-policy step), ref_logp `[B, N]` or None (reference
    policy; needed when `cfg.kl_coef > 0`), advantages `[B]`, mask `[B, N]` completion mask.
    `denominator`: see `aggregate` (for micro-batching).

    On-policy without clipping the gradient is `-sum_i A_i sum_t grad log pi(y_it)` divided per
    the aggregation (for "token_mean": by the total number of completion tokens).

    Metrics (token means over the mask unless noted): pg_loss, kl_loss (aggregated like the loss),
    kl (k3 to the reference), approx_kl (k3 to the sampling policy), clip_fraction (tokens whose
    clipped branch is active, i.e. zero gradient),
    clip_low_fraction, clip_high_fraction, ratio_mean / ratio_min / ratio_max,
    importance_capped_fraction, kept_fraction (DASH; fraction of samples), n_tokens.
    """
    logp = jnp.asarray(logp, jnp.float32)
    old_logp = _sg(jnp.asarray(old_logp, jnp.float32))
    adv = _sg(jnp.asarray(advantages, jnp.float32))
    m = jnp.asarray(mask, jnp.float32)
    if logp.ndim != 2 or old_logp.shape != logp.shape or m.shape != logp.shape or adv.shape != logp.shape[:1]:
        raise ValueError(
            f"expected logp/old_logp/mask [B, N] and advantages [B]; got {logp.shape}, {old_logp.shape}, "
            f"{m.shape}, {adv.shape}"
        )
    if cfg.kl_coef and ref_logp is None:
        raise ValueError("kl_coef > 0 needs ref_logp")

    keep = jnp.ones_like(adv)
    if cfg.dash_tau > 0:
        keep = (jnp.abs(adv) > cfg.dash_tau).astype(jnp.float32)
        m = m * keep[:, None]
    valid = m > 0
    A = adv[:, None]

    # Ratios; padding is forced to log-ratio 0 so garbage there can never become inf * 0.
    log_ratio = jnp.where(valid, logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    ratio_val = _sg(ratio)

    if cfg.importance_cap is None:
        rho = ratio  # value rho, gradient rho * grad log pi
        capped = jnp.zeros_like(ratio_val)
    else:
        if cfg.importance_level == "sequence":
            seq_ratio = jnp.exp(jnp.sum(_sg(log_ratio), axis=1, keepdims=True))
            weight_raw = jnp.broadcast_to(seq_ratio, ratio.shape)
        else:
            weight_raw = ratio_val
        weight = jnp.minimum(weight_raw, cfg.importance_cap)
        capped = (weight_raw > cfg.importance_cap).astype(jnp.float32)
        rho = weight * jnp.exp(logp - _sg(logp))  # value w, gradient w * grad log pi

    if cfg.clip_eps_low is not None:
        lo = 1.0 - cfg.clip_eps_low
        hi = 1.0 + (cfg.clip_eps_high if cfg.clip_eps_high is not None else cfg.clip_eps_low)
        clip_high = (A > 0) & (ratio_val > hi)
        clip_low = (A < 0) & (ratio_val < lo)
        clipped = clip_high | clip_low
        # == min(rho A, clip(rho) A) for rho = ratio; the clipped branch is a constant.
        objective = jnp.where(clipped, jnp.clip(ratio_val, lo, hi) * A, rho * A)
    else:
        clip_high = clip_low = clipped = jnp.zeros(ratio.shape, bool)
        objective = rho * A

    agg = functools.partial(aggregate, mode=cfg.aggregation, max_len=cfg.max_len, denominator=denominator)
    pg_loss = agg(-objective, m)
    loss = pg_loss
    if ref_logp is not None:
        ref = _sg(jnp.asarray(ref_logp, jnp.float32))
        kl_tok = k3_kl(jnp.where(valid, logp, 0.0), jnp.where(valid, ref, 0.0))
    else:
        kl_tok = jnp.zeros_like(logp)
    kl_loss = agg(kl_tok, m)
    if cfg.kl_coef:
        loss = loss + cfg.kl_coef * kl_loss

    tok_mean = lambda x: jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)) / jnp.maximum(jnp.sum(m), 1.0)
    r_mean, r_min, r_max = _masked_stats(ratio_val, m)
    approx_kl = tok_mean(_sg(ratio_val - 1.0 - log_ratio))  # k3 estimate of KL(pi_old || pi_theta)
    metrics = {
        "pg_loss": _sg(pg_loss),
        "kl_loss": _sg(kl_loss),
        "kl": _sg(tok_mean(kl_tok)),
        "clip_fraction": tok_mean(clipped),
        "clip_low_fraction": tok_mean(clip_low),
        "clip_high_fraction": tok_mean(clip_high),
        "approx_kl": approx_kl,
        "ratio_mean": r_mean,
        "ratio_min": r_min,
        "ratio_max": r_max,
        "importance_capped_fraction": tok_mean(capped),
        "kept_fraction": jnp.mean(keep),
        "n_tokens": jnp.sum(m),
    }
    return loss, metrics


@jax.jit
def expert_iteration_loss(logp, rewards, mask, threshold: float = 0.0) -> jax.Array:
    """Supervised negative log-likelihood (token mean) on the samples with `reward > threshold`.

    logp, mask `[B, N]`; rewards `[B]`. Returns 0 when no sample passes."""
    logp = jnp.asarray(logp, jnp.float32)
    keep = (jnp.asarray(rewards) > threshold).astype(jnp.float32)
    m = jnp.asarray(mask, jnp.float32) * keep[:, None]
    return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)


__all__ = [
    "group_advantages",
    "zero_std_fraction",
    "sequence_logprobs",
    "LossConfig",
    "aggregate",
    "k3_kl",
    "policy_loss",
    "expert_iteration_loss",
]
