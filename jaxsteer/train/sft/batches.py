"""Supervised fine-tuning batches: prompts followed by their reference answers (`algorithm: sft`).

`reference_batch` puts each prompt (left-padded) before its target (`target_ids`: token ids, or
the reference answer tokenized and followed by EOS); the SFT learner (`sft.learner`) trains the
negative log-likelihood of the target tokens on them. Rejection-sampling SFT on the model's own
correct samples is the RL algorithm `expert_iteration`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InputError
from ...models.generate import bucket_width, left_pad
from ..gradient import trim_completions


@dataclasses.dataclass
class ReferenceBatch:
    """Prompts followed by their targets, as numpy arrays (host-local rows).

    tokens / mask `[B, P + N]` (prompt left-padded to width P = `prompt_width`, target after it,
    right-padded), lengths `[B]` (target tokens per row), seconds spent building the batch."""

    tokens: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    prompt_width: int
    seconds: float

    @property
    def completion_mask(self) -> np.ndarray:
        return self.mask[:, self.prompt_width :]


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


def reference_batch(
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    *,
    tokenizer: Any,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int,
    bucket: int = 8,
) -> ReferenceBatch:
    """A `ReferenceBatch` of prompts (left-padded to a multiple of `bucket`) followed by their
    targets (cut at `max_new_tokens`, right-padded; the width trimmed to a multiple of 8)."""
    t0 = time.perf_counter()
    targets = [target_ids(e, tokenizer, eos_id)[:max_new_tokens] for e in examples]
    P = bucket_width(max(len(p) for p in prompt_ids), bucket)
    N = max_new_tokens
    B = len(examples)
    tokens = np.full((B, P + N), pad_id, np.int32)
    mask = np.zeros((B, P + N), np.int32)
    tokens[:, :P], mask[:, :P] = left_pad(prompt_ids, pad_id, P)
    for i, t in enumerate(targets):
        tokens[i, P : P + len(t)], mask[i, P : P + len(t)] = t, 1
    tokens, mask, _ = trim_completions(tokens, mask, np.zeros((B, N), np.float32), P)
    return ReferenceBatch(
        tokens=tokens,
        mask=mask,
        lengths=np.array([len(t) for t in targets]),
        prompt_width=P,
        seconds=time.perf_counter() - t0,
    )


__all__ = ["ReferenceBatch", "target_ids", "reference_batch"]
