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
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..models.decoder import default_positions, embed, run_layers, unembed
from ..models.interventions import as_tuple
from ..models.params import Model
from .losses import LossConfig, policy_loss, sequence_logprobs
from .trainable import TrainableConfig, apply_trainable

_sg = jax.lax.stop_gradient

# Metrics combined across micro-batches as token-weighted means / sums / extrema.
_TOKEN_MEAN = ("kl", "clip_fraction", "clip_low_fraction", "clip_high_fraction", "ratio_mean", "importance_capped_fraction")
_SUM = ("pg_loss", "kl_loss", "loss", "n_tokens", "entropy_sum", "comp_tokens")


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Static description of the update (part of the compiled program's key)."""

    trainable: TrainableConfig
    loss: LossConfig
    algorithm: str = "grpo"  # or "expert_iteration"
    ei_threshold: float = 0.0
    temperature: float = 1.0
    on_policy: bool = True  # old log-probs = stop_gradient(current): exact REINFORCE / RLOO / GRPO step
    need_ref: bool = False  # score under the reference policy (KL penalty or KL metric)
    shared_prompts: int = 1  # G > 1: rows come in groups of G with one prompt; run each prompt once


def make_optimizer(lr: float, total_updates: int, *, warmup_frac: float = 0.03, schedule: str = "constant",
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   grad_clip: float = 2.0) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW with linear warmup over `ceil(warmup_frac * total_updates)`
    updates (update i gets `lr * (i + 1) / (warmup + 1)`, so no update is wasted at lr 0), then
    constant (or cosine decay to 0)."""
    warmup = int(math.ceil(warmup_frac * total_updates)) if warmup_frac > 0 else 0

    def sched(count):
        count = jnp.asarray(count, jnp.float32)
        ramp = jnp.minimum(1.0, (count + 1.0) / (warmup + 1.0)) if warmup else 1.0
        if schedule == "cosine":
            frac = jnp.clip((count - warmup) / max(total_updates - warmup, 1), 0.0, 1.0)
            return lr * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return lr * ramp

    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), sched


def init_state(trainable: Any, tx: optax.GradientTransformation) -> dict:
    """Train state: `{"step": int32, "trainable": ..., "opt": optax state}` (trainable in float32)."""
    trainable = jax.tree_util.tree_map(lambda x: jnp.array(x, jnp.float32), trainable)  # a fresh copy
    return {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "opt": tx.init(trainable)}


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


def grouped_sequence_logprobs(model: Model, tokens, mask, interventions=(), *, completion_start: int,
                              group_size: int, temperature: float = 1.0):
    """`sequence_logprobs` for rows that come in groups of `group_size` sharing one prompt (the
    rollout layout): each prompt runs through the model once and its K/V cache is repeated for
    the group's completions, which run on top of it. Same values and gradients as scoring every
    full row (the prompt's activations, and so the gradient through them, are identical within a
    group), with `G` times fewer prompt tokens. Rows `g * G .. g * G + G - 1` must have identical
    prompt tokens and mask (`tokens[:, :completion_start]`)."""
    c = model.config
    interventions = as_tuple(interventions)
    B, T = tokens.shape
    P, G = completion_start, group_size
    N = T - P
    R = B // G
    prompt, pmask = tokens[::G, :P], mask[::G, :P]
    positions = default_positions(tokens, mask)  # as the full forward: cumsum(mask) - 1
    p_pos = positions[::G, :P]
    p_kpos = jnp.where(pmask > 0, p_pos, -1)
    S = T - 1  # key slots: the prompt, then the completion tokens that are inputs (all but the last)
    dtype = model.params["embed"].dtype
    cache = tuple(jnp.zeros((c.n_layers, R, S, c.n_kv_heads, c.head_dim), dtype) for _ in range(2))
    k_pos = jnp.concatenate([p_kpos, jnp.full((R, S - P), -1, p_kpos.dtype)], axis=1)
    h_prompt, _, cache = run_layers(model, embed(model, prompt), p_pos, k_pos, interventions, frozenset(), cache, 0)
    h_first = jnp.repeat(h_prompt[:, -1:], G, axis=0)  # predicts the first completion token
    if N > 1:
        cache = tuple(jnp.repeat(x, G, axis=1) for x in cache)
        c_tok, c_mask, c_pos = tokens[:, P:T - 1], mask[:, P:T - 1], positions[:, P:T - 1]
        k_pos = jnp.concatenate([jnp.repeat(p_kpos, G, axis=0), jnp.where(c_mask > 0, c_pos, -1)], axis=1)
        h_rest, _, _ = run_layers(model, embed(model, c_tok), c_pos, k_pos, interventions, frozenset(), cache, P)
        h = jnp.concatenate([h_first, h_rest], axis=1)
    else:
        h = h_first
    logits = unembed(model, h)
    if temperature != 1.0:
        logits = logits / jnp.float32(temperature)
    logz = jax.nn.log_softmax(logits, axis=-1)
    target = tokens[:, P:]
    logp = jnp.take_along_axis(logz, target[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logz) * logz, axis=-1)
    comp = mask[:, P:].astype(bool)
    return jnp.where(comp, logp, 0.0), jnp.where(comp, entropy, 0.0)


def _score(model, tokens, mask, ivs, spec: StepSpec, prompt_width: int):
    if spec.shared_prompts > 1 and tokens.shape[0] % spec.shared_prompts == 0:
        return grouped_sequence_logprobs(model, tokens, mask, ivs, completion_start=prompt_width,
                                         group_size=spec.shared_prompts, temperature=spec.temperature)
    return sequence_logprobs(model, tokens, mask, ivs, completion_start=prompt_width, temperature=spec.temperature)


def _policy(base: Model, trainable, spec: StepSpec):
    if spec.trainable.kind == "full":  # float32 master weights, cast to the base dtype for the forward
        trainable = jax.tree_util.tree_map(lambda t, b: t.astype(b.dtype), trainable, base.params)
    return apply_trainable(base, trainable, spec.trainable)


def microbatch_loss(trainable, base: Model, mb: dict, spec: StepSpec, prompt_width: int, denominator):
    """Loss of one micro-batch (normalised by the global `denominator`) and its metrics."""
    model, ivs = _policy(base, trainable, spec)
    tokens, mask = mb["tokens"], mb["mask"]
    logp, entropy = _score(model, tokens, mask, ivs, spec, prompt_width)
    cm = mask[:, prompt_width:].astype(jnp.float32)
    ref_logp = None
    if spec.need_ref:
        ref_model, ref_ivs = apply_trainable(base, trainable, spec.trainable, enabled=False)
        ref_logp, _ = _score(ref_model, tokens, mask, ref_ivs, spec, prompt_width)
        ref_logp = _sg(ref_logp)
    if spec.algorithm == "expert_iteration":
        keep = (mb["rewards"] > spec.ei_threshold).astype(jnp.float32)
        m = cm * keep[:, None]
        loss = -jnp.sum(logp * m) / jnp.maximum(denominator, 1.0)
        metrics = {"pg_loss": _sg(loss), "n_tokens": jnp.sum(m), "kept_fraction": jnp.mean(keep)}
        if ref_logp is not None:
            d = ref_logp - logp
            metrics["kl"] = jnp.sum((jnp.exp(d) - d - 1.0) * cm) / jnp.maximum(jnp.sum(cm), 1.0)
    else:
        old = _sg(logp) if spec.on_policy else mb["old_logp"]
        loss, metrics = policy_loss(logp, old, ref_logp, mb["advantages"], cm, spec.loss, denominator=denominator)
    metrics = dict(metrics)
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


def train_step(base: Model, state: dict, batch: dict, *, spec: StepSpec, tx, prompt_width: int):
    """One optimizer update on a micro-batched rollout batch (arrays `[M, b, ...]`).

    batch: tokens, mask `[M, b, P + N]`; old_logp `[M, b, N]`; advantages, rewards `[M, b]`.
    Returns `(new_state, metrics)`; metrics include grad_norm (before clipping) and lr."""
    comp = batch["mask"][:, :, prompt_width:]
    if spec.algorithm == "expert_iteration":
        keep = (batch["rewards"] > spec.ei_threshold).astype(jnp.float32)
        denominator = jnp.sum(comp.astype(jnp.float32) * keep[..., None])
    else:
        denominator = global_denominator(comp, batch["advantages"], spec.loss)
    grad_fn = jax.grad(microbatch_loss, has_aux=True)
    trainable = state["trainable"]

    def body(acc, mb):
        g, metrics = grad_fn(trainable, base, mb, spec, prompt_width, denominator)
        return jax.tree_util.tree_map(jnp.add, acc, g), metrics

    zeros = jax.tree_util.tree_map(jnp.zeros_like, trainable)
    grads, per_mb = jax.lax.scan(body, zeros, batch)
    metrics = _combine(per_mb)
    metrics["grad_norm"] = optax.global_norm(grads)
    updates, opt = tx.update(grads, state["opt"], trainable)
    new_trainable = optax.apply_updates(trainable, updates)
    metrics["update_norm"] = optax.global_norm(updates)
    new_state = {"step": state["step"] + 1, "trainable": new_trainable, "opt": opt}
    return new_state, metrics


def compile_step(spec: StepSpec, tx, *, base_shardings=None, state_shardings=None, batch_shardings=None,
                 metric_sharding=None, donate: bool = True):
    """`step(base, state, batch, prompt_width) -> (state, metrics)`, jitted with explicit shardings
    (None = let JAX choose) and the train state donated."""
    fn = functools.partial(train_step, spec=spec, tx=tx)
    cache: dict[int, Any] = {}

    def step(base, state, batch, prompt_width: int):
        if prompt_width not in cache:
            kw = {}
            if state_shardings is not None:
                kw["in_shardings"] = (base_shardings, state_shardings, batch_shardings)
                kw["out_shardings"] = (state_shardings, metric_sharding)
            cache[prompt_width] = jax.jit(
                functools.partial(fn, prompt_width=prompt_width), donate_argnums=(1,) if donate else (), **kw
            )
        return cache[prompt_width](base, state, batch)

    return step


__all__ = ["StepSpec", "make_optimizer", "init_state", "global_denominator", "grouped_sequence_logprobs",
           "microbatch_loss", "train_step", "compile_step"]
