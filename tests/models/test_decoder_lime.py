"""LIMe (Layer-Integrated Memory, arXiv 2502.09245) as an option of the one decoder: identity
routing is the plain decoder, the mixed values are the routing applied to every layer's own
values (known answer), the trace exposes the routing, decoding with the K/V cache matches the
full forward, and gradients reach the router."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.decoder import forward
from jaxsteer.models.params import Model, init_params, lime_identity_routing, lime_router_init

PLAIN = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=64,
    d_model=32,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_mlp=64,
    norm_eps=1e-5,
    rope_full=RopeConfig(theta=10000.0),
)
LIME = dataclasses.replace(PLAIN, lime=True)


def _models():
    """A random LIMe model (the paper's initial routing) and the plain model with its other weights."""
    lime = init_params(LIME, jax.random.PRNGKey(0), scale=0.2)
    layers = {k: v for k, v in lime.params["layers"].items() if k != "lime_router"}
    return lime, Model({**lime.params, "layers": layers}, PLAIN)


def test_init_gives_the_plain_models_weights_plus_a_router():
    lime, plain = _models()
    fresh = init_params(PLAIN, jax.random.PRNGKey(0), scale=0.2)
    for a, b in zip(jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(fresh.params), strict=True):
        np.testing.assert_array_equal(a, b)


def _with_routing(model: Model, routing) -> Model:
    return model.replace(params={**model.params, "layers": {**model.params["layers"], "lime_router": routing}})


TOKENS = np.random.RandomState(0).randint(0, 64, size=(2, 9))


def test_identity_routing_is_the_plain_decoder():
    lime, plain = _models()
    ident = _with_routing(lime, lime_identity_routing(LIME))
    sites = ("resid_post", "k", "v", "z")
    lp, tp = forward(plain, TOKENS, record=sites)
    li, ti = forward(ident, TOKENS, record=sites)
    # Layer 0's keys and values are bitwise the plain model's; after them, XLA compiles the mixing
    # into different operand layouts, so sums round differently: measured max |dlogit| 1.5e-6.
    np.testing.assert_array_equal(ti["k"][0], tp["k"][0])
    np.testing.assert_array_equal(ti["v"][0], tp["v"][0])
    np.testing.assert_allclose(li, lp, rtol=0, atol=2e-5)
    for s in sites:
        np.testing.assert_allclose(ti[s], tp[s], rtol=0, atol=2e-5, err_msg=s)
    # and the paper's initial routing (earlier layers mixed in) is not
    lr, _ = forward(lime, TOKENS)
    assert float(jnp.max(jnp.abs(lr - lp))) > 0.1


def test_values_are_the_routing_applied_to_every_layers_own_values():
    """Known answer: layer l's value heads are `sum_{j <= l, h} W[l, r, j, h] * attn_in_j @ v_proj_j`."""
    lime, _ = _models()
    _, t = forward(lime, TOKENS, record=("attn_in", "v", "k", "lime_route"))
    c = LIME
    own_v = jnp.einsum("lbtd,ldo->lbto", t.attn_in, lime.params["layers"]["v_proj"])
    own_v = own_v.reshape(c.n_layers, *TOKENS.shape, c.n_kv_heads, c.head_dim)
    expected = jnp.einsum("lrjh,jbthd->lbtrd", t.lime_route, own_v)
    np.testing.assert_allclose(t.v, expected, rtol=1e-5, atol=1e-5)
    own_k = jnp.einsum("lbtd,ldo->lbto", t.attn_in, lime.params["layers"]["k_proj"])
    own_k = own_k.reshape(c.n_layers, *TOKENS.shape, c.n_kv_heads, c.head_dim)
    np.testing.assert_allclose(t.k, jnp.einsum("lrjh,jbthd->lbtrd", t.lime_route, own_k), rtol=1e-5, atol=1e-5)


def test_trace_exposes_the_routing():
    lime, plain = _models()
    _, t = forward(lime, TOKENS, record="lime_route")
    route = np.asarray(t.lime_route)
    L, KV = LIME.n_layers, LIME.n_kv_heads
    assert route.shape == (L, KV, L, KV)
    np.testing.assert_array_equal(route, np.asarray(lime.params["layers"]["lime_router"]))
    for l in range(L):  # the current layer reads itself at init; later layers are never read
        np.testing.assert_array_equal(route[l, :, l], np.eye(KV))
        assert np.all(route[l, :, l + 1 :] == 0)
    with pytest.raises(ValueError, match="LIMe models only"):
        forward(plain, TOKENS, record="lime_route")


def test_routing_weights_beyond_the_layer_are_ignored():
    lime, _ = _models()
    noisy = np.array(lime.params["layers"]["lime_router"])
    for l in range(LIME.n_layers):
        noisy[l, :, l + 1 :] = 5.0
    a, _ = forward(lime, TOKENS)
    b, _ = forward(_with_routing(lime, jnp.asarray(noisy)), TOKENS)
    np.testing.assert_array_equal(a, b)


def test_cached_decoding_matches_the_full_forward():
    """The K/V cache holds the mixed keys / values; greedy decoding equals argmax of the full forward."""
    lime, _ = _models()
    prompt = TOKENS[:, :5]
    out = jaxsteer.generate(lime, prompt, max_new_tokens=4, greedy=True, stop_tokens=())
    full = np.concatenate([prompt, np.asarray(out.tokens)], axis=1)
    logits, _ = forward(lime, full)
    np.testing.assert_array_equal(np.argmax(np.asarray(logits[:, 4:-1]), -1), np.asarray(out.tokens))


def test_gradients_reach_the_router_and_paper_init():
    lime, _ = _models()

    def loss(router):
        logits, _ = forward(_with_routing(lime, router), TOKENS)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    g = np.asarray(jax.grad(loss)(lime.params["layers"]["lime_router"]))
    assert np.abs(g[2, :, :3]).max() > 0 and np.all(g[0, :, 1:] == 0) and np.all(g[1, :, 2:] == 0)
    w = np.asarray(lime_router_init(LIME, jax.random.PRNGKey(3)))
    bound = np.sqrt(3 / (3 * 2))  # layer 2: fan_in = 3 layers x 2 heads
    assert np.abs(w[2, :, :2]).max() <= bound and np.abs(w[2, :, :2]).max() > bound / 4
    assert LIME.n_params() - PLAIN.n_params() == 2 * 2 * (1 + 2 + 3)


def test_lime_cannot_start_at_a_later_layer():
    from jaxsteer.models.decoder import default_positions, embed, run_layers

    lime, _ = _models()
    pos = default_positions(jnp.asarray(TOKENS), None)
    with pytest.raises(ValueError, match="LIMe model cannot start"):
        run_layers(lime, embed(lime, jnp.asarray(TOKENS)), pos, pos, start_layer=jnp.asarray(1))
