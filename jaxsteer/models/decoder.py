"""The one decoder: embeddings, a `lax.scan` over stacked layers, final norm and unembedding.

Every named site inside a layer passes through `_Sites.visit`, which applies the
interventions aimed at that site and records the value if asked. Sites in order:

    resid_pre -> attn_in (= norm(resid_pre)) -> q, k, v (after bias and q/k norm, before RoPE)
    -> pattern [B, H, T, S] -> z [B, T, H, hd] -> attn_out (after o_proj and any post-norm)
    -> [attn_to_resid, attn_to_mlp] -> resid_mid -> mlp_in -> mlp_out -> resid_post

`attn_to_resid` and `attn_to_mlp` are the attention output on its two routes: the one added to
the residual stream (`resid_mid = resid_pre + attn_to_resid`) and the one the MLP reads
(`mlp_in = norm(resid_mid + attn_to_mlp - attn_to_resid)`). Both equal `attn_out` unless an
intervention routes them apart (they are only computed when something records or targets them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, cast, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ..errors import InputError
from .config import ModelConfig
from .controls import (
    bind_controls,
    check_rows,
    conditions,
    needs_prompt_read,
    prefill_split,
    prepare_controls_with,
    prompt_context,
    reads_generated,
)
from .interventions import SITES, as_tuple, check_all, check_site
from .params import Model, truncate
from .relevance import activation as lrp_activation
from .relevance import check_rules, half_rule
from .sites import parse_site
from .validation import check_binary_mask, check_token_ids

_NEG = -1e30  # finite "minus infinity": a fully masked row never turns into NaN


class Trace(dict):
    """Recorded activations, site name -> array stacked over layers `[L, B, T, ...]`.

    A dict with attribute access (`trace.resid_post`), registered as a JAX pytree. Indexing
    also takes a layer and TransformerLens names, as a TransformerLens cache does:
    `trace["resid_post", 10]`, `trace["blocks.10.hook_resid_post"]` and
    `trace["hook_resid_post"]` (all layers) all work."""

    def __getitem__(self, key):
        if isinstance(key, tuple):
            if len(key) != 2:
                raise KeyError(f"index a trace with a site name or (site, layer), got {key!r}")
            return self[key[0]][key[1]]
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        site, layer = parse_site(key) if isinstance(key, str) else (key, None)
        if not dict.__contains__(self, site):
            raise KeyError(f"site {key!r} was not recorded (recorded: {sorted(self)})")
        values = dict.__getitem__(self, site)
        return values if layer is None else values[layer]

    def __getattr__(self, name: str):
        try:
            return dict.__getitem__(self, name)
        except KeyError:
            raise AttributeError(f"site {name!r} was not recorded (recorded: {sorted(self)})") from None

    def __repr__(self) -> str:
        from .display import array_summary

        inner = ", ".join(f"{k}: {array_summary(v)}" for k, v in sorted(self.items()))
        return f"Trace({inner})"

    def _repr_html_(self) -> str:
        from .display import html_table

        return html_table("Trace", [(k, v) for k, v in sorted(self.items())])


jax.tree_util.register_pytree_node(
    Trace,
    lambda t: (tuple(t[k] for k in sorted(t)), tuple(sorted(t))),
    lambda keys, vals: Trace(zip(keys, vals, strict=True)),
)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float, constant_scale: bool = False) -> jax.Array:
    """RMSNorm computed in float32. Llama style (`offset=0`): `w * y.astype(dtype)`;
    Gemma style (`offset=1`): `(y * (1 + w)).astype(dtype)`, exactly as in transformers.
    `constant_scale`: the same value, with `1 / rms(x)` a constant for gradients (LRP's LN-rule).

    Args:
        x: activations `[..., d]`.
        weight: `[d]`.
        eps: the epsilon under the square root.
        offset: 0 (Llama) or 1 (Gemma).
        constant_scale: hold `1 / rms(x)` constant for gradients.

    Returns:
        The normalised activations, in `x`'s dtype.
    """
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if constant_scale:
        inv_rms = jax.lax.stop_gradient(inv_rms)
    y = x32 * inv_rms
    if offset:
        return (y * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * y.astype(x.dtype)


def rope_tables(inv_freq: np.ndarray, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape `[B, T, head_dim]` (float32) for integer positions `[B, T]`."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on `x [B, T, n, hd]` with tables `[B, T, hd]`."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def _activation(name: str):
    if name == "silu":
        return jax.nn.silu
    if name == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    raise InputError(f"unknown activation {name!r}")


class _Sites:
    """Applies interventions and records activations at named sites within one layer."""

    def __init__(self, interventions: Sequence, record: frozenset, layer: jax.Array):
        self.by_site: dict[str, list] = {}
        for iv in interventions:
            self.by_site.setdefault(iv.site, []).append(iv)
        self.record = record
        self.layer = layer
        self.recorded: dict[str, jax.Array] = {}

    def visit(self, name: str, x: jax.Array) -> jax.Array:
        for iv in self.by_site.get(name, ()):
            x = iv.apply(x, self.layer)
        if name in self.record:
            self.recorded[name] = x
        return x

    def touches(self, name: str) -> bool:
        return name in self.record or name in self.by_site


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_PROJECTIONS = PROJECTIONS[:4]  # q/k/v/o


def _proj(x: jax.Array, p: dict[str, Any], name: str) -> jax.Array:
    """`x @ W`, plus a low-rank adapter `(x @ a) @ b` when `p["lora"][name]` holds one.

    Adapters live in `params["layers"]["lora"][name] = {"a": [L, in, r], "b": [L, r, out]}` (any
    scale folded into `b`); they are never merged into W, so LoRA training, low-rank ES
    perturbations (vmapped over a population) and SVD-parameterised adapters share this path.
    An optional `"s": [L, r]` scales the rank axis between the factors, `((x @ a) * s) @ b` (ESSA's
    `U diag(s) V^T`: U and V stay shared across a vmapped population, only s is per member); an
    optional `"core": [L, r, r']` with `"s_out": [L, r']` follows it, `((((x @ a) * s) @ core) * s_out) @ b`
    (ESSA's factor-wise form `U_a diag(s_a) (V_a^T U_b) diag(s_b) V_b^T`)."""
    y = x @ p[name]
    adapter = p.get("lora", {}).get(name)
    if adapter is not None:
        t = x @ adapter["a"].astype(x.dtype)
        if "s" in adapter:
            t = t * adapter["s"].astype(x.dtype)
        if "core" in adapter:
            t = (t @ adapter["core"].astype(x.dtype)) * adapter["s_out"].astype(x.dtype)
        y = y + (t @ adapter["b"].astype(x.dtype))
    return y


ATTENTION = ("auto", "einsum", "xla", "cudnn")


def attention_impl(config: ModelConfig, attention: str, record_pattern: bool = False) -> str:
    """Resolve the attention path: "einsum" or a `jax.nn.dot_product_attention` implementation.

    "auto" takes `dot_product_attention` (JAX picks the kernel: XLA today, on every backend)
    unless the model has an attention logit softcap or the `pattern` site is recorded or
    intervened on, which only the einsum path computes. "xla" / "cudnn" force that kernel
    (cuDNN: GPU, bfloat16 / float16) and refuse what they cannot express.

    Args:
        config: the model's config.
        attention: "auto", "einsum", "xla" or "cudnn".
        record_pattern: the `pattern` site is recorded or intervened on (or the AH-rule holds it).

    Returns:
        "einsum", "xla" or "cudnn" (or "auto": `dot_product_attention` choosing its kernel).
    """
    if attention not in ATTENTION:
        raise InputError(f"attention must be one of {ATTENTION}, got {attention!r}")
    needs_einsum = bool(config.attn_logit_softcap) or record_pattern
    if attention == "auto":
        return "einsum" if needs_einsum else "auto"
    if attention != "einsum" and needs_einsum:
        what = (
            "an attention logit softcap"
            if config.attn_logit_softcap
            else "the `pattern` site (recorded, intervened on or held by the AH-rule)"
        )
        raise InputError(f"attention={attention!r} cannot compute {what}; use 'auto' or 'einsum'")
    return attention


def _attention(
    c: ModelConfig, q, k, v, q_pos, k_pos, window, sites: _Sites, attention: str, constant_pattern: bool = False
) -> jax.Array:
    """Attention output z `[B, T, H, hd]` from q `[B, T, H, hd]` and k, v `[B, S, KV, hd]` (RoPE applied).

    A key is visible when it is a real slot (`k_pos >= 0`), not in the future and within the
    layer's window. Grouped-query attention never repeats K/V. `constant_pattern`: the
    probabilities are constants for gradients (LRP's AH-rule; einsum path only)."""
    B, T, H, hd = q.shape
    KV = k.shape[2]
    diff = q_pos[:, :, None] - k_pos[:, None, :]  # [B, T, S]
    allowed = (k_pos[:, None, :] >= 0) & (diff >= 0) & (diff < window)
    if attention != "einsum":
        impl = None if attention == "auto" else cast(Literal["xla", "cudnn"], attention)  # checked by attention_impl
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], scale=c.softmax_scale, implementation=impl)
    qg = q.reshape(B, T, KV, H // KV, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32) * c.softmax_scale
    if c.attn_logit_softcap:
        scores = softcap(scores, c.attn_logit_softcap)
    scores = jnp.where(allowed[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1)
    if constant_pattern:
        probs = jax.lax.stop_gradient(probs)
    if sites.touches("pattern"):
        pattern = sites.visit("pattern", probs.reshape(B, H, T, -1))
        probs = pattern.reshape(probs.shape)
    return jnp.einsum("bkgts,bskd->btkgd", probs.astype(q.dtype), v).reshape(B, T, H, hd)


LIME_ROUTE = "lime_route"  # trace entry of LIMe's routing weights `[L, KV, L, KV]` (not an intervention site)


def lime_mix(k: jax.Array, v: jax.Array, router: jax.Array, buffer: jax.Array, layer: jax.Array):
    """LIMe (Layer-Integrated Memory, arXiv 2502.09245): the keys and values a layer attends with
    are a learned mix of every layer's so far, per KV head.

    Layer `l` writes its own keys and values (after bias and q/k norm, before RoPE) into `buffer
    [L, B, T, KV, 2 hd]`, then KV head `r` reads `sum_{j <= l, h} router[r, j, h] * kv[j, h]`
    (the paper's static router: one weight per (head, earlier layer, earlier head), no softmax;
    weights of later layers are ignored). Mixing is per position, so a K/V cache of the mixed
    values is all decoding needs: the memory footprint is the plain model's. Returns
    `(k, v, buffer, weights)`, `weights [KV, L, KV]` as applied (zero beyond layer l).

    Args:
        k: this layer's keys `[B, T, KV, hd]`.
        v: its values `[B, T, KV, hd]`.
        router: the layer's routing weights `[KV, L, KV]`.
        buffer: every layer's keys and values so far `[L, B, T, KV, 2 hd]`.
        layer: this layer's index (traced).
    """
    hd = k.shape[-1]
    buffer = jax.lax.dynamic_update_index_in_dim(buffer, jnp.concatenate([k, v], -1).astype(buffer.dtype), layer, 0)
    weights = jnp.where((jnp.arange(buffer.shape[0]) <= layer)[None, :, None], router.astype(jnp.float32), 0.0)
    mixed = jnp.einsum(
        "rjh,jbthd->btrd", weights, buffer, preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST
    ).astype(k.dtype)
    return mixed[..., :hd], mixed[..., hd:], buffer, weights


def _qkv(c: ModelConfig, p: dict, x: jax.Array, sites: _Sites, norm: Callable, lime_buffer: jax.Array | None):
    """`(q [B, T, H, hd], k, v [B, T, KV, hd], lime_buffer)` of one layer before RoPE: the
    projections (+ biases, QK norms, LIMe's mixing of earlier layers' keys and values) and their
    sites."""
    B, T, _ = x.shape
    q = _proj(x, p, "q_proj")
    k = _proj(x, p, "k_proj")
    v = _proj(x, p, "v_proj")
    if c.qkv_bias:
        q, k, v = q + p["q_bias"], k + p["k_bias"], v + p["v_bias"]
    q = q.reshape(B, T, c.n_heads, c.head_dim)
    k = k.reshape(B, T, c.n_kv_heads, c.head_dim)
    v = v.reshape(B, T, c.n_kv_heads, c.head_dim)
    if c.qk_norm:
        q = norm(q, p["q_norm"])
        k = norm(k, p["k_norm"])
    if c.lime:  # the "k" / "v" sites below are the mixed keys / values attention reads
        assert lime_buffer is not None, "run_layers passes LIMe models their buffer"
        k, v, lime_buffer, route = lime_mix(k, v, p["lime_router"], lime_buffer, sites.layer)
        if LIME_ROUTE in sites.record:
            sites.recorded[LIME_ROUTE] = route
    return sites.visit("q", q), sites.visit("k", k), sites.visit("v", v), lime_buffer


def _write_kv_cache(
    kv_cache: tuple[jax.Array, jax.Array],
    k: jax.Array,
    v: jax.Array,
    cache_index: jax.Array | int | None,
    cache_layer: jax.Array | int,
):
    """`(k, v, new_cache)`: this layer's new keys and values written in place at
    `[cache_layer, :, cache_index]` of the `[L', B, S, KV, hd]` cache, then the layer's whole K/V
    read back (in the activations' dtype) for attention."""
    assert cache_index is not None, "a kv_cache comes with its cache_index"
    at = (cache_layer, 0, cache_index, 0, 0)
    new_cache = tuple(
        jax.lax.dynamic_update_slice(full, x[None].astype(full.dtype), at)
        for full, x in zip(kv_cache, (k, v), strict=True)
    )
    k, v = (full[cache_layer].astype(k.dtype) for full in new_cache)
    return k, v, new_cache


def _mlp(c: ModelConfig, p: dict, stream: jax.Array, sites: _Sites, norm: Callable, lrp_rules: frozenset):
    """The gated MLP block's output (after its sites `mlp_in` / `mlp_out`) read from `stream`."""
    x = sites.visit("mlp_in", norm(stream, p["mlp_norm"]))
    act = lrp_activation(_activation(c.activation), lrp_rules)
    gated = act(_proj(x, p, "gate_proj")) * _proj(x, p, "up_proj")
    if "Half-rule" in lrp_rules:
        gated = half_rule(gated)
    mlp = _proj(gated, p, "down_proj")
    if c.sandwich_norms:
        mlp = norm(mlp, p["mlp_post_norm"])
    return sites.visit("mlp_out", mlp)


def _layer(
    config: ModelConfig,
    p: dict[str, jax.Array],
    h: jax.Array,
    sites: _Sites,
    rope_full: tuple[jax.Array, jax.Array],
    rope_sliding: tuple[jax.Array, jax.Array] | None,
    is_sliding: jax.Array,
    window: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    kv_cache: tuple[jax.Array, jax.Array] | None,
    cache_index: jax.Array | int | None,
    cache_layer: jax.Array | int,
    attention: str,
    lrp_rules: frozenset = frozenset(),
    lime_buffer: jax.Array | None = None,
):
    """One decoder layer. Returns the new residual, (if caching) the K/V cache `[L', ...]` with
    this layer's new keys and values written at `[cache_layer, :, cache_index]` and (LIMe) the
    updated buffer of every layer's keys and values (`lime_mix`). `lrp_rules`: see `relevance`
    (values unchanged, gradients modified)."""
    c = config
    norm = functools.partial(rms_norm, eps=c.norm_eps, offset=c.norm_offset, constant_scale="LN-rule" in lrp_rules)
    B, T, _ = h.shape

    h = sites.visit("resid_pre", h)
    x = sites.visit("attn_in", norm(h, p["attn_norm"]))

    q, k, v, lime_buffer = _qkv(c, p, x, sites, norm, lime_buffer)

    cos, sin = rope_full
    if rope_sliding is not None:
        cos = jnp.where(is_sliding, rope_sliding[0], cos)
        sin = jnp.where(is_sliding, rope_sliding[1], sin)
    q = apply_rope(q, cos, sin)
    k = apply_rope(k, cos, sin)

    new_cache = None
    if kv_cache is not None:
        k, v, new_cache = _write_kv_cache(kv_cache, k, v, cache_index, cache_layer)

    z = _attention(c, q, k, v, q_pos, k_pos, window, sites, attention, "AH-rule" in lrp_rules)
    z = sites.visit("z", z)

    attn = _proj(z.reshape(B, T, c.n_heads * c.head_dim), p, "o_proj")
    if c.sandwich_norms:
        attn = norm(attn, p["attn_post_norm"])
    attn = sites.visit("attn_out", attn)
    if sites.touches("attn_to_resid") or sites.touches("attn_to_mlp"):  # the two routes told apart
        to_resid = sites.visit("attn_to_resid", attn)
        to_mlp = sites.visit("attn_to_mlp", attn)
        h = sites.visit("resid_mid", h + to_resid)
        mlp_stream = h + (to_mlp - to_resid)  # exactly h when the routes agree
    else:
        h = mlp_stream = sites.visit("resid_mid", h + attn)

    mlp = _mlp(c, p, mlp_stream, sites, norm, lrp_rules)
    h = sites.visit("resid_post", h + mlp)
    return h, new_cache, lime_buffer


def embed(model: Model, tokens: jax.Array) -> jax.Array:
    """Token embeddings `[B, T, d]` (with Gemma's sqrt(d) scale, cast to the weight dtype first).

    Args:
        model: the model.
        tokens: ids `[B, T]`.

    Returns:
        `[B, T, d]` in the parameter dtype.
    """
    h = jnp.take(model.params["embed"], tokens, axis=0)
    if model.config.embed_scale is not None:
        h = h * jnp.asarray(model.config.embed_scale, h.dtype)
    return h


def unembed(model: Model, h: jax.Array, *, final_norm: bool = True, lrp_rules: frozenset = frozenset()) -> jax.Array:
    """Logits (float32) from residual vectors `[..., d]`, through the final norm by default
    (`lrp_rules`: see `relevance`).

    Args:
        model: the model.
        h: residual vectors `[..., d]`.
        final_norm: apply the final RMSNorm first (False: `h` is already normalised).
        lrp_rules: LRP rules for the backward pass (see `relevance`).

    Returns:
        Logits `[..., V]` float32 (Gemma's final soft-cap applied).
    """
    c = model.config
    if final_norm:
        h = rms_norm(h, model.params["final_norm"], c.norm_eps, c.norm_offset, "LN-rule" in lrp_rules)
    w = model.params["embed"] if c.tie_word_embeddings else model.params["unembed"]
    logits = jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)
    if c.final_logit_softcap:
        logits = lrp_activation(functools.partial(softcap, cap=c.final_logit_softcap), lrp_rules)(logits)
    return logits


def softcap(x: jax.Array, cap: float) -> jax.Array:
    """`tanh(x / cap) * cap` (Gemma's logit softcap)."""
    return jnp.tanh(x / cap) * cap


def remat_policy(remat: bool | str | Callable) -> Callable | None:
    """A `jax.checkpoint` policy from True (save nothing), a `jax.checkpoint_policies` name or a policy."""
    if remat is True:
        return None
    if isinstance(remat, str):
        policy = getattr(jax.checkpoint_policies, remat, None)
        if policy is None or remat.startswith("_"):
            raise InputError(f"unknown remat policy {remat!r}; use True or a name from jax.checkpoint_policies")
        return policy
    if callable(remat):
        return remat
    raise InputError(f"remat must be a bool, a jax.checkpoint_policies name or a policy, got {remat!r}")


def _from_start_layer(body: Callable, start_layer: jax.Array) -> Callable:
    """A scan body that runs `body` for layers `>= start_layer` and skips the others with
    `lax.cond` (recording zeros, leaving the cache alone)."""

    def body_from_start_layer(carry, xs):
        shapes = jax.eval_shape(body, carry, xs)[1][0]

        def skip(carry, xs):
            return carry, (jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), xs[4])

        return jax.lax.cond(xs[1] >= start_layer, body, skip, carry, xs)

    return body_from_start_layer


