"""Group advantages and policy-gradient losses (all pure and jittable).

Shapes: a batch holds `B = P * G` completions, `G` per prompt, grouped contiguously
(`[p0 g0, p0 g1, ..., p1 g0, ...]`). Per-token arrays are `[B, N]` over the completion
positions; `mask [B, N]` is 1 on generated tokens (including the stop token) and 0 on padding.

`policy_loss` composes small terms (`dash_keep`, `importance_weights`, `clipped_objective`,
`aggregate`, `k3_kl`) into a per-token surrogate whose *gradient* is the estimator:

- on-policy, no clipping (`old_logp = stop_gradient(logp)`): `-A_i * grad log pi(y_t)` per token,
  aggregated per `LossConfig.aggregation` (the steering paper's REINFORCE/RLOO loss);
- PPO/GRPO clipping: `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)` with
  `rho = pi_theta / pi_old` per token;
- truncated importance sampling (TIS) for off-policy minibatch updates: `rho` in the gradient is
  replaced by `min(rho, importance_cap)` (treated as a constant weight), per token or per sequence;
- RAPID's estimator (`rapid_loss`): importance-weighted group advantages with clipped sequence
  weights, `-w_i (r_i - b_i) grad log pi(y_i)` with `b_i` the weighted leave-one-out group mean;
- optional k3 KL to the reference policy, `exp(ref - logp) - (ref - logp) - 1` per token;
- optional DASH gradient filtering: samples with `|A| <= dash_tau` are left out.

PPO (`gae`, `value_loss`): per-token advantages `[B, N]` from a learned value head by generalised
advantage estimation, fed to the same `policy_loss` (advantages may be `[B]` or `[B, N]`), plus
the clipped value loss.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ...errors import InputError
from ..config import AGGREGATIONS, LossConfig

DEFAULT_LOSS = LossConfig()  # the default `rl.loss` section (frozen, so one shared instance is safe)

_sg = jax.lax.stop_gradient

ADVANTAGE_MODES = ("grpo", "rloo", "mean", "rapid")


# --------------------------------------------------------------------------- advantages


def _grouped(rewards: jax.Array, group_size: int) -> jax.Array:
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise InputError(f"rewards must be [N], got shape {rewards.shape}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise InputError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


@functools.partial(jax.jit, static_argnames=("group_size", "mode", "eps", "std_ddof"))
def group_advantages(
    rewards, group_size: int, mode: str = "grpo", eps: float = 1e-6, *, std_ddof: int = 1
) -> jax.Array:
    """Per-sample advantages `[N]` from rewards `[N]` grouped contiguously by prompt.

    - "grpo": `(r - mean_g) / (std_g + eps)`; `std_ddof=1` (sample std, as TRL and verl do with
      `torch.std`); a group of one gets 0.
    - "rloo": `r_i - mean_{j != i} r_j` (= `G / (G - 1) * (r_i - mean_g)`); needs `group_size >= 2`.
    - "mean": `r - mean_g` (Dr. GRPO: no std normalisation).
    - "rapid": RLOO's values, which `rapid_advantages` gives when every importance weight is 1 (the
      step recomputes them with the current weights).
    """
    r = _grouped(rewards, group_size)
    G = group_size
    mean = jnp.mean(r, axis=1, keepdims=True)
    if mode == "grpo":
        if G == 1:
            return jnp.zeros(r.size, jnp.float32)
        std = jnp.std(r, axis=1, keepdims=True, ddof=std_ddof)
        adv = (r - mean) / (std + eps)
    elif mode in ("rloo", "rapid"):
        if G < 2:
            raise InputError("rloo advantages need group_size >= 2")
        loo_mean = (jnp.sum(r, axis=1, keepdims=True) - r) / (G - 1)
        adv = r - loo_mean
    elif mode == "mean":
        adv = r - mean
    else:
        raise InputError(f"unknown advantage mode {mode!r}; modes: {ADVANTAGE_MODES}")
    return adv.reshape(-1)


@functools.partial(jax.jit, static_argnames=("group_size",))
def zero_std_fraction(rewards, group_size: int) -> jax.Array:
    """Fraction of groups whose rewards are all equal (no learning signal without a KL term)."""
    r = _grouped(rewards, group_size)
    return jnp.mean((jnp.max(r, axis=1) == jnp.min(r, axis=1)).astype(jnp.float32))


# --------------------------------------------------------------------------- loss terms


def aggregate(values, mask, mode: str = "token_mean", *, max_len: int | None = None, denominator=None) -> jax.Array:
    """Reduce per-token values `[B, N]` to a scalar.

    - "token_mean": `sum(v * m) / sum(m)`
    - "seq_mean_token_mean": mean over sequences with at least one token of `sum_t(v * m) / n_i`
    - "seq_sum_norm": `sum(v * m) / (n_seqs * max_len)`, `n_seqs` = sequences with at least one
      token, `max_len` default N (a training run passes the constant `sampling.max_new_tokens`: Dr. GRPO).

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
    raise InputError(f"unknown aggregation {mode!r}; choose from {AGGREGATIONS}")


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


