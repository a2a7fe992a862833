"""Rollouts: token-id prompts -> the core's compiled sampler -> rewards -> a padded batch.

Each prompt gets G rows (`[p0 g0 .. p0 gG-1, p1 g0, ...]`, the layout `group_advantages`
expects), sampled with one prefill per prompt by the public sampler on the training mesh, each
device sampling its slice of the prompts (`sharding.sample_on_mesh`). Rewards run in
Python (`jaxsteer.train.rewards.score_completions`: text or `@token_reward` token ids).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ...errors import InputError
from ...models.generate import SamplingConfig, pad_id_for, prepare_prompts
from ...models.params import Model
from ..config import SamplingSpec
from ..gradient import trim_completions
from ..rewards import overlong_penalty, score_completions
from ..sharding import make_mesh, sample_on_mesh


@dataclasses.dataclass
class RolloutBatch:
    """One batch of rollouts, as numpy arrays (host-local rows).

    tokens / mask `[B, P + N]` (prompt left-padded to width P, completion after it), old_logp `[B, N]`
    (sampling-distribution log-probs, 0 on padding), rewards / advantages `[B]`, lengths `[B]`,
    texts (decoded completions or None), seconds spent sampling, and `prompt_width` = P.
    task_rewards `[B]`: the rewards before length shaping (= rewards without it). PPO
    (`value.ppo_targets`) sets per-token advantages `[B, N]` and adds returns and old_values `[B, N]`."""

    tokens: np.ndarray
    mask: np.ndarray
    old_logp: np.ndarray
    rewards: np.ndarray
    advantages: np.ndarray
    lengths: np.ndarray
    prompt_width: int
    texts: list[str] | None
    sample_seconds: float
    task_rewards: np.ndarray | None = None
    returns: np.ndarray | None = None
    old_values: np.ndarray | None = None

    @property
    def completion_mask(self) -> np.ndarray:
        return self.mask[:, self.prompt_width :]


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
    sampling: SamplingSpec,
    trim_multiple: int = 8,
    stop_tokens: Sequence[int] | None = None,
    overlong_buffer: int = 0,
    mesh=None,
) -> RolloutBatch:
    """Sample G completions per prompt in `calls` sampler calls (1 = the whole batch at once, as
    DASH's preemptive sampling) with the `sampling` settings, score them and compute advantages.
    `stop_tokens` default to the model's and tokenizer's EOS (`()` = always generate
    `max_new_tokens`). `overlong_buffer` > 0 adds DAPO's soft overlong punishment to the rewards.
    mesh: the training mesh; this process's prompts are split over its batch axes
    (`sharding.sample_on_mesh`; default: one device); `key` must be the same on every process."""
    if len(examples) % calls:
        raise InputError(f"{len(examples)} prompts do not split into {calls} sampling calls")
    per = len(examples) // calls
    parts, texts = [], []
    t0 = time.perf_counter()
    mesh = make_mesh(1, 1, jax.devices()[:1]) if mesh is None else mesh
    spec = SamplingConfig(
        sampling.max_new_tokens,
        float(sampling.temperature),
        int(sampling.top_k),
        float(sampling.top_p),
        False,
        group_size,
        refill_slots=int(sampling.refill_slots),
    )
    for c in range(calls):  # G rows per prompt, one prefill per prompt
        prepared = prepare_prompts(
            model,
            prompt_ids[c * per : (c + 1) * per],
            tokenizer=tokenizer,
            max_new_tokens=sampling.max_new_tokens,
            bucket=sampling.bucket,
            stop_tokens=stop_tokens,
        )
        parts.append(sample_on_mesh(model, prepared, jax.random.fold_in(key, c), interventions, spec, mesh, tokenizer))
    seconds = time.perf_counter() - t0
    rewards = np.concatenate(
        [
            score_completions(
                reward_fn, examples[c * per : (c + 1) * per], prompt_ids[c * per : (c + 1) * per], o, group_size
            )
            for c, o in enumerate(parts)
        ]
    )
    for o in parts:
        texts.extend(o.texts if o.texts is not None else [])
    tokens, mask, old_logp, P = _join(parts, pad_id_for(model, tokenizer))
    tokens, mask, old_logp = trim_completions(tokens, mask, old_logp, P, trim_multiple)
    lengths = np.concatenate([o.lengths for o in parts])
    task_rewards = rewards
    rewards = rewards + overlong_penalty(lengths, sampling.max_new_tokens, overlong_buffer)
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
        task_rewards=task_rewards,
    )


__all__ = ["RolloutBatch", "collect"]