def run_layers(
    model: Model,
    h: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    interventions: tuple = (),
    record: frozenset = frozenset(),
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    cache_index: jax.Array | int | None = None,
    start_layer: jax.Array | int | None = None,
    *,
    attention: str = "auto",
    remat: bool | str | Callable = False,
    lrp_rules: frozenset = frozenset(),
):
    """Run all layers with `lax.scan`.

    Args:
        model: the model.
        h: the residual entering the first layer run, `[B, T, d]`.
        q_pos: position of each query token `[B, T]`.
        k_pos: position of each key slot `[B, S]`, negative for padding or empty cache slots.
        interventions: a tuple of interventions.
        record: the sites to record.
        kv_cache: `(K, V)`, each `[L, B, S, KV, hd]`; the new keys are written at `cache_index` along S.
        cache_index: where the new keys go in the cache.
        start_layer: an int scalar: layers below it are skipped (`h` is then the residual
            entering that layer; skipped layers record zeros and leave the cache alone), e.g. to
            resume from a cached run. A Python int is static (the scan runs only the later
            layers); a traced one skips them with `lax.cond`.
        attention: see `attention_impl`.
        remat: rematerialise each layer in the backward pass (`jax.checkpoint` of the scan body):
            True saves nothing inside a layer, a name from `jax.checkpoint_policies` (e.g.
            "dots_with_no_batch_dims_saveable") or a policy saves what it says.
        lrp_rules: LRP rules for the backward pass (see `relevance`; the AH-rule takes the einsum path).

    LIMe models (`config.lime`) carry every layer's keys and values of the current tokens through
    the scan (`lime_mix`; under remat each layer's checkpoint keeps that buffer: memory quadratic
    in depth); they cannot start at a later layer, whose buffer would be missing.

    Returns:
        `(h, trace, new_kv_cache)`: the final residual, the `Trace`, the updated cache (None
        without one).
    """
    c = model.config
    if c.lime and start_layer is not None:
        raise InputError(
            "a LIMe model cannot start at a later layer (start_layer): its layers read the keys and "
            "values of every earlier layer"
        )
    touches_pattern = "pattern" in record or any(getattr(iv, "site", None) == "pattern" for iv in interventions)
    attention = attention_impl(c, attention, touches_pattern or "AH-rule" in lrp_rules)
    rope_full = rope_tables(c.rope_full.inv_freq(c.head_dim), q_pos)
    rope_sliding = None
    if c.has_sliding_layers and c.rope_sliding is not None:
        rope_sliding = rope_tables(c.rope_sliding.inv_freq(c.head_dim), q_pos)
    windows = jnp.asarray(c.layer_windows())
    sliding = jnp.asarray([t == "sliding_attention" for t in c.layer_types])
    # The cache rides in the carry (updated in place: best for decoding), except under remat, where
    # each layer's checkpoint would save the whole carry (memory quadratic in depth): there each
    # layer gets its own slice as a scanned input and returns the updated slice as an output.
    per_layer_cache = bool(remat) and kv_cache is not None

    def body(carry, xs):
        h, cache, lime_buffer = carry
        p, layer, window, is_sliding, layer_cache = xs
        sites = _Sites(interventions, record, layer)
        if per_layer_cache:
            cache, at = tuple(x[None] for x in layer_cache), 0
        else:
            at = layer
        h, cache, lime_buffer = _layer(
            c,
            p,
            h,
            sites,
            rope_full,
            rope_sliding,
            is_sliding,
            window,
            q_pos,
            k_pos,
            cache,
            cache_index,
            at,
            attention,
            lrp_rules,
            lime_buffer,
        )
        if per_layer_cache:
            assert cache is not None, "a per-layer cache comes back from _layer"
            return (h, None, lime_buffer), (sites.recorded, tuple(x[0] for x in cache))
        return (h, cache, lime_buffer), (sites.recorded, None)

    xs = (
        model.params["layers"],
        jnp.arange(c.n_layers, dtype=jnp.int32),
        windows,
        sliding,
        kv_cache if per_layer_cache else None,
    )
    skipped = 0
    if isinstance(start_layer, int | np.integer):  # static: scan only the layers from there on
        skipped, start_layer = int(start_layer), None
        xs = jax.tree_util.tree_map(lambda a: a[skipped:], xs)
    if remat:
        body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=False)
    if start_layer is not None:
        body = _from_start_layer(body, start_layer)
    B, T, _ = h.shape
    lime_buffer = jnp.zeros((c.n_layers, B, T, c.n_kv_heads, 2 * c.head_dim), h.dtype) if c.lime else None
    (h, carried, _), (recorded, scanned) = jax.lax.scan(
        body, (h, None if per_layer_cache else kv_cache, lime_buffer), xs
    )
    if skipped:  # the skipped layers record zeros and leave their cache slices alone, as under lax.cond
        recorded = jax.tree_util.tree_map(lambda a: jnp.pad(a, [(skipped, 0)] + [(0, 0)] * (a.ndim - 1)), recorded)
        if per_layer_cache:
            assert kv_cache is not None and scanned is not None  # per_layer_cache means a cache came in
            scanned = tuple(jnp.concatenate([full[:skipped], x]) for full, x in zip(kv_cache, scanned, strict=True))
    return h, Trace(recorded), scanned if per_layer_cache else carried


