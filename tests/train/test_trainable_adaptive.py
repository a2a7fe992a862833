"""AdaptiveSteer (token-wise gated steering) as a trainable kind: it trains in the RL loop and its
gate is exported."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
import train_toy as T
from jaxsteer.analysis.studies import AdaptiveSteer
from jaxsteer.train import train
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.trainable import TrainableConfig, apply_trainable, init_trainable


def test_adaptive_steering_starts_with_no_effect_and_is_the_analysis_intervention(tiny_model):
    cfg = TrainableConfig(kind="adaptive_steering", layers=(0, 2))
    t = init_trainable(tiny_model, cfg, jax.random.PRNGKey(0))
    assert t["vectors"].shape == (2, 32) and t["w"].shape == (2, 32) and t["b"].shape == (2,)
    model, ivs = apply_trainable(tiny_model, t, cfg)
    assert isinstance(ivs[0], AdaptiveSteer) and ivs[0].layers == (0, 2) and ivs[0].vector.shape == (3, 32)
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, tiny_model.config.vocab_size, (2, 7)))
    base = np.asarray(jaxsteer.forward(tiny_model, tokens)[0])
    np.testing.assert_array_equal(np.asarray(jaxsteer.forward(model, tokens, interventions=ivs)[0]), base)
    # with vectors but w = b = 0 the gate is 0.5 everywhere: a Steer of half the vectors at layers 0 and 2
    v = jnp.asarray(np.random.RandomState(2).normal(size=(2, 32)), jnp.float32)
    model, ivs = apply_trainable(tiny_model, {**t, "vectors": v}, cfg)
    got = np.asarray(jaxsteer.forward(model, tokens, interventions=ivs)[0])
    dense = jnp.zeros((3, 32)).at[jnp.asarray([0, 2])].set(0.5 * v)
    want = np.asarray(jaxsteer.forward(tiny_model, tokens, interventions=[jaxsteer.Steer(dense, layers=(0, 2))])[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(got - base).max() > 1e-2
    with pytest.raises(ValueError, match="rank"):
        TrainableConfig(kind="adaptive_steering", rank=2)


def test_adaptive_steering_trains_and_its_gate_is_exported(tmp_path):
    flags = {**T.LEARN, "trainable.kind": "adaptive_steering", "lr": 0.6}  # the 0.5 gate halves each step
    result = train(config_from_dict(T.config_dict(str(tmp_path / "ada"), **flags)))
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253 (sampled reward "rises" by 0.219); trained 0.655
    t = result.trainable
    assert np.abs(np.asarray(t["w"])).max() > 0 and np.abs(np.asarray(t["vectors"])).max() > 0  # gate and vector moved
    gate = np.load(result.files["adaptive_npz"])
    np.testing.assert_allclose(gate["w"], np.asarray(t["w"]))
    np.testing.assert_allclose(gate["b"], np.asarray(t["b"]))
    assert gate["vectors"].shape == (T.RANDOM_MODEL["n_layers"], T.RANDOM_MODEL["d_model"])
    assert os.path.exists(result.files["vectors_npy"]) and "vectors_safetensors" not in result.files
