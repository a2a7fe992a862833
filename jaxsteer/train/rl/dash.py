"""DASH's gradient filtering (arXiv 2505.17218) that saves the backward pass: drop, then update.

Samples with `|A| <= tau` give no gradient. Masking them (`losses.dash_keep`) still runs them
forward and backward; `pack_kept` removes them before the update instead: the kept rows are
packed into `ceil(kept / b)` micro-batches of the usual `b` rows (at least one; the last one
completed with padding rows whose completion mask is 0), so the jitted step runs over fewer
micro-batches. The micro-batch count is the only shape that changes, so the step compiles at most
`micro_batches` times (once per count), never once per step. The loss normaliser is the same as
with masking (filtered samples and padding both leave it), so the update is the same (tested).

Rows lose their group layout when samples are dropped, so a packed update scores full rows
(`StepSpec.shared_prompts = 1`) instead of running each prompt once per group.
"""

from __future__ import annotations

import numpy as np

from ..config import RLConfig
from ..distributed import gather_rows


def packs_dash(algorithm: str, rl: RLConfig) -> bool:
    """Whether a run of `algorithm` with the `rl` section drops DASH-filtered samples before the
    update (policy-gradient runs with `rl.loss.dash_tau > 0`; RAPID recomputes advantages in the
    step, so it cannot filter up front)."""
    return rl.loss.dash_tau > 0 and algorithm == "grpo" and rl.advantage != "rapid"


def pack_kept(local: dict, rows_per_micro: int, tau: float, prompt_width: int) -> tuple[dict, int]:
    """`(batch [M', b, ...], kept rows)`: the rows of `local` (arrays `[rows, ...]`) with
    `|advantage| > tau`, in order, packed into `M' = max(1, ceil(kept / b))` micro-batches of
    `b = rows_per_micro` rows; `M'` is the largest over processes, so every process passes the
    same global shape. Padding rows copy the first row with completion mask, advantage and
    reward 0."""
    keep = np.flatnonzero(np.abs(local["advantages"]) > tau)
    n_micro = max(1, -(-len(keep) // rows_per_micro))
    n_micro = int(np.max(gather_rows(np.array([n_micro]))))
    pad = n_micro * rows_per_micro - len(keep)
    rows = np.concatenate([keep, np.zeros(pad, np.int64)])
    packed = {k: v[rows] for k, v in local.items()}
    if pad:
        packed["mask"] = packed["mask"].copy()
        packed["mask"][len(keep) :, prompt_width:] = 0
        for k in ("advantages", "rewards"):
            packed[k] = packed[k].copy()
            packed[k][len(keep) :] = 0
    return {k: v.reshape(n_micro, rows_per_micro, *v.shape[1:]) for k, v in packed.items()}, len(keep)


__all__ = ["packs_dash", "pack_kept"]
