"""Batched sampling with a KV cache; the whole decode loop is one compiled `lax.while_loop`.

Prompts are left-padded to a bucketed length (multiple of `PROMPT_BUCKET`) so a new
prompt length rarely recompiles. Each row stops at its first stop token; afterwards it
emits `pad_id` with log-probability 0. Interventions act on prompt and generated tokens.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from .controls import TokenContext, bind_controls, check_rows, conditions, repeat_rows
from .decoder import embed, run_layers, run_prompt, unembed
from .interventions import as_tuple, check_all, rows_per_run
from .params import Model
from .validation import check_binary_mask, check_number, check_token_ids

PROMPT_BUCKET = 32


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Static sampling settings (part of the compiled program's key)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    greedy: bool = False
    samples_per_prompt: int = 1  # rows per prompt; the prompt's prefill runs once and its K/V cache is repeated
    runs: int = 1  # run-major copies of the batch decoded side by side; every run reads run 0's sampled tokens
    refill_slots: int = 0  # 0: static (every row decodes until the longest ends); S: refill, S rows in flight


@dataclasses.dataclass
class Generation:
    """Result of `generate`.

    Attributes:
        tokens: `[B, N]` generated ids (pad after a row stops).
        logprobs: `[B, N]` log-probability of each token under the sampling distribution (after
            temperature / top-k / top-p; under the plain softmax for greedy), 0 after the row stops.
        lengths: `[B]` generated tokens up to and including the stop token.
        prompt_tokens: the left-padded prompts `[B, P]`.
        prompt_mask: their 0/1 mask `[B, P]`.
        texts: decoded completions (when a tokenizer was available).
        decisions: each `Conditional`'s decision per row `[n_conditionals, B]` (when there are any).
        condition_scores: their scores, shaped as `decisions`.
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    texts: list[str] | None = None
    decisions: np.ndarray | None = None
    condition_scores: np.ndarray | None = None

    def __repr__(self) -> str:
        from .display import summary_repr

        return summary_repr(
            self,
            [
                ("tokens", self.tokens),
                ("lengths", self.lengths),
                ("texts", None if self.texts is None else [t[:40] for t in self.texts]),
            ],
        )

    def _repr_html_(self) -> str:
        from .display import frame_html

        texts = self.texts or [" ".join(map(str, row[:n])) for row, n in zip(self.tokens, self.lengths, strict=True)]
        return frame_html(
            np.array([[n, t] for n, t in zip(self.lengths, texts, strict=True)], dtype=object),
            range(len(texts)),
            ["tokens", "completion"],
            title="Generation",
        )

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """Prompt + completion tokens `[B, P + N]` and their attention mask (for scoring)."""
        n = self.tokens.shape[1]
        comp_mask = np.arange(n)[None, :] < self.lengths[:, None]
        return (
            np.concatenate([self.prompt_tokens, self.tokens], axis=1),
            np.concatenate([self.prompt_mask, comp_mask.astype(self.prompt_mask.dtype)], axis=1),
        )


def filter_logits(logits: jax.Array, s: SamplingConfig) -> jax.Array:
    """Apply temperature, top-k and top-p (nucleus) filtering to float32 logits `[B, V]`.

    Args:
        logits: `[B, V]` float32.
        s: the sampling settings (temperature, top_k, top_p).

    Returns:
        The filtered logits (removed entries at -inf), `[B, V]`.
    """
    logits = logits / jnp.float32(max(s.temperature, 1e-6))
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
        keep_sorted = before < s.top_p  # always keeps the top token
        threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def first_argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (the first maximum; the first NaN if any) as two plain reductions,
    a max and a min of indices: XLA:CPU runs argmax's paired (value, index) reduction as scalar
    code, several times slower over a vocabulary-wide row."""
    top = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == top) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape[-1]), axis=-1)


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """`jax.random.categorical(key, logits, axis=-1)`, the same draw (Gumbel-max over the same
    Gumbel noise) with `first_argmax`; the noisy logits are materialised once (an optimization
    barrier) rather than recomputed inside the reductions."""
    return gumbel_argmax(jax.random.gumbel(key, logits.shape, logits.dtype), logits)


def row_categorical(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw per row with the row's own key: row `b` equals
    `jax.random.categorical(keys[b], logits[b])` (so a row's token does not depend on which other
    rows share the batch, or where it sits in it).

    Args:
        keys: `[B]` keys (`row_keys`).
        logits: `[B, V]`.

    Returns:
        `[B]` int32 token ids.
    """
    noise = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[1:], logits.dtype))(keys)
    return gumbel_argmax(noise, logits)