def default_positions(tokens: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    """Position ids: 0..T-1, or for a padding mask `cumsum(mask) - 1` (pads get 0), like HF.

    Args:
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]` 0/1, or None.

    Returns:
        Position ids `[B, T]` int32.
    """
    if attention_mask is None:
        return jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1, 0)


def record_sites(record: Sequence[str] | str) -> tuple[str, ...]:
    """The sorted jaxsteer sites for a `record=` argument: `"all"`, one name or several, each a
    jaxsteer site or a TransformerLens name (a name's layer is dropped: every layer is recorded).

    Args:
        record: `"all"`, a site name, or several.

    Returns:
        The sorted, de-duplicated jaxsteer site names.
    """
    if isinstance(record, str):
        record = SITES if record == "all" else (record,)
    names = set()
    for name in record:
        if name == LIME_ROUTE:  # LIMe's routing weights (`forward` checks the model is a LIMe model)
            names.add(name)
            continue
        site = parse_site(name)[0]
        check_site(site)
        names.add(site)
    return tuple(sorted(names))


def _check_inputs(model: Model, tokens, attention_mask, positions, record):
    if not isinstance(model, Model):
        raise TypeError(f"expected a jaxsteer Model, got {type(model).__name__}")
    if jnp.ndim(tokens) != 2:
        raise InputError(f"tokens must be [batch, seq] integers, got shape {jnp.shape(tokens)}")
    for name, arr in (("attention_mask", attention_mask), ("positions", positions)):
        if arr is not None and jnp.shape(arr) != jnp.shape(tokens):
            raise InputError(f"{name} has shape {jnp.shape(arr)}, tokens have {jnp.shape(tokens)}")
    check_token_ids(tokens, model.config.vocab_size)
    check_binary_mask(attention_mask)


