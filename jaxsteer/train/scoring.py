"""Scoring completions under a policy: per-token log-probabilities and entropies.

`token_logprobs` is the one log-softmax / gather / entropy; `completion_states` is the last
residual stream at the positions that predict completion tokens (what the unembedding and PPO's
value head read); `sequence_logprobs` scores full rows
with one forward, `grouped_sequence_logprobs` runs each prompt of a GRPO group once and repeats
its K/V cache for the group's completions (same values and gradients, G times fewer prompt
tokens).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import InputError
from ..models.decoder import default_positions, embed, run_layers, unembed
from ..models.generate import kv_cache
from ..models.interventions import as_tuple, check_all
from ..models.params import Model


def token_logprobs(logits, targets, mask, temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """`(log pi(target), entropy)` per position `[B, N]` from logits `[B, N, V]` divided by
    `temperature`; zero where `mask` is 0."""
    if temperature != 1.0:
        logits = logits / jnp.float32(temperature)
    logz = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logz, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logz) * logz, axis=-1)
    keep = mask.astype(bool)
    return jnp.where(keep, logp, 0.0), jnp.where(keep, entropy, 0.0)


@functools.partial(jax.jit, static_argnames=("completion_start", "remat"))
def _completion_states(model, tokens, mask, interventions, completion_start, remat):
    positions = default_positions(tokens, mask)
    k_pos = jnp.where(mask.astype(bool), positions, -1)
    h, _, _ = run_layers(model, embed(model, tokens), positions, k_pos, interventions, frozenset(), remat=remat)
    return h[:, completion_start - 1 : -1]  # only the positions that predict completion tokens


def _check_rows(model, tokens, mask, interventions, completion_start):
    tokens = jnp.asarray(tokens)
    mask = jnp.asarray(mask)
    if tokens.ndim != 2 or mask.shape != tokens.shape:
        raise InputError(f"tokens and mask must both be [B, T]; got {tokens.shape} and {mask.shape}")
    if not 1 <= completion_start < tokens.shape[1]:
        raise InputError(f"completion_start={completion_start} must be in [1, {tokens.shape[1] - 1}]")
    interventions = as_tuple(interventions)
    check_all(interventions, model.config, tokens.shape[1])
    return tokens, mask, interventions


def completion_states(
    model: Model,
    tokens,
    mask,
    interventions: Any = (),
    *,
    completion_start: int,
    group_size: int = 1,
    remat: bool | str = False,
) -> jax.Array:
    """The last layer's residual stream (`resid_post`, before the final norm) `[B, N, d]` at the
    positions that predict the completion tokens `tokens[:, completion_start:]`: what the
    unembedding (and a value head) reads. `group_size` > 1: rows come in groups sharing one prompt
    (see `grouped_sequence_logprobs`), each prompt runs once. Same arguments as `sequence_logprobs`."""
    if group_size > 1:
        return _grouped_states(model, tokens, mask, as_tuple(interventions), completion_start, group_size, remat)
    tokens, mask, interventions = _check_rows(model, tokens, mask, interventions, completion_start)
    return _completion_states(model, tokens, mask, interventions, int(completion_start), remat)


def sequence_logprobs(
    model: Model,
    tokens,
    mask,
    interventions: Any = (),
    *,
    completion_start: int,
    temperature: float = 1.0,
    remat: bool | str = False,
) -> tuple[jax.Array, jax.Array]:
    """Per-token `log pi(y_t)` and the policy entropy at each completion position, via one forward.

    tokens, mask `[B, P + N]` (e.g. `Generation.sequences()`; padding on either side);
    completion tokens are the positions `>= completion_start` (= P). Returns `(logp, entropy)`,
    each `[B, N]` float32, zero where `mask` is 0. `temperature` divides the logits (use the
    sampling temperature to score under the sampling distribution). Jittable; gradients flow
    to `model` and `interventions`. `remat`: rematerialise the layer scan in the backward pass
    (`run_layers`; a bool or a `jax.checkpoint_policies` name).
    """
    h = completion_states(model, tokens, mask, interventions, completion_start=completion_start, remat=remat)
    return token_logprobs(unembed(model, h), tokens[:, completion_start:], mask[:, completion_start:], temperature)


def grouped_sequence_logprobs(
    model: Model,
    tokens,
    mask,
    interventions=(),
    *,
    completion_start: int,
    group_size: int,
    temperature: float = 1.0,
    remat: bool | str = False,
):
    """`sequence_logprobs` for rows that come in groups of `group_size` sharing one prompt (the
    rollout layout): each prompt runs through the model once and its K/V cache is repeated for
    the group's completions, which run on top of it. Same values and gradients as scoring every
    full row (the prompt's activations, and so the gradient through them, are identical within a
    group), with `G` times fewer prompt tokens. Rows `g * G .. g * G + G - 1` must have identical
    prompt tokens and mask (`tokens[:, :completion_start]`). `remat` as in `sequence_logprobs`."""
    h = _grouped_states(model, tokens, mask, as_tuple(interventions), completion_start, group_size, remat)
    P = completion_start
    return token_logprobs(unembed(model, h), tokens[:, P:], mask[:, P:], temperature)


def _grouped_states(
    model: Model, tokens, mask, interventions: tuple, completion_start: int, group_size: int, remat
) -> jax.Array:
    """`completion_states` of grouped rows: one prompt forward per group, its K/V cache repeated."""
    B, T = tokens.shape
    P, G = completion_start, group_size
    prompt, pmask = tokens[::G, :P], mask[::G, :P]
    positions = default_positions(tokens, mask)  # as the full forward: cumsum(mask) - 1
    p_pos = positions[::G, :P]
    p_kpos = jnp.where(pmask > 0, p_pos, -1)
    S = T - 1  # key slots: the prompt, then the completion tokens that are inputs (all but the last)
    cache = kv_cache(model, B // G, S)
    k_pos = jnp.concatenate([p_kpos, jnp.full((B // G, S - P), -1, p_kpos.dtype)], axis=1)
    h_prompt, _, cache = run_layers(
        model, embed(model, prompt), p_pos, k_pos, interventions, frozenset(), cache, 0, remat=remat
    )
    h = jnp.repeat(h_prompt[:, -1:], G, axis=0)  # predicts the first completion token
    if T - P > 1:
        assert cache is not None  # run_layers returns the cache it was given
        cache = (jnp.repeat(cache[0], G, axis=1), jnp.repeat(cache[1], G, axis=1))
        c_tok, c_mask, c_pos = tokens[:, P : T - 1], mask[:, P : T - 1], positions[:, P : T - 1]
        k_pos = jnp.concatenate([jnp.repeat(p_kpos, G, axis=0), jnp.where(c_mask > 0, c_pos, -1)], axis=1)
        h_rest, _, _ = run_layers(
            model, embed(model, c_tok), c_pos, k_pos, interventions, frozenset(), cache, P, remat=remat
        )
        h = jnp.concatenate([h, h_rest], axis=1)
    return h


__all__ = ["token_logprobs", "completion_states", "sequence_logprobs", "grouped_sequence_logprobs"]