def gumbel_argmax(noise: jax.Array, logits: jax.Array) -> jax.Array:
    """The Gumbel-max draw `first_argmax(noise + logits)`, the noisy logits materialised once."""
    return first_argmax(jax.lax.optimization_barrier(noise + logits))


def row_keys(key: jax.Array, rows: jax.Array, steps: jax.Array | int) -> jax.Array:
    """The key of each row's draw at its step: `fold_in(fold_in(key, row), step)`, `[B]` keys.

    Both samplers (static `sample_tokens` and `refill.sample_tokens_refill`) draw row `r`'s
    `t`-th token with this key, so the same key gives the same tokens per row whatever the batch
    layout, slot or mesh.

    Args:
        key: the sampling key.
        rows: `[B]` int row indices (in the full batch).
        steps: the generated-token index of each row (`[B]` or a scalar).
    """
    steps = jnp.broadcast_to(jnp.asarray(steps, jnp.int32), jnp.shape(rows))
    return jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(key, r), t))(rows, steps)


def sample_logits(logits: jax.Array, keys: jax.Array, s: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """One token per row from `logits [B, V]` with the rows' keys `[B]` (`row_keys`): `(tokens,
    logprobs)` `[B]`, the logprob under the sampling distribution (the plain softmax for greedy)."""
    if s.greedy:
        tok = first_argmax(logits)
        return tok, jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, None], axis=-1)[:, 0]
    filtered = filter_logits(logits, s)
    tok = row_categorical(keys, filtered)
    return tok, jnp.take_along_axis(jax.nn.log_softmax(filtered), tok[:, None], axis=-1)[:, 0]


def kv_cache(model: Model, batch: int, slots: int) -> tuple[jax.Array, jax.Array]:
    """An empty K/V cache `(K, V)`, each `[L, batch, slots, n_kv_heads, head_dim]` in the model's
    dtype (what `run_layers` fills; the one allocator for generation, scoring and patching)."""
    c = model.config
    shape, dtype = (c.n_layers, batch, slots, c.n_kv_heads, c.head_dim), model.params["embed"].dtype
    return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


@functools.partial(jax.jit, static_argnames=("sampling",))
def sample_tokens(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset=0):
    """`(tokens, logprobs, lengths)` of `sample_with_controls` (which see)."""
    out = sample_with_controls(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset)
    return out[:3]