def read_site(model: Model, tokens: jax.Array, attention_mask: jax.Array, site: str, layer: int) -> jax.Array:
    """The unsteered activation `[B, T, ...]` at `site` of `layer`, running only layers `<= layer`.

    Args:
        model: the model.
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]` 0/1.
        site: the site to read.
        layer: the layer to read it at.

    Returns:
        The activation `[B, T, ...]`.
    """
    small = truncate(model, int(layer) + 1)
    positions = default_positions(tokens, attention_mask)
    k_pos = jnp.where(attention_mask.astype(bool), positions, -1)
    _, trace, _ = run_layers(small, embed(small, tokens), positions, k_pos, (), frozenset({site}))
    return trace[site][int(layer)]


def bind_to_tokens(
    model: Model,
    tokens: jax.Array,
    attention_mask: jax.Array | None,
    interventions: tuple,
    prompt_length: Any = None,
    read: Callable[[str, int], jax.Array] | None = None,
) -> tuple:
    """Interventions with their controls (`jaxsteer.models.controls`) made concrete for one pass
    over `tokens`: conditions read from the prompt columns (`< prompt_length`), token selections
    bound. Traceable; a no-op for interventions without controls.

    Args:
        model: the model.
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]` 0/1, or None.
        interventions: the interventions.
        prompt_length: where generated columns start (an int or `[B]`; None: all prompt).
        read: `read(site, layer) -> [B, T, ...]`, the unsteered activations the conditions read
            (None: `read_site`, a pass of its own through the layers up to the condition's).

    Returns:
        The interventions, a tuple.
    """
    ctx = prompt_context(tokens, prompt_length)
    if needs_prompt_read(interventions):
        prompt_mask = (
            (ctx.generated < 0) if attention_mask is None else (attention_mask.astype(bool) & (ctx.generated < 0))
        )
        read = read or functools.partial(read_site, model, tokens, prompt_mask)
        interventions = tuple(prepare_controls_with(iv, read, prompt_mask) for iv in interventions)
    return bind_controls(interventions, ctx)


