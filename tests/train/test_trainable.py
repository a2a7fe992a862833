"""Trainable parameterisations: zero effect at init, the reference policy, equivalence with Steer
and with merged LoRA weights, gradients, parameter counts; AdaptiveSteer (token-wise gated steering)
as a trainable kind: it trains in the RL loop and its gate is exported."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as T
from conftest import TINY_CONFIG

import jaxsteer
from jaxsteer.analysis.studies import AdaptiveSteer
from jaxsteer.models.params import param_shapes
from jaxsteer.train import train
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.trainable import (
    TrainableConfig,
    apply_trainable,
    count_params,
    init_trainable,
    merge_lora,
    steering_vectors,
)

CFG = TINY_CONFIG
L, D = CFG.n_layers, CFG.d_model
KEY = jax.random.PRNGKey(0)

STEERING = {
    "all": TrainableConfig(),
    "one_layer": TrainableConfig(layers=(1,)),
    "two_layers": TrainableConfig(layers=(0, 2)),
    "low_rank": TrainableConfig(rank=2),
    "attn_out": TrainableConfig(site="attn_out"),
}
ALL = {
    **STEERING,
    "adaptive": TrainableConfig(kind="adaptive_steering", layers=(0, 2)),
    "lora": TrainableConfig(kind="lora", lora_rank=4, lora_alpha=8.0),
    "full": TrainableConfig(kind="full"),
}


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.RandomState(1).randint(0, CFG.vocab_size, (2, 7)))


def _run(model, trainable, cfg, tokens, enabled=True):
    m, ivs = apply_trainable(model, trainable, cfg, enabled=enabled)
    return np.asarray(jaxsteer.forward(m, tokens, interventions=ivs)[0])


def _perturb(tree, seed=2, scale=0.3):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_unflatten(
        treedef, [x + jnp.asarray(scale * rng.normal(size=x.shape), x.dtype) for x in leaves]
    )


@pytest.mark.parametrize("name", list(ALL))
def test_init_is_zero_effect_and_disabled_is_base(model, tokens, name):
    cfg = ALL[name]
    trainable = init_trainable(model, cfg, KEY)
    base = _run(model, (), TrainableConfig(), tokens, enabled=False)
    np.testing.assert_array_equal(_run(model, trainable, cfg, tokens), base)
    ref_model, ref_ivs = apply_trainable(model, _perturb(trainable), cfg, enabled=False)
    assert ref_model is model and ref_ivs == ()


def test_init_shapes_and_values(model):
    t = init_trainable(model, STEERING["all"], KEY)
    assert t["vectors"].shape == (L, D) and not np.any(np.asarray(t["vectors"]))
    assert init_trainable(model, STEERING["one_layer"], KEY)["vectors"].shape == (1, D)
    lr = init_trainable(model, STEERING["low_rank"], KEY)
    assert lr["a"].shape == (L, 2) and lr["b"].shape == (2, D)
    assert not np.any(np.asarray(lr["b"])) and np.all(np.abs(np.asarray(lr["a"])) <= 1 / np.sqrt(2))
    assert np.std(np.asarray(lr["a"])) > 0
    lora = init_trainable(model, ALL["lora"], KEY)
    assert set(lora) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert lora["down_proj"]["a"].shape == (L, CFG.d_mlp, 4) and lora["down_proj"]["b"].shape == (L, 4, D)
    assert not np.any(np.asarray(lora["q_proj"]["b"])) and np.std(np.asarray(lora["q_proj"]["a"])) > 0
    assert init_trainable(model, ALL["full"], KEY) is model.params


@pytest.mark.parametrize("name", list(STEERING))
def test_steering_equals_steer_with_dense_vectors(model, tokens, name):
    cfg = STEERING[name]
    trainable = _perturb(init_trainable(model, cfg, KEY))
    dense = steering_vectors(trainable, cfg, L)
    assert dense.shape == (L, D)
    if cfg.layers is not None:
        others = [l for l in range(L) if l not in cfg.layers]
        np.testing.assert_array_equal(np.asarray(dense)[others], 0)
    if cfg.rank is not None:
        np.testing.assert_allclose(dense, trainable["a"] @ trainable["b"], rtol=1e-6)
    got = _run(model, trainable, cfg, tokens)
    want = np.asarray(jaxsteer.forward(model, tokens, interventions=[jaxsteer.Steer(dense, site=cfg.site)])[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, _run(model, (), cfg, tokens, enabled=False), atol=1e-3)
    _, ivs = apply_trainable(model, trainable, cfg)
    assert all(iv.generation_safe() for iv in ivs)  # usable by jaxsteer.generate as well


def test_lora_equals_merged_weights(model, tokens):
    cfg = ALL["lora"]
    trainable = _perturb(init_trainable(model, cfg, KEY), scale=0.1)
    got = _run(model, trainable, cfg, tokens)
    merged = merge_lora(model, trainable, cfg)
    # by hand for one projection: W + (alpha / r) a @ b
    w = model.params["layers"]["q_proj"] + 2.0 * jnp.einsum(
        "lir,lro->lio", trainable["q_proj"]["a"], trainable["q_proj"]["b"]
    )
    np.testing.assert_allclose(merged.params["layers"]["q_proj"], w, rtol=1e-6, atol=1e-7)
    want = np.asarray(jaxsteer.forward(merged, tokens)[0])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, _run(model, (), cfg, tokens, enabled=False), atol=1e-3)
    assert "lora" not in model.params["layers"]  # the base is untouched


def test_lora_subset_of_targets(model, tokens):
    cfg = TrainableConfig(kind="lora", lora_rank=2, lora_targets=("v_proj", "down_proj"))
    trainable = init_trainable(model, cfg, KEY)
    assert set(trainable) == {"v_proj", "down_proj"}
    m, _ = apply_trainable(model, trainable, cfg)
    assert set(m.params["layers"]["lora"]) == {"v_proj", "down_proj"}
    assert m.params["layers"]["q_proj"] is model.params["layers"]["q_proj"]  # no copies


def test_full_replaces_params(model, tokens):
    cfg = ALL["full"]
    trainable = _perturb(init_trainable(model, cfg, KEY), scale=0.05)
    m, ivs = apply_trainable(model, trainable, cfg)
    assert m.params is trainable and ivs == ()
    assert apply_trainable(model, trainable, cfg, enabled=False)[0] is model


_GRAD_FNS: dict = {}


def _grad_fn(model, name, tokens):
    """Jitted gradient of a scalar of the policy's logits w.r.t. the trainable tree (one compile per kind)."""
    if name not in _GRAD_FNS:
        cfg = ALL[name]

        def f(trainable):
            m, ivs = apply_trainable(model, trainable, cfg)
            logits, _ = jaxsteer.forward(m, tokens, interventions=ivs)
            return jnp.sum(jax.nn.log_softmax(logits)[..., 0])

        _GRAD_FNS[name] = jax.jit(jax.grad(f))  # apply_trainable traced under jit
    return _GRAD_FNS[name]


