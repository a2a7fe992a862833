"""llama.cpp control vectors: export jaxsteer steering vectors, import repeng / llama.cpp files.

A control vector is a GGUF file with architecture `controlvector` and one float32 tensor
`direction.<N>` `[d]` per steered layer (as repeng writes them and `llama-cli --control-vector`
reads them). llama.cpp adds `direction.N` (times the file's strength) to the output of block N,
counted from 0, after the MLP's residual add: that is jaxsteer's `resid_post` of layer N, so
layer numbers carry over unchanged. llama.cpp never steers block 0 (its loader rejects
`direction.0`), so a vector on layer 0 cannot be exported.

    save_control_vector("happy.gguf", vectors, model_hint="llama")      # vectors [L, d] at resid_post
    vectors, meta = load_control_vector("happy.gguf", n_layers=30)      # [L, d], zeros where absent
    steer = jaxsteer.Steer(jnp.asarray(vectors))                         # what llama.cpp applies

`control_vector_data` builds the flat buffer that llama.cpp's `llama_apply_adapter_cvec` takes
(layers 1..L-1, as its loader lays it out), and `write_unquantized_gguf` rewrites a (quantised)
model GGUF with float32 / float16 tensors, so llama.cpp and jaxsteer can be compared on the same
weights.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError

ARCH = "controlvector"
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def save_control_vector(
    path: str,
    vectors: Any,
    *,
    model_hint: str = "llama",
    layers: Sequence[int] | None = None,
    scale: float = 1.0,
    site: str = "resid_post",
) -> str:
    """Write `scale * vectors[l]` for each steered layer as a llama.cpp control vector.

    Args:
        path: the `.gguf` file to write.
        vectors: `[L, d]` `resid_post` vectors (e.g. from `jaxsteer.steering.extract`).
        model_hint: the `controlvector.model_hint` metadata (llama.cpp's architecture name, e.g.
            "llama", "qwen2").
        layers: which layers to write (default: every layer whose vector is non-zero).
        scale: multiplies the vectors.
        site: must be "resid_post" (what llama.cpp's control vectors add to).

    Returns:
        `path`.
    """
    import gguf

    if site != "resid_post":
        raise InputError(f"llama.cpp adds control vectors after each block's MLP (resid_post); these act at {site!r}")
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2:
        raise InputError(f"vectors must be [L, d], got shape {v.shape}")
    if not np.isfinite(v).all():
        raise InputError("vectors hold NaN or inf")
    if layers is None:
        layers = [l for l in range(len(v)) if np.any(v[l])]
    layers = sorted(int(l) for l in layers)
    if not layers:
        raise InputError("no layer to export: every vector is zero")
    for l in layers:
        if not 0 <= l < len(v):
            raise InputError(f"layer {l} out of range for {len(v)} layers")
    if layers[0] == 0:
        raise InputError("llama.cpp cannot steer layer 0 (its loader rejects direction.0); steer layers >= 1")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    writer = gguf.GGUFWriter(path, ARCH)
    writer.add_string(f"{ARCH}.model_hint", model_hint)
    writer.add_uint32(f"{ARCH}.layer_count", len(layers))
    for l in layers:
        writer.add_tensor(f"direction.{l}", np.ascontiguousarray(v[l] * np.float32(scale)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def load_control_vector(path: str, n_layers: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a control vector (jaxsteer's, repeng's or llama.cpp's `cvector-generator`'s):
    `(vectors [L, d] float32, zeros on layers without a direction; metadata)`. L is `n_layers`
    (default: the highest direction index + 1).

    Args:
        path: the `.gguf` file.
        n_layers: L (default: the highest direction index + 1).

    Returns:
        `(vectors, metadata)`.
    """
    import gguf

    reader = gguf.GGUFReader(path)
    arch = reader.fields.get("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise InputError(
            f"{path}: not a control vector (general.architecture is "
            f"{None if arch is None else arch.contents()!r}, expected {ARCH!r})"
        )
    directions = {}
    for t in reader.tensors:
        m = _DIRECTION.match(t.name)
        if m is None:
            raise InputError(f"{path}: unexpected tensor {t.name!r} (a control vector holds direction.<layer> tensors)")
        if t.tensor_type != gguf.GGMLQuantizationType.F32 or len(t.shape) != 1:
            raise InputError(f"{path}: {t.name} must be a 1-D float32 tensor (llama.cpp reads only those)")
        directions[int(m.group(1))] = np.asarray(t.data, np.float32).reshape(-1)
    if not directions:
        raise InputError(f"{path}: no direction tensors")
    if 0 in directions:
        raise InputError(f"{path}: direction.0 (llama.cpp rejects layer 0)")
    widths = {len(d) for d in directions.values()}
    if len(widths) != 1:
        raise InputError(f"{path}: direction tensors of different widths {sorted(widths)}")
    L = max(directions) + 1 if n_layers is None else int(n_layers)
    if max(directions) >= L:
        raise InputError(f"{path}: direction.{max(directions)} does not exist in a model with {L} layers")
    out = np.zeros((L, widths.pop()), np.float32)
    for l, d in directions.items():
        out[l] = d
    meta = {f.name: f.contents() for f in reader.fields.values() if f.name.startswith(ARCH + ".")}
    return out, meta


def control_vector_data(vectors: Any, strength: float = 1.0) -> np.ndarray:
    """The flat float32 buffer `[(L - 1) * d]` that `llama_apply_adapter_cvec` expects: layer l's
    vector at offset `(l - 1) * d` for l = 1..L-1 (llama.cpp's own loader fills it the same way)."""
    v = np.asarray(vectors, np.float32)
    if v.ndim != 2:
        raise InputError(f"vectors must be [L, d], got shape {v.shape}")
    if np.any(v[0]):
        raise InputError("llama.cpp cannot steer layer 0; its vector must be zero")
    return np.ascontiguousarray(v[1:].reshape(-1) * np.float32(strength))


def write_unquantized_gguf(src: str, dst: str, dtype: str = "f32") -> str:
    """Copy a model GGUF with every tensor dequantised to float32 (`dtype="f32"`) or float16
    (`"f16"`, norms and other 1-D tensors stay float32, as llama.cpp's converters keep them).
    Metadata is copied as is; `general.file_type` is updated.

    Args:
        src: the model GGUF.
        dst: the file to write.
        dtype: "f32" or "f16".

    Returns:
        `dst`.
    """
    import gguf
    from gguf.quants import dequantize

    if dtype not in ("f32", "f16"):
        raise InputError(f"dtype must be 'f32' or 'f16', got {dtype!r}")
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(dst, arch)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        if field.name == "general.file_type":
            writer.add_file_type(file_type)
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)  # numpy shape: reversed ggml ne
        if dtype == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        writer.add_tensor(t.name, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


__all__ = ["save_control_vector", "load_control_vector", "control_vector_data", "write_unquantized_gguf", "ARCH"]
