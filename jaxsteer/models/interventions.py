"""Interventions as values: small frozen pytrees that say where they act and what they do.

Each intervention names a `site` (see `SITES`), optionally restricts itself to some
`layers` (static tuple of ints), `positions` (a mask over the token axis, `[T]` or `[B, T]`),
`heads` (static tuple, per-head sites only) and/or a data `mask` (`[L]`, `[L, T]` or
`[L, T, H]`, handy for vmapped sweeps), and transforms the activation there:

- `Steer`: add a vector (shared, per layer `[L, ...]`, or per token `[L, B, T, ...]`),
  times an optional scale (scalar or per token `[B, T]`).
- `Patch`: replace the activation with given values (a recorded trace `[L, B, T, ...]` or
  one array `[B, T, ...]` used at every selected layer).
- `Ablate`: replace with zeros or with a mean (given per layer, or the batch-and-position
  mean of the current run).
- `AdaptiveSteer`: a steering vector behind a per-token gate `sigmoid(w . x_t + b)` (token-wise
  adaptive scaling; trainable as the RL trainable kind `adaptive_steering`).
- `CrossRunPatch` / `OnRuns`: for several runs decoded side by side in one batch (rows
  run-major, e.g. `generate(..., runs=3)`): copy one run's activation into another's, or restrict
  any intervention to some of the runs. This is generation-time patching: each generated token
  sees the other run's activation at that very token.

A selection is a weight in [0, 1] per element, so `Patch` computes `x + w * (new - x)`:
masks may be soft, and sweeps are vmaps over masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..errors import InputError
from .config import ModelConfig
from .sites import parse_site
from .validation import check_finite, check_steer_size

# Site name -> (rank of the activation including batch, token axis, head axis or None, feature rank)
SITE_LAYOUT = {
    "resid_pre": (3, 1, None, 1),
    "attn_in": (3, 1, None, 1),
    "q": (4, 1, 2, 2),
    "k": (4, 1, 2, 2),
    "v": (4, 1, 2, 2),
    "pattern": (4, 2, 1, 1),
    "z": (4, 1, 2, 2),
    "attn_out": (3, 1, None, 1),
    "attn_to_resid": (3, 1, None, 1),
    "attn_to_mlp": (3, 1, None, 1),
    "resid_mid": (3, 1, None, 1),
    "mlp_in": (3, 1, None, 1),
    "mlp_out": (3, 1, None, 1),
    "resid_post": (3, 1, None, 1),
}
SITES = tuple(SITE_LAYOUT)
HEAD_SITES = tuple(s for s, lay in SITE_LAYOUT.items() if lay[2] is not None)


def check_site(site: str) -> None:
    """Raise InputError naming the valid sites unless `site` is a jaxsteer site name."""
    if site not in SITE_LAYOUT:
        raise InputError(
            f"unknown site {site!r}; sites are: {', '.join(SITES)} "
            "(or their TransformerLens names, e.g. 'blocks.10.hook_resid_post'; see jaxsteer.models.sites)"
        )


def resolve_site(site: str, layers: tuple[int, ...] | None, owner: str) -> tuple[str, tuple[int, ...] | None]:
    """`(site, layers)` for a site given by any name: a TransformerLens alias becomes the jaxsteer
    site, and a name with a layer (`blocks.10.hook_resid_post`) selects that layer.

    Args:
        site: a jaxsteer site or a TransformerLens name.
        layers: the layers given with it (None: all).
        owner: the intervention's name, for messages.

    Returns:
        `(site, layers)`.
    """
    name, layer = parse_site(site)
    if layer is not None:
        if layers is not None and tuple(layers) != (layer,):
            raise InputError(f"{owner}: site {site!r} names layer {layer} but layers={tuple(layers)}")
        layers = (layer,)
    return name, layers


def site_feature_shape(site: str, config: ModelConfig) -> tuple[int, ...] | None:
    """Shape after the leading [B, T] axes (None for `pattern`, whose last axis is the key length)."""
    c = config
    return {
        "q": (c.n_heads, c.head_dim),
        "z": (c.n_heads, c.head_dim),
        "k": (c.n_kv_heads, c.head_dim),
        "v": (c.n_kv_heads, c.head_dim),
        "pattern": None,
    }.get(site, (c.d_model,))


def site_n_heads(site: str, config: ModelConfig) -> int | None:
    """The size of `site`'s head axis (KV heads for k / v, query heads for q / z / pattern), or
    None for a site without one."""
    if site in ("k", "v"):
        return config.n_kv_heads
    if site in ("q", "z", "pattern"):
        return config.n_heads
    return None


def to_layout(arr: jax.Array, site: str, kind: str) -> jax.Array:
    """Reshape a positions (`[T]`/`[B,T]`), heads (`[H]`) or pos-heads (`[T,H]`) array to broadcast
    against the site's activation.

    Args:
        arr: the selection array.
        site: the site whose activation it will multiply.
        kind: "positions", "heads" or "pos_heads".

    Returns:
        `arr` reshaped.
    """
    rank, tok_ax, head_ax, _ = SITE_LAYOUT[site]
    shape = [1] * rank
    if kind == "positions":
        if arr.ndim == 1:
            shape[tok_ax] = arr.shape[0]
        else:
            shape[0], shape[tok_ax] = arr.shape
    elif kind == "heads":
        shape[head_ax] = arr.shape[0]
    elif kind == "pos_heads":
        shape[tok_ax], shape[head_ax] = arr.shape
        if head_ax < tok_ax:  # `pattern` is [B, H, T, S]: the [T, H] mask must be transposed, not reshaped
            arr = arr.T
    return arr.reshape(shape)


def _resolve_site_fields(iv: Any) -> None:
    """Canonicalise a frozen intervention's `site` and `layers` fields in place (`resolve_site`)."""
    site, layers = resolve_site(iv.site, iv.layers, type(iv).__name__)
    object.__setattr__(iv, "site", site)
    object.__setattr__(iv, "layers", layers)