def run_prompt(
    model: Model,
    tokens: jax.Array,
    attention_mask: jax.Array,
    positions: jax.Array,
    k_pos: jax.Array,
    interventions: tuple,
    kv_cache: tuple[jax.Array, jax.Array],
) -> tuple[jax.Array, tuple[jax.Array, ...], tuple]:
    """The prefill of a prompt into `kv_cache` (written from slot 0) with the interventions'
    controls bound. When `prefill_split` allows (every intervention acts above the highest pending
    condition layer c), the conditions are decided inside this pass: layers 0..c run unsteered and
    record what the conditions read, then layers c+1.. run with the decided controls, so a
    condition costs no extra pass; otherwise they read the prompt first (`bind_to_tokens`).

    Args:
        model: the model.
        tokens: the prompt ids `[B, P]`.
        attention_mask: `[B, P]` 0/1.
        positions: `[B, P]` position ids.
        k_pos: `[B, S]` key positions of the cache slots.
        interventions: the interventions.
        kv_cache: `(K, V)`, each `[L, B, S, KV, hd]`.

    Returns:
        `(h, kv_cache, interventions)`: the last layer's residual `[B, P, d]`, the filled cache and
        the interventions as bound (each `Conditional`'s `score` and `decision` filled in).
    """
    split = None if model.config.lime else prefill_split(interventions)
    h = embed(model, tokens)
    if split is None:
        interventions = bind_to_tokens(model, tokens, attention_mask, interventions)
        h, _, cache = run_layers(model, h, positions, k_pos, interventions, frozenset(), kv_cache, 0)
    else:
        sites = frozenset(c.condition_site for c in conditions(interventions) if c.decision is None)
        h, trace, head = run_layers(truncate(model, split + 1), h, positions, k_pos, (), sites, kv_cache, 0)
        assert head is not None  # run_layers returns the cache it was given, filled
        cache = (head[0], head[1])
        read = lambda site, layer: trace[site][layer]
        interventions = bind_to_tokens(model, tokens, attention_mask, interventions, read=read)
        h, _, cache = run_layers(model, h, positions, k_pos, interventions, frozenset(), cache, 0, split + 1)
    assert cache is not None  # run_layers returns the cache it was given, filled
    return h, cache, interventions


