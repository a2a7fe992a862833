"""ES search spaces (jaxsteer.train.es.spaces): EGGROLL's low-rank forward equals the materialised
weights, ESSA's SVD reparameterisations reproduce the LoRA and evolve only the top singular values,
and the full space perturbs each tensor."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.models.params import param_shapes
from jaxsteer.train.es import center_member
from jaxsteer.train.es.spaces import EggrollSpace, FullSpace, essa_product_space, essa_space, n_evolving
from jaxsteer.train.es.strategies import OpenES
from jaxsteer.train.trainable import apply_trainable
from tests.train.es.conftest import CFG, KEY


def test_eggroll_forward_equals_materialised_weights(model):
    space = EggrollSpace(targets=("q_proj", "down_proj"), rank=2)
    theta = space.init(model)
    k, sigma = jax.random.PRNGKey(3), 0.7
    keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(5))
    w = jnp.array([0.5, -1.0, 0.25, 2.0, -0.75])

    @jax.jit
    def pieces(theta):
        factors = space.factors(theta, k)
        merged = {
            p: theta[p] + sigma * jnp.einsum("lir,lor->lio", A, B) / math.sqrt(2) for p, (A, B) in factors.items()
        }
        got = EggrollSpace(targets=("q_proj", "down_proj"), rank=2, chunk=2).noise_sum(theta, keys, w)
        noise = jax.vmap(space.noise, in_axes=(None, 0))(theta, keys)
        want = {p: jnp.einsum("k,klio->lio", w, n) for p, n in noise.items()}
        return space.perturb(theta, k, sigma), merged, got, want

    member, merged, got, want = pieces(theta)
    run, ivs = space.apply(model, member)
    assert ivs == () and set(run.params["layers"]["lora"]) == {"q_proj", "down_proj"}
    # the merged weights, with all-zero adapters so that both runs share one compiled forward
    zero = jax.tree_util.tree_map(jnp.zeros_like, run.params["layers"]["lora"])
    merged = model.replace(params={**model.params, "layers": {**model.params["layers"], **merged, "lora": zero}})
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    np.testing.assert_allclose(jaxsteer.forward(run, tokens)[0], jaxsteer.forward(merged, tokens)[0], atol=2e-5)
    # noise_sum (chunked factor contraction, with a padded last chunk) equals the sum of materialised E's
    for p in theta:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5)


def test_essa_product_svd_reproduces_lora_and_only_singular_values_evolve(model, lora):
    trainable, cfg = lora
    space = essa_product_space(model, trainable, cfg, alpha=0.5)
    assert space.n_active == 2
    theta = space.init(model)
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    lora_model, _ = apply_trainable(model, trainable, cfg)
    want, _ = jaxsteer.forward(lora_model, tokens)
    run, _ = space.apply(model, center_member(space, theta))
    got, _ = jaxsteer.forward(run, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5)
    s0 = {p: np.asarray(v) for p, v in space.s0.items()}
    for p in s0:
        assert np.all(np.diff(s0[p], axis=-1) <= 1e-6)  # descending
        np.testing.assert_allclose(
            np.asarray(space.u[p]).swapaxes(-1, -2) @ np.asarray(space.u[p]),
            np.broadcast_to(np.eye(4), (3, 4, 4)),
            atol=1e-5,
        )

    es = OpenES(population=8, sigma=0.3, lr=0.5)
    state = es.init(theta, KEY)
    new, _ = es.update(space, state, jnp.arange(8.0))
    s_new = space.singular_values(new["theta"])
    for p in s0:
        assert new["theta"][p].shape == (3, 2)
        np.testing.assert_array_equal(np.asarray(s_new[p])[:, 2:], s0[p][:, 2:])  # outside the top p%: fixed
        assert not np.allclose(np.asarray(s_new[p])[:, :2], s0[p][:, :2])
    # The evolved adapter is U diag(s') V^T with the frozen U, V; to_lora gives the same model.
    run, _ = space.apply(model, new["theta"])
    for p in s0:
        usv = run.params["layers"]["lora"][p]
        np.testing.assert_array_equal(usv["a"], space.u[p])  # U, V^T frozen
        np.testing.assert_array_equal(usv["b"], space.vt[p])
        np.testing.assert_array_equal(usv["s"], s_new[p])
    via_lora, _ = apply_trainable(model, space.to_lora(new["theta"], cfg), cfg)
    np.testing.assert_allclose(jaxsteer.forward(via_lora, tokens)[0], jaxsteer.forward(run, tokens)[0], atol=1e-5)


def test_essa_factorwise_svd_is_the_papers_space(model, lora):
    """ESSA as its paper defines it: each LoRA factor decomposed separately (2r values per adapted
    matrix), U and V frozen, zero offsets = the LoRA itself, the top floor(alpha r) values evolving."""
    trainable, cfg = lora
    space = essa_space(model, trainable, cfg, alpha=1.0, targets=("q_proj", "v_proj"))
    L = CFG.n_layers
    theta = space.init(model)
    assert set(theta) == {"q_proj", "v_proj"} and set(space.frozen) == {"down_proj"}
    for p in theta:  # 2r = 8 values per adapted matrix (r for a, r for b), all zero offsets
        assert theta[p]["a"].shape == (L, 4) and theta[p]["b"].shape == (L, 4)
        assert sum(x.size for x in jax.tree_util.tree_leaves(theta[p])) == 2 * 4 * L
        assert float(jnp.abs(theta[p]["a"]).max()) == 0.0
        for u in (space.u_a[p], space.u_b[p], jnp.swapaxes(space.vt_a[p], -1, -2), jnp.swapaxes(space.vt_b[p], -1, -2)):
            np.testing.assert_allclose(jnp.swapaxes(u, -1, -2) @ u, np.broadcast_to(np.eye(4), (L, 4, 4)), atol=1e-5)
        # each factor's own singular values (not those of the product)
        np.testing.assert_allclose(
            space.s_a[p], np.linalg.svd(np.asarray(trainable[p]["a"]), compute_uv=False), rtol=1e-5
        )
        np.testing.assert_allclose(
            space.s_b[p], np.linalg.svd(np.asarray(trainable[p]["b"]), compute_uv=False), rtol=1e-5
        )
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    want, _ = jaxsteer.forward(apply_trainable(model, trainable, cfg)[0], tokens)
    got, _ = jaxsteer.forward(space.apply(model, center_member(space, theta))[0], tokens)
    np.testing.assert_allclose(got, want, atol=2e-5)  # zero offsets reproduce the LoRA (frozen down_proj included)

    half = essa_space(model, trainable, cfg, alpha=0.6)  # floor(0.6 * 4) = 2 per factor (ceil would give 3)
    assert half.n_a == half.n_b == 2 and set(half.s_a) == {"q_proj", "v_proj"}  # the fixture's attention adapters
    es = OpenES(population=8, sigma=0.3, lr=0.5)
    new = es.update(half, es.init(half.init(model), KEY), jnp.arange(8.0))[0]["theta"]
    s_new = half.singular_values(new)
    for p, (sa, sb) in s_new.items():
        for s, s0 in ((sa, half.s_a[p]), (sb, half.s_b[p])):
            np.testing.assert_array_equal(np.asarray(s)[:, 2:], np.asarray(s0)[:, 2:])  # outside the top alpha: fixed
            assert not np.allclose(np.asarray(s)[:, :2], np.asarray(s0)[:, :2])
    run, _ = half.apply(model, new)
    adapter = run.params["layers"]["lora"]["q_proj"]
    np.testing.assert_array_equal(adapter["a"], half.u_a["q_proj"])  # U_a frozen; only s, s_out move
    np.testing.assert_array_equal(adapter["s_out"], s_new["q_proj"][1])
    via_lora, _ = apply_trainable(model, half.to_lora(new, cfg), cfg)  # the evolved factors as a plain LoRA
    np.testing.assert_allclose(jaxsteer.forward(via_lora, tokens)[0], jaxsteer.forward(run, tokens)[0], atol=2e-5)


def test_essa_alpha_rounds_down():
    """The paper rounds the top-alpha count down; a fraction that leaves no value is an error."""
    assert [n_evolving(a, 8) for a in (0.2, 0.4, 0.6, 0.8, 1.0)] == [1, 3, 4, 6, 8]
    assert n_evolving(0.25, 4) == 1 and n_evolving(0.3, 10) == 3
    with pytest.raises(ValueError, match="rounds down to 0"):
        n_evolving(0.1, 8)  # the paper's empty cell: rank 8, alpha 0.1
    with pytest.raises(ValueError, match="alpha"):
        n_evolving(0.0, 8)


def test_full_space_perturbs_each_tensor(model):
    assert len(jax.tree_util.tree_leaves(FullSpace().init(model))) == len(param_shapes(CFG))
    space = FullSpace(paths=("layers/q_proj", "final_norm"))
    theta = space.init(model)
    run, ivs = space.apply(model, center_member(space, theta))
    assert ivs == ()
    np.testing.assert_array_equal(run.params["layers"]["q_proj"], model.params["layers"]["q_proj"])
    member = space.perturb(theta, KEY, 0.01)
    noise = np.asarray(member["layers"]["q_proj"] - theta["layers"]["q_proj"])
    assert abs(noise.std() / 0.01 - 1) < 0.1 and abs(noise.mean()) < 1e-3
    assert not np.allclose(member["final_norm"], theta["final_norm"])
    run, _ = space.apply(model, member)
    np.testing.assert_array_equal(run.params["layers"]["q_proj"], member["layers"]["q_proj"])
    assert run.params["layers"]["k_proj"] is model.params["layers"]["k_proj"]