class _Where:
    """Shared selection logic (mixed into the intervention dataclasses)."""

    site: str
    layers: tuple[int, ...] | None
    heads: tuple[int, ...] | None
    positions: Any
    mask: Any

    def __post_init__(self):
        _resolve_site_fields(self)

    def _check_where(self, config: ModelConfig, n_tokens: int | None) -> None:
        name = type(self).__name__
        check_site(self.site)
        check_finite(self.positions, f"{name}: positions")
        check_finite(self.mask, f"{name}: mask")
        if self.layers is not None:
            for l in self.layers:
                if not 0 <= int(l) < config.n_layers:
                    raise InputError(f"{name}: layer {l} out of range for a model with {config.n_layers} layers")
        if self.heads is not None:
            n_heads = site_n_heads(self.site, config)
            if n_heads is None:
                raise InputError(
                    f"{name}: heads given but site {self.site!r} has no head axis (head sites: {HEAD_SITES})"
                )
            for h in self.heads:
                if not 0 <= int(h) < n_heads:
                    raise InputError(f"{name}: head {h} out of range for site {self.site!r} with {n_heads} heads")
        if self.positions is not None:
            p = jnp.shape(self.positions)
            if len(p) not in (1, 2) or (n_tokens is not None and p[-1] != n_tokens):
                raise InputError(f"{name}: positions mask has shape {p}; expected [T] or [B, T] with T={n_tokens}")
        if self.mask is not None:
            m = jnp.shape(self.mask)
            if not m or m[0] != config.n_layers or len(m) > 3:
                raise InputError(
                    f"{name}: mask has shape {m}; expected [L], [L, T] or [L, T, H] with L={config.n_layers}"
                )
            if len(m) >= 2 and n_tokens is not None and m[1] != n_tokens:
                raise InputError(f"{name}: mask has shape {m}; its token axis should be {n_tokens}")
            if len(m) == 3:
                n_heads = site_n_heads(self.site, config)
                if n_heads is None or m[2] != n_heads:
                    raise InputError(f"{name}: mask has shape {m}; site {self.site!r} has {n_heads} heads")

    def _weight(self, layer: jax.Array, x: jax.Array) -> jax.Array:
        """Selection weight at this (traced) layer, broadcastable to the site activation `x`."""
        dtype = x.dtype
        w = jnp.ones((), dtype)
        if self.layers is not None:
            w = w * jnp.isin(layer, jnp.asarray(self.layers, jnp.int32)).astype(dtype)
        if self.heads is not None:
            n = x.shape[SITE_LAYOUT[self.site][2]]
            onehot = jnp.zeros((n,), dtype).at[jnp.asarray(self.heads)].set(1)
            w = w * to_layout(onehot, self.site, "heads")
        if self.positions is not None:
            w = w * to_layout(jnp.asarray(self.positions).astype(dtype), self.site, "positions")
        if self.mask is not None:
            m = jnp.asarray(self.mask)[layer].astype(dtype)
            if m.ndim == 1:
                m = to_layout(m, self.site, "positions")
            elif m.ndim == 2:
                m = to_layout(m, self.site, "pos_heads")
            w = w * m
        return w

    def generation_safe(self) -> bool:
        return self.positions is None and (self.mask is None or jnp.ndim(self.mask) == 1)