_bind_to_tokens = jax.jit(bind_to_tokens)


def prepare_controls(
    model: Model, tokens: Any, interventions: Any, *, attention_mask: Any = None, prompt_length: Any = None
) -> tuple:
    """The interventions as `forward` runs them on `tokens`: each `Conditional` with its `score`
    and `decision` `[B]` filled in (for inspection; passing the result to `forward` reuses them).

    Args:
        model: the model.
        tokens: ids `[B, T]`.
        interventions: an intervention or a sequence of them.
        attention_mask: `[B, T]` 0/1 (None: no padding).
        prompt_length: where generated columns start (an int or `[B]`), as for `forward`.

    Returns:
        The interventions, a tuple, with every `Conditional` decided.
    """
    interventions = as_tuple(interventions)
    tokens = jnp.asarray(tokens)
    check_all(interventions, model.config, tokens.shape[1])
    mask = None if attention_mask is None else jnp.asarray(attention_mask)
    return _bind_to_tokens(model, tokens, mask, interventions, prompt_length)


@functools.partial(jax.jit, static_argnames=("record", "return_logits", "attention", "remat", "lrp_rules"))
def _forward(
    model,
    tokens,
    attention_mask,
    positions,
    interventions,
    record,
    return_logits,
    attention,
    remat,
    lrp_rules=frozenset(),
    prompt_length=None,
):
    interventions = bind_to_tokens(model, tokens, attention_mask, interventions, prompt_length)
    if positions is None:
        positions = default_positions(tokens, attention_mask)
    k_pos = positions if attention_mask is None else jnp.where(attention_mask.astype(bool), positions, -1)
    h = embed(model, tokens)
    h, trace, _ = run_layers(
        model,
        h,
        positions,
        k_pos,
        interventions,
        frozenset(record),
        attention=attention,
        remat=remat,
        lrp_rules=lrp_rules,
    )
    logits = unembed(model, h, lrp_rules=lrp_rules) if return_logits else None
    return logits, trace