@pytest.mark.parametrize("name", ["low_rank", "one_layer", "adaptive", "lora"])
def test_gradients_reach_every_trainable_leaf(model, tokens, name):
    cfg = ALL[name]
    trainable = _perturb(init_trainable(model, cfg, KEY), scale=0.1)
    grads = _grad_fn(model, name, tokens)(trainable)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(trainable)
    for g, x in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(trainable), strict=False):
        assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g)))
        assert float(jnp.abs(g).sum()) > 0


@pytest.mark.parametrize("name", ["low_rank", "lora"])
def test_gradient_at_zero_init(model, tokens, name):
    """At init (b = 0) only b gets a gradient: d/da of (x a) b vanishes."""
    grads = _grad_fn(model, name, tokens)(init_trainable(model, ALL[name], KEY))
    pairs = [grads] if name == "low_rank" else list(grads.values())
    for g in pairs:
        assert float(jnp.abs(g["b"]).sum()) > 0 and float(jnp.abs(g["a"]).sum()) == 0


def test_one_layer_gradient_is_the_dense_gradient_at_that_layer(model, tokens):
    g_one = _grad_fn(model, "one_layer", tokens)(init_trainable(model, ALL["one_layer"], KEY))["vectors"]
    g_all = _grad_fn(model, "all", tokens)(init_trainable(model, ALL["all"], KEY))["vectors"]
    np.testing.assert_allclose(g_one[0], g_all[1], rtol=1e-4, atol=1e-6)


def test_count_params(model):
    assert count_params(init_trainable(model, STEERING["all"], KEY)) == L * D
    assert count_params(init_trainable(model, STEERING["one_layer"], KEY)) == D
    assert count_params(init_trainable(model, STEERING["low_rank"], KEY)) == L * 2 + 2 * D
    assert count_params(init_trainable(model, ALL["adaptive"], KEY)) == 2 * (2 * D + 1)  # vector, w, b per layer
    r = 4
    shapes = param_shapes(CFG)
    want = sum(L * (shapes[f"layers/{p}"][1] + shapes[f"layers/{p}"][2]) * r for p in ALL["lora"].lora_targets)
    assert count_params(init_trainable(model, ALL["lora"], KEY)) == want
    assert count_params(init_trainable(model, ALL["full"], KEY)) == CFG.n_params()


def test_config_errors(model):
    with pytest.raises(ValueError, match="kind"):
        TrainableConfig(kind="prefix")
    with pytest.raises(ValueError, match="steering option"):
        TrainableConfig(kind="lora", layers=(1,))
    with pytest.raises(ValueError, match="pattern"):
        TrainableConfig(site="pattern")
    with pytest.raises(ValueError, match="unknown site"):
        TrainableConfig(site="resid")
    with pytest.raises(ValueError, match="lora_targets"):
        TrainableConfig(kind="lora", lora_targets=("qkv",))
    with pytest.raises(ValueError, match="out of range"):
        init_trainable(model, TrainableConfig(layers=(5,)), KEY)
    with pytest.raises(ValueError, match="steering_vectors"):
        steering_vectors({}, ALL["lora"], L)
    m, _ = apply_trainable(model, init_trainable(model, ALL["lora"], KEY), ALL["lora"])
    with pytest.raises(ValueError, match="already has a LoRA"):
        init_trainable(m, ALL["lora"], KEY)


# --------------------------------------------------------------------------- AdaptiveSteer as a trainable kind


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