def _per_layer(values: jax.Array, layer: jax.Array, site_rank: int, per_layer_rank: int) -> jax.Array:
    return values[layer] if values.ndim == per_layer_rank else values


@struct.dataclass
class Steer(_Where):
    """Add `vector * scale` to the activation at `site` (default: the residual stream after the MLP).

    `feat` below is `[d_model]` for residual sites, `[H, head_dim]` for q/z, `[KV, head_dim]` for k/v.

    Attributes:
        vector: `[*feat]` (same at every selected layer), `[L, *feat]` (per layer), or
            `[L, B, T, *feat]` (per layer and token; forward only).
        scale: a scalar or per token `[B, T]` (forward only).
        positions: a 0/1 mask over the token axis, `[T]` or `[B, T]`.
        mask: a data mask `[L]`, `[L, T]` or `[L, T, H]` (handy for vmapped sweeps).
        site: where it acts (a name of `SITES` or a TransformerLens name).
        layers: the layers it acts at (default all).
        heads: the heads it acts on (per-head sites only; default all).
    """

    vector: jax.Array
    scale: Any = 1.0
    positions: Any = None
    mask: Any = None
    site: str = struct.field(pytree_node=False, default="resid_post")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    heads: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        self._check_where(config, n_tokens)
        if self.site == "pattern":
            raise InputError("Steer: cannot add a vector to the attention pattern; use Patch or Ablate")
        feat = site_feature_shape(self.site, config)
        assert feat is not None  # only "pattern" has no fixed feature shape, refused above
        v = jnp.shape(self.vector)
        nf = len(feat)
        ok = (
            v == feat
            or (len(v) == nf + 1 and v[1:] == feat and v[0] == config.n_layers)
            or (len(v) == nf + 3 and v[-nf:] == feat and v[0] == config.n_layers)
        )
        if not ok:
            raise InputError(
                f"Steer: vector has shape {v}; site {self.site!r} expects {feat}, "
                f"[L={config.n_layers}, *{feat}] or [L, B, T, *{feat}]"
            )
        s = jnp.shape(self.scale)
        if len(s) not in (0, 2) or (len(s) == 2 and n_tokens is not None and s[1] != n_tokens):
            raise InputError(f"Steer: scale has shape {s}; expected a scalar or [B, T={n_tokens}]")
        check_finite(self.vector, f"Steer at {self.site!r}: vector")
        check_finite(self.scale, f"Steer at {self.site!r}: scale")
        check_steer_size(
            self.vector,
            self.scale,
            config.d_model,
            f"Steer at {self.site!r}",
            additions=len(self.layers) if self.layers is not None else config.n_layers,
        )

    def generation_safe(self) -> bool:
        nf = 1 if SITE_LAYOUT[self.site][3] == 1 else 2
        return super().generation_safe() and jnp.ndim(self.scale) == 0 and jnp.ndim(self.vector) <= nf + 1

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        rank, _, _, nf = SITE_LAYOUT[self.site]
        vec = jnp.asarray(self.vector)
        if vec.ndim == nf + 1 or vec.ndim == nf + 3:
            vec = vec[layer]
        vec = vec.astype(x.dtype)
        scale = jnp.asarray(self.scale, x.dtype)
        if scale.ndim == 2:
            scale = scale.reshape(scale.shape + (1,) * nf)
        w = self._weight(layer, x)
        return x + w * scale * vec