@overload
def forward(
    model: Model,
    tokens: ArrayLike,
    *,
    attention_mask: ArrayLike | None = None,
    positions: ArrayLike | None = None,
    interventions: Any = (),
    record: Sequence[str] | str = (),
    return_logits: Literal[True] = True,
    attention: str = "auto",
    remat: bool | str | Callable = False,
    lrp_rules: Iterable[str] = (),
    prompt_length: Any = None,
) -> tuple[jax.Array, Trace]: ...


@overload
def forward(
    model: Model,
    tokens: ArrayLike,
    *,
    attention_mask: ArrayLike | None = None,
    positions: ArrayLike | None = None,
    interventions: Any = (),
    record: Sequence[str] | str = (),
    return_logits: bool,
    attention: str = "auto",
    remat: bool | str | Callable = False,
    lrp_rules: Iterable[str] = (),
    prompt_length: Any = None,
) -> tuple[jax.Array | None, Trace]: ...


def forward(
    model: Model,
    tokens: ArrayLike,
    *,
    attention_mask: ArrayLike | None = None,
    positions: ArrayLike | None = None,
    interventions: Any = (),
    record: Sequence[str] | str = (),
    return_logits: bool = True,
    attention: str = "auto",
    remat: bool | str | Callable = False,
    lrp_rules: Iterable[str] = (),
    prompt_length: Any = None,
) -> tuple[jax.Array | None, Trace]:
    """Run the model on token ids and return its logits and the recorded activations.

    Pure and jit-compiled; `jax.grad` / `jax.vmap` work through it. Concrete inputs are checked
    (ids in `[0, vocab)`, a 0/1 mask, finite intervention values).

    Args:
        model: the decoder (`load` / `init_params`).
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]`, 1 = real token; padding may be on either side.
        positions: position ids `[B, T]` (default: from the mask, like Hugging Face).
        interventions: a `Steer` / `Patch` / `Ablate` / control or a sequence of them, applied in order.
        record: site names (see `SITES`; TransformerLens names work too) or `"all"`; a LIMe model
            also records `"lime_route"`, its routing weights `[L, KV, L, KV]` (see `lime_mix`).
        return_logits: False skips the unembedding (the logits come back as None).
        attention: "auto" (`jax.nn.dot_product_attention` where it can express the layer, else the
            einsum path), "einsum", "xla" or "cudnn".
        remat: rematerialise layers for `jax.grad` (see `run_layers`).
        lrp_rules: names from `relevance.RULES`: the same values, with gradients that propagate LRP
            relevance instead (relevance patching; see `jaxsteer.models.relevance`).
        prompt_length: an int or `[B]`: columns from there on are generated tokens, for controls that
            select them (`OnTokens`; `Conditional` reads only the prompt columns).

    Returns:
        `(logits, trace)`: logits `[B, T, V]` float32 (None without `return_logits`) and a `Trace`
        of the recorded sites, each stacked over layers `[L, B, T, ...]`.
    """
    record = record_sites(record)
    lrp_rules = check_rules(lrp_rules)
    interventions = as_tuple(interventions)
    _check_inputs(model, tokens, attention_mask, positions, record)
    if LIME_ROUTE in record and not model.config.lime:
        raise InputError(f"{LIME_ROUTE!r} (LIMe's routing weights) is recorded by LIMe models only (ModelConfig.lime)")
    tokens = jnp.asarray(tokens)
    check_all(interventions, model.config, tokens.shape[1])
    check_rows(interventions, tokens.shape[0])
    if prompt_length is None and reads_generated(interventions):
        raise InputError(
            "an OnTokens selects generated tokens: pass prompt_length= (where the generated columns start)"
        )
    attention_impl(model.config, attention, "AH-rule" in lrp_rules)
    return _forward(
        model,
        tokens,
        attention_mask,
        positions,
        interventions,
        record,
        return_logits,
        attention,
        remat,
        lrp_rules,
        prompt_length,
    )


