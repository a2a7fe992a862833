"""Small helpers shared by the analysis modules: token strings, figures, metrics as pytrees."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError


def token_str(tokenizer: Any, token_id: int) -> str:
    """A printable string for one token id (`decode`, newlines and tabs escaped)."""
    if tokenizer is None:
        return f"#{int(token_id)}"
    s = tokenizer.decode([int(token_id)])
    return s.replace("\n", "\\n").replace("\t", "\\t")


def token_strs(tokenizer: Any, ids: Any) -> np.ndarray:
    """`token_str` over an integer array of any shape (decoded once per distinct id)."""
    ids = np.asarray(ids)
    uniq, inverse = np.unique(ids.reshape(-1), return_inverse=True)
    table = np.array([token_str(tokenizer, i) for i in uniq] + [""], dtype=object)[:-1]
    return table[inverse].reshape(ids.shape)


def new_figure(width: float, height: float):
    """A matplotlib Figure that renders with Agg, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str) -> str:
    """Save `fig` as a PNG at `path`; returns `path`."""
    fig.savefig(path, dpi=110)
    return str(path)


def single_token_ids(tokenizer: Any, answers: Sequence[Any]) -> list[int]:
    """Token ids for answers given as ids or strings; a string must encode to exactly one token.

    Args:
        tokenizer: encodes string answers (may be None when all answers are ids).
        answers: ids or strings.

    Returns:
        One id per answer.
    """
    out = []
    for a in answers:
        if isinstance(a, (int, np.integer)):
            out.append(int(a))
            continue
        if tokenizer is None:
            raise InputError(f"answer {a!r} is a string but no tokenizer was given")
        ids = tokenizer(a, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            pieces = [tokenizer.decode([i]) for i in ids]
            raise InputError(
                f"answer {a!r} is {len(ids)} tokens {pieces}; give a single-token answer (e.g. with a leading space)"
            )
        out.append(int(ids[0]))
    return out


def tokenize_pair(tokenizer: Any, clean: str, corrupt: str) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize a clean / corrupted prompt pair (no chat template) to `[1, T]` arrays of equal length.

    Args:
        tokenizer: the tokenizer.
        clean: the clean prompt.
        corrupt: the corrupted prompt.

    Returns:
        `(clean_ids, corrupt_ids)`, each `[1, T]` int32.
    """
    a = tokenizer(clean)["input_ids"]
    b = tokenizer(corrupt)["input_ids"]
    if len(a) != len(b):
        sa = [tokenizer.decode([i]) for i in a]
        sb = [tokenizer.decode([i]) for i in b]
        raise InputError(
            "clean and corrupted prompts must tokenize to the same length: "
            f"{len(a)} tokens {sa} vs {len(b)} tokens {sb}"
        )
    return np.asarray([a], np.int32), np.asarray([b], np.int32)