@struct.dataclass
class Patch(_Where):
    """Replace the activation at `site` with `values` where selected.

    Attributes:
        values: `[L, B, T, *feat]` (e.g. another run's `trace[site]`; indexed by layer) or
            `[B, T, *feat]` (same at every selected layer). B may be 1 to broadcast.
        positions: a 0/1 mask over the token axis, `[T]` or `[B, T]`.
        mask: a data mask `[L]`, `[L, T]` or `[L, T, H]`.
        site: where it acts (default `resid_post`).
        layers: the layers it acts at (default all).
        heads: the heads it acts on (per-head sites only; default all).
    """

    values: jax.Array
    positions: Any = None
    mask: Any = None
    site: str = struct.field(pytree_node=False, default="resid_post")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    heads: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        self._check_where(config, n_tokens)
        rank = SITE_LAYOUT[self.site][0]
        v = jnp.shape(self.values)
        if len(v) not in (rank, rank + 1) or (len(v) == rank + 1 and v[0] != config.n_layers):
            raise InputError(
                f"Patch: values have shape {v}; site {self.site!r} expects [B, T, ...] (rank {rank}) "
                f"or [L={config.n_layers}, B, T, ...]"
            )
        feat = site_feature_shape(self.site, config)
        if feat is not None and tuple(v[-len(feat) :]) != feat:
            raise InputError(f"Patch: values have shape {v}; trailing axes should be {feat} for site {self.site!r}")
        tok_ax = SITE_LAYOUT[self.site][1] + (len(v) - rank)
        if n_tokens is not None and v[tok_ax] != n_tokens:
            raise InputError(f"Patch: values have {v[tok_ax]} tokens, the input has {n_tokens}")
        check_finite(self.values, f"Patch at {self.site!r}: values")

    def generation_safe(self) -> bool:
        return False

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        rank = SITE_LAYOUT[self.site][0]
        new = _per_layer(jnp.asarray(self.values), layer, rank, rank + 1).astype(x.dtype)
        w = self._weight(layer, x)
        return x + w * (new - x)