def run_with_cache(
    model: Model, tokens: Any, *, names: Sequence[str] | str = "all", tokenizer: Any = None, **forward_kw
) -> tuple[jax.Array | None, Trace]:
    """`(logits, cache)`, as TransformerLens' `run_with_cache`: `forward` recording `names`
    (default every site). `tokens` may be ids `[B, T]` or text (a string or equal-length strings,
    with `tokenizer`). Index the cache as `cache["resid_post", 10]` or `cache["blocks.10.hook_resid_post"]`.

    Args:
        model: the model.
        tokens: ids `[B, T]`, a string, or equal-length strings.
        names: the sites to record (default every site).
        tokenizer: encodes string `tokens`.
        **forward_kw: passed to `forward`.

    Returns:
        `(logits, trace)`, as `forward` returns them.
    """
    if isinstance(tokens, str) or (isinstance(tokens, (list, tuple)) and tokens and isinstance(tokens[0], str)):
        from .tokens import to_tokens

        tokens = to_tokens(tokenizer, tokens)
    return forward(model, jnp.asarray(tokens), record=names, **forward_kw)


__all__ = [
    "forward",
    "prepare_controls",
    "bind_to_tokens",
    "run_prompt",
    "read_site",
    "run_with_cache",
    "record_sites",
    "Trace",
    "SITES",
    "ATTENTION",
    "attention_impl",
    "embed",
    "unembed",
    "run_layers",
    "rms_norm",
    "lime_mix",
    "LIME_ROUTE",
]
