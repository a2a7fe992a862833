"""The `jax.nn.dot_product_attention` path equals the einsum path (GQA, padding on either side,
sliding windows, a KV cache with empty slots), falls back to einsum where it cannot express the
layer, and rematerialising the layer scan leaves values and gradients unchanged."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Steer
from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.decoder import attention_impl, default_positions, embed, run_layers
from jaxsteer.models.params import init_params

ROPE = RopeConfig(theta=10000.0)
BASE = dict(
    architecture="llama",
    vocab_size=61,
    d_model=48,
    n_layers=3,
    n_heads=6,
    head_dim=8,
    d_mlp=64,
    norm_eps=1e-6,
    rope_full=ROPE,
)
CONFIGS = {
    "gqa": dict(n_kv_heads=2),
    "mha": dict(n_kv_heads=6),
    "mqa-sliding": dict(
        n_kv_heads=1, sliding_window=3, layer_types=("sliding_attention", "full_attention", "sliding_attention")
    ),
    "gemma-like": dict(
        n_kv_heads=3,
        norm_offset=1.0,
        sandwich_norms=True,
        qk_norm=True,
        embed_scale=48**0.5,
        attn_scale=0.2,
        sliding_window=2,
        rope_sliding=RopeConfig(theta=500.0),
        layer_types=("sliding_attention", "sliding_attention", "full_attention"),
        activation="gelu_tanh",
    ),
}
T = 11


def _model(name: str, dtype=jnp.float32, **extra):
    return init_params(ModelConfig(**BASE, **CONFIGS[name], **extra), jax.random.PRNGKey(1), dtype=dtype, scale=0.3)


def _inputs(vocab: int):
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, vocab, (3, T)).astype(np.int32)
    mask = np.ones((3, T), np.int32)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    return tokens, mask


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("impl", ["auto", "xla"])
def test_dot_product_attention_equals_einsum(name, impl):
    model = _model(name)
    tokens, mask = _inputs(model.config.vocab_size)
    rec = ("z", "resid_post")
    ref_logits, ref = jaxsteer.forward(model, tokens, attention_mask=mask, record=rec, attention="einsum")
    logits, tr = jaxsteer.forward(model, tokens, attention_mask=mask, record=rec, attention=impl)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], np.asarray(ref_logits)[valid], rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(tr.z)[:, valid], np.asarray(ref.z)[:, valid], rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["gqa", "mqa-sliding"])
def test_cached_decode_step_equals_einsum(name):
    """Prefill into a longer cache (empty slots have k_pos -1), then one new token per row."""
    model = _model(name)
    c = model.config
    tokens, mask = _inputs(c.vocab_size)
    B, S = tokens.shape[0], T + 4
    pos = default_positions(tokens, mask)
    k_pos = jnp.full((B, S), -1, jnp.int32).at[:, :T].set(jnp.where(mask > 0, pos, -1))
    new_tok = jnp.asarray([[7], [8], [9]], jnp.int32)
    new_pos = pos[:, -1:] + 1
    outs = {}
    for impl in ("einsum", "auto"):
        cache = tuple(jnp.zeros((c.n_layers, B, S, c.n_kv_heads, c.head_dim)) for _ in range(2))
        h0, _, cache = run_layers(model, embed(model, tokens), pos, k_pos, (), frozenset(), cache, 0, attention=impl)
        kp = k_pos.at[:, T].set(new_pos[:, 0])
        h1, _, _ = run_layers(model, embed(model, new_tok), new_pos, kp, (), frozenset(), cache, T, attention=impl)
        outs[impl] = (np.asarray(h0)[mask.astype(bool)], np.asarray(h1))
    for a, b in zip(
        outs["auto"], outs["einsum"], strict=True
    ):  # residuals reach ~30 here: float32 rounding scales with them
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


def test_bfloat16_dot_product_attention_is_close_to_einsum():
    model = _model("gqa", dtype=jnp.bfloat16)
    tokens, mask = _inputs(model.config.vocab_size)
    a = np.asarray(jaxsteer.forward(model, tokens, attention_mask=mask, attention="einsum")[0])
    b = np.asarray(jaxsteer.forward(model, tokens, attention_mask=mask, attention="auto")[0])
    valid = mask.astype(bool)
    assert np.abs(a[valid] - b[valid]).max() < 0.05 * np.abs(a[valid]).max()


def test_auto_falls_back_to_einsum_for_softcaps_and_patterns():
    soft = _model("gqa", attn_logit_softcap=0.5)
    assert attention_impl(soft.config, "auto") == "einsum"
    with pytest.raises(ValueError, match="attention='xla' cannot compute an attention logit softcap"):
        jaxsteer.forward(soft, np.zeros((1, 4), np.int32), attention="xla")
    model = _model("gqa")
    assert attention_impl(model.config, "auto") == "auto"
    assert attention_impl(model.config, "auto", record_pattern=True) == "einsum"
    tokens, mask = _inputs(model.config.vocab_size)
    _, tr = jaxsteer.forward(model, tokens, attention_mask=mask, record="pattern")  # auto: einsum computes it
    row_sums = np.moveaxis(np.asarray(tr.pattern).sum(-1), 2, 3)  # [L, B, T, H]
    np.testing.assert_allclose(row_sums[:, mask.astype(bool)], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot compute the `pattern` site"):
        jaxsteer.forward(model, tokens, record="pattern", attention="xla")
    with pytest.raises(ValueError, match="attention must be one of"):
        jaxsteer.forward(model, tokens, attention="flash")


@pytest.mark.parametrize("remat", [True, "dots_with_no_batch_dims_saveable"])
def test_remat_gives_the_same_gradients(remat):
    model = _model("mqa-sliding")
    c = model.config
    tokens, mask = _inputs(c.vocab_size)

    def loss(params, vec, remat):
        m = model.replace(params=params)
        logits, _ = jaxsteer.forward(m, tokens, attention_mask=mask, interventions=Steer(vec), remat=remat)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3] * mask)

    vec = 0.1 * jnp.ones((c.n_layers, c.d_model))
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    v0, g0 = grad(model.params, vec, False)
    v1, g1 = grad(model.params, vec, remat)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())  # recomputation may reassociate sums
    assert "remat" in str(jax.make_jaxpr(loss, static_argnums=2)(model.params, vec, remat))
    with pytest.raises(ValueError, match="unknown remat policy"):
        jaxsteer.forward(model, tokens, remat="no_such_policy")


def _cached_scoring(L: int, remat):
    """Prefill a K/V cache, score completions against it (as grouped RL scoring does): the jitted
    value-and-grad w.r.t. the parameters, and the temp bytes XLA plans for it."""
    c = ModelConfig(**{**BASE, "n_layers": L}, **CONFIGS["gqa"])
    model = init_params(c, jax.random.PRNGKey(1), scale=0.1)  # 12 layers at 0.3 blow gradients up to ~1e2
    B, P, N = 2, 24, 24
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, c.vocab_size, (B, P + N)), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(P + N, dtype=jnp.int32), (B, P + N))

    def loss(params):
        m = model.replace(params=params)
        cache = tuple(jnp.zeros((L, B, P + N, c.n_kv_heads, c.head_dim)) for _ in range(2))
        k_pos = jnp.full((B, P + N), -1, jnp.int32).at[:, :P].set(pos[:, :P])
        _, _, cache = run_layers(m, embed(m, tokens[:, :P]), pos[:, :P], k_pos, (), frozenset(), cache, 0, remat=remat)
        h, _, _ = run_layers(m, embed(m, tokens[:, P:]), pos[:, P:], pos, (), frozenset(), cache, P, remat=remat)
        return jnp.mean(jax.nn.log_softmax(jnp.einsum("btd,vd->btv", h, m.params["unembed"]))[..., 3])

    f = jax.jit(jax.value_and_grad(loss))
    return f(model.params), f.lower(model.params).compile().memory_analysis().temp_size_in_bytes


def test_remat_with_a_kv_cache_is_exact_and_linear_in_depth():
    """Under remat the cache is scanned per layer (not carried), so each layer's checkpoint holds
    one layer's slice: same gradients, and no memory term quadratic in depth."""
    (v0, g0), plain = _cached_scoring(12, False)
    (v1, g1), remat = _cached_scoring(12, True)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())  # recomputation reassociates sums
    _, shallow = _cached_scoring(4, True)
    assert remat < plain and remat < 3 * shallow, (shallow, remat, plain)
