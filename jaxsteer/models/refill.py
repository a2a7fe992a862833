"""Refill sampling: rows that finish hand their slot to the next waiting row, inside one compiled loop.

The static sampler (`generate.sample_tokens`) decodes every row until the longest one ends, so
rows that stop early keep paying for decode. Here `slots` rows are in flight at a time; when a
row stops (stop token or `max_new_tokens`) its slot takes the next waiting row at once:

- every slot has its own K/V region `[L, slots, P + N, kv, hd]`, key positions and position
  counter. Columns `[0, P)` hold the slot's prompt; generated tokens go to the ring of columns
  `P + (t mod N)` at loop step `t`, the same column for every slot (one cache write per step, as
  in the static loop; a row lives at most N steps, so it never overwrites its own tokens).
  Attention reads keys by position, so the column order does not matter.
- prompts are prefilled a stage of `ceil(slots / G)` prompts at a time, each once for its G
  samples (`samples_per_prompt`), and their K/V copied into the slots that take their rows.
- row `r`'s `t`-th token is drawn with `generate.row_keys(key, r, t)`, as the static sampler
  draws it: the same key gives the same tokens per row (up to float rounding of the logits,
  which depend on the batch layout at the 1e-6 level).

Interventions bound per row at prefill (`Conditional`, `RowSteer`) and `runs > 1` are refused
(InputError: use the static sampler); plain ones (Steer, Ablate, ...) and `OnTokens` work.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..errors import InputError
from .controls import Conditional, RowSteer, TokenContext, bind_controls
from .decoder import bind_to_tokens, embed, run_layers, unembed
from .generate import SamplingConfig, kv_cache, row_keys, sample_logits, sample_tokens


class RefillState(NamedTuple):
    """The refill loop's carry: slots, the prefilled stage, the queue and the outputs."""

    t: jax.Array  # loop step (the ring column of this step's cache write)
    active: jax.Array  # [S] the slot holds an unfinished row
    row: jax.Array  # [S] the slot's row in the batch
    step: jax.Array  # [S] tokens its row has generated
    pos: jax.Array  # [S] position of the slot's next token
    k_pos: jax.Array  # [S, P + N] position of each cache column, -1 when empty
    cache: tuple[jax.Array, jax.Array]  # [L, S, P + N, kv, hd] each
    logits: jax.Array  # [S, V] the logits the slot samples from next
    stage_first: jax.Array  # first prompt of the stage
    stage_cache: tuple[jax.Array, jax.Array]  # [L, Q, P, kv, hd] each
    stage_k_pos: jax.Array  # [Q, P]
    stage_pos: jax.Array  # [Q] position of each prompt's first generated token
    stage_logits: jax.Array  # [Q, V]
    next_row: jax.Array  # the first row still waiting
    tokens: jax.Array  # [B, N]
    logprobs: jax.Array  # [B, N]
    lengths: jax.Array  # [B]


def check_refill(interventions: tuple, sampling: SamplingConfig) -> None:
    """InputError when the refill sampler cannot run these settings (the static sampler can)."""
    if sampling.refill_slots < 1:
        raise InputError(f"refill_slots must be >= 1 for the refill sampler, got {sampling.refill_slots}")
    if sampling.runs > 1:
        raise InputError("the refill sampler decodes one run (runs=1); use the static sampler (refill_slots=0)")
    for iv in interventions:
        if isinstance(iv, (Conditional, RowSteer)):
            raise InputError(
                f"{type(iv).__name__} is bound per row of the batch, which the refill sampler does not carry "
                "per slot; use the static sampler (refill_slots=0)"
            )
        inner = getattr(iv, "intervention", None)
        if inner is not None:
            check_refill((inner,), sampling)


def _prefill_stage(model, prompt, prompt_mask, interventions, G: int, st: RefillState) -> RefillState:
    """Prefill the prompts from the one holding the next waiting row (`Q` of them) into the stage."""
    Q = st.stage_logits.shape[0]
    first = st.next_row // G
    idx = jnp.minimum(first + jnp.arange(Q), prompt.shape[0] - 1)
    toks, mask = prompt[idx], prompt_mask[idx]
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    k_pos = jnp.where(mask > 0, positions, -1)
    ivs = bind_to_tokens(model, toks, mask, interventions)
    cache = kv_cache(model, Q, toks.shape[1])
    h, _, cache = run_layers(model, embed(model, toks), positions, k_pos, ivs, frozenset(), cache, 0)
    assert cache is not None  # run_layers returns the cache it was given, filled
    return st._replace(
        stage_first=first,
        stage_cache=cache,
        stage_k_pos=k_pos,
        stage_pos=positions[:, -1] + 1,
        stage_logits=unembed(model, h[:, -1]).astype(st.logits.dtype),
    )


