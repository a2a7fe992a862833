"""Steering studies (jaxsteer.analysis.studies) on a tiny random model: AdaptiveSteer against Steer
with the gate as scale, persistence, first-token effects, combination gains and transfer."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Steer
from jaxsteer.analysis import (
    AdaptiveSteer,
    combination_gains,
    combined_steer,
    first_token_effect,
    persistence,
    transfer_steer,
)
from tests.analysis.conftest import T, V, make_model


def test_adaptive_steer_equals_steer_with_the_gate_as_scale(model, pair):
    clean, _ = pair
    c = model.config
    rng = np.random.RandomState(2)
    vec = jnp.asarray(rng.normal(size=(c.n_layers, c.d_model)).astype(np.float32))
    # constant gate (w = 0): an ordinary Steer scaled by sigmoid(b)
    ad = AdaptiveSteer(vec, jnp.zeros(c.d_model), b=0.7, scale=2.0)
    want, _ = jaxsteer.forward(model, clean, interventions=[Steer(vec, scale=2.0 * float(jax.nn.sigmoid(0.7)))])
    got, _ = jaxsteer.forward(model, clean, interventions=[ad])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a real gate at one layer: the per-token scale sigmoid(w . h_t + b) from the unsteered residual
    w = jnp.asarray(rng.normal(size=c.d_model).astype(np.float32))
    ad = AdaptiveSteer(vec, w, b=jnp.full((c.n_layers,), -0.3), layers=(1,))
    _, tr = jaxsteer.forward(model, clean, record=("resid_post",))
    gate = np.asarray(jax.nn.sigmoid(tr.resid_post[1] @ w - 0.3))  # [B, T]
    assert gate.std() > 0.05  # the gate really varies by token
    want, _ = jaxsteer.forward(model, clean, interventions=[Steer(vec[1], layers=(1,), scale=gate)])
    got, _ = jaxsteer.forward(model, clean, interventions=[ad])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # trainable by jax.grad
    g = jax.grad(lambda a: jaxsteer.forward(model, clean, interventions=[a])[0][0, -1, 3])(ad)
    assert np.abs(np.asarray(g.w)).sum() > 0 and np.abs(np.asarray(g.vector)).sum() > 0
    with pytest.raises(ValueError, match="expected"):
        jaxsteer.forward(model, clean, interventions=[AdaptiveSteer(vec, jnp.zeros(5))])


def test_adaptive_steer_in_generate_matches_forward(model):
    c = model.config
    rng = np.random.RandomState(4)
    ad = AdaptiveSteer(
        jnp.asarray(3 * rng.normal(size=c.d_model).astype(np.float32)),
        jnp.asarray(rng.normal(size=c.d_model).astype(np.float32)),
        b=0.0,
        layers=(0, 2),
    )
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    out = jaxsteer.generate(model, prompts, max_new_tokens=6, greedy=True, interventions=[ad], stop_tokens=[], bucket=8)
    seqs, mask = out.sequences()
    logits, _ = jaxsteer.forward(model, seqs, attention_mask=mask, interventions=[ad])
    P = out.prompt_tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(logits[:, P - 1 : -1].argmax(-1)), out.tokens)
    plain, _ = jaxsteer.forward(model, seqs, attention_mask=mask)
    assert (np.asarray(plain[:, P - 1 : -1].argmax(-1)) != out.tokens).any()  # the gated vector changes the choice


def test_persistence_first_token_effect_gains_and_transfer(model, tmp_path):
    c = model.config
    rng = np.random.RandomState(7)
    toks = rng.randint(0, V, (2, T))
    vec = rng.normal(size=c.d_model).astype(np.float32)
    per = persistence(model, toks, vec, 1, scale=2.0)
    assert per.cos.shape == (c.n_layers, 2, T)
    assert np.isnan(per.cos[0]).all()
    np.testing.assert_allclose(per.cos[1], 1.0, atol=1e-5)  # dh at the steered layer is the vector itself
    np.testing.assert_allclose(per.norm_ratio[1], 1.0, atol=1e-5)
    assert (per.cos[2] < 1 - 1e-4).any()  # later layers rotate it
    per.plot(str(tmp_path / "persist.png"))

    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    zero = first_token_effect(model, prompts, [Steer(jnp.zeros(c.d_model), layers=(2,))], max_new_tokens=4)
    np.testing.assert_allclose(zero.max_increase, 0, atol=1e-6)
    assert np.nansum(zero.argmax_changed) == 0
    big = first_token_effect(model, prompts, [Steer(jnp.asarray(5 * vec), layers=(2,))], max_new_tokens=4)
    s = big.summary()
    assert set(s) == {"first", "rest"} and s["first"]["max_increase"] > 0.01
    assert s["first"]["max_decrease"] < 0 and big.max_increase.shape == (2, 4)
    assert "first" in big.table()

    # normalised gain on a made-up accuracy: layers add up, capped at 1
    contrib = {0: 0.2, 1: 0.3, 2: 0.1}
    acc = lambda layers: min(1.0, 0.1 + sum(contrib[l] for l in layers))
    gains = combination_gains(acc, [0, 1, 2])
    # (acc_01 - max(acc_0, acc_1)) / (acc_all - max) = (0.6 - 0.4) / (0.7 - 0.4)
    assert gains.gain[0, 1] == pytest.approx(0.2 / 0.3)
    assert gains.gain[1, 0] == gains.gain[0, 1] and np.isnan(gains.gain[0, 0])
    assert gains.all_layers == pytest.approx(0.7)
    gains.plot(str(tmp_path / "gains.png"))
    st = combined_steer(np.ones((c.n_layers, c.d_model), np.float32), [2, 0])
    assert st.layers == (0, 2)

    other = make_model(seed=1)
    vecs = rng.normal(size=(c.n_layers, c.d_model)).astype(np.float32)
    steer = transfer_steer(vecs, model, other, scale=0.5)
    want, _ = jaxsteer.forward(other, toks, interventions=[Steer(jnp.asarray(vecs), scale=0.5)])
    got, _ = jaxsteer.forward(other, toks, interventions=[steer])
    np.testing.assert_allclose(got, want, atol=0)
    with pytest.raises(ValueError, match="n_layers 3 vs 4"):
        transfer_steer(vecs, model, dataclasses.replace(c, n_layers=4, layer_types=()))
    with pytest.raises(ValueError, match="d_model 32 vs 64"):
        transfer_steer(vecs, model.config, dataclasses.replace(c, d_model=64))
