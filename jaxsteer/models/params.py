"""The model pytree: parameters stacked over layers plus a static `ModelConfig`.

Layout (matrices are stored `[in, out]`, so a projection is `x @ W`; norm weights are the
raw Hugging Face values, Gemma's `1 + w` offset is applied in the forward pass):

    embed        [V, d]
    unembed      [V, d]        only when embeddings are untied
    final_norm   [d]
    layers/
      attn_norm       [L, d]
      q_proj          [L, d, H*hd]     k_proj, v_proj  [L, d, KV*hd]
      q_bias          [L, H*hd]        k_bias, v_bias  [L, KV*hd]     (qkv_bias)
      q_norm, k_norm  [L, hd]                                         (qk_norm)
      o_proj          [L, H*hd, d]
      attn_post_norm  [L, d]                                          (sandwich_norms)
      mlp_norm        [L, d]
      gate_proj, up_proj [L, d, F]     down_proj [L, F, d]
      mlp_post_norm   [L, d]                                          (sandwich_norms)
      lime_router     [L, KV, L, KV]   (lime; layer l reads source layers j <= l)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..errors import InputError
from .config import ModelConfig


@struct.dataclass
class Model:
    """A decoder as data: `params` are pytree leaves, `config` is static (hashable).

    Attributes:
        params: the parameter pytree (see `param_shapes` for its layout).
        config: the static `ModelConfig`.
    """

    params: dict[str, Any]
    config: ModelConfig = struct.field(pytree_node=False)

    @property
    def dtype(self):
        return self.params["embed"].dtype

    def astype(self, dtype) -> Model:
        """Cast every parameter to `dtype`."""
        return dataclasses.replace(self, params=jax.tree_util.tree_map(lambda p: p.astype(dtype), self.params))

    def __repr__(self) -> str:
        c = self.config
        leaves = jax.tree_util.tree_leaves(self.params)
        n = sum(int(np.prod(p.shape)) for p in leaves)
        dtypes = sorted({str(p.dtype) for p in leaves})
        return (
            f"Model({c.architecture}, {c.n_layers} layers, d_model={c.d_model}, heads={c.n_heads}/{c.n_kv_heads}"
            f", vocab={c.vocab_size}, {n / 1e6:.1f}M params {'/'.join(dtypes)})"
        )

    def _repr_html_(self) -> str:
        from .display import html_table

        return html_table(repr(self), [])


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every parameter, keyed by '/'-joined path (e.g. 'layers/q_proj').

    Args:
        config: the model's config.

    Returns:
        `{path: shape}`; per-layer parameters are stacked over layers (leading axis L).
    """
    c = config
    L, d, F, H, KV, hd = c.n_layers, c.d_model, c.d_mlp, c.n_heads, c.n_kv_heads, c.head_dim
    shapes = {
        "embed": (c.vocab_size, d),
        "final_norm": (d,),
        "layers/attn_norm": (L, d),
        "layers/q_proj": (L, d, H * hd),
        "layers/k_proj": (L, d, KV * hd),
        "layers/v_proj": (L, d, KV * hd),
        "layers/o_proj": (L, H * hd, d),
        "layers/mlp_norm": (L, d),
        "layers/gate_proj": (L, d, F),
        "layers/up_proj": (L, d, F),
        "layers/down_proj": (L, F, d),
    }
    if not c.tie_word_embeddings:
        shapes["unembed"] = (c.vocab_size, d)
    if c.qkv_bias:
        shapes.update({"layers/q_bias": (L, H * hd), "layers/k_bias": (L, KV * hd), "layers/v_bias": (L, KV * hd)})
    if c.qk_norm:
        shapes.update({"layers/q_norm": (L, hd), "layers/k_norm": (L, hd)})
    if c.sandwich_norms:
        shapes.update({"layers/attn_post_norm": (L, d), "layers/mlp_post_norm": (L, d)})
    if c.lime:
        shapes["layers/lime_router"] = (L, KV, L, KV)
    return shapes


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{'layers/q_proj': x, 'embed': y} -> {'layers': {'q_proj': x}, 'embed': y}."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of `unflatten`."""
    out = {}
    for k, v in params.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, path + "/"))
        else:
            out[path] = v
    return out


