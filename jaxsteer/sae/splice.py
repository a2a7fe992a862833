"""Using an SAE inside the model: the `Splice` intervention, site activations, feature
activations, top contexts.

`Splice(sae)` replaces the activation at the SAE's site and layer by its reconstruction. It is an
ordinary jaxsteer intervention value (a pytree with `check` / `apply` / `generation_safe`), so it
composes with `Steer` / `Patch` / `Ablate` in a list and works in `forward` and `generate`.

- `keep_error=True` adds back the SAE's error `x - x_hat` (held constant, as SAELens'
  `use_error_term` does): the model's output is unchanged, but gradients and `feature_delta`
  act through the features.
- `feature_delta` (`[d_sae]` or `[B, T, d_sae]`) is added to the latents before decoding: steer
  along features, or take `jax.grad` w.r.t. it at zero for attribution patching per feature.
- `feature_scale` (`[d_sae]`) multiplies the latents before decoding: 0 ablates a feature, 2
  doubles it. With `keep_error=True` the output is `x + sum_f (scale_f - 1) z_f W_dec[f]`: only
  the scaled features change, wherever they fire, in `forward` and `generate`.
- `positions` (`[T]` or `[B, T]`, weights in [0, 1]) restricts the splice to some tokens.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..errors import InputError
from ..models.decoder import forward
from ..models.interventions import SITES, site_feature_shape
from ..models.params import Model, truncate
from ..models.validation import check_finite
from .arch import SAE, decode, encode, reconstruct


@struct.dataclass
class Splice:
    """Replace the activation at `site` / `layers` by the SAE's reconstruction `decode(encode(x))`.

    Attributes:
        sae: the SAE.
        feature_delta: `[d_sae]` or `[B, T, d_sae]` added to the latents before decoding (None: none).
        feature_scale: `[d_sae]` multiplying the latents before decoding (None: none; 0 ablates).
        positions: `[T]` or `[B, T]` weights in [0, 1]: splice only there (None: every token).
        residual: a residual SAE whose reconstruction of the remainder is added (SAE Boost).
        keep_error: add back the error `x - x_hat`, held constant (SAELens' `use_error_term`).
        site: where it acts (default: the SAE's own).
        layers: the layers it acts at (default: the SAE's own).
    """

    sae: SAE
    feature_delta: Any = None
    feature_scale: Any = None
    positions: Any = None
    residual: SAE | None = None
    keep_error: bool = struct.field(pytree_node=False, default=False)
    site: str | None = struct.field(pytree_node=False, default=None)
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        if self.site is None:
            object.__setattr__(self, "site", self.sae.config.site)
        layers = (self.sae.config.layer,) if self.layers is None else self.layers
        object.__setattr__(self, "layers", tuple(int(l) for l in layers))

    def check(self, config, n_tokens: int | None = None) -> None:
        if self.site not in SITES or self.site in ("q", "k", "v", "pattern"):
            raise InputError(
                f"Splice: site {self.site!r} must be a residual-width site (resid_pre, attn_out, mlp_out, "
                "resid_post, ...) or z (all heads flattened, as SAELens' hook_z SAEs)"
            )
        width = site_width(self.site, config)
        if self.sae.config.d_in != width:
            raise InputError(
                f"Splice: the SAE reads d_in={self.sae.config.d_in}; site {self.site!r} of this model has width {width}"
            )
        assert self.layers is not None  # filled by __post_init__
        for l in self.layers:
            if not 0 <= l < config.n_layers:
                raise InputError(f"Splice: layer {l} out of range for a model with {config.n_layers} layers")
        if self.positions is not None:
            p = jnp.shape(self.positions)
            if len(p) not in (1, 2) or (n_tokens is not None and p[-1] != n_tokens):
                raise InputError(f"Splice: positions has shape {p}; expected [T] or [B, T] with T={n_tokens}")
        if self.feature_delta is not None and jnp.shape(self.feature_delta)[-1] != self.sae.config.d_sae:
            raise InputError(
                f"Splice: feature_delta has shape {jnp.shape(self.feature_delta)}; "
                f"last axis should be d_sae={self.sae.config.d_sae}"
            )
        if self.feature_scale is not None and jnp.shape(self.feature_scale) != (self.sae.config.d_sae,):
            raise InputError(
                f"Splice: feature_scale has shape {jnp.shape(self.feature_scale)}; "
                f"expected [d_sae] = ({self.sae.config.d_sae},)"
            )
        check_finite(self.feature_delta, "Splice.feature_delta")
        check_finite(self.feature_scale, "Splice.feature_scale")
        for path, leaf in jax.tree_util.tree_leaves_with_path(self.sae.params):
            check_finite(leaf, f"Splice: SAE parameter {jax.tree_util.keystr(path)}")

    def generation_safe(self) -> bool:
        return self.positions is None and (self.feature_delta is None or jnp.ndim(self.feature_delta) == 1)

    def _spliced(self, x: jax.Array) -> jax.Array:
        if self.site == "z":  # [B, T, H, hd]: the SAE reads the heads flattened head-major, as SAELens' hook_z
            return self._spliced_flat(x.reshape(*x.shape[:-2], -1)).reshape(x.shape)
        return self._spliced_flat(x)

    def _spliced_flat(self, x: jax.Array) -> jax.Array:
        z = encode(self.sae, x)
        x_hat = decode(self.sae, z)
        if self.feature_delta is not None or self.feature_scale is not None:
            edited = z if self.feature_scale is None else z * jnp.asarray(self.feature_scale, z.dtype)
            if self.feature_delta is not None:
                edited = edited + jnp.asarray(self.feature_delta, z.dtype)
            out = decode(self.sae, edited)
        else:
            out = x_hat
        if self.residual is not None:  # SAE Boost: the residual SAE reconstructs what the base missed
            r = reconstruct(self.residual, x.astype(x_hat.dtype) - x_hat)
            x_hat, out = x_hat + r, out + r
        out = out.astype(x.dtype)
        if self.keep_error:
            out = out + (x - jax.lax.stop_gradient(x_hat.astype(x.dtype)))
        if self.positions is not None:
            w = jnp.asarray(self.positions).astype(x.dtype)
            w = w[None, :, None] if w.ndim == 1 else w[:, :, None]
            out = x + w * (out - x)
        return out

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        selected = jnp.isin(layer, jnp.asarray(self.layers, jnp.int32))
        return jax.lax.cond(selected, self._spliced, lambda x: x, x)


def site_width(site: str, config) -> int:
    """The width an SAE on `site` reads: d_model, or n_heads * head_dim for `z` (heads flattened)."""
    feat = site_feature_shape(site, config)
    if feat is None:
        raise InputError(f"site {site!r} has no fixed width (its last axis is the key length)")
    return int(np.prod(feat))


def site_activations(model: Model, tokens, site: str, layers: tuple[int, ...], attention_mask=None) -> jax.Array:
    """`[len(layers), B, T, d]` activations at `site`, running only up to `max(layers)`."""
    small = truncate(model, max(layers) + 1)
    _, trace = forward(small, jnp.asarray(tokens), attention_mask=attention_mask, record=(site,), return_logits=False)
    return trace[site][jnp.asarray(layers)]


def feature_acts(model: Model, sae: SAE, tokens, attention_mask=None) -> jax.Array:
    """SAE latents `[B, T, d_sae]` at the SAE's site and layer (the forward stops at that layer;
    a `z` SAE reads the heads flattened).

    Args:
        model: the model.
        sae: the SAE.
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]` 0/1 (None: no padding).

    Returns:
        `[B, T, d_sae]`.
    """
    acts = site_activations(model, tokens, sae.config.site, (sae.config.layer,), attention_mask)[0]
    return encode(sae, acts.reshape(*acts.shape[:2], -1))


def top_contexts(
    model: Model,
    sae: SAE,
    windows: np.ndarray,
    features,
    *,
    n: int = 10,
    batch: int = 8,
    tokenizer: Any = None,
    width: int = 8,
) -> dict[int, list[dict]]:
    """Top-`n` activating tokens per feature over token `windows [N, T]`, with `width` tokens of
    context on the left: `{feature: [{"value", "row", "pos", "context"}...]}`.

    Args:
        model: the model.
        sae: the SAE.
        windows: ids `[N, T]`.
        features: the feature indices to report.
        n: contexts per feature.
        batch: windows per forward pass.
        tokenizer: decodes the contexts (None: ids).
        width: tokens of left context.

    Returns:
        `{feature: [{"value", "row", "pos", "context"}, ...]}`, highest first.
    """
    features = [int(f) for f in features]
    fa = jax.jit(lambda m, s, t: feature_acts(m, s, t)[..., jnp.asarray(features)])
    vals = np.concatenate(
        [np.asarray(fa(model, sae, jnp.asarray(windows[i : i + batch]))) for i in range(0, len(windows), batch)]
    )
    out: dict[int, list[dict]] = {}
    for j, f in enumerate(features):
        flat = vals[..., j].reshape(-1)
        best = np.argsort(-flat)[:n]
        rows = []
        for b in best:
            r, p = divmod(int(b), windows.shape[1])
            ids = windows[r, max(0, p - width) : p + 1]
            text = tokenizer.decode(ids) if tokenizer is not None else " ".join(map(str, ids))
            rows.append({"value": float(flat[b]), "row": r, "pos": p, "context": text})
        out[f] = rows
    return out


__all__ = ["Splice", "site_width", "site_activations", "feature_acts", "top_contexts"]