@struct.dataclass
class Ablate(_Where):
    """Zero (`mode='zero'`) or mean-ablate (`mode='mean'`) the activation at `site` where selected.

    Attributes:
        values: for `mode='mean'`, the mean (`[*feat]` or `[L, *feat]`, e.g. averaged over a
            dataset); without it the mean over the current batch and positions is used.
        positions: a 0/1 mask over the token axis, `[T]` or `[B, T]`.
        mask: a data mask `[L]`, `[L, T]` or `[L, T, H]`.
        site: where it acts (default `resid_post`).
        layers: the layers it acts at (default all).
        heads: the heads it acts on (per-head sites only; default all).
        mode: "zero" or "mean".
    """

    values: Any = None
    positions: Any = None
    mask: Any = None
    site: str = struct.field(pytree_node=False, default="resid_post")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    heads: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    mode: str = struct.field(pytree_node=False, default="zero")

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        self._check_where(config, n_tokens)
        if self.mode not in ("zero", "mean"):
            raise InputError(f"Ablate: mode must be 'zero' or 'mean', got {self.mode!r}")
        if self.values is not None:
            if self.mode != "mean":
                raise InputError("Ablate: values are only used with mode='mean'")
            feat = site_feature_shape(self.site, config)
            v = jnp.shape(self.values)
            if feat is None or not (v == feat or v == (config.n_layers, *feat)):
                raise InputError(f"Ablate: mean values have shape {v}; expected {feat} or [L, *{feat}]")
            check_finite(self.values, f"Ablate at {self.site!r}: mean values")

    def generation_safe(self) -> bool:
        return super().generation_safe() and (self.mode == "zero" or self.values is not None)

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        if self.mode == "zero":
            new = jnp.zeros_like(x)
        elif self.values is not None:
            nf = SITE_LAYOUT[self.site][3]
            vals = jnp.asarray(self.values)
            new = (vals[layer] if vals.ndim == nf + 1 else vals).astype(x.dtype)
        else:
            tok_ax = SITE_LAYOUT[self.site][1]
            new = jnp.mean(x, axis=(0, tok_ax), keepdims=True)
        w = self._weight(layer, x)
        return x + w * (new - x)


def rows_per_run(batch: int, runs: int) -> int:
    """Rows of each run in a run-major batch of `runs` equal runs; ValueError when it does not split."""
    if batch % runs:
        raise InputError(f"a batch of {batch} rows does not split into {runs} runs")
    return batch // runs


def run_rows(runs: int, selected: Sequence[int], batch: int) -> jax.Array:
    """Boolean `[batch]`: the rows of the `selected` runs in a run-major batch of `runs` runs."""
    onehot = jnp.zeros((runs,), bool).at[jnp.asarray(tuple(selected), jnp.int32)].set(True)
    return jnp.repeat(onehot, rows_per_run(batch, runs))


def _check_runs(name: str, runs: int, indices: Sequence[int]) -> None:
    if runs < 2:
        raise InputError(f"{name}: runs must be >= 2, got {runs}")
    for r in indices:
        if not 0 <= int(r) < runs:
            raise InputError(f"{name}: run {r} out of range for {runs} runs")


@struct.dataclass
class CrossRunPatch(_Where):
    """Copy run `source`'s activation at `site` into run `target`'s, where selected.

    The batch holds `runs` runs of equal size, run-major (run r is rows `[r * B0, (r + 1) * B0)`),
    as `generate(..., runs=...)` decodes them: all runs read the same tokens, so copying at every
    step patches the other run's activation at every generated token. Where the weight is exactly
    1 the source value is copied bitwise.

    Attributes:
        runs: how many runs the batch holds.
        source: the run copied from.
        target: the run copied into.
        head_mask: `[H]` weights at per-head sites (data, so one compiled program serves every head).
        positions: a 0/1 mask over the token axis, `[T]` (rows differ between runs).
        mask: a data mask `[L]`, `[L, T]` or `[L, T, H]`.
        site: where it acts (default `z`).
        layers: the layers it acts at (default all).
        heads: the heads it acts on (static; default all).
    """

    runs: int = struct.field(pytree_node=False, default=2)
    source: int = struct.field(pytree_node=False, default=1)
    target: int = struct.field(pytree_node=False, default=0)
    head_mask: Any = None
    positions: Any = None
    mask: Any = None
    site: str = struct.field(pytree_node=False, default="z")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    heads: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        self._check_where(config, n_tokens)
        _check_runs("CrossRunPatch", self.runs, (self.source, self.target))
        if self.source == self.target:
            raise InputError("CrossRunPatch: source and target are the same run")
        if self.positions is not None and jnp.ndim(self.positions) != 1:
            raise InputError("CrossRunPatch: positions must be a [T] mask (rows differ between runs)")
        if self.head_mask is not None:
            n_heads = site_n_heads(self.site, config)
            if n_heads is None or jnp.shape(self.head_mask) != (n_heads,):
                raise InputError(
                    f"CrossRunPatch: head_mask has shape {jnp.shape(self.head_mask)}; site "
                    f"{self.site!r} needs [{n_heads}] (head sites: {HEAD_SITES})"
                )
            check_finite(self.head_mask, "CrossRunPatch: head_mask")

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        xr = x.reshape(self.runs, rows_per_run(x.shape[0], self.runs), *x.shape[1:])
        src, tgt = xr[self.source], xr[self.target]
        w = self._weight(layer, tgt)
        if self.head_mask is not None:
            w = w * to_layout(jnp.asarray(self.head_mask, x.dtype), self.site, "heads")
        w = jnp.broadcast_to(w, tgt.shape)
        new = jnp.where(w == 1, src, jnp.where(w == 0, tgt, tgt + w * (src - tgt)))
        return xr.at[self.target].set(new).reshape(x.shape)


