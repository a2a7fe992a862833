"""Rollouts: prompts -> token ids -> the core's compiled sampler -> rewards -> a padded batch.

Each prompt is repeated G times (rows `[p0 g0 .. p0 gG-1, p1 g0, ...]`, the layout
`group_advantages` expects). Rewards run in Python. A reward function either takes decoded
text, `(prompt, completion, reference) -> float`, or, when marked with `@token_reward`, token
ids: `(prompt_ids, completion_ids, reference) -> float` (for tokenizer-free tests and tasks).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ..models.generate import default_stop_tokens, generate, tokenize_prompts
from ..models.params import Model


def token_reward(fn: Callable) -> Callable:
    """Mark a reward function as taking token ids: `fn(prompt_ids, completion_ids, reference)`."""
    fn.uses_tokens = True
    return fn


def encode_prompt(example, tokenizer: Any, template: str = "chat", system: str | None = None) -> list[int]:
    """Token ids of an example's prompt.

    `example.meta["prompt_ids"]` wins when present (tokenizer-free tasks). Otherwise `template`:
    "chat" (the tokenizer's chat template; `system` as the system message when not None),
    "raw" (the text as is), or a format string containing `{prompt}`."""
    ids = (getattr(example, "meta", None) or {}).get("prompt_ids")
    if ids is not None:
        return [int(i) for i in ids]
    if tokenizer is None:
        raise ValueError("text prompts need a tokenizer (or give token ids in example.meta['prompt_ids'])")
    if template == "chat":
        return tokenize_prompts(tokenizer, [example.prompt], chat=True, system=system)[0]
    text = example.prompt if template == "raw" else template.format(prompt=example.prompt)
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


@dataclasses.dataclass
class RolloutBatch:
    """One batch of rollouts, as numpy arrays (host-local rows).

    tokens / mask `[B, P + N]` (prompt left-padded to width P, completion after it), old_logp `[B, N]`
    (sampling-distribution log-probs, 0 on padding), rewards / advantages `[B]`, lengths `[B]`,
    texts (decoded completions or None), seconds spent sampling, and `prompt_width` = P."""

    tokens: np.ndarray
    mask: np.ndarray
    old_logp: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    lengths: np.ndarray
    prompt_width: int
    texts: list[str] | None
    sample_seconds: float

    @property
    def completion_mask(self) -> np.ndarray:
        return self.mask[:, self.prompt_width:]


def sample(
    model: Model,
    interventions: tuple,
    prompt_ids: Sequence[Sequence[int]],
    *,
    tokenizer: Any,
    key: jax.Array,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    greedy: bool = False,
    bucket: int = 8,
    stop_tokens: Sequence[int] | None = None,
    samples_per_prompt: int = 1,
):
    """One call of the compiled sampler (`jaxsteer.generate`) on token-id prompts
    (`samples_per_prompt` rows per prompt, sharing its prefill)."""
    return generate(
        model,
        [list(p) for p in prompt_ids],
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        seed=key,
        interventions=interventions,
        bucket=bucket,
        stop_tokens=stop_tokens,
        samples_per_prompt=samples_per_prompt,
    )


def score(
    reward_fn: Callable,
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    out,
    repeats: int = 1,
) -> np.ndarray:
    """Rewards `[B]` for rows `[e0 x repeats, e1 x repeats, ...]` of a `Generation`."""
    rewards = np.zeros(len(out.tokens), np.float32)
    tokens_based = getattr(reward_fn, "uses_tokens", False)
    for i in range(len(out.tokens)):
        ex = examples[i // repeats]
        if tokens_based:
            comp = out.tokens[i, : out.lengths[i]].tolist()
            rewards[i] = float(reward_fn(list(prompt_ids[i // repeats]), comp, ex.answer))
        else:
            if out.texts is None:
                raise ValueError("a text reward needs a tokenizer; mark token-id rewards with @token_reward")
            rewards[i] = float(reward_fn(ex.prompt, out.texts[i], ex.answer))
    return rewards


def _join(parts: list, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Concatenate several `Generation`s (prompt widths may differ: left-pad to the widest)."""
    P = max(p.prompt_tokens.shape[1] for p in parts)
    toks, masks, lps = [], [], []
    for p in parts:
        extra = P - p.prompt_tokens.shape[1]
        pt = np.pad(p.prompt_tokens, ((0, 0), (extra, 0)), constant_values=pad_id)
        pm = np.pad(p.prompt_mask, ((0, 0), (extra, 0)))
        n = p.tokens.shape[1]
        cm = (np.arange(n)[None, :] < p.lengths[:, None]).astype(np.int32)
        toks.append(np.concatenate([pt, p.tokens], axis=1))
        masks.append(np.concatenate([pm, cm], axis=1))
        lps.append(p.logprobs)
    return np.concatenate(toks), np.concatenate(masks).astype(np.int32), np.concatenate(lps), P


def trim_completions(tokens, mask, old_logp, prompt_width: int, multiple: int = 8):
    """Drop trailing completion columns that are padding in every row, keeping the width a
    multiple of `multiple` (so the update step compiles for only a few widths)."""
    n = old_logp.shape[1]
    used = int(mask[:, prompt_width:].sum(axis=1).max()) if len(mask) else n
    width = min(n, max(multiple, -(-used // multiple) * multiple))
    return tokens[:, : prompt_width + width], mask[:, : prompt_width + width], old_logp[:, :width]


def collect(
    model: Model,
    interventions: tuple,
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    *,
    group_size: int,
    calls: int,
    tokenizer: Any,
    key: jax.Array,
    reward_fn: Callable,
    advantage_fn: Callable[[np.ndarray], np.ndarray],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    bucket: int,
    pad_id: int,
    trim_multiple: int = 8,
    stop_tokens: Sequence[int] | None = None,
) -> RolloutBatch:
    """Sample G completions per prompt in `calls` sampler calls (1 = the whole batch at once, as
    DASH's preemptive sampling), score them and compute advantages. `stop_tokens` default to the
    model's and tokenizer's EOS (`()` = always generate `max_new_tokens`)."""
    if len(examples) % calls:
        raise ValueError(f"{len(examples)} prompts do not split into {calls} sampling calls")
    per = len(examples) // calls
    parts, texts = [], []
    t0 = time.perf_counter()
    stop = default_stop_tokens(model, tokenizer) if stop_tokens is None else tuple(stop_tokens)
    for c in range(calls):
        out = sample(  # G rows per prompt, one prefill per prompt
            model, interventions, prompt_ids[c * per : (c + 1) * per], tokenizer=tokenizer,
            key=jax.random.fold_in(key, c), max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, bucket=bucket, stop_tokens=stop, samples_per_prompt=group_size,
        )
        parts.append(out)
    seconds = time.perf_counter() - t0
    rewards = np.concatenate(
        [score(reward_fn, examples[c * per : (c + 1) * per], prompt_ids[c * per : (c + 1) * per], o, group_size)
         for c, o in enumerate(parts)]
    )
    for o in parts:
        texts.extend(o.texts if o.texts is not None else [])
    tokens, mask, old_logp, P = _join(parts, pad_id)
    tokens, mask, old_logp = trim_completions(tokens, mask, old_logp, P, trim_multiple)
    lengths = np.concatenate([o.lengths for o in parts])
    return RolloutBatch(
        tokens=tokens.astype(np.int32),
        mask=mask,
        old_logp=old_logp.astype(np.float32),
        rewards=rewards,
        advantages=np.asarray(advantage_fn(rewards), np.float32),
        lengths=lengths,
        prompt_width=P,
        texts=texts or None,
        sample_seconds=seconds,
    )


__all__ = ["token_reward", "encode_prompt", "RolloutBatch", "sample", "score", "collect", "trim_completions"]
