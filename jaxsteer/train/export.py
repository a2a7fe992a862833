"""Export trained steering vectors: a `[L, d]` `.npy`, and a Hugging Face safetensors patch.

The patch holds `model.layers.{l}.mlp.down_proj.bias` (float32, `[d]`) for every layer: adding a
bias to the MLP's down projection is exactly adding the vector to the residual stream after the
MLP ("resid_post"), for architectures without a norm after the MLP (Llama, Qwen2; not Gemma3).
To use it with transformers, give each `down_proj` a bias parameter and load the patch with
`model.load_state_dict(patch, strict=False)` (see `docs/training.md`).
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..models.params import Model
from .trainable import TrainableConfig, steering_vectors


def steering_array(trainable, cfg: TrainableConfig, n_layers: int) -> np.ndarray:
    """Dense `[L, *feat]` float32 vectors (zeros on layers that were not trained)."""
    return np.asarray(steering_vectors(trainable, cfg, n_layers), np.float32)


def save_npy(path: str, trainable, cfg: TrainableConfig, n_layers: int) -> str:
    np.save(path, steering_array(trainable, cfg, n_layers))
    return path


def hf_patch(vectors: np.ndarray, model: Model, cfg: TrainableConfig) -> dict[str, np.ndarray]:
    """`{"model.layers.{l}.mlp.down_proj.bias": vectors[l]}`; errors for sites/architectures where
    a down_proj bias is not the same thing."""
    c = model.config
    if cfg.kind != "steering":
        raise ValueError(f"only steering vectors export as a down_proj bias patch (kind={cfg.kind!r})")
    if cfg.site != "resid_post":
        raise ValueError(
            f"a down_proj bias equals a steering vector at site 'resid_post' only; these vectors act at {cfg.site!r}"
        )
    if c.sandwich_norms:
        raise ValueError(f"{c.architecture} normalises the MLP output after down_proj, so a down_proj bias is not resid_post steering")
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape != (c.n_layers, c.d_model):
        raise ValueError(f"vectors have shape {vectors.shape}, expected [{c.n_layers}, {c.d_model}]")
    return {f"model.layers.{l}.mlp.down_proj.bias": np.ascontiguousarray(vectors[l]) for l in range(c.n_layers)}


def save_hf_patch(path: str, trainable, cfg: TrainableConfig, model: Model, extra_metadata: dict | None = None) -> str:
    from safetensors.numpy import save_file

    vectors = steering_array(trainable, cfg, model.config.n_layers)
    patch = hf_patch(vectors, model, cfg)
    meta = {
        "format": "pt",
        "jaxsteer": "steering-vectors-as-down_proj-bias",
        "architecture": model.config.architecture,
        "n_layers": str(model.config.n_layers),
        "d_model": str(model.config.d_model),
        "site": cfg.site,
    }
    if extra_metadata:
        meta["extra"] = json.dumps(extra_metadata)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file(patch, path, metadata=meta)
    return path


__all__ = ["steering_array", "save_npy", "hf_patch", "save_hf_patch"]
