"""Run logging: a JSONL file, TensorBoard events (tensorboardX) and a PNG of the training curves.

Only process 0 writes (`jax.process_index() == 0`); other processes get a no-op logger.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from typing import Any

import jax
import numpy as np

from ..errors import InputError

# Curves drawn by `plot_curves`, in panel order.
PLOT_KEYS = (
    ("reward_mean", "reward (mean)"),
    ("accuracy", "rollout accuracy"),
    ("zero_std_fraction", "zero-std groups"),
    ("entropy", "entropy (nats/token)"),
    ("completion_length", "completion length"),
    ("kl", "KL to reference"),
    ("grad_norm", "grad norm"),
    ("rollout_tokens_per_s", "rollout tokens/s"),
    ("fitness_max", "ES: best member fitness"),
    ("fitness_std", "ES: fitness std over members"),
    ("generated_tokens_per_s", "ES: population tokens/s"),
)


def _clean(v: Any) -> Any:
    """A JSON-ready scalar; non-finite floats become the strings "nan", "inf", "-inf" (JSON has no
    such numbers, and writing null would hide them)."""
    if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "dtype"):
        v = np.asarray(v).item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def as_number(v: Any) -> float | None:
    """A logged value as a float ("nan"/"inf" strings included); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return None


class RunLogger:
    """Appends one JSON object per step to `metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, directory: str, *, tensorboard: bool = True, resume_step: int | None = None):
        self.active = jax.process_index() == 0
        self.directory = directory
        self.path = os.path.join(directory, "metrics.jsonl")
        self.tb = None
        if not self.active:
            return
        os.makedirs(directory, exist_ok=True)
        if resume_step is None:
            open(self.path, "w").close()
        elif os.path.exists(self.path):  # drop records written after the checkpoint we resume from
            keep = [r for r in read_log(self.path) if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(
                os.path.join(directory, "tb"), purge_step=None if resume_step is None else resume_step + 1
            )

    def log(self, step: int, metrics: dict[str, Any], kind: str = "train") -> None:
        """Append one record (process 0) and mirror its numeric scalars to TensorBoard as `<kind>/<key>`."""
        if not self.active:
            return
        record = {"step": int(step), "kind": kind, **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k not in ("step", "kind") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, int(step))

    def close(self) -> None:
        """Close the TensorBoard writer. Its failure (e.g. a closed handle after the disk filled
        up) is a warning, so it never hides the error that stopped the run."""
        if self.tb is not None:
            tb, self.tb = self.tb, None
            try:
                tb.close()
            except Exception as err:  # noqa: BLE001 - tensorboardX raises assorted types
                warnings.warn(
                    f"{os.path.join(self.directory, 'tb')}: the TensorBoard writer failed to close "
                    f"({type(err).__name__}: {err})",
                    stacklevel=2,
                )


def read_log(path: str) -> list[dict]:
    """The records of a metrics.jsonl. A truncated last line (a kill during a write) is dropped
    with a warning; a damaged line elsewhere is a ValueError naming the file and line."""
    with open(path) as f:
        lines = [(i + 1, ln) for i, ln in enumerate(f) if ln.strip()]
    records = []
    for k, (number, ln) in enumerate(lines):
        try:
            records.append(json.loads(ln))
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                import warnings

                warnings.warn(
                    f"{path}: dropping a truncated last line ({number}), left by an interrupted write", stacklevel=2
                )
                break
            raise InputError(f"{path}:{number}: not a JSON record ({err})") from None
    return records


def plot_curves(jsonl_path: str, png_path: str, title: str = "") -> str | None:
    """Draw the training curves (and eval accuracy points) of a metrics.jsonl into a PNG.

    Args:
        jsonl_path: the metrics.jsonl.
        png_path: the PNG written.
        title: the figure's title.

    Returns:
        `png_path`, or None when there is nothing to plot (or on a process other than 0).
    """
    if jax.process_index() != 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(jsonl_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    keys = [(k, label) for k, label in PLOT_KEYS if any(as_number(r.get(k)) is not None for r in train)]
    if not keys and not evals:
        return None
    n = len(keys) + (1 if evals else 0)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (k, label) in zip(axes.flat, keys, strict=False):  # the grid may have spare axes
        pts = [(r["step"], as_number(r[k])) for r in train if as_number(r.get(k)) is not None]
        xs, ys = zip(*pts, strict=True)
        ax.plot(xs, ys, lw=1, alpha=0.5)
        if len(ys) >= 5:  # running mean over 5 steps
            w = 5
            smooth = np.convolve(ys, np.ones(w) / w, mode="valid")
            ax.plot(xs[w - 1 :], smooth, lw=2)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    if evals:
        ax = axes.flat[len(keys)]
        for name, key, ci in (
            ("trained (greedy)", "greedy_acc", "greedy_ci"),
            ("base (greedy)", "base_greedy_acc", "base_greedy_ci"),
        ):
            pts = [(r["step"], r[key], r.get(ci)) for r in evals if r.get(key) is not None]
            if pts:
                xs = [p[0] for p in pts]
                ys = [p[1] for p in pts]
                err = [
                    [y - (p[2][0] if p[2] else y) for y, p in zip(ys, pts, strict=True)],
                    [(p[2][1] if p[2] else y) - y for y, p in zip(ys, pts, strict=True)],
                ]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set_title("held-out accuracy (95% CI)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


__all__ = ["RunLogger", "as_number", "read_log", "plot_curves"]