@struct.dataclass
class OnRuns:
    """Apply `intervention` only to the rows of some runs; other rows keep their activation bitwise.

    Attributes:
        intervention: the intervention to apply.
        runs: how many run-major runs the batch holds (as in `CrossRunPatch`).
        selected: the runs it applies to.
    """

    intervention: Any
    runs: int = struct.field(pytree_node=False, default=2)
    selected: tuple[int, ...] = struct.field(pytree_node=False, default=(0,))

    @property
    def site(self) -> str:
        return self.intervention.site

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        _check_runs("OnRuns", self.runs, self.selected)
        if not self.selected:
            raise InputError("OnRuns: no run selected")
        self.intervention.check(config, n_tokens)

    def generation_safe(self) -> bool:
        return self.intervention.generation_safe()

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        rows = run_rows(self.runs, self.selected, x.shape[0])
        return jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), self.intervention.apply(x, layer), x)


def _check_residual_map(iv: Any, arrays: Sequence[str], config: ModelConfig) -> None:
    """Checks shared by per-token maps of residual-width sites: the site, each of `arrays` `[d]` or
    `[L, d]` and finite, the layers in range."""
    name = type(iv).__name__
    check_site(iv.site)
    if SITE_LAYOUT[iv.site][0] != 3:
        raise InputError(f"{name}: site {iv.site!r} is not a residual-width [B, T, d] site")
    L, d = config.n_layers, config.d_model
    for a in arrays:
        s = jnp.shape(getattr(iv, a))
        if s not in ((d,), (L, d)):
            raise InputError(f"{name}: {a} has shape {s}; expected [{d}] or [{L}, {d}]")
        check_finite(getattr(iv, a), f"{name}.{a}")
    for l in iv.layers or ():
        if not 0 <= int(l) < L:
            raise InputError(f"{name}: layer {l} out of range for {L} layers")