@functools.partial(jax.jit, static_argnames=("sampling",))
def sample_with_controls(model, prompt, prompt_mask, stop_ids, pad_id, key, interventions, sampling, row_offset=0):
    """The compiled sampler on prepared prompts (`prepare_prompts`): `(tokens, logprobs, lengths)`
    `[B, N]`, `[B, N]`, `[B]` for `B = prompts * sampling.samples_per_prompt`. Traceable, so
    callers can vmap it over members (ES) or call it under their own jit.

    With `sampling.runs = r > 1` the prompts are `r` run-major copies of one batch: tokens are
    sampled from run 0's logits only and fed to every run (so interventions such as
    `CrossRunPatch` compare the runs on the same text); all rows of the result hold run 0's tokens.

    Args:
        model: the model.
        prompt: `[n_prompts, P]` left-padded ids (`PreparedPrompts.tokens`).
        prompt_mask: `[n_prompts, P]` 0/1.
        stop_ids: `[S]` ids that end a row (`[-1]`: none).
        pad_id: the id written after a row stops.
        key: a `jax.random` key.
        interventions: a tuple of interventions, as for `generate`.
        sampling: the static `SamplingConfig`.
        row_offset: index of the first row in a larger batch (row `r` draws with
            `row_keys(key, row_offset + r, step)`), for a batch sampled in several calls.

    A `Conditional` is decided in the prefill (`run_prompt`: free when its intervention acts only
    above its layer) and its decision holds for every generated token.

    Returns:
        `(tokens, logprobs, lengths, prefill_interventions)`, `[B, N]`, `[B, N]`, `[B]` and the
        interventions as the prefill bound them (each `Conditional`'s `score` and `decision`
        `[n_prompts]` filled in).
    """
    n_prompts, P = prompt.shape
    R = sampling.samples_per_prompt
    B = n_prompts * R
    lead = R * rows_per_run(n_prompts, sampling.runs)
    N = sampling.max_new_tokens
    S = P + N
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    k_pos = jnp.full((n_prompts, S), -1, jnp.int32).at[:, :P].set(jnp.where(prompt_mask > 0, positions, -1))
    cache = kv_cache(model, n_prompts, S)

    h, cache, prefill_ivs = run_prompt(model, prompt, prompt_mask, positions, k_pos, interventions, cache)
    interventions = repeat_rows(prefill_ivs, R)  # conditions decided on the prompt; rows per sample
    logits = unembed(model, h[:, -1])
    next_pos = positions[:, -1] + 1
    if R > 1:  # rows [p0] * R, [p1] * R, ...: the interventions here act alike on every row
        logits, k_pos, next_pos = (jnp.repeat(x, R, axis=0) for x in (logits, k_pos, next_pos))
        cache = tuple(jnp.repeat(x, R, axis=1) for x in cache)

    def cond(state):
        step, done = state[0], state[4]
        return (step < N) & ~jnp.all(done)

    def body(state):
        step, logits, out, lps, done, lengths, cache, k_pos, pos, key = state
        tok, lp = sample_logits(logits[:lead], row_keys(key, row_offset + jnp.arange(lead), step), sampling)
        tok, lp = jnp.tile(tok, sampling.runs), jnp.tile(lp, sampling.runs)
        tok = jnp.where(done, pad_id, tok).astype(jnp.int32)
        lp = jnp.where(done, 0.0, lp)
        out = out.at[:, step].set(tok)
        lps = lps.at[:, step].set(lp)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | jnp.isin(tok, stop_ids)
        slot = P + step
        k_pos = k_pos.at[:, slot].set(pos)
        step_ivs = bind_controls(interventions, TokenContext(tok[:, None], jnp.full((B, 1), step, jnp.int32)))
        h, _, cache = run_layers(
            model, embed(model, tok[:, None]), pos[:, None], k_pos, step_ivs, frozenset(), cache, slot
        )
        logits = unembed(model, h[:, -1])
        return step + 1, logits, out, lps, done, lengths, cache, k_pos, pos + 1, key

    state = (
        jnp.int32(0),
        logits,
        jnp.full((B, N), pad_id, jnp.int32),
        jnp.zeros((B, N), jnp.float32),
        jnp.zeros((B,), bool),
        jnp.zeros((B,), jnp.int32),
        cache,
        k_pos,
        next_pos,
        key,
    )
    state = jax.lax.while_loop(cond, body, state)
    return state[2], state[3], state[5], prefill_ivs


