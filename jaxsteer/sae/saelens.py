"""SAELens' on-disk format: a directory with `cfg.json` and `sae_weights.safetensors`.

Written (and read) without importing SAELens or torch. Mapping of kinds:

| jaxsteer | SAELens `architecture` | notes |
| --- | --- | --- |
| relu | standard | |
| topk | topk | `k` |
| htopk | topk (k = K) | SAELens runs it at its largest budget; jaxsteer reads the kind back from `metadata.jaxsteer` |
| jumprelu | jumprelu | per-latent `threshold` |
| batchtopk | jumprelu | as SAELens saves BatchTopK for inference: `threshold = theta` for every latent (1) |
| matryoshka | jumprelu | as batchtopk (its inference is BatchTopK's) (1) |
| kron | jaxsteer_kron | jaxsteer only (SAELens has no factorised encoder): `W_p, W_q, b_p, b_q` |

(1) SAELens' training-format directories (`batchtopk` with a scalar `topk_threshold`,
`matryoshka_batchtopk`) load too.

Loading follows SAELens 6.54's `SAE.load_from_disk` field by field, so a directory never loads
as a different function than SAELens computes:

- configs written before SAELens 6 (`activation_fn_str` / `activation_fn_kwargs`, `hook_point`,
  boolean `normalize_activations`) are read as SAELens' `handle_pre_6_0_config` reads them;
- SAELens' own fields (architecture, k, rescale_acts_by_decoder_norm, apply_b_dec_to_input,
  hook_name, dtype) always win; the private `metadata.jaxsteer` block only refines the kind
  where the weights allow it (htopk saved as topk, batchtopk / matryoshka saved as jumprelu with one
  shared threshold, kron's factorisation, a residual SAE's zero `b_dec`);
- anything jaxsteer would compute differently is refused by name (other architectures,
  `normalize_activations` other than none, per-head `hook_head_index`, a fine-tuning scaling
  factor) and a hook name that is no TransformerLens alias of a jaxsteer site
  (`jaxsteer.models.sites`) is an error unless the caller names
  `site` and `layer`.

Export folds the decoder norms of an SAE trained with `rescale_acts_by_decoder_norm` into the
encoder (`arch.fold_decoder_norm`, as SAELens' `save_inference_model` does), so SAELens computes
the same codes for every kind. A residual SAE (no decoder bias) is written with `b_dec = 0`.

Also read: a release laid out on disk (a Hugging Face SAE repository folder with one sub-folder
per `sae_id`) and Gemma Scope's `params.npz` (JumpReLU, `b_dec` not subtracted from the input).
"""

from __future__ import annotations

import json
import os
import re

import jax.numpy as jnp
import numpy as np

from ..errors import InputError, NotFoundError
from ..models.interventions import SITES
from ..models.sites import TL_ALIASES, parse_site
from .arch import BATCH_KINDS, SAE, SAEConfig, b_dec, fold_decoder_norm