def truncate(model: Model, n_layers: int) -> Model:
    """The first `n_layers` layers of `model` (a view: parameters are sliced, not copied), e.g. to
    stop a forward pass at the layer whose activation is wanted.

    Args:
        model: the model.
        n_layers: how many leading layers to keep.

    Returns:
        A `Model` whose config has `n_layers` layers.
    """
    c = model.config
    if not 1 <= n_layers <= c.n_layers:
        raise InputError(f"cannot keep {n_layers} layers of a {c.n_layers}-layer model")
    if n_layers == c.n_layers:
        return model
    cfg = dataclasses.replace(c, n_layers=n_layers, layer_types=c.layer_types[:n_layers])
    layers = jax.tree_util.tree_map(lambda a: a[:n_layers], model.params["layers"])
    return Model(params=dict(model.params, layers=layers), config=cfg)


def validate_params(params: dict[str, Any], config: ModelConfig) -> None:
    """Raise ValueError naming any missing, unexpected or mis-shaped parameter.

    Args:
        params: the nested parameter dict.
        config: the model's config.
    """
    expected = param_shapes(config)
    got = flatten(params)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing:
        raise InputError(f"missing parameters: {', '.join(missing)}")
    if unexpected:
        raise InputError(f"unexpected parameters: {', '.join(unexpected)}")
    for k, shape in expected.items():
        if tuple(got[k].shape) != shape:
            raise InputError(f"parameter {k} has shape {tuple(got[k].shape)}, expected {shape}")


def init_params(config: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Model:
    """Random model (normal weights, norm weights near their identity value), for tests and demos.
    A LIMe model gets the plain model's weights for the same key, plus `lime_router_init`.

    Args:
        config: the model's config.
        key: a `jax.random` key.
        dtype: the parameter dtype.
        scale: the standard deviation of the normal weights.

    Returns:
        A `Model`.
    """
    shapes = param_shapes(config)
    router = shapes.pop("layers/lime_router", None)  # its own key: the other weights equal the plain model's
    keys = jax.random.split(key, len(shapes))
    flat = {}
    for k, (path, shape) in zip(keys, sorted(shapes.items()), strict=True):
        if path.split("/")[-1].endswith("norm"):
            base = 0.0 if config.norm_offset else 1.0
            value = base + 0.1 * jax.random.normal(k, shape)
        else:
            value = scale * jax.random.normal(k, shape)
        flat[path] = value.astype(dtype)
    if router is not None:
        flat["layers/lime_router"] = lime_router_init(config, jax.random.fold_in(key, len(shapes))).astype(dtype)
    return Model(params=unflatten(flat), config=config)


def lime_identity_routing(config: ModelConfig) -> jax.Array:
    """LIMe routing `[L, KV, L, KV]` that reads only the current layer (each head its own): the
    plain decoder."""
    L, KV = config.n_layers, config.n_kv_heads
    return jnp.einsum("lj,rh->lrjh", jnp.eye(L), jnp.eye(KV))


def lime_router_init(config: ModelConfig, key: jax.Array) -> jax.Array:
    """The LIMe paper's initial routing: identity on the current layer, earlier layers' weights
    uniform in `+-sqrt(3 / fan_in)` with `fan_in = (l + 1) * KV` (layer l's inputs), later layers 0.

    Args:
        config: a LIMe model's config.
        key: a `jax.random` key.

    Returns:
        `[L, KV, L, KV]` float32.
    """
    L, KV = config.n_layers, config.n_kv_heads
    layer = jnp.arange(L)
    bound = jnp.sqrt(3.0 / ((layer + 1) * KV))[:, None, None, None]
    noise = jax.random.uniform(key, (L, KV, L, KV), jnp.float32, -1.0, 1.0) * bound
    earlier = (layer[None, :] < layer[:, None])[:, None, :, None]
    return jnp.where(earlier, noise, 0.0) + lime_identity_routing(config)


def as_numpy(model: Model) -> dict[str, np.ndarray]:
    """Flat dict of numpy arrays (for saving or comparing)."""
    return {k: np.asarray(v) for k, v in flatten(model.params).items()}