def bucket_width(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (at least one `multiple`): the padded prompt width."""
    return max(multiple, -(-n // multiple) * multiple)


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], *, chat: bool = True, system: str | None = None
) -> list[list[int]]:
    """Token ids per prompt; through the tokenizer's chat template when `chat` (and it has one).

    Args:
        tokenizer: a Hugging Face tokenizer.
        prompts: the prompt strings.
        chat: wrap each in the chat template (as one user turn, generation prompt added).
        system: a system message for the chat template.

    Returns:
        One id list per prompt.
    """
    if tokenizer is None:
        raise InputError("string prompts need a tokenizer; pass token id lists instead")
    out = []
    for text in prompts:
        if chat and getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        else:
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        out.append(list(ids))
    return out


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token lists to `length` (default: the longest): (tokens, mask) as int32 arrays.

    Args:
        seqs: one id list per row.
        pad_id: the pad id.
        length: the padded width (default: the longest row).

    Returns:
        `(tokens [B, length], mask [B, length])`.
    """
    length = length or max(len(s) for s in seqs)
    toks = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise InputError(f"prompt {i} has {len(s)} tokens, more than the padded length {length}")
        if len(s):
            toks[i, length - len(s) :] = s
            mask[i, length - len(s) :] = 1
    return toks, mask


def pad_id_for(model: Model, tokenizer) -> int:
    """The padding token id: the tokenizer's, else the model config's, else 0."""
    pad = model.config.pad_token_id
    if tokenizer is not None and getattr(tokenizer, "pad_token_id", None) is not None:
        pad = tokenizer.pad_token_id
    return int(pad if pad is not None else 0)


def default_stop_tokens(model: Model, tokenizer: Any = None) -> tuple[int, ...]:
    ids = set(model.config.eos_token_ids)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return tuple(sorted(ids))


def prompt_sequences(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]] | np.ndarray,
    *,
    tokenizer: Any = None,
    chat: bool = True,
    system: str | None = None,
    prompt_mask: np.ndarray | None = None,
) -> list[list[int]]:
    """The prompts of `generate` as token-id lists (strings tokenized, with the chat template when
    `chat`; a left-padded `[B, P]` array read through `prompt_mask`), each checked to be non-empty
    and inside the vocabulary (InputError naming the prompt)."""
    if isinstance(prompts, np.ndarray) or isinstance(prompts, jax.Array):
        if not jnp.issubdtype(prompts.dtype, jnp.integer):  # as in forward (ranges: per prompt, below)
            raise InputError(f"prompts: token ids must be integers, got dtype {prompts.dtype}")
        arr = np.asarray(prompts, np.int32)
        if arr.ndim != 2:
            raise InputError(f"token prompts must be [B, P], got shape {arr.shape}")
        check_binary_mask(prompt_mask, "prompt_mask")
        if prompt_mask is not None and np.shape(prompt_mask) != arr.shape:
            raise InputError(f"prompt_mask has shape {np.shape(prompt_mask)}; the prompts have shape {arr.shape}")
        mask = np.ones_like(arr) if prompt_mask is None else np.asarray(prompt_mask, np.int32)
        seqs = [row[m > 0].tolist() for row, m in zip(arr, mask, strict=True)]
    elif len(prompts) and isinstance(prompts[0], str):
        seqs = tokenize_prompts(tokenizer, cast(Sequence[str], prompts), chat=chat, system=system)
    else:
        for i, s in enumerate(prompts):
            if len(s):
                check_token_ids(np.asarray(s), model.config.vocab_size, f"prompt {i}")
        seqs = [list(map(int, s)) for s in prompts]
    if not seqs:
        raise InputError("no prompts given")
    if any(len(s) == 0 for s in seqs):
        raise InputError("empty prompt")
    for i, s in enumerate(seqs):
        check_token_ids(np.asarray(s, np.int64), model.config.vocab_size, f"prompt {i}")
    return seqs


