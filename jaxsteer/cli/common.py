"""What several commands share: the default model, help texts, flag types, reading a vector file."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import InputError

DEFAULT_MODEL = "smollm2-135m-instruct"
MODEL_HELP = "model: alias, GGUF file, HF directory or hub id (default: %(default)s)"
DTYPE_HELP = "weights' dtype: float32 (default) or bfloat16"


def dtype(name: str):
    """The JAX dtype a `--dtype` flag names."""
    import jax.numpy as jnp

    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "f32": jnp.float32}[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; use float32 or bfloat16") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so `--n 0` or `--n -5` is refused, not sliced)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


def read_vectors(path: str, flag: str = "--steer") -> np.ndarray:
    """A `[d]` or `[L, d]` array of real, finite numbers from a `.npy` file (or a `.safetensors`
    file holding one tensor, e.g. a run's `steering_vectors.safetensors`), read before any model
    loads; InputError naming the flag, the file and what is wrong with it."""
    from ..models.validation import check_finite

    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            tensors = load_file(path)
            if len(tensors) != 1:
                raise ValueError(f"holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:4])}); expected one")
            vec = next(iter(tensors.values()))
        else:
            vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # missing, truncated, text, empty, pickled objects, ...
        raise InputError(f"{flag} {path}: not a readable array file ({' '.join(str(err).split())})") from None
    if not isinstance(vec, np.ndarray):
        raise InputError(f"{flag} {path}: an .npz archive, not one array; save one [d] or [L, d] array with np.save")
    if vec.ndim not in (1, 2) or vec.size == 0:
        raise InputError(f"{flag} {path}: expected a [d] or [L, d] array, got shape {vec.shape}")
    check_finite(vec, f"{flag} {path}")
    return vec


__all__ = ["DEFAULT_MODEL", "MODEL_HELP", "DTYPE_HELP", "dtype", "positive_int", "read_vectors"]
