"""AdaptiveSteer (token-wise gated steering) as a trainable kind: it trains in the RL loop and its
gate is exported."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    with pytest.raises(ValueError, match="rank"):
        TrainableConfig(kind="adaptive_steering", rank=2)


def test_adaptive_steering_trains_and_its_gate_is_exported(tmp_path):
    flags = {"trainable.kind": "adaptive_steering", "lr": 0.3, "steps": 6, "checkpoint.every": 0,
             "model.random_scale": 0.2, "algorithm.prompts_per_step": 8, "sampling.max_new_tokens": 2}
    result = train(config_from_dict(T.config_dict(str(tmp_path / "ada"), **flags)))
    r = [h["reward_mean"] for h in result.history]
    assert np.mean(r[-2:]) > np.mean(r[:2]) + 0.2, r
    t = result.trainable
    assert np.abs(np.asarray(t["w"])).max() > 0 and np.abs(np.asarray(t["vectors"])).max() > 0  # gate and vector moved
    gate = np.load(result.files["adaptive_npz"])
    np.testing.assert_allclose(gate["w"], np.asarray(t["w"]))
    np.testing.assert_allclose(gate["b"], np.asarray(t["b"]))
    assert gate["vectors"].shape == (T.RANDOM_MODEL["n_layers"], T.RANDOM_MODEL["d_model"])
    assert os.path.exists(result.files["vectors_npy"]) and "vectors_safetensors" not in result.files