def generate(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]] | np.ndarray,
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    seed: int | jax.Array = 0,
    interventions: Any = (),
    stop_tokens: Sequence[int] | None = None,
    chat: bool = True,
    system: str | None = None,
    prompt_mask: np.ndarray | None = None,
    bucket: int = PROMPT_BUCKET,
    samples_per_prompt: int = 1,
    runs: int = 1,
    refill_slots: int = 0,
) -> Generation:
    """Sample completions for a batch of prompts with a KV cache, in one compiled loop.

    Args:
        model: the decoder.
        prompts: strings (need `tokenizer`; wrapped in its chat template when `chat`), token id
            lists of any lengths, or a left-padded `[B, P]` array with `prompt_mask`.
        tokenizer: decodes the completions into `Generation.texts` and encodes string prompts.
        max_new_tokens: tokens sampled per completion at most.
        temperature: softmax temperature.
        top_p: nucleus filtering mass (1.0: off).
        top_k: keep the k most likely tokens (0: off).
        greedy: take the argmax instead of sampling.
        seed: an int or a `jax.random` key.
        interventions: as for `forward`, restricted to ones that do not depend on the prompt
            length (no position masks, per-token scales or Patch values); controls (`OnTokens`,
            `RowSteer` with one row per prompt, `Conditional`) work here as in `forward`.
        stop_tokens: ids that end a completion (default: the model's and tokenizer's EOS).
        chat: wrap string prompts in the tokenizer's chat template.
        system: a system message for the chat template.
        prompt_mask: `[B, P]` 0/1 mask of a token-array `prompts`.
        bucket: prompt lengths are padded to a multiple of this (fewer recompilations).
        samples_per_prompt: k completions per prompt (rows `[p0] * k, [p1] * k, ...`, as for GRPO
            groups); each prompt is prefilled once and its K/V cache shared by its k rows.
        runs: decode `runs` copies of the batch side by side (rows run-major), every copy reading
            the tokens sampled from run 0, for generation-time patching between runs (`OnRuns`,
            `CrossRunPatch`); the result holds run 0's rows.
        refill_slots: 0 decodes every row until the longest ends (static); S >= 1 decodes S rows
            at a time and gives a finished row's slot to the next waiting row
            (`jaxsteer.models.refill`): faster when completion lengths vary widely, the same tokens
            per row for the same seed.

    Returns:
        A `Generation`: tokens, log-probabilities and lengths per row, the prompts, and the
        decoded texts when a tokenizer was given.
    """
    check_sampling_args(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        samples_per_prompt=samples_per_prompt,
        runs=runs,
        bucket=bucket,
        refill_slots=refill_slots,
    )
    interventions = as_tuple(interventions)
    check_all(interventions, model.config, None)
    for iv in interventions:
        if not iv.generation_safe():
            raise InputError(
                f"{type(iv).__name__} at {iv.site!r} depends on token positions or prompt length and cannot be "
                "used in generate (use Steer/Ablate without position masks or per-token values)"
            )
    from .refill import check_refill, sample_any  # the refill sampler builds on this module's pieces

    if refill_slots:
        check_refill(interventions, SamplingConfig(max_new_tokens, runs=runs, refill_slots=refill_slots))
    pad_id = pad_id_for(model, tokenizer)

    seqs = prompt_sequences(model, prompts, tokenizer=tokenizer, chat=chat, system=system, prompt_mask=prompt_mask)
    check_token_ids(np.asarray([pad_id]), model.config.vocab_size, "pad_id")
    prepared = prepare_prompts(
        model, seqs * runs, tokenizer=tokenizer, max_new_tokens=max_new_tokens, bucket=bucket, stop_tokens=stop_tokens
    )
    check_rows(interventions, len(seqs) * runs)
    key = jax.random.PRNGKey(seed) if isinstance(seed, int) else seed
    sampling = SamplingConfig(
        max_new_tokens,
        float(temperature),
        int(top_k),
        float(top_p),
        bool(greedy),
        int(samples_per_prompt),
        int(runs),
        int(refill_slots),
    )
    if refill_slots:  # check_refill refused the per-row controls: no decisions to report
        sampled, bound = sample_any(model, *prepared.args, key=key, interventions=interventions, sampling=sampling), ()
    else:
        *sampled, bound = sample_with_controls(
            model, *prepared.args, key=key, interventions=interventions, sampling=sampling
        )
    out, lps, lengths = (np.asarray(x)[: len(x) // runs] for x in sampled)
    decisions = scores = None
    if conditions(interventions):  # each Conditional's decision as the prefill made it (or as given)
        conds = conditions(bound)
        decisions, scores = (
            None
            if any(getattr(c, f) is None for c in conds)
            else np.repeat(
                np.stack([np.asarray(getattr(c, f)) for c in conds])[:, : len(seqs)], samples_per_prompt, axis=1
            )
            for f in ("decision", "score")
        )
    toks, mask = prepared.tokens[: len(seqs)], prepared.mask[: len(seqs)]
    if samples_per_prompt > 1:
        toks, mask = np.repeat(toks, samples_per_prompt, axis=0), np.repeat(mask, samples_per_prompt, axis=0)
    return Generation(out, lps, lengths, toks, mask, decode_completions(tokenizer, out, lengths), decisions, scores)


def check_sampling_args(
    *,
    max_new_tokens: Any,
    temperature: Any,
    top_p: Any,
    top_k: Any,
    greedy: Any,
    samples_per_prompt: Any = 1,
    runs: Any = 1,
    bucket: Any = PROMPT_BUCKET,
    refill_slots: Any = 0,
) -> None:
    """ValueError naming the first of `generate`'s sampling arguments that is not a finite number
    of the right kind in its range (a NaN temperature would sample from NaN probabilities)."""
    check_number(max_new_tokens, "max_new_tokens", integer=True, low=1)
    if not isinstance(greedy, (bool, np.bool_)):
        raise InputError(f"greedy must be True or False, got {greedy!r}")
    temperature = check_number(temperature, "temperature")
    if not greedy and temperature <= 0:
        raise InputError(f"temperature must be > 0 for sampling (use greedy=True), got {temperature}")
    check_number(top_p, "top_p", low=0, high=1, low_open=True)
    check_number(top_k, "top_k", integer=True, low=0)
    check_number(samples_per_prompt, "samples_per_prompt", integer=True, low=1)
    check_number(runs, "runs", integer=True, low=1)
    check_number(bucket, "bucket", integer=True, low=1)
    check_number(refill_slots, "refill_slots", integer=True, low=0)


@dataclasses.dataclass(frozen=True)
class PreparedPrompts:
    """Token-id prompts ready for `sample_tokens`: left-padded to a bucketed width.

    tokens / mask `[B, P]` int32 numpy; stop_ids `[S]` (`[-1]` when there are none); pad_id.

    Attributes:
        tokens: `[B, P]` int32 left-padded ids.
        mask: `[B, P]` int32 0/1.
        stop_ids: `[S]` stop ids (`[-1]` when there are none).
        pad_id: the pad id.
    """

    tokens: np.ndarray
    mask: np.ndarray
    stop_ids: jax.Array
    pad_id: int

    @property
    def args(self) -> tuple:
        """`(prompt, prompt_mask, stop_ids, pad_id)` as `sample_tokens` takes them."""
        return jnp.asarray(self.tokens), jnp.asarray(self.mask), self.stop_ids, self.pad_id


def prepare_prompts(
    model: Model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    tokenizer: Any = None,
    max_new_tokens: int,
    bucket: int = PROMPT_BUCKET,
    stop_tokens: Sequence[int] | None = None,
) -> PreparedPrompts:
    """Bucket, left-pad and pick the pad and stop ids for token-id prompts (the one place that
    does it for `generate`, RL rollouts and ES populations). stop_tokens default to the model's
    and tokenizer's EOS; `()` = always generate `max_new_tokens`.

    Args:
        model: the model.
        prompt_ids: one id list per prompt.
        tokenizer: its pad id (else the config's, else 0) and its EOS id (with the config's) are used.
        max_new_tokens: tokens to be generated (width + max_new_tokens must fit the context).
        bucket: prompt widths are rounded up to a multiple of this.
        stop_tokens: stop ids (None: EOS).

    Returns:
        The `PreparedPrompts`.
    """
    if not prompt_ids:
        raise InputError("no prompts given")
    seqs = [list(map(int, p)) for p in prompt_ids]
    width = bucket_width(max(len(p) for p in seqs), bucket)
    if width + max_new_tokens > model.config.max_position_embeddings:
        raise InputError(
            f"prompt ({width} padded) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"max_position_embeddings ({model.config.max_position_embeddings})"
        )
    pad_id = pad_id_for(model, tokenizer)
    toks, mask = left_pad(seqs, pad_id, width)
    if stop_tokens is None:
        stop_tokens = default_stop_tokens(model, tokenizer)
    return PreparedPrompts(toks, mask, jnp.asarray(list(stop_tokens) or [-1], jnp.int32), pad_id)


def decode_completions(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray) -> list | None:
    """Decoded completions (each row up to its length), nested like `tokens[..., N]`; None
    without a tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer, or None.
        tokens: generated ids `[..., N]`.
        lengths: tokens per row `[...]`.

    Returns:
        The texts (special tokens dropped), or None.
    """
    if tokenizer is None:
        return None
    if tokens.ndim > 2:
        return [decode_completions(tokenizer, t, n) for t, n in zip(tokens, lengths, strict=True)]
    return [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(tokens, lengths, strict=True)]
