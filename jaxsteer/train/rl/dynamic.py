"""DAPO's dynamic sampling (arXiv 2503.14476, section 3.2): keep only groups with a learning signal.

A group whose task rewards all agree (every sample right, or every one wrong) has zero advantage
under every group baseline, so it only dilutes the batch. `fill_batch` drops those groups and
samples more prompts (whole extra rounds of `prompts_per_step`) until the batch holds
`n_groups` informative groups, for at most `max_rounds` extra rounds. If the cap is reached first,
the batch is completed with dropped groups (zero advantage, so zero gradient; shapes stay fixed
and nothing recompiles) and `dynamic_short_groups` says how many. With several processes each fills its own share, and
they sample the same number of rounds (until every one is full or the cap is reached), since the
sampler runs on the whole mesh.

Groups are filtered on `task_rewards` (the rewards before length shaping), as the paper filters on
accuracy; their advantages were computed within the group, so selecting groups keeps them valid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..distributed import gather_rows
from ..gradient import trim_completions
from .rollout import RolloutBatch


def informative_groups(rewards, group_size: int) -> np.ndarray:
    """`[P]` bool: groups (contiguous, `group_size` rows each) whose rewards are not all equal."""
    r = np.asarray(rewards, np.float32).reshape(-1, group_size)
    return r.max(axis=1) > r.min(axis=1)


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Rows of several batches in one (prompts left-padded, completions right-padded to the widest)."""
    P = max(b.prompt_width for b in batches)
    N = max(b.old_logp.shape[1] for b in batches)
    toks, masks, lps = [], [], []
    for b in batches:
        pad = ((0, 0), (P - b.prompt_width, N - b.old_logp.shape[1]))
        toks.append(np.pad(b.tokens, pad, constant_values=pad_id))
        masks.append(np.pad(b.mask, pad))
        lps.append(np.pad(b.old_logp, ((0, 0), (0, N - b.old_logp.shape[1]))))
    cat = lambda name: np.concatenate([getattr(b, name) for b in batches])
    texts = None if any(b.texts is None for b in batches) else [t for b in batches for t in b.texts or ()]
    task = cat("task_rewards") if all(b.task_rewards is not None for b in batches) else None
    return RolloutBatch(
        tokens=np.concatenate(toks),
        mask=np.concatenate(masks),
        old_logp=np.concatenate(lps),
        rewards=cat("rewards"),
        advantages=cat("advantages"),
        lengths=cat("lengths"),
        prompt_width=P,
        texts=texts,
        sample_seconds=sum(b.sample_seconds for b in batches),
        task_rewards=task,
    )


def select_groups(batch: RolloutBatch, groups, group_size: int, trim_multiple: int = 8) -> RolloutBatch:
    """The rows of the given groups (indices into `[P]`), completion width trimmed again."""
    rows = (np.asarray(groups, np.int64)[:, None] * group_size + np.arange(group_size)[None, :]).reshape(-1)
    take = lambda x: None if x is None else x[rows]
    tokens, mask, old_logp = trim_completions(
        batch.tokens[rows], batch.mask[rows], batch.old_logp[rows], batch.prompt_width, trim_multiple
    )
    texts = None if batch.texts is None else [batch.texts[i] for i in rows]
    return dataclasses.replace(
        batch,
        tokens=tokens,
        mask=mask,
        old_logp=old_logp,
        rewards=batch.rewards[rows],
        advantages=batch.advantages[rows],
        lengths=batch.lengths[rows],
        texts=texts,
        task_rewards=take(batch.task_rewards),
    )


def fill_batch(
    sample: Callable[[int], RolloutBatch], n_groups: int, group_size: int, max_rounds: int, pad_id: int
) -> tuple[RolloutBatch, dict]:
    """Sample rounds (`sample(round)` -> a batch of fresh prompts) until `n_groups` informative groups
    are kept or `max_rounds` extra rounds are spent. Returns the batch (exactly `n_groups` groups:
    the first informative ones in sampling order, then dropped ones if short) and its statistics."""
    batches, kept = [], 0
    for r in range(max_rounds + 1):
        batches.append(sample(r))
        b = batches[-1]
        kept += int(informative_groups(b.task_rewards if b.task_rewards is not None else b.rewards, group_size).sum())
        if not np.max(gather_rows(np.array([kept < n_groups]))):  # every process samples the same rounds
            break
    batch = concat_batches(batches, pad_id) if len(batches) > 1 else batches[0]
    signal = informative_groups(batch.task_rewards if batch.task_rewards is not None else batch.rewards, group_size)
    order = np.concatenate([np.flatnonzero(signal), np.flatnonzero(~signal)])[:n_groups]
    stats = {
        "dynamic_rounds": float(len(batches) - 1),
        "dynamic_sampled_groups": float(len(signal)),
        "dynamic_dropped_groups": float((~signal).sum()),
        "dynamic_short_groups": float(max(0, n_groups - int(signal.sum()))),
    }
    return select_groups(batch, np.sort(order), group_size), stats


__all__ = ["informative_groups", "concat_batches", "select_groups", "fill_batch"]