CFG_FILE = "cfg.json"
SAELENS_FORMAT = "6.0.0"  # the cfg.json layout written here is SAELens 6.x's (metadata nested)
WEIGHTS_FILE = "sae_weights.safetensors"
GEMMA_SCOPE_FILE = "params.npz"
_ARCH = {
    "relu": "standard",
    "topk": "topk",
    "htopk": "topk",
    "jumprelu": "jumprelu",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "kron": "jaxsteer_kron",
}
# site -> TransformerLens name; reversed so that the long forms listed first (attn.hook_z) win
_SITE_HOOKS = {site: name for name, site in reversed(TL_ALIASES.items())}
_LOADABLE = ("standard", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk", "jaxsteer_kron")


def hook_name(site: str, layer: int) -> str:
    """TransformerLens' name of a jaxsteer site (`blocks.3.hook_resid_post`, `blocks.3.attn.hook_z`);
    sites TransformerLens has no equal of are written `blocks.{layer}.jaxsteer.{site}`."""
    hook = _SITE_HOOKS.get(site, f"jaxsteer.{site}")
    return f"blocks.{int(layer)}.{hook}"


def parse_hook_name(name: str | None) -> tuple[str, int]:
    """`(site, layer)` of a hook name: a TransformerLens alias of a jaxsteer site
    (`jaxsteer.models.sites`) with its block, or a name `hook_name` wrote. ValueError otherwise
    (with the reason when TransformerLens' name means another value than jaxsteer's site)."""
    m = re.fullmatch(r"blocks\.(\d+)\.jaxsteer\.(\w+)", name or "")
    if m:
        return m.group(2), int(m.group(1))
    try:
        site, layer = parse_site(name) if isinstance(name, str) else (None, None)
        reason = ""
    except ValueError as e:
        site, layer, reason = None, None, f" ({e})"
    if site not in SITES or layer is None:
        raise InputError(f"hook_name {name!r} is not a site jaxsteer knows{reason}; pass site= and layer=")
    return site, layer


def save_saelens(sae: SAE, path: str, *, model_name: str = "", context_size: int | None = None) -> str:
    """Write `sae` as a SAELens directory (see the module table). Returns `path`.

    Args:
        sae: the SAE.
        path: the directory to write.
        model_name: SAELens' `model_name` field.
        context_size: SAELens' `context_size` field.

    Returns:
        `path`.
    """
    from safetensors.numpy import save_file

    if sae.config.rescale_acts_by_decoder_norm:
        sae = fold_decoder_norm(sae)
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
    if c.kind in BATCH_KINDS:
        weights["threshold"] = jnp.full((c.d_sae,), p["threshold"], p["W_dec"].dtype)
    arrays = {k: _to_numpy(v, c.dtype) for k, v in weights.items()}
    save_file(arrays, os.path.join(path, WEIGHTS_FILE), metadata={"dtype": c.dtype})
    meta = {
        "sae_lens_version": SAELENS_FORMAT,
        "sae_lens_training_version": None,
        "model_name": model_name or c.model,
        "hook_name": hook_name(c.site, c.layer),
        "hook_head_index": None,
        "prepend_bos": True,
        "jaxsteer": c.to_dict(),
    }
    if context_size:
        meta["context_size"] = int(context_size)
    cfg = {
        "d_in": c.d_in,
        "d_sae": c.d_sae,
        "dtype": c.dtype,
        "device": "cpu",
        "apply_b_dec_to_input": c.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if c.site == "z" else "none",
        "metadata": meta,
        "architecture": _ARCH[c.kind],
    }
    if _ARCH[c.kind] == "topk":
        cfg.update(k=c.k, rescale_acts_by_decoder_norm=False)
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
            out[k] = np.asarray(f.get_tensor(k), np.float32)
    return out


def _version(v) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", str(v))[:3])


def normalise_config(cfg: dict) -> dict:
    """A cfg.json as SAELens 6 sees it: pre-6.0 configs renamed and defaulted as SAELens'
    `handle_pre_6_0_config` does (`hook_point` -> `hook_name`, `activation_fn_str: topk` with
    `activation_fn_kwargs.k` -> architecture topk, boolean `normalize_activations`); the metadata
    fields (`hook_name`, `model_name`, `hook_head_index`, ...) gathered from either place."""
    cfg = dict(cfg)
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not version or _version(version) < (6, 0, 0):
        renames = {
            "hook_point": "hook_name",
            "hook_point_head_index": "hook_head_index",
            "activation_fn_str": "activation_fn",
        }
        cfg = {renames.get(k, k): v for k, v in cfg.items()}
        cfg.setdefault("apply_b_dec_to_input", True)
        cfg.setdefault("architecture", "standard")
        cfg.setdefault("reshape_activations", "hook_z" if "hook_z" in str(cfg.get("hook_name", "")) else "none")
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if cfg.get("activation_fn") == "topk" and kwargs.get("k") is not None:
            cfg.update(architecture="topk", k=kwargs["k"])
        if isinstance(cfg.get("normalize_activations"), bool):
            cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
        activation = cfg.get("activation_fn", "relu")
        if cfg["architecture"] == "standard" and activation not in ("relu", None):
            raise InputError(f"activation_fn={activation!r} is not supported (SAELens 6 would run it as a plain ReLU)")
        if cfg.get("finetuning_scaling_factor"):
            raise InputError("finetuning_scaling_factor=True is not supported (SAELens 6 drops it)")
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    meta = {k: cfg[k] for k in ("hook_name", "hook_head_index", "model_name") if k in cfg}
    cfg["metadata"] = {**meta, **(cfg.get("metadata") or {})}
    return cfg


def _site_and_layer(meta: dict, site: str | None, layer: int | None, where: str) -> tuple[str, int]:
    if site is not None and layer is not None:
        return site, int(layer)
    try:
        parsed = parse_hook_name(meta.get("hook_name"))
    except ValueError as e:
        raise InputError(f"{where}: {e}") from None
    return (site or parsed[0]), (parsed[1] if layer is None else int(layer))


def _dtype_name(name, where: str) -> str:
    name = str(name).removeprefix("torch.")
    if name not in ("float32", "bfloat16"):
        raise InputError(f"{where}: dtype {name!r} is not supported; pass dtype='float32' or 'bfloat16'")
    return name


def _kind(arch: str, cfg: dict, w: dict, saved: dict, where: str) -> tuple[str, dict]:
    """jaxsteer kind and kind-specific config fields from SAELens' architecture (+ the private
    metadata where the weights agree with it)."""
    saved_kind = saved.get("kind")
    if arch == "standard":
        return "relu", {}
    if arch == "topk":
        return ("htopk" if saved_kind == "htopk" else "topk"), {"k": int(cfg["k"])}
    if arch == "jumprelu":
        t = w["threshold"]
        if saved_kind in BATCH_KINDS and np.all(t == t.reshape(-1)[0]):
            extra = {f: saved[f] for f in ("k", "matryoshka_widths") if f in saved}
            return saved_kind, extra
        return "jumprelu", {}
    if arch == "batchtopk":
        return "batchtopk", {"k": max(1, int(round(float(cfg["k"]))))}
    if arch == "matryoshka_batchtopk":
        return "matryoshka", {"k": max(1, int(round(float(cfg["k"])))), "matryoshka_widths": cfg["matryoshka_widths"]}
    if arch == "jaxsteer_kron":
        if saved_kind != "kron":
            raise InputError(f"{where}: architecture jaxsteer_kron needs its metadata.jaxsteer block")
        return "kron", {f: saved[f] for f in ("k", "kron_heads", "kron_m", "kron_n")}
    raise InputError(f"{where}: SAELens architecture {arch!r} is not supported ({', '.join(_LOADABLE)})")


def _check_normalisation(cfg: dict, norm_scaling_factor: float | None, where: str) -> float | None:
    norm = cfg.get("normalize_activations", "none")
    if norm == "expected_average_only_in":
        if norm_scaling_factor is None:
            raise InputError(
                f"{where}: normalize_activations='expected_average_only_in' scales inputs by a dataset "
                "constant that the directory does not hold; pass norm_scaling_factor= (1.0 computes "
                "what SAELens' load_from_disk computes, which ignores it)"
            )
        return float(norm_scaling_factor)
    if norm != "none":
        raise InputError(f"{where}: normalize_activations={norm!r} is not supported")
    if cfg.get("reshape_activations", "none") not in ("none", "hook_z", None):
        raise InputError(f"{where}: reshape_activations={cfg['reshape_activations']!r} is not supported")
    return None


def sae_from_saelens_config(
    cfg: dict,
    w: dict[str, np.ndarray],
    *,
    where: str = "SAE",
    dtype: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """An SAE from a SAELens cfg.json dict and its weights (float32 numpy arrays), read as SAELens
    6.54 reads them (see the module doc); `site` / `layer` override (or supply) the hook name.

    Args:
        cfg: the cfg.json dict.
        w: the weights by SAELens name.
        where: names the source in error messages.
        dtype: 'float32' / 'bfloat16' (default: the config's).
        site: the site, when the hook name does not give it.
        layer: the layer, likewise.
        norm_scaling_factor: the dataset constant of `normalize_activations='expected_average_only_in'`.

    Returns:
        The `SAE`.
    """
    cfg = normalise_config(cfg)
    meta = cfg["metadata"]
    if meta.get("hook_head_index") is not None:
        raise InputError(f"{where}: hook_head_index={meta['hook_head_index']} (an SAE on one head) is not supported")
    scale = _check_normalisation(cfg, norm_scaling_factor, where)
    where_site = _site_and_layer(meta, site, layer, where)
    if cfg.get("reshape_activations") == "hook_z" and where_site[0] != "z":
        raise InputError(f"{where}: reshape_activations='hook_z' but the SAE is placed on site {where_site[0]!r}")
    w = dict(w)
    if "log_threshold" in w:
        w["threshold"] = np.exp(w.pop("log_threshold"))
    arch = cfg.get("architecture", "standard")
    if arch == "jumprelu" and "threshold" not in w:
        raise InputError(f"{where}: a jumprelu SAE needs a 'threshold' tensor; found {sorted(w)}")
    saved = meta.get("jaxsteer") or {}
    kind, extra = _kind(arch, cfg, w, saved, where)
    rescale = (
        bool(cfg.get("rescale_acts_by_decoder_norm", arch in ("batchtopk", "matryoshka_batchtopk")))
        if arch in ("topk", "batchtopk", "matryoshka_batchtopk")
        else False
    )
    decoder_bias = not (saved.get("decoder_bias") is False and not np.any(w.get("b_dec", 0)))
    config = SAEConfig(
        kind=kind,
        d_in=int(cfg["d_in"]),
        d_sae=int(cfg["d_sae"]),
        site=where_site[0],
        layer=where_site[1],
        dtype=_dtype_name(dtype or cfg.get("dtype", "float32"), where),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        rescale_acts_by_decoder_norm=rescale,
        decoder_bias=decoder_bias,
        model=str(meta.get("model_name") or ""),
        **extra,
    )
    params = {k: v for k, v in w.items() if k not in ("topk_threshold", "threshold")}
    if kind == "jumprelu":
        params["threshold"] = w["threshold"]
    elif kind in BATCH_KINDS:
        theta = w["topk_threshold"] if "topk_threshold" in w else w["threshold"].reshape(-1)[0]
        params["threshold"] = np.asarray(theta, np.float32).reshape(())
    if scale is not None:  # SAELens' fold_activation_norm_scaling_factor
        params.update(W_enc=params["W_enc"] * scale, W_dec=params["W_dec"] / scale, b_dec=params["b_dec"] / scale)
        if kind in BATCH_KINDS and rescale:
            params["threshold"] = params["threshold"] / scale
    if not decoder_bias:
        params.pop("b_dec", None)
    _check_shapes(config, params, where)
    dt = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    return SAE({k: jnp.asarray(v, dt) for k, v in params.items()}, config)


def _check_shapes(c: SAEConfig, params: dict, where: str) -> None:
    want = {"W_enc": (c.d_in, c.d_sae), "W_dec": (c.d_sae, c.d_in), "b_enc": (c.d_sae,), "b_dec": (c.d_in,)}
    if c.kind == "jumprelu":
        want["threshold"] = (c.d_sae,)
    for name, shape in want.items():
        if name in params and tuple(np.shape(params[name])) != shape:
            raise InputError(
                f"{where}: {name} has shape {tuple(np.shape(params[name]))}, expected {shape} "
                f"(d_in={c.d_in}, d_sae={c.d_sae})"
            )


def list_sae_ids(folder: str) -> list[str]:
    """The SAE ids of a release on disk: sub-folders (at any depth) holding `cfg.json` +
    weights or a Gemma Scope `params.npz`, as paths relative to `folder`.

    Args:
        folder: the release folder.

    Returns:
        The ids, sorted.
    """
    out = []
    for root, _, files in os.walk(folder):
        if (CFG_FILE in files and WEIGHTS_FILE in files) or GEMMA_SCOPE_FILE in files:
            out.append(os.path.relpath(root, folder))
    return sorted(out)


def load_saelens(
    path: str,
    sae_id: str | None = None,
    *,
    dtype: str | None = None,
    site: str | None = None,
    layer: int | None = None,
    fold_W_dec_norm: bool = False,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Read a SAELens directory as SAELens 6.54's `SAE.load_from_disk` reads it (module doc).

    Args:
        path: an SAE directory (`cfg.json` + `sae_weights.safetensors`, or Gemma Scope's
            `params.npz`), or a release folder holding several.
        sae_id: picks the sub-folder of a release folder (an error lists them when it is missing).
        dtype: 'float32' / 'bfloat16' (default: the file's).
        site: where the SAE reads, when the hook name is not one jaxsteer knows (needed for Gemma
            Scope's params.npz).
        layer: likewise (Gemma Scope's also comes from a `layer_N` folder).
        fold_W_dec_norm: `arch.fold_decoder_norm` after loading, as SAELens' option.
        norm_scaling_factor: the dataset constant of `normalize_activations='expected_average_only_in'`,
            folded in as SAELens does.

    Returns:
        The `SAE`.
    """
    folder = os.path.join(path, sae_id) if sae_id else path
    if not os.path.isdir(folder):
        raise NotFoundError(f"no SAE directory {folder!r}" + (f"; sae_ids: {list_sae_ids(path)}" if sae_id else ""))
    if os.path.exists(os.path.join(folder, GEMMA_SCOPE_FILE)) and not os.path.exists(os.path.join(folder, CFG_FILE)):
        sae = load_gemma_scope(folder, site=site, layer=layer, dtype=dtype)
    elif os.path.exists(os.path.join(folder, CFG_FILE)):
        with open(os.path.join(folder, CFG_FILE)) as f:
            cfg = json.load(f)
        sae = sae_from_saelens_config(
            cfg,
            _read_weights(folder),
            where=folder,
            dtype=dtype,
            site=site,
            layer=layer,
            norm_scaling_factor=norm_scaling_factor,
        )
    else:
        ids = list_sae_ids(folder)
        if not ids:
            raise NotFoundError(f"{folder}: no {CFG_FILE} or {GEMMA_SCOPE_FILE} here or below")
        raise InputError(f"{folder} is a release with {len(ids)} SAEs; pass sae_id= one of {ids}")
    return fold_decoder_norm(sae) if fold_W_dec_norm else sae


def load_gemma_scope(folder: str, *, site: str | None, layer: int | None = None, dtype: str | None = None) -> SAE:
    """A Gemma Scope `params.npz` (JumpReLU: `W_enc, W_dec, b_enc, b_dec, threshold`; the input
    is not centred by `b_dec`). Its file names no site: `site` is required, `layer` defaults to
    the `layer_N` in the folder's path.

    Args:
        folder: the folder holding `params.npz`.
        site: the site the SAE reads.
        layer: its layer (default: from the path).
        dtype: 'float32' / 'bfloat16' (default: the file's).

    Returns:
        The `jumprelu` `SAE`.
    """
    if layer is None:
        m = re.findall(r"layer_(\d+)", os.path.abspath(folder))
        layer = int(m[-1]) if m else None
    if site is None or layer is None:
        raise InputError(f"{folder}: a Gemma Scope params.npz names no hook; pass site= (e.g. 'resid_post') and layer=")
    with np.load(os.path.join(folder, GEMMA_SCOPE_FILE)) as data:
        w = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k], np.float32) for k in data.files}
    scaling = w.pop("scaling_factor", None)
    if scaling is not None and not np.allclose(scaling, 1.0):
        raise InputError(f"{folder}: a scaling_factor other than 1 (fine-tuning scaling) is not supported")
    missing = sorted({"W_enc", "W_dec", "b_enc", "b_dec", "threshold"} - set(w))
    if missing:
        raise InputError(f"{folder}: params.npz lacks {missing}")
    d_in, d_sae = w["W_enc"].shape
    cfg = {
        "architecture": "jumprelu",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "sae_lens_version": SAELENS_FORMAT,
        "metadata": {},
    }
    return sae_from_saelens_config(cfg, w, where=folder, dtype=dtype, site=site, layer=layer)


__all__ = [
    "save_saelens",
    "load_saelens",
    "load_gemma_scope",
    "list_sae_ids",
    "sae_from_saelens_config",
    "normalise_config",
    "hook_name",
    "parse_hook_name",
    "CFG_FILE",
    "WEIGHTS_FILE",
    "GEMMA_SCOPE_FILE",
]