def _assign(st: RefillState, G: int, B: int) -> RefillState:
    """Free slots take the next waiting rows of the stage (in slot order): prompt K/V copied in,
    generated columns emptied, positions and step counters reset."""
    S = st.active.shape[0]
    Q, P = st.stage_k_pos.shape
    free = ~st.active
    row = st.next_row + jnp.cumsum(free) - 1
    take = free & (row < jnp.minimum((st.stage_first + Q) * G, B))
    q = jnp.clip(row // G - st.stage_first, 0, Q - 1)
    dst = jnp.where(take, jnp.arange(S), S)  # out of range: dropped
    cache = tuple(
        full.at[:, dst, :P].set(stage[:, q].astype(full.dtype), mode="drop")
        for full, stage in zip(st.cache, st.stage_cache, strict=True)
    )
    fresh_k_pos = jnp.concatenate([st.stage_k_pos[q], jnp.full((S, st.k_pos.shape[1] - P), -1, jnp.int32)], axis=1)
    return st._replace(
        active=st.active | take,
        row=jnp.where(take, row, st.row),
        step=jnp.where(take, 0, st.step),
        pos=jnp.where(take, st.stage_pos[q], st.pos),
        k_pos=jnp.where(take[:, None], fresh_k_pos, st.k_pos),
        cache=cache,
        logits=jnp.where(take[:, None], st.stage_logits[q], st.logits),
        next_row=st.next_row + jnp.sum(take, dtype=jnp.int32),
    )


def _empty_state(model, B: int, S: int, Q: int, P: int, N: int, pad_id) -> RefillState:
    """Every slot idle, the stage exhausted (the first refill prefills), outputs all padding."""
    c, dtype = model.config, model.params["embed"].dtype
    logits_dtype = jax.eval_shape(lambda: unembed(model, jnp.zeros((1, c.d_model), dtype))).dtype
    return RefillState(
        t=jnp.int32(0),
        active=jnp.zeros((S,), bool),
        row=jnp.zeros((S,), jnp.int32),
        step=jnp.zeros((S,), jnp.int32),
        pos=jnp.zeros((S,), jnp.int32),
        k_pos=jnp.full((S, P + N), -1, jnp.int32),
        cache=kv_cache(model, S, P + N),
        logits=jnp.zeros((S, c.vocab_size), logits_dtype),
        stage_first=jnp.int32(-Q),  # an exhausted stage: the first refill prefills
        stage_cache=kv_cache(model, Q, P),
        stage_k_pos=jnp.full((Q, P), -1, jnp.int32),
        stage_pos=jnp.zeros((Q,), jnp.int32),
        stage_logits=jnp.zeros((Q, c.vocab_size), logits_dtype),
        next_row=jnp.int32(0),
        tokens=jnp.full((B, N), pad_id, jnp.int32),
        logprobs=jnp.zeros((B, N), jnp.float32),
        lengths=jnp.zeros((B,), jnp.int32),
    )


@functools.partial(jax.jit, static_argnames=("sampling",))
def sample_tokens_refill(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset=0):
    """The refill sampler on prepared prompts: `(tokens, logprobs, lengths)` as `sample_tokens`
    returns them (rows `[p0] * G, [p1] * G, ...` for `G = sampling.samples_per_prompt`), decoded
    `sampling.refill_slots` rows at a time.

    Args:
        model: the model.
        prompt: `[n_prompts, P]` left-padded ids (`PreparedPrompts.tokens`).
        prompt_mask: `[n_prompts, P]` 0/1.
        stop_ids: `[S]` ids that end a row (`[-1]`: none).
        pad_id: the id written after a row stops.
        key: a `jax.random` key.
        interventions: a tuple of interventions (not `Conditional` / `RowSteer`: `check_refill`).
        sampling: the static `SamplingConfig` (`refill_slots` >= 1, `runs` = 1).
        row_offset: index of the first row in the whole batch (a shard's offset: row keys are global).

    Returns:
        `(tokens, logprobs, lengths)`, `[B, N]`, `[B, N]` and `[B]`.
    """
    check_refill(interventions, sampling)
    n_prompts, P = prompt.shape
    G, N = sampling.samples_per_prompt, sampling.max_new_tokens
    B = n_prompts * G
    S = min(sampling.refill_slots, B)
    Q = min(-(-S // G), n_prompts)
    st = _empty_state(model, B, S, Q, P, N, pad_id)
    prefill = functools.partial(_prefill_stage, model, prompt, prompt_mask, interventions, G)

    def refill_one(st):
        exhausted = st.next_row >= (st.stage_first + Q) * G
        return _assign(jax.lax.cond(exhausted, prefill, lambda s: s, st), G, B)

    def has_work(st):
        return jnp.any(~st.active) & (st.next_row < B)

    def body(st):
        st = jax.lax.while_loop(has_work, refill_one, st)
        tok, lp = sample_logits(st.logits, row_keys(key, row_offset + st.row, st.step), sampling)
        tok = jnp.where(st.active, tok, pad_id).astype(jnp.int32)
        out_row = jnp.where(st.active, st.row, B)  # idle slots write nowhere
        finished = jnp.isin(tok, stop_ids) | (st.step + 1 >= N)
        col = P + st.t % N
        k_pos = st.k_pos.at[:, col].set(st.pos)
        ivs = bind_controls(interventions, TokenContext(tok[:, None], st.step[:, None]))
        h, _, cache = run_layers(
            model, embed(model, tok[:, None]), st.pos[:, None], k_pos, ivs, frozenset(), st.cache, col
        )
        assert cache is not None
        return st._replace(
            t=st.t + 1,
            active=st.active & ~finished,
            step=st.step + 1,
            pos=st.pos + 1,
            k_pos=k_pos,
            cache=cache,
            logits=unembed(model, h[:, -1]),
            tokens=st.tokens.at[out_row, st.step].set(tok, mode="drop"),
            logprobs=st.logprobs.at[out_row, st.step].set(lp, mode="drop"),
            lengths=st.lengths.at[out_row].add(1, mode="drop"),
        )

    st = jax.lax.while_loop(lambda st: jnp.any(st.active) | (st.next_row < B), body, st)
    return st.tokens, st.logprobs, st.lengths


def sample_any(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset=0):
    """The sampler `sampling` asks for: refill (`sampling.refill_slots` >= 1) or static
    (`generate.sample_tokens`); same arguments and results. Traceable."""
    if sampling.refill_slots:
        return sample_tokens_refill(
            model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset
        )
    return sample_tokens(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset)


__all__ = ["RefillState", "check_refill", "sample_tokens_refill", "sample_any"]