def dash_keep(advantages, tau: float) -> jax.Array:
    """DASH filter `[B]`: 1 for samples with `|A| > tau` (all kept when tau <= 0)."""
    if tau <= 0:
        return jnp.ones_like(advantages)
    return (jnp.abs(advantages) > tau).astype(jnp.float32)


def importance_weights(logp, old_logp, valid, cfg: LossConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """`(rho, ratio, log_ratio, capped)` per token. `rho` has the value of the (capped) importance
    weight and the gradient `rho * grad log pi`; `ratio = pi / pi_old` is a constant; padding
    (`valid` False) has log-ratio 0, so garbage there never becomes inf * 0."""
    log_ratio = jnp.where(valid, logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    if cfg.importance_cap is None:
        return ratio, _sg(ratio), log_ratio, jnp.zeros_like(ratio)
    if cfg.importance_level == "sequence":
        raw = jnp.broadcast_to(jnp.exp(jnp.sum(_sg(log_ratio), axis=1, keepdims=True)), ratio.shape)
    else:
        raw = _sg(ratio)
    weight = jnp.minimum(raw, cfg.importance_cap)
    rho = weight * jnp.exp(logp - _sg(logp))  # value w, gradient w * grad log pi
    return rho, _sg(ratio), log_ratio, (raw > cfg.importance_cap).astype(jnp.float32)


def clipped_objective(rho, ratio, advantages, cfg: LossConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token objective `min(rho A, clip(rho, 1 - low, 1 + high) A)` (plain `rho A` without
    clipping) and the masks of tokens clipped low / high (their branch is a constant)."""
    A = advantages if advantages.ndim == 2 else advantages[:, None]
    if cfg.clip_eps_low is None:
        none = jnp.zeros(rho.shape, bool)
        return rho * A, none, none
    lo = 1.0 - cfg.clip_eps_low
    hi = 1.0 + (cfg.clip_eps_high if cfg.clip_eps_high is not None else cfg.clip_eps_low)
    clip_high = (A > 0) & (ratio > hi)
    clip_low = (A < 0) & (ratio < lo)
    return jnp.where(clip_high | clip_low, jnp.clip(ratio, lo, hi) * A, rho * A), clip_low, clip_high


def _check_shapes(logp, old_logp, m, adv) -> None:
    if (
        logp.ndim != 2
        or old_logp.shape != logp.shape
        or m.shape != logp.shape
        or adv.shape not in (logp.shape[:1], logp.shape)
    ):
        raise InputError(
            f"expected logp/old_logp/mask [B, N] and advantages [B] or [B, N]; got {logp.shape}, {old_logp.shape}, "
            f"{m.shape}, {adv.shape}"
        )


@functools.partial(jax.jit, static_argnames=("cfg",))
def policy_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    cfg: LossConfig = DEFAULT_LOSS,
    *,
    denominator=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Policy-gradient loss and metrics, composed of the terms above: DASH filter, importance
    weights, clipping, aggregation, k3 KL.

    logp `[B, N]` (current policy, differentiable), old_logp `[B, N]` (the sampling policy;
    `stop_gradient(logp)` for a single on-policy step), ref_logp `[B, N]` or None (reference
    policy; needed when `cfg.kl_coef > 0`), advantages `[B]` (per sequence) or `[B, N]` (per token,
    PPO's GAE; then `cfg.dash_tau` must be 0), mask `[B, N]` completion mask.
    `denominator`: see `aggregate` (for micro-batching).

    Metrics (token means over the mask unless noted): pg_loss, kl_loss (aggregated like the loss),
    kl (k3 to the reference), approx_kl (k3 to the sampling policy), clip_fraction,
    clip_low_fraction, clip_high_fraction, ratio_mean / ratio_min / ratio_max,
    importance_capped_fraction, kept_fraction (DASH; fraction of samples), n_tokens.
    """
    logp = jnp.asarray(logp, jnp.float32)
    old_logp = _sg(jnp.asarray(old_logp, jnp.float32))
    adv = _sg(jnp.asarray(advantages, jnp.float32))
    m = jnp.asarray(mask, jnp.float32)
    _check_shapes(logp, old_logp, m, adv)
    if cfg.kl_coef and ref_logp is None:
        raise InputError("kl_coef > 0 needs ref_logp")
    if adv.ndim == 2 and cfg.dash_tau > 0:
        raise InputError("dash_tau filters whole samples; it needs per-sequence advantages [B]")
    keep = dash_keep(adv, cfg.dash_tau) if adv.ndim == 1 else jnp.ones(adv.shape[:1], jnp.float32)
    m = m * keep[:, None]
    valid = m > 0
    rho, ratio, log_ratio, capped = importance_weights(logp, old_logp, valid, cfg)
    objective, clip_low, clip_high = clipped_objective(rho, ratio, adv, cfg)
    agg = functools.partial(aggregate, mode=cfg.aggregation, max_len=cfg.max_len, denominator=denominator)
    pg_loss = agg(-objective, m)
    kl_tok = jnp.zeros_like(logp)
    if ref_logp is not None:
        ref = _sg(jnp.asarray(ref_logp, jnp.float32))
        kl_tok = k3_kl(jnp.where(valid, logp, 0.0), jnp.where(valid, ref, 0.0))
    kl_loss = agg(kl_tok, m)
    loss = pg_loss + cfg.kl_coef * kl_loss if cfg.kl_coef else pg_loss
    tok_mean = lambda x: jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0)) / jnp.maximum(jnp.sum(m), 1.0)
    r_mean, r_min, r_max = _masked_stats(ratio, m)
    metrics = {
        "pg_loss": _sg(pg_loss),
        "kl_loss": _sg(kl_loss),
        "kl": _sg(tok_mean(kl_tok)),
        "clip_fraction": tok_mean(clip_low | clip_high),
        "clip_low_fraction": tok_mean(clip_low),
        "clip_high_fraction": tok_mean(clip_high),
        "approx_kl": tok_mean(_sg(ratio - 1.0 - log_ratio)),  # k3 estimate of KL(pi_old || pi_theta)
        "ratio_mean": r_mean,
        "ratio_min": r_min,
        "ratio_max": r_max,
        "importance_capped_fraction": tok_mean(capped),
        "kept_fraction": jnp.mean(keep),
        "n_tokens": jnp.sum(m),
    }
    return loss, metrics


# --------------------------------------------------------------------------- PPO


def terminal_rewards(rewards, mask) -> jax.Array:
    """Per-token rewards `[B, N]`: each sequence's reward `[B]` on its last generated token (the
    last 1 of its completion mask), 0 elsewhere."""
    m = jnp.asarray(mask, jnp.float32)
    last = (m > 0) & (jnp.pad(m[:, 1:], ((0, 0), (0, 1))) == 0)
    return jnp.where(last, jnp.asarray(rewards, jnp.float32)[:, None], 0.0)


@functools.partial(jax.jit, static_argnames=("gamma", "lam"))
def gae(token_rewards, values, mask, gamma: float = 1.0, lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over the completion tokens: `(advantages, returns)`, each
    `[B, N]`, zero on padding.

    `delta_t = r_t + gamma V_{t+1} - V_t` (V after the last token is 0: the episode ends there),
    `A_t = delta_t + gamma lam A_{t+1}`, returns `R_t = A_t + V_t` (the value head's targets).
    token_rewards, values, mask `[B, N]` (mask contiguous from t = 0). `gamma = lam = 1` gives the
    Monte Carlo returns `R_t = sum_{k >= t} r_k` and `A_t = R_t - V_t`."""
    r = jnp.asarray(token_rewards, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    v = jnp.asarray(values, jnp.float32) * m
    next_v = jnp.pad(v[:, 1:], ((0, 0), (0, 1)))
    delta = (r + gamma * next_v - v) * m
    next_m = jnp.pad(m[:, 1:], ((0, 0), (0, 1)))

    def back(carry, xs):  # from the last token to the first
        d, nm = xs
        a = d + gamma * lam * nm * carry
        return a, a

    _, adv = jax.lax.scan(back, jnp.zeros(r.shape[0], jnp.float32), (delta.T, next_m.T), reverse=True)
    adv = adv.T * m
    return adv, (adv + v) * m


def whiten(x, mask, eps: float = 1e-8) -> jax.Array:
    """`(x - mean) / std` over the masked entries (zero on the rest): PPO's advantage normalisation."""
    m = jnp.asarray(mask, jnp.float32)
    n = jnp.maximum(jnp.sum(m), 1.0)
    mean = jnp.sum(x * m) / n
    var = jnp.sum(jnp.square(x - mean) * m) / n
    return (x - mean) * jax.lax.rsqrt(var + eps) * m


def value_loss(
    values,
    old_values,
    returns,
    mask,
    clip: float | None = 0.2,
    *,
    aggregation: str = "token_mean",
    max_len: int | None = None,
    denominator=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's value loss `0.5 * max((V - R)^2, (V_clip - R)^2)` with
    `V_clip = V_old + clip(V - V_old, -clip, clip)` per token (`clip=None`: `0.5 (V - R)^2`),
    aggregated like the policy loss (`aggregate`). Returns `(loss, metrics)`: value_loss,
    value_clip_fraction (tokens where the clipped branch is the larger), explained_variance
    (of the returns by the values, over the mask)."""
    v = jnp.asarray(values, jnp.float32)
    old = _sg(jnp.asarray(old_values, jnp.float32))
    ret = _sg(jnp.asarray(returns, jnp.float32))
    m = jnp.asarray(mask, jnp.float32)
    err = jnp.square(v - ret)
    if clip is None:
        per_tok, clipped = err, jnp.zeros_like(err)
    else:
        err_clip = jnp.square(old + jnp.clip(v - old, -clip, clip) - ret)
        per_tok, clipped = jnp.maximum(err, err_clip), (err_clip > err).astype(jnp.float32)
    loss = aggregate(0.5 * per_tok, m, aggregation, max_len=max_len, denominator=denominator)
    n = jnp.maximum(jnp.sum(m), 1.0)
    mean_ret = jnp.sum(ret * m) / n
    var_ret = jnp.sum(jnp.square(ret - mean_ret) * m) / n
    resid = ret - _sg(v)
    var_res = jnp.sum(jnp.square(resid - jnp.sum(resid * m) / n) * m) / n
    return loss, {
        "value_loss": _sg(loss),
        "value_clip_fraction": jnp.sum(clipped * m) / n,
        "explained_variance": 1.0 - var_res / jnp.maximum(var_ret, 1e-8),
    }


def rapid_advantages(rewards, seq_log_ratio, group_size: int, cap: float | None = None) -> tuple[jax.Array, jax.Array]:
    """RAPID's importance-weighted group advantages (arXiv 2510.03515) `(A [B], w [B])`.

    For a group of G completions `y_i ~ pi_old(.|x)` with rewards `r_i` and sequence weights
    `w_i = min(pi_theta(y_i|x) / pi_old(y_i|x), cap)` (`seq_log_ratio` = `log pi_theta - log pi_old`
    summed over the completion; constants here), `b_i = sum_{j != i} w_j r_j / (G - 1)` estimates
    `E_{pi_theta}[r]` from the other samples and `A_i = w_i (r_i - b_i)`. Then
    `mean_i A_i grad log pi_theta(y_i)` is an unbiased estimate of the on-policy gradient
    `grad E_{pi_theta}[r]` when no weight is clipped (`b_i` does not depend on `y_i` and
    `E_{pi_old}[w grad log pi_theta] = 0`); clipping trades that bias for variance. With
    `pi_theta = pi_old` it is RLOO."""
    r = _grouped(rewards, group_size)
    if group_size < 2:
        raise InputError("rapid advantages need group_size >= 2")
    w = jnp.exp(_sg(jnp.asarray(seq_log_ratio, jnp.float32))).reshape(r.shape)
    if cap is not None:
        w = jnp.minimum(w, cap)
    b = (jnp.sum(w * r, axis=1, keepdims=True) - w * r) / (group_size - 1)
    return (w * (r - b)).reshape(-1), w.reshape(-1)


def rapid_loss(
    logp, old_logp, ref_logp, rewards, mask, group_size: int, cfg: LossConfig = DEFAULT_LOSS, *, denominator=None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The policy loss with RAPID's estimator: advantages from `rapid_advantages` (weights clipped at
    `cfg.importance_cap`, None = unclipped) under the current policy, then the REINFORCE surrogate
    `-A_i log pi(y_it)` aggregated per `cfg.aggregation` (plus `cfg.kl_coef` k3 KL). Rows come in
    groups of `group_size` (one prompt each). Metrics as `policy_loss`, with ratio_* and
    importance_capped_fraction over the sequence weights."""
    logp = jnp.asarray(logp, jnp.float32)
    m = jnp.asarray(mask, jnp.float32)
    seq_log_ratio = jnp.sum(jnp.where(m > 0, logp - _sg(jnp.asarray(old_logp, jnp.float32)), 0.0), axis=1)
    adv, w = rapid_advantages(rewards, seq_log_ratio, group_size, cfg.importance_cap)
    loss, metrics = policy_loss(
        logp, _sg(logp), ref_logp, adv, m, dataclasses.replace(cfg, importance_cap=None), denominator=denominator
    )
    raw = jnp.exp(_sg(seq_log_ratio))
    capped = raw > cfg.importance_cap if cfg.importance_cap is not None else jnp.zeros_like(raw, bool)
    metrics = {
        **metrics,
        "ratio_mean": jnp.mean(raw),
        "ratio_min": jnp.min(raw),
        "ratio_max": jnp.max(raw),
        "importance_capped_fraction": jnp.mean(capped.astype(jnp.float32)),
    }
    return loss, metrics


def expert_iteration_mask(rewards, mask, threshold: float = 0.0) -> jax.Array:
    """Completion mask `[B, N]` restricted to the samples with `reward > threshold`."""
    keep = (jnp.asarray(rewards) > threshold).astype(jnp.float32)
    return jnp.asarray(mask, jnp.float32) * keep[:, None]


@jax.jit
def expert_iteration_loss(logp, rewards, mask, threshold: float = 0.0, *, denominator=None) -> jax.Array:
    """Supervised negative log-likelihood (token mean) on the samples with `reward > threshold`.

    logp, mask `[B, N]`; rewards `[B]`. Returns 0 when no sample passes. `denominator` overrides
    the kept-token count (the global batch's, for micro-batching)."""
    m = expert_iteration_mask(rewards, mask, threshold)
    den = jnp.sum(m) if denominator is None else denominator
    return -jnp.sum(jnp.asarray(logp, jnp.float32) * m) / jnp.maximum(den, 1.0)


__all__ = [
    "group_advantages",
    "zero_std_fraction",
    "LossConfig",
    "dash_keep",
    "importance_weights",
    "clipped_objective",
    "expert_iteration_mask",
    "aggregate",
    "k3_kl",
    "policy_loss",
    "rapid_advantages",
    "rapid_loss",
    "terminal_rewards",
    "gae",
    "whiten",
    "value_loss",
    "expert_iteration_loss",
]
