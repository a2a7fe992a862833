"""Range and finiteness checks of inputs at the API boundary.

Each check runs only on concrete values (NumPy arrays, Python numbers, fully addressable
`jax.Array`s). Under `jit`, `grad` or `vmap` a value that is an argument of the traced function
is a tracer and its check is skipped, so compiled code never waits on the device for it. A
concrete value closed over by a traced function is still checked: its reduction runs eagerly
(`jax.ensure_compile_time_eval`), not as part of the trace, so it never becomes a tracer. The
checks locate the first bad entry only after a cheap whole-array test has failed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from ..errors import InputError


def is_concrete(x: Any) -> bool:
    """True for values whose contents can be read now (not tracers, not other hosts' shards)."""
    if isinstance(x, Tracer):
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

    The message names the first offending id and its position (row, column for `[B, T]`).

    Args:
        tokens: ids of any shape.
        vocab_size: the exclusive upper bound.
        name: how the message names `tokens`.
    """
    if tokens is None or not is_concrete(tokens):
        return
    t = np.asarray(tokens)
    if t.size == 0:
        return
    if not np.issubdtype(t.dtype, np.integer):
        raise InputError(f"{name}: token ids must be integers, got dtype {t.dtype}")
    bad = (t < 0) | (t >= vocab_size)
    if bad.any():
        index, n = _where(bad)
        more = f" ({n} ids out of range)" if n > 1 else ""
        raise InputError(
            f"{name}: token id {int(t[index])} at position {_fmt(index)} is outside the vocabulary "
            f"[0, {vocab_size}){more}"
        )


def check_binary_mask(mask: Any, name: str = "attention_mask") -> None:
    """Raise ValueError unless `mask` holds only 0 and 1 (or booleans).

    Args:
        mask: the mask, or None (accepted).
        name: how the message names it.
    """
    if mask is None or not is_concrete(mask):
        return
    m = np.asarray(mask)
    if m.dtype == bool or m.size == 0:
        return
    bad = (m != 0) & (m != 1)
    if bad.any():
        index, n = _where(bad)
        raise InputError(f"{name} must be 0/1; found {m[index]} at position {_fmt(index)} ({n} non-binary entries)")


def check_real(value: Any, name: str) -> None:
    """Raise ValueError if `value` holds complex numbers, Python objects or strings (which a
    float cast would silently truncate or fail on). Reads only the dtype, so it is jit-safe.

    Args:
        value: an array or scalar.
        name: how the message names it.
    """
    if value is None:
        return
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        if not is_concrete(value):
            return
        try:
            dtype = np.asarray(value).dtype
        except (TypeError, ValueError) as err:
            raise InputError(
                f"{name} must be an array of real numbers; cannot read {type(value).__name__}: {err}"
            ) from None
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating) or dtype.kind in "OSUM":
        raise InputError(f"{name} must hold real numbers, got dtype {dtype}")


def check_finite(value: Any, name: str) -> None:
    """Raise ValueError if a concrete floating-point `value` holds NaN or inf, or (`check_real`,
    even under a trace) complex, object or string data.

    A `jax.Array` is reduced on its device (one scalar comes back); the array itself is only
    copied to the host to locate a bad entry.

    Args:
        value: an array, a scalar, or None (accepted).
        name: how the message names it.
    """
    check_real(value, name)
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
            raise InputError(f"{name} is {a.item()}; it must be finite")
        index, n = _where(bad)
        raise InputError(
            f"{name} has a non-finite value ({a[index]}) at index {_fmt(index)}; {n} of {a.size} values are NaN or inf"
        )


def check_number(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float | int:
    """A Python/NumPy scalar `value` as float (int with `integer`), checked finite and inside
    `[low, high]` (`(low, high]` with `low_open`); ValueError naming `name` otherwise.

    Args:
        value: the scalar.
        name: how the message names it.
        integer: require (and return) an int.
        low: the lower bound (None: none).
        high: the upper bound (None: none).
        low_open: exclude `low` itself.

    Returns:
        `value` as float (or int).
    """
    ok_type = (
        np.issubdtype(type(value), np.integer)
        if integer
        else np.issubdtype(type(value), np.integer) or np.issubdtype(type(value), np.floating)
    )
    if isinstance(value, bool) or not ok_type:
        kind = "an integer" if integer else "a real number"
        raise InputError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})")
    number = int(value) if integer else float(value)
    if not np.isfinite(number):
        raise InputError(f"{name} is {number}; it must be finite")
    below = low is not None and (number <= low if low_open else number < low)
    if below or (high is not None and number > high):
        if high is None:
            raise InputError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
        lo = "-inf" if low is None else low
        raise InputError(f"{name} must be in {'(' if low_open else '['}{lo}, {high}], got {value!r}")
    return number


def check_steer_size(vector: Any, scale: Any, d_model: int, name: str, additions: int = 1) -> None:
    """Raise ValueError if `scale * vector` (concrete values), added `additions` times (once per
    steered layer), reaches a size at which the model's float32 RMSNorm overflows (the sum of
    d_model squares exceeds float32's range), so every later activation would be inf or NaN.

    Args:
        vector: the steering vector.
        scale: its scale.
        d_model: the residual width.
        name: how the message names the intervention.
        additions: how many times the vector is added (steered layers).
    """
    if not (is_concrete(vector) and is_concrete(scale)) or vector is None:
        return

    def largest(x) -> float | None:  # on the array's device for a jax.Array (one scalar comes back)
        if np.size(x) == 0:
            return None
        if isinstance(x, jax.Array):
            with jax.ensure_compile_time_eval():
                return float(jnp.max(jnp.abs(x)))
        return float(np.max(np.abs(np.asarray(x, np.float64))))

    v, s = largest(vector), largest(scale)
    if v is None or s is None:
        return
    top = max(1, additions) * v * s
    limit = float(np.sqrt(np.finfo(np.float32).max / max(1, d_model)))
    if top > limit:
        raise InputError(
            f"{name}: |scale| x |vector|{f' x {additions} layers' if additions > 1 else ''} reaches {top:.3g}; "
            f"above {limit:.3g} the float32 activations overflow to inf / NaN (lower the scale)"
        )


__all__ = [
    "is_concrete",
    "check_token_ids",
    "check_binary_mask",
    "check_finite",
    "check_real",
    "check_number",
    "check_steer_size",
]
