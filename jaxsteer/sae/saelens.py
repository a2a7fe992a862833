"""SAELens' on-disk format: a directory with `cfg.json` and `sae_weights.safetensors`.

Written (and read) without importing SAELens or torch. Mapping of kinds:

| jaxsteer | SAELens `architecture` | notes |
| --- | --- | --- |
| relu | standard | |
| topk | topk | `k`, `rescale_acts_by_decoder_norm` |
| htopk | topk (k = K) | SAELens runs it at its largest budget; jaxsteer reads the kind back from `metadata.jaxsteer` |
| jumprelu | jumprelu | per-latent `threshold` |
| batchtopk | jumprelu | saved as SAELens saves its own BatchTopK SAEs for inference: `threshold = theta` for every latent; a SAELens `batchtopk` directory (its training format, scalar `topk_threshold`) loads too |
| kron | jaxsteer_kron | jaxsteer only (SAELens has no factorised encoder): `W_p, W_q, b_p, b_q` |

A residual SAE (no decoder bias) is written with `b_dec = 0`, which is the same function.
`metadata.hook_name` is TransformerLens' `blocks.{layer}.hook_{site}`.
"""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np

from .arch import SAE, SAEConfig, b_dec

CFG_FILE = "cfg.json"
SAELENS_FORMAT = "6.0.0"  # the cfg.json layout written here is SAELens 6.x's (metadata nested)
WEIGHTS_FILE = "sae_weights.safetensors"
_ARCH = {"relu": "standard", "topk": "topk", "htopk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu",
         "kron": "jaxsteer_kron"}


def hook_name(site: str, layer: int) -> str:
    return f"blocks.{int(layer)}.hook_{site}"


def parse_hook_name(name: str | None) -> tuple[str, int] | None:
    m = re.fullmatch(r"blocks\.(\d+)\.hook_(\w+)", name or "")
    return (m.group(2), int(m.group(1))) if m else None


def save_saelens(sae: SAE, path: str, *, model_name: str = "", context_size: int | None = None) -> str:
    """Write `sae` as a SAELens directory (see the module table). Returns `path`."""
    from safetensors.numpy import save_file

    c = sae.config
    os.makedirs(path, exist_ok=True)
    p = sae.params
    weights = {"W_dec": p["W_dec"], "b_dec": b_dec(sae)}
    if c.kind == "kron":
        weights.update({k: p[k] for k in ("W_p", "W_q", "b_p", "b_q")})
    else:
        weights.update(W_enc=p["W_enc"], b_enc=p["b_enc"])
    if c.kind == "jumprelu":
        weights["threshold"] = p["threshold"]
    if c.kind == "batchtopk":
        weights["threshold"] = jnp.full((c.d_sae,), p["threshold"], p["W_dec"].dtype)
    arrays = {k: _to_numpy(v, c.dtype) for k, v in weights.items()}
    save_file(arrays, os.path.join(path, WEIGHTS_FILE), metadata={"dtype": c.dtype})
    meta = {"sae_lens_version": SAELENS_FORMAT, "sae_lens_training_version": None, "model_name": model_name or c.model, "hook_name": hook_name(c.site, c.layer), "hook_head_index": None,
            "prepend_bos": True, "jaxsteer": c.to_dict()}
    if context_size:
        meta["context_size"] = int(context_size)
    cfg = {"d_in": c.d_in, "d_sae": c.d_sae, "dtype": c.dtype, "device": "cpu",
           "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": meta, "architecture": _ARCH[c.kind]}
    if _ARCH[c.kind] == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm)
    with open(os.path.join(path, CFG_FILE), "w") as f:
        json.dump(cfg, f, indent=1)
    return path


def _to_numpy(v, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes

        return np.asarray(jnp.asarray(v, jnp.bfloat16)).astype(ml_dtypes.bfloat16)
    return np.asarray(v, np.float32)


def _read_weights(path: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with safe_open(os.path.join(path, WEIGHTS_FILE), framework="numpy") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
    return out


def load_saelens(path: str) -> SAE:
    """Read a SAELens directory (standard, topk, jumprelu, batchtopk; or jaxsteer_kron) into an SAE."""
    with open(os.path.join(path, CFG_FILE)) as f:
        cfg = json.load(f)
    arch = cfg.get("architecture", "standard")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{path}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    w = _read_weights(path)
    meta = cfg.get("metadata") or {}
    where = parse_hook_name(meta.get("hook_name")) or ("resid_post", 0)
    dtype = "bfloat16" if str(cfg.get("dtype", "float32")).endswith("bfloat16") else "float32"
    base = dict(d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), dtype=dtype, site=where[0], layer=where[1],
                apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                model=str(meta.get("model_name") or ""))
    saved = meta.get("jaxsteer")
    if saved:
        config = SAEConfig.from_dict(saved)
    elif arch == "standard":
        config = SAEConfig(kind="relu", **base)
    elif arch == "topk":
        config = SAEConfig(kind="topk", k=int(cfg["k"]), **base)
    elif arch == "jumprelu":
        config = SAEConfig(kind="jumprelu", **base)
    elif arch == "batchtopk":
        config = SAEConfig(kind="batchtopk", k=max(1, int(round(float(cfg["k"])))), **base)
    else:
        raise ValueError(f"{path}: SAELens architecture {arch!r} is not supported (standard, topk, jumprelu, batchtopk)")
    dt = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    params = {k: jnp.asarray(np.asarray(v, np.float32), dt) for k, v in w.items() if k not in ("topk_threshold", "threshold")}
    if config.kind == "jumprelu":
        params["threshold"] = jnp.asarray(np.asarray(w["threshold"], np.float32), dt)
    if config.kind == "batchtopk":
        theta = w["topk_threshold"] if "topk_threshold" in w else np.asarray(w["threshold"]).reshape(-1)[0]
        params["threshold"] = jnp.asarray(np.asarray(theta, np.float32).reshape(()), dt)
    if not config.decoder_bias:
        params.pop("b_dec", None)
    return SAE(params, config)


__all__ = ["save_saelens", "load_saelens", "hook_name", "parse_hook_name", "CFG_FILE", "WEIGHTS_FILE"]
