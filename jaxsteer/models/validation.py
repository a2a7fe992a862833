"""Range and finiteness checks of inputs at the API boundary.

Each check runs only on concrete values (NumPy arrays, Python numbers, fully addressable
`jax.Array`s). Under `jit`, `grad` or `vmap` a value that is an argument of the traced function
is a tracer and its check is skipped, so compiled code never waits on the device for it. A
concrete value closed over by a traced function is still checked: its reduction runs eagerly
(`jax.ensure_compile_time_eval`), not as part of the trace, so it never becomes a tracer. The checks locate the first bad entry
only after a cheap whole-array test has failed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True for values whose contents can be read now (not tracers, not other hosts' shards)."""
    if isinstance(x, jax.core.Tracer):
        return False
    if isinstance(x, jax.Array):
        return x.is_fully_addressable
    return True


def _where(bad: np.ndarray) -> tuple[tuple[int, ...], int]:
    """Index of the first True entry and the number of True entries."""
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    return first, int(bad.sum())


def _fmt(index: tuple[int, ...]) -> str:
    return str(index[0]) if len(index) == 1 else "[" + ", ".join(map(str, index)) + "]"


def check_token_ids(tokens: Any, vocab_size: int, name: str = "tokens") -> None:
    """Raise ValueError unless every id in `tokens` is an integer in `[0, vocab_size)`.

    The message names the first offending id and its position (row, column for `[B, T]`)."""
    if tokens is None or not is_concrete(tokens):
        return
    t = np.asarray(tokens)
    if t.size == 0:
        return
    if not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"{name}: token ids must be integers, got dtype {t.dtype}")
    bad = (t < 0) | (t >= vocab_size)
    if bad.any():
        index, n = _where(bad)
        more = f" ({n} ids out of range)" if n > 1 else ""
        raise ValueError(
            f"{name}: token id {int(t[index])} at position {_fmt(index)} is outside the vocabulary "
            f"[0, {vocab_size}){more}"
        )


def check_binary_mask(mask: Any, name: str = "attention_mask") -> None:
    """Raise ValueError unless `mask` holds only 0 and 1 (or booleans)."""
    if mask is None or not is_concrete(mask):
        return
    m = np.asarray(mask)
    if m.dtype == bool or m.size == 0:
        return
    bad = (m != 0) & (m != 1)
    if bad.any():
        index, n = _where(bad)
        raise ValueError(f"{name} must be 0/1; found {m[index]} at position {_fmt(index)} ({n} non-binary entries)")


def check_finite(value: Any, name: str) -> None:
    """Raise ValueError if a concrete floating-point `value` holds NaN or inf.

    A `jax.Array` is reduced on its device (one scalar comes back); the array itself is only
    copied to the host to locate a bad entry."""
    if value is None or not is_concrete(value):
        return
    if isinstance(value, jax.Array):
        # Eager even inside a trace (e.g. a jax.Array closed over by a jitted or lax.map-ped
        # function): staged into the trace, the reduction would be a tracer that bool() refuses.
        with jax.ensure_compile_time_eval():
            if not jnp.issubdtype(value.dtype, jnp.inexact) or bool(jnp.isfinite(value).all()):
                return
    a = np.asarray(value)
    if not jnp.issubdtype(a.dtype, jnp.inexact):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        if a.ndim == 0:
            raise ValueError(f"{name} is {a.item()}; it must be finite")
        index, n = _where(bad)
        raise ValueError(
            f"{name} has a non-finite value ({a[index]}) at index {_fmt(index)}; {n} of {a.size} values are NaN or inf"
        )


__all__ = ["is_concrete", "check_token_ids", "check_binary_mask", "check_finite"]
