"""The update: one jitted function from (frozen base, train state, rollout batch) to a new state.

Rollout rows come in groups of G completions of one prompt; the step runs each prompt once and
repeats its K/V cache for the group (`grouped_sequence_logprobs`), instead of G identical prompt
forwards (and backwards). Gradient accumulation happens inside the jit: the batch arrives as
`[M, b, ...]` micro-batches
and a `lax.scan` sums their gradients. Each micro-batch loss is normalised by the *global*
denominator of the whole batch (total completion tokens for "token_mean", sequences for
"seq_mean_token_mean", sequences x max_len for "seq_sum_norm"; DASH-filtered samples excluded),
so the summed gradient equals the full-batch gradient whatever M is. Then one optax update:
global-norm clipping and AdamW. Shardings are explicit (`jax.jit(in_shardings, out_shardings)`).

PPO (`algorithm="ppo"`): the state also holds a value head (`state["value"]`, `rl.value`) and its
optimizer state (`state["value_opt"]`); the loss adds `value_coef * value_loss` on the batch's
`returns` / `old_values`, the gradient goes to both, and each gets its own optax update (its own
global-norm clip).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from ...models.decoder import unembed
from ...models.params import Model
from ..config import LossConfig
from ..gradient import accumulate_gradients, apply_gradients, compile_update
from ..scoring import completion_states, token_logprobs
from ..trainable import TrainableConfig, build_policy, value_estimates
from .losses import expert_iteration_loss, expert_iteration_mask, k3_kl, policy_loss, rapid_loss, value_loss

_sg = jax.lax.stop_gradient

# Metrics combined across micro-batches as token-weighted means / sums / extrema.
_TOKEN_MEAN = (
    "kl",
    "clip_fraction",
    "clip_low_fraction",
    "clip_high_fraction",
    "ratio_mean",
    "importance_capped_fraction",
    "value_clip_fraction",
    "explained_variance",
)
_SUM = ("pg_loss", "kl_loss", "loss", "n_tokens", "entropy_sum", "comp_tokens", "value_loss")


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static description of the update (part of the compiled program's key)."""

    trainable: TrainableConfig
    loss: LossConfig
    algorithm: str = "grpo"  # or "ppo", "expert_iteration"
    ei_threshold: float = 0.0
    temperature: float = 1.0
    on_policy: bool = True  # old log-probs = stop_gradient(current): exact REINFORCE / RLOO / GRPO step
    need_ref: bool = False  # score under the reference policy (KL penalty or KL metric)
    shared_prompts: int = 1  # G > 1: rows come in groups of G with one prompt; run each prompt once
    rapid_group: int = 0  # G: RAPID's importance-weighted group advantages (`losses.rapid_loss`); 0 = off
    remat: bool | str = False  # rematerialise the layer scan (`ModelSpec.remat_arg`): same gradients, less memory


def global_denominator(comp_mask, advantages, cfg: LossConfig) -> jax.Array:
    """The loss normaliser of the whole batch (see module docstring)."""
    m = comp_mask.astype(jnp.float32)
    if cfg.dash_tau > 0:
        m = m * (jnp.abs(advantages) > cfg.dash_tau).astype(jnp.float32)[..., None]
    n_tok = jnp.sum(m, axis=-1)
    n_seqs = jnp.sum((n_tok > 0).astype(jnp.float32))
    if cfg.aggregation == "token_mean":
        return jnp.sum(n_tok)
    if cfg.aggregation == "seq_mean_token_mean":
        return n_seqs
    width = comp_mask.shape[-1] if cfg.max_len is None else cfg.max_len
    return n_seqs * width


def _score(model, tokens, mask, ivs, spec: StepSpec, prompt_width: int):
    """`(logp, entropy, h)`: log-probs and entropies `[B, N]` and the last residual `[B, N, d]` at
    the positions that predict the completion (each prompt once when rows share it)."""
    group = spec.shared_prompts if spec.shared_prompts > 1 and tokens.shape[0] % spec.shared_prompts == 0 else 1
    h = completion_states(model, tokens, mask, ivs, completion_start=prompt_width, group_size=group, remat=spec.remat)
    logp, entropy = token_logprobs(
        unembed(model, h), tokens[:, prompt_width:], mask[:, prompt_width:], spec.temperature
    )
    return logp, entropy, h


