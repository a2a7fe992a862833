"""`Hook(site, fn)`: an arbitrary jittable function at a site (issue 21). It reproduces Steer and
Ablate exactly in forward and generate, composes with other interventions in order, works under
jit / vmap / grad through `params`, and refuses a function that changes the shape."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Ablate, Hook, Steer

TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)


def add_per_layer(x, layer, vectors):
    return x + vectors[layer]


def zero_head_1(x, layer):
    return x.at[:, :, 1].set(0)


@pytest.fixture(scope="module")
def vectors(tiny_model):
    c = tiny_model.config
    return jnp.asarray(np.random.RandomState(0).normal(size=(c.n_layers, c.d_model)), jnp.float32)


def _logits(model, ivs):
    return jaxsteer.forward(model, TOKENS, interventions=ivs)[0]


def test_hook_reproduces_steer_and_ablate_exactly(tiny_model, vectors):
    np.testing.assert_array_equal(
        _logits(tiny_model, Hook("resid_post", add_per_layer, params=vectors)), _logits(tiny_model, Steer(vectors))
    )
    np.testing.assert_array_equal(
        _logits(tiny_model, Hook("z", zero_head_1, layers=(0, 2))),
        _logits(tiny_model, Ablate(site="z", layers=(0, 2), heads=(1,))),
    )
    # a TransformerLens name with a layer selects it, as for the other interventions
    np.testing.assert_array_equal(
        _logits(tiny_model, Hook("blocks.2.attn.hook_z", zero_head_1)),
        _logits(tiny_model, Ablate(site="z", layers=(2,), heads=(1,))),
    )


def test_hook_composes_in_order_with_other_interventions(tiny_model, vectors):
    def double(x, layer):
        return 2 * x

    a = _logits(tiny_model, [Steer(vectors[1], layers=(1,), site="mlp_out"), Hook("mlp_out", double, layers=(1,))])
    b = _logits(tiny_model, [Hook("mlp_out", double, layers=(1,)), Steer(2 * vectors[1], layers=(1,), site="mlp_out")])
    np.testing.assert_allclose(a, b, atol=1e-5)  # 2 (x + v) == 2 x + 2 v
    assert not np.allclose(
        a,
        _logits(tiny_model, [Hook("mlp_out", double, layers=(1,)), Steer(vectors[1], layers=(1,), site="mlp_out")]),
        atol=1e-3,
    )


def test_hook_in_generate_equals_steer(tiny_model, vectors):
    kw = dict(max_new_tokens=5, greedy=True)
    h = jaxsteer.generate(
        tiny_model, [[3, 4, 5]], interventions=Hook("resid_post", add_per_layer, params=vectors), **kw
    )
    s = jaxsteer.generate(tiny_model, [[3, 4, 5]], interventions=Steer(vectors), **kw)
    np.testing.assert_array_equal(h.tokens, s.tokens)
    np.testing.assert_allclose(h.logprobs, s.logprobs, atol=1e-6)


def test_hook_params_under_jit_vmap_and_grad(tiny_model, vectors):
    def loss(v):
        return _logits(tiny_model, Hook("resid_post", add_per_layer, params=v))[:, -1, 5].sum()

    def steer_loss(v):
        return _logits(tiny_model, Steer(v))[:, -1, 5].sum()

    np.testing.assert_allclose(jax.jit(jax.grad(loss))(vectors), jax.grad(steer_loss)(vectors), atol=1e-5)
    batched = jax.vmap(loss)(jnp.stack([vectors, -vectors]))
    np.testing.assert_allclose(batched, [steer_loss(vectors), steer_loss(-vectors)], atol=1e-4)
    closed = jax.jit(lambda: loss(vectors))()
    np.testing.assert_allclose(closed, steer_loss(vectors), atol=1e-5)


def test_hook_errors(tiny_model, vectors):
    with pytest.raises(
        ValueError, match=r"fn returned shape \(2, 4\); it must keep the activation's shape \(2, 4, 32\)"
    ):
        _logits(tiny_model, Hook("resid_post", lambda x, l: x.sum(-1)))
    with pytest.raises(TypeError, match="fn must be callable"):
        Hook("resid_post", 3)
    with pytest.raises(ValueError, match="layer 5 out of range"):
        _logits(tiny_model, Hook("resid_post", zero_head_1, layers=(5,)))
    with pytest.raises(ValueError, match=r"Hook at 'resid_post': params has a non-finite value"):
        _logits(tiny_model, Hook("resid_post", add_per_layer, params=vectors.at[0, 0].set(jnp.inf)))
