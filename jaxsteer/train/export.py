"""Export trained steering vectors: a `[L, d]` `.npy`, and a Hugging Face safetensors patch;
LinEAS affine maps as a `.npz` (`save_affine` / `load_affine`).

The patch holds `model.layers.{l}.mlp.down_proj.bias` (float32, `[d]`) for every layer: adding a
bias to the MLP's down projection is exactly adding the vector to the residual stream after the
MLP ("resid_post"), for architectures without a norm after the MLP (Llama, Qwen2; not Gemma3).
To use it with transformers, give each `down_proj` a bias parameter and load the patch with
`model.load_state_dict(patch, strict=False)` (see `docs/training.md`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..errors import InputError
from ..models.interventions import Affine
from ..models.params import Model
from .config import TrainConfig
from .trainable import TrainableConfig, adaptive_gate, affine_map, steering_vectors


def steering_array(trainable, cfg: TrainableConfig, n_layers: int) -> np.ndarray:
    """Dense `[L, *feat]` float32 vectors (zeros on layers that were not trained).

    Args:
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        n_layers: the model's layers L.

    Returns:
        The vectors.
    """
    return np.asarray(steering_vectors(trainable, cfg, n_layers), np.float32)


def save_npy(path: str, trainable, cfg: TrainableConfig, n_layers: int) -> str:
    """Write the dense `[L, *feat]` vectors to `path` (`.npy`).

    Args:
        path: the file written.
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        n_layers: the model's layers L.

    Returns:
        `path`.
    """
    np.save(path, steering_array(trainable, cfg, n_layers))
    return path


def save_affine(path: str, trainable, cfg: TrainableConfig, n_layers: int) -> str:
    """Write a lineas trainable as `.npz` (see `load_affine`).

    The file holds `scale`, `shift` (`[L, d]` float32, the identity on untrained layers), the `site`
    and the trained `layers`.

    Args:
        path: the file written.
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        n_layers: the model's layers L.

    Returns:
        `path`.
    """
    m: dict[str, Any] = {k: np.asarray(v, np.float32) for k, v in affine_map(trainable, cfg, n_layers).items()}
    layers = np.asarray(cfg.layers if cfg.layers is not None else range(n_layers), np.int32)
    np.savez(path, site=np.asarray(cfg.site), layers=layers, **m)
    return path


def load_affine(path: str) -> Affine:
    """The `jaxsteer.Affine` intervention saved by `save_affine` (for `forward` / `generate`)."""
    with np.load(path) as f:
        missing = {"scale", "shift", "site", "layers"} - set(f.files)
        if missing:
            raise InputError(f"{path}: not a LinEAS map (missing {sorted(missing)})")
        return Affine(f["scale"], f["shift"], site=str(f["site"]), layers=tuple(int(l) for l in f["layers"]))


def hf_patch(vectors: np.ndarray, model: Model, cfg: TrainableConfig) -> dict[str, np.ndarray]:
    """The vectors as a patch of a Hugging Face checkpoint's MLP output biases.

    Args:
        vectors: dense `[L, d]` steering vectors.
        model: the model (its architecture must add a down_proj bias after the MLP).
        cfg: the trainable (its site must be where that bias acts).

    Returns:
        `{"model.layers.{l}.mlp.down_proj.bias": vectors[l]}`.

    Raises:
        InputError: a site or architecture where a down_proj bias is not the same thing.
    """
    c = model.config
    if cfg.kind != "steering":
        raise InputError(f"only steering vectors export as a down_proj bias patch (kind={cfg.kind!r})")
    if cfg.site != "resid_post":
        raise InputError(
            f"a down_proj bias equals a steering vector at site 'resid_post' only; these vectors act at {cfg.site!r}"
        )
    if c.sandwich_norms:
        raise InputError(
            f"{c.architecture} normalises the MLP output after down_proj, "
            "so a down_proj bias is not resid_post steering"
        )
    vectors = np.asarray(vectors, np.float32)
    if vectors.shape != (c.n_layers, c.d_model):
        raise InputError(f"vectors have shape {vectors.shape}, expected [{c.n_layers}, {c.d_model}]")
    return {f"model.layers.{l}.mlp.down_proj.bias": np.ascontiguousarray(vectors[l]) for l in range(c.n_layers)}


def save_hf_patch(path: str, trainable, cfg: TrainableConfig, model: Model, extra_metadata: dict | None = None) -> str:
    """Write the vectors as a safetensors `down_proj.bias` patch (see `hf_patch`).

    Args:
        path: the file written.
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        model: the base model.
        extra_metadata: more metadata, stored as JSON under the header's "extra" key.

    Returns:
        `path`.
    """
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


def export_steering(out_dir: str, cfg: TrainConfig, model: Model, trainable: Any, say: Callable = print) -> dict:
    """Write the steering artefacts at the end of a run that trained `cfg.trainable` (process 0).

    Steering vectors go to `steering_vectors.npy` and, where it means the same, the safetensors
    patch; adaptive steering also writes its gate, `adaptive_steering.npz` (`vectors`, `w`, `b`, dense
    over layers); a LinEAS map writes `lineas.npz` (`save_affine`) instead.

    Args:
        out_dir: the run directory.
        cfg: the run config.
        model: the base model.
        trainable: the trained pytree.
        say: prints a line (e.g. `Run.say`).

    Returns:
        The files written (name -> path).
    """
    if jax.process_index() != 0:
        return {}
    tcfg = cfg.trainable
    if tcfg.kind == "lineas":
        path = save_affine(os.path.join(out_dir, "lineas.npz"), trainable, tcfg, model.config.n_layers)
        say("(no steering vectors or safetensors patch: a LinEAS map scales as well as shifts)")
        return {"lineas_npz": path}
    files = {
        "vectors_npy": save_npy(os.path.join(out_dir, "steering_vectors.npy"), trainable, tcfg, model.config.n_layers)
    }
    if tcfg.kind == "adaptive_steering":  # the (ungated) vectors above, and the gate
        gate: dict[str, Any] = {
            k: np.asarray(v, np.float32) for k, v in adaptive_gate(trainable, tcfg, model.config.n_layers).items()
        }
        files["adaptive_npz"] = os.path.join(out_dir, "adaptive_steering.npz")
        np.savez(files["adaptive_npz"], **gate)
        say("(no safetensors patch: a gated vector is not a constant down_proj bias)")
        return files
    try:
        files["vectors_safetensors"] = save_hf_patch(
            os.path.join(out_dir, "steering_vectors.safetensors"),
            trainable,
            tcfg,
            model,
            extra_metadata={"model": cfg.model.spec, "steps": cfg.steps},
        )
    except ValueError as e:
        say(f"(no safetensors patch: {e})")
    return files


__all__ = ["steering_array", "save_npy", "save_affine", "load_affine", "hf_patch", "save_hf_patch", "export_steering"]
