"""Supervised fine-tuning batches: prompts followed by their reference answers (`algorithm: sft`).

SFT runs through the RL learner's machinery (the same Run, trainables, micro-batched jitted step,
checkpoints, evaluation and export) with the rollout replaced by `reference_batch`: each prompt is
followed by its target, every row gets reward 1, and the step's supervised loss (the negative
log-likelihood of the completion tokens, token mean) trains on them. Rejection-sampling SFT on
the model's own correct samples is `algorithm: expert_iteration` (the same loss on sampled
completions with reward above `ei_threshold`).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ...errors import InputError
from ...models.generate import bucket_width, left_pad
from .rollout import RolloutBatch, trim_completions


def target_ids(example, tokenizer: Any, eos_id: int | None) -> list[int]:
    """The completion an example teaches: `meta["target_ids"]` (token-id tasks) as given, else its
    reference answer text tokenized without special tokens, followed by `eos_id` (so the model
    learns to stop)."""
    if "target_ids" in example.meta:
        return [int(t) for t in example.meta["target_ids"]]
    if tokenizer is None:
        raise InputError("SFT on text references needs a tokenizer (or meta['target_ids'] token ids)")
    ids = list(tokenizer.encode(str(example.answer), add_special_tokens=False))
    return ids + ([int(eos_id)] if eos_id is not None else [])


def reference_batch(examples: Sequence, prompt_ids: Sequence[Sequence[int]], *, tokenizer: Any, pad_id: int,
                    eos_id: int | None, max_new_tokens: int, bucket: int = 8) -> RolloutBatch:
    """A `RolloutBatch` of prompts (left-padded to a multiple of `bucket`) followed by their targets
    (cut at `max_new_tokens`, right-padded; the width trimmed to a multiple of 8), rewards and
    advantages 1, `old_logp` 0."""
    t0 = time.perf_counter()
    targets = [target_ids(e, tokenizer, eos_id)[:max_new_tokens] for e in examples]
    P = bucket_width(max(len(p) for p in prompt_ids), bucket)
    N = max_new_tokens
    B = len(examples)
    tokens = np.full((B, P + N), pad_id, np.int32)
    mask = np.zeros((B, P + N), np.int32)
    tokens[:, :P], mask[:, :P] = left_pad(prompt_ids, pad_id, P)
    for i, t in enumerate(targets):
        tokens[i, P:P + len(t)], mask[i, P:P + len(t)] = t, 1
    tokens, mask, old_logp = trim_completions(tokens, mask, np.zeros((B, N), np.float32), P)
    ones = np.ones(B, np.float32)
    return RolloutBatch(tokens=tokens, mask=mask, old_logp=old_logp, rewards=ones, advantages=ones,
                        lengths=np.array([len(t) for t in targets]), prompt_width=P, texts=None,
                        sample_seconds=time.perf_counter() - t0)


__all__ = ["target_ids", "reference_batch"]