@struct.dataclass
class AdaptiveSteer:
    """A steering vector with a per-token gate computed from the residual it is added to.

        x_t  ->  x_t + scale * sigmoid(w . x_t + b) * vector

    The gate reads the activation *before* the addition, in float32, with no normalisation of
    `x_t` (so `w` lives on the residual's scale; RMS-normalising would be a different
    parameterisation). Everything is a pytree leaf except `site` and `layers`, so `jax.grad` trains
    `vector`, `w` and `b` together. The gate depends only on the current token's activation, so it
    works in `generate` as well as in `forward`. Init suggestion: `w = 0, b = 0` (gate 0.5
    everywhere); a constant gate `sigmoid(b)` is then an ordinary `Steer` with that scale.

    Attributes:
        vector: `[d]` (shared) or `[L, d]` (per layer).
        w: the gate's weights, `[d]` or `[L, d]`.
        b: the gate's bias, a scalar or `[L]`.
        scale: multiplies the gated vector.
        site: a residual-width site (default `resid_post`).
        layers: the layers it acts at (default all).
    """

    vector: jax.Array
    w: jax.Array
    b: Any = 0.0
    scale: Any = 1.0
    site: str = struct.field(pytree_node=False, default="resid_post")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    __post_init__ = _Where.__post_init__

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        _check_residual_map(self, ("vector", "w"), config)
        L = config.n_layers
        if jnp.shape(self.b) not in ((), (L,)):
            raise InputError(f"AdaptiveSteer: b has shape {jnp.shape(self.b)}; expected a scalar or [{L}]")
        if jnp.ndim(self.scale) != 0:
            raise InputError("AdaptiveSteer: scale must be a scalar (the gate is the per-token scale)")
        for name in ("b", "scale"):
            check_finite(getattr(self, name), f"AdaptiveSteer.{name}")

    def generation_safe(self) -> bool:
        return True

    def gate(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        """The gate `[B, T]` (float32) for activation `x [B, T, d]` at `layer`."""
        w = jnp.asarray(self.w)
        w = (w[layer] if w.ndim == 2 else w).astype(jnp.float32)
        b = jnp.asarray(self.b, jnp.float32)
        b = b[layer] if b.ndim == 1 else b
        return jax.nn.sigmoid(x.astype(jnp.float32) @ w + b)

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        vec = jnp.asarray(self.vector)
        vec = (vec[layer] if vec.ndim == 2 else vec).astype(jnp.float32)
        g = self.gate(x, layer) * jnp.asarray(self.scale, jnp.float32)
        if self.layers is not None:
            g = g * jnp.isin(layer, jnp.asarray(self.layers, jnp.int32)).astype(jnp.float32)
        return x + (g[..., None] * vec).astype(x.dtype)


@struct.dataclass
class Hook:
    """Any jittable function of the activation at `site`, like a TransformerLens hook or an nnsight edit.

    `Hook(site, fn)` maps `x -> fn(x, layer)` (or `fn(x, layer, params)` when `params` is given);
    `layer` is the layer index as a traced int32 scalar (the layers run in one `lax.scan`). `fn`
    must return an array of the activation's shape and dtype. `fn` is static: define it once (a
    new lambda per call recompiles); put arrays you want to vary, differentiate or vmap over in
    `params` (a pytree), not in `fn`'s closure. In `generate`, `fn` sees the tokens of each call
    (the prompt, then `[B, 1, ...]` per new token), so a function of one token's activation
    behaves as in `forward`.

        Hook("resid_post", lambda x, l, v: x + v[l], params=vectors)  # == Steer(vectors)
        Hook("z", lambda x, l: x.at[:, :, 4].set(0), layers=(5, 6))  # == Ablate(site="z", layers=(5, 6), heads=(4,))

    Attributes:
        site: where it acts.
        fn: the function (static).
        params: a pytree passed to `fn` as its third argument (None: `fn` takes two).
        layers: the layers it acts at (elsewhere the activation passes unchanged; default all).
    """

    site: str = struct.field(pytree_node=False)
    fn: Any = struct.field(pytree_node=False)
    params: Any = None
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"Hook: fn must be callable, got {self.fn!r}")
        _resolve_site_fields(self)

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        check_site(self.site)
        for l in self.layers or ():
            if not 0 <= int(l) < config.n_layers:
                raise InputError(f"Hook: layer {l} out of range for a model with {config.n_layers} layers")
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.params)[0]:
            check_finite(leaf, f"Hook at {self.site!r}: params{jax.tree_util.keystr(path)}")

    def generation_safe(self) -> bool:
        return True

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        y = self.fn(x, layer) if self.params is None else self.fn(x, layer, self.params)
        if not hasattr(y, "shape") or y.shape != x.shape:
            raise InputError(
                f"Hook at {self.site!r}: fn returned shape {getattr(y, 'shape', type(y).__name__)}; "
                f"it must keep the activation's shape {x.shape}"
            )
        y = y.astype(x.dtype)
        if self.layers is None:
            return y
        return jnp.where(jnp.isin(layer, jnp.asarray(self.layers, jnp.int32)), y, x)