def microbatch_loss(params: dict, base: Model, mb: dict, spec: StepSpec, prompt_width: int, denominator):
    """Loss of one micro-batch (normalised by the global `denominator`) and its metrics.
    `params`: `{"trainable": ...}`, plus `"value"` (the value head) for PPO."""
    model, ivs = build_policy(base, params["trainable"], spec.trainable)
    tokens, mask = mb["tokens"], mb["mask"]
    logp, entropy, h = _score(model, tokens, mask, ivs, spec, prompt_width)
    cm = mask[:, prompt_width:].astype(jnp.float32)
    ref_logp = None
    if spec.need_ref:  # the reference policy is the base model without the trainable part
        ref_logp, _, _ = _score(base, tokens, mask, (), spec, prompt_width)
        ref_logp = _sg(ref_logp)
    if spec.algorithm == "expert_iteration":
        loss = expert_iteration_loss(logp, mb["rewards"], cm, spec.ei_threshold, denominator=denominator)
        metrics = {
            "pg_loss": _sg(loss),
            "n_tokens": jnp.sum(expert_iteration_mask(mb["rewards"], cm, spec.ei_threshold)),
            "kept_fraction": jnp.mean((mb["rewards"] > spec.ei_threshold).astype(jnp.float32)),
        }
        if ref_logp is not None:
            metrics["kl"] = jnp.sum(k3_kl(logp, ref_logp) * cm) / jnp.maximum(jnp.sum(cm), 1.0)
    elif spec.rapid_group:
        old = _sg(logp) if spec.on_policy else mb["old_logp"]
        loss, metrics = rapid_loss(
            logp, old, ref_logp, mb["rewards"], cm, spec.rapid_group, spec.loss, denominator=denominator
        )
    else:
        old = _sg(logp) if spec.on_policy else mb["old_logp"]
        loss, metrics = policy_loss(logp, old, ref_logp, mb["advantages"], cm, spec.loss, denominator=denominator)
    metrics = dict(metrics)
    if spec.algorithm == "ppo":
        values = value_estimates(model, params["value"], h)
        v_loss, v_metrics = value_loss(
            values,
            mb["old_values"],
            mb["returns"],
            cm,
            spec.loss.value_clip,
            aggregation=spec.loss.aggregation,
            max_len=spec.loss.max_len,
            denominator=denominator,
        )
        loss = loss + spec.loss.value_coef * v_loss
        metrics.update(v_metrics)
    metrics["loss"] = _sg(loss)
    metrics["entropy_sum"] = _sg(jnp.sum(entropy * cm))
    metrics["comp_tokens"] = jnp.sum(cm)
    return loss, metrics


def _combine(ms: dict) -> dict:
    """Per-micro-batch metrics `[M]` -> batch metrics."""
    out = {}
    w = ms.get("n_tokens")
    for k, v in ms.items():
        if k in _SUM:
            out[k] = jnp.sum(v)
        elif k == "ratio_min":
            out[k] = jnp.min(v)
        elif k == "ratio_max":
            out[k] = jnp.max(v)
        elif k in _TOKEN_MEAN and w is not None:
            out[k] = jnp.sum(v * w) / jnp.maximum(jnp.sum(w), 1.0)
        else:
            out[k] = jnp.mean(v)
    out["entropy"] = out.pop("entropy_sum") / jnp.maximum(out["comp_tokens"], 1.0)
    return out


def train_step(base: Model, state: dict, batch: dict, *, spec: StepSpec, tx, prompt_width: int, value_tx=None):
    """One optimizer update on a micro-batched rollout batch (arrays `[M, b, ...]`).

    batch: tokens, mask `[M, b, P + N]`; old_logp `[M, b, N]`; advantages, rewards `[M, b]` (PPO:
    advantages, returns, old_values `[M, b, N]`).
    Returns `(new_state, metrics)`; metrics include grad_norm (before clipping) and lr. `value_tx`:
    the value head's optimizer (PPO; default `tx`)."""
    comp = batch["mask"][:, :, prompt_width:]
    if spec.algorithm == "expert_iteration":
        denominator = jnp.sum(jax.vmap(expert_iteration_mask, (0, 0, None))(batch["rewards"], comp, spec.ei_threshold))
    else:
        denominator = global_denominator(comp, batch["advantages"], spec.loss)
    grad_fn = jax.grad(microbatch_loss, has_aux=True)
    params = {k: state[k] for k in ("trainable", "value") if k in state}
    grads, per_mb = accumulate_gradients(
        lambda p, mb: grad_fn(p, base, mb, spec, prompt_width, denominator), params, batch
    )
    metrics = _combine(per_mb)
    new_state, update_metrics = apply_gradients(state, grads["trainable"], tx)
    metrics.update(update_metrics)
    if "value" in state:  # PPO's value head: its own update (and clip) from the joint loss's gradient
        v_updates, new_state["value_opt"] = (value_tx or tx).update(grads["value"], state["value_opt"], params["value"])
        new_state["value"] = optax.apply_updates(params["value"], v_updates)
        metrics["value_grad_norm"] = optax.global_norm(grads["value"])
    return new_state, metrics


def compile_step(
    spec: StepSpec,
    tx,
    *,
    base_shardings=None,
    state_shardings=None,
    batch_shardings=None,
    metric_sharding=None,
    donate: bool = True,
    value_tx=None,
):
    """`step(base, state, batch, prompt_width) -> (state, metrics)`, jitted with explicit shardings
    (None = let JAX choose) and the train state donated (`value_tx`: PPO's value-head optimizer)."""
    return compile_update(
        functools.partial(train_step, spec=spec, tx=tx, value_tx=value_tx),
        base_shardings=base_shardings,
        state_shardings=state_shardings,
        batch_shardings=batch_shardings,
        metric_sharding=metric_sharding,
        donate=donate,
    )


__all__ = ["StepSpec", "global_denominator", "microbatch_loss", "train_step", "compile_step"]