@struct.dataclass
class Affine:
    """A per-dimension affine map of the activation, `x -> scale * x + shift` (LinEAS's steering map).

    Computed in float32 and cast back; `scale = 1, shift = 0` is the identity exactly. Depends on
    each token's own activation only, so it works in `generate` as well as in `forward`
    (`jaxsteer.steering.lineas` trains it).

    Attributes:
        scale: `[d]` (shared) or `[L, d]` (per layer); with `index`, a bank `[K, d]` / `[K, L, d]`.
        shift: shaped as `scale`.
        index: `[B]` ints: row b uses bank entry `index[b]` (one map per batch row, as `RowSteer`
            does for vectors); None: no bank.
        site: a residual-width site (default `mlp_in`, the MLP's normalised input).
        layers: the layers it acts at (default all).
    """

    scale: jax.Array
    shift: jax.Array
    index: Any = None
    site: str = struct.field(pytree_node=False, default="mlp_in")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    __post_init__ = _Where.__post_init__  # TransformerLens site names, as for the other interventions

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        if self.index is None:
            return _check_residual_map(self, ("scale", "shift"), config)
        banks = {"scale": jnp.shape(self.scale), "shift": jnp.shape(self.shift)}
        L, d = config.n_layers, config.d_model
        if banks["scale"] != banks["shift"] or banks["scale"][1:] not in ((d,), (L, d)):
            raise InputError(
                f"Affine: with an index, scale and shift are banks [K, {d}] or [K, {L}, {d}] of one "
                f"shape; got {banks['scale']} and {banks['shift']}"
            )
        if jnp.ndim(self.index) != 1:
            raise InputError(f"Affine: index must be [B] integers, got shape {jnp.shape(self.index)}")
        probe = dataclasses.replace(self, scale=jnp.zeros((d,)), shift=jnp.zeros((d,)), index=None)
        _check_residual_map(probe, (), config)  # the site and layers
        for name in ("scale", "shift"):
            check_finite(getattr(self, name), f"Affine.{name}")

    def generation_safe(self) -> bool:
        return True

    def _param(self, a: Any, layer: jax.Array) -> jax.Array:
        """scale or shift at this layer, `[d]` or (with an index) `[B, 1, d]`, float32."""
        a = jnp.asarray(a)
        if self.index is None:
            return (a[layer] if a.ndim == 2 else a).astype(jnp.float32)
        a = a[jnp.asarray(self.index)]
        return (a[:, layer] if a.ndim == 3 else a)[:, None, :].astype(jnp.float32)

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        scale, shift = self._param(self.scale, layer), self._param(self.shift, layer)
        y = (x.astype(jnp.float32) * scale + shift).astype(x.dtype)
        if self.layers is None:
            return y
        return jnp.where(jnp.isin(layer, jnp.asarray(self.layers, jnp.int32)), y, x)


Intervention = Steer | Patch | Ablate


def as_tuple(interventions: Any) -> tuple:
    """Accept one intervention, a sequence of them, or None."""
    if interventions is None:
        return ()
    if isinstance(interventions, (Steer, Patch, Ablate)) or hasattr(interventions, "apply"):
        return (interventions,)
    return tuple(interventions)


def check_all(interventions: Sequence, config: ModelConfig, n_tokens: int | None) -> None:
    """Check every intervention against the model (`iv.check`); TypeError for a non-intervention.

    Args:
        interventions: the interventions.
        config: the model's config.
        n_tokens: the token count T of the run (None: unknown, as in `generate`).
    """
    for iv in interventions:
        if not hasattr(iv, "apply") or not hasattr(iv, "check"):
            raise TypeError(f"not an intervention: {iv!r}")
        iv.check(config, n_tokens)
