"""PPO with a learned value head (jaxsteer.train.rl.value): config errors, the joint update of
policy and value head for every trainable kind, and a toy run against an lr=0 null run on the same
seed (reward and value loss), with resume equality; sharded like one device. GAE and the value loss
themselves are tested in test_losses.py."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as T

from jaxsteer.train import train
from jaxsteer.train.build import build_model
from jaxsteer.train.config import ConfigError, config_from_dict
from jaxsteer.train.rl.learner import setup_training
from jaxsteer.train.rl.step import compile_step
from jaxsteer.train.sharding import make_mesh


def test_ppo_config_errors():
    base = {"algorithm": {"name": "ppo", "group_size": 4}}
    assert config_from_dict(base).updates_per_step == 1
    with pytest.raises(ConfigError, match="rl.gamma"):
        config_from_dict({"algorithm": {"gamma": 0.9}})  # a PPO setting in a GRPO run
    with pytest.raises(ConfigError, match="value_lr"):
        config_from_dict({"value_lr": 0.1})
    with pytest.raises(ConfigError, match="rl.loss.dash_tau"):
        config_from_dict({**base, "loss": {"dash_tau": 0.1}})
    with pytest.raises(ConfigError, match="gae_lambda"):
        config_from_dict({"algorithm": {"name": "ppo", "gae_lambda": 1.5}})


def _ppo_batch(rng, rows, P, N, G=4):
    tokens = rng.randint(2, T.VOCAB, size=(rows, P + N)).astype(np.int32)
    mask = np.ones_like(tokens)
    for g in range(0, rows, G):
        tokens[g : g + G, :P] = tokens[g, :P]
    for i in range(rows):
        mask[i, P + rng.randint(1, N + 1) :] = 0
    cm = mask[:, P:].astype(np.float32)
    return {
        "tokens": tokens,
        "mask": mask,
        "old_logp": -rng.rand(rows, N).astype(np.float32) * cm,
        "advantages": rng.randn(rows, N).astype(np.float32) * cm,
        "rewards": np.sign(rng.randn(rows)).astype(np.float32),
        "returns": rng.randn(rows, N).astype(np.float32) * cm,
        "old_values": 0.1 * rng.randn(rows, N).astype(np.float32) * cm,
    }


def _one_step(tmp_path, kind, micro_batches):
    flags = {
        "algorithm": "ppo",
        "rl.loss.clip_eps_low": 0.2,
        "optimizer.micro_batches": micro_batches,
        "trainable.kind": kind,
        "lr": 0.01,
        "value_lr": 0.01,
        "model.random_scale": 0.2,
        "prompts_per_step": 8,
    }
    if kind == "lora":
        flags["trainable.lora_rank"] = 2
    cfg = config_from_dict(T.config_dict(str(tmp_path), **flags))
    model, _ = build_model(cfg.model)
    setup = setup_training(cfg, model, make_mesh(devices=jax.devices()[:1]))
    before = jax.device_get(setup.state)
    step = compile_step(setup.spec, setup.tx, value_tx=setup.value_tx, donate=False)
    batch = _ppo_batch(np.random.RandomState(0), 32, 6, 3)
    batch = {k: jnp.asarray(v.reshape(micro_batches, -1, *v.shape[1:])) for k, v in batch.items()}
    state, metrics = step(setup.model, setup.state, batch, 6)
    return before, jax.device_get(state), jax.device_get(metrics)


def _moved(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=False)
    )


@pytest.mark.parametrize("kind", ["steering", "lora", "full"])
def test_joint_update_moves_policy_and_value_head(tmp_path, kind):
    before, after, m = _one_step(tmp_path, kind, 1)
    assert _moved(before["value"], after["value"]) > 1e-4
    assert _moved(before["trainable"], after["trainable"]) > 1e-5
    assert np.isfinite(m["value_loss"]) and m["value_loss"] > 0 and m["value_grad_norm"] > 0
    assert _moved(before["value_opt"], after["value_opt"]) > 0  # the head's own AdamW moments


def test_micro_batches_do_not_change_the_ppo_update(tmp_path):
    _, s1, m1 = _one_step(tmp_path / "a", "steering", 1)
    _, s2, m2 = _one_step(tmp_path / "b", "steering", 2)
    for a, b in zip(
        jax.tree_util.tree_leaves((s1["trainable"], s1["value"])),
        jax.tree_util.tree_leaves((s2["trainable"], s2["value"])),
        strict=False,
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    for k in ("loss", "value_loss", "grad_norm", "value_grad_norm"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-6, err_msg=k)


TOY = {
    "algorithm": "ppo",
    "rl.epochs": 2,
    "rl.updates_per_batch": 2,
    "optimizer.micro_batches": 1,
    "rl.loss.clip_eps_low": 0.2,
    "model.random_scale": 0.2,
    "prompts_per_step": 8,
    "sampling.max_new_tokens": 2,
    "steps": 10,
    "checkpoint.every": 4,
    "checkpoint.keep": 3,
}


def _toy(out, **kw):
    return config_from_dict(T.config_dict(str(out), **{**TOY, **kw}))


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """A PPO steering run and its null run (lr = value_lr = 0) on the same seed."""
    trained = _toy(tmp_path_factory.mktemp("ppo"), lr=0.3, value_lr=0.05)
    null = _toy(tmp_path_factory.mktemp("null"), lr=0.0, value_lr=0.0, **{"checkpoint.every": 0})
    return trained, train(trained), train(null)


def _last(history, key, n=3):
    return float(np.mean([h[key] for h in history[-n:]]))


def test_toy_reward_rises_beyond_the_null_run(toy_runs):
    _, trained, null = toy_runs
    gain = _last(trained.history, "reward_mean") - trained.history[0]["reward_mean"]
    null_gain = _last(null.history, "reward_mean") - null.history[0]["reward_mean"]
    # measured: trained gain 1.15 (-0.56 -> 0.58 over the last three steps), null gain ~0 (rewards in [-1, 1])
    assert gain > null_gain + 0.4, (
        [h["reward_mean"] for h in trained.history],
        [h["reward_mean"] for h in null.history],
    )


def test_toy_value_loss_falls_below_the_null_run(toy_runs):
    _, trained, null = toy_runs
    # null: V stays 0, value loss ~0.476 every step; measured: trained 0.337 over the last three (value_lr
    # 0.05; at 0.02 the head learned too little in 10 steps to clear the margin on every sampling stream)
    t, n = _last(trained.history, "value_loss"), _last(null.history, "value_loss")
    assert t < n - 0.08, ([h["value_loss"] for h in trained.history], [h["value_loss"] for h in null.history])
    assert trained.history[-1]["explained_variance"] is not None


def test_ppo_resume_equals_the_straight_run(toy_runs, tmp_path):
    """Stop after step 8 (drop the step-10 checkpoint), resume: the trainable and the logged metrics
    (value loss included, so the restored value head and its optimizer state) equal the straight run's."""
    cfg, straight, _ = toy_runs
    run = tmp_path / "resumed"
    shutil.copytree(cfg.output_dir, run)
    ck = run / "checkpoints"
    for d in os.listdir(ck):
        if d.isdigit() and int(d) > 8:
            shutil.rmtree(ck / d)
    os.remove(run / "summary.json")
    resumed = train(_toy(run, lr=0.3, value_lr=0.05), resume=True)
    for a, b in zip(
        jax.tree_util.tree_leaves(straight.trainable), jax.tree_util.tree_leaves(resumed.trainable), strict=False
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)
    log = lambda p: [json.loads(l) for l in open(p) if '"train"' in l]
    straight_log, resumed_log = log(straight.files["metrics"]), log(run / "metrics.jsonl")
    assert [r["step"] for r in resumed_log] == list(range(1, 11))
    for a, b in zip(straight_log, resumed_log, strict=False):
        for k in ("reward_mean", "loss", "value_loss", "explained_variance", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)


SHARDED = r"""
import json
import jax, numpy as np
import train_toy as T
from tests.train.rl import test_value as P
from jaxsteer.train.build import build_model
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.rl.learner import setup_training
from jaxsteer.train.rl.step import compile_step
from jaxsteer.train.sharding import global_batch, make_mesh, replicated

out = {}
for kind, data, fsdp in (("steering", 8, 1), ("full", 4, 2)):
    res = []
    for mesh in (make_mesh(1, 1, jax.devices()[:1]), make_mesh(data, fsdp)):
        cfg = config_from_dict(T.config_dict("/tmp/unused", **{"algorithm": "ppo", "trainable.kind": kind,
                               "rl.loss.clip_eps_low": 0.2, "optimizer.micro_batches": 2, "lr": 0.01,
                               "optimizer.eps": 1e-3,
                               "model.random_scale": 0.2, "prompts_per_step": 8}))
        model, _ = build_model(cfg.model)
        setup = setup_training(cfg, model, mesh)
        step = compile_step(setup.spec, setup.tx, base_shardings=setup.base_shardings, value_tx=setup.value_tx,
                            state_shardings=setup.state_shardings, batch_shardings=setup.batch_shardings,
                            metric_sharding=replicated(mesh))
        b = P._ppo_batch(np.random.RandomState(0), 32, 6, 3)
        state, m = step(setup.model, setup.state, {k: global_batch(v.reshape(2, -1, *v.shape[1:]), mesh)
                                                   for k, v in b.items()}, 6)
        values = setup.value_fn(setup.model, state, global_batch(b["tokens"], mesh, micro=False),
                                global_batch(b["mask"], mesh, micro=False), 6)
        res.append((jax.device_get((state["trainable"], state["value"])), float(m["value_loss"]), np.asarray(values)))
    (s1, v1, val1), (s8, v8, val8) = res
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)))
    out[kind] = {"diff": diff, "value_loss": [v1, v8], "values_diff": float(np.max(np.abs(val1 - val8)))}
print("RESULT" + json.dumps(out))
"""


def test_sharded_ppo_step_and_values_equal_single_device():
    """The PPO update and the rollout value estimates on 8 virtual devices (data=8; data=4 x fsdp=2
    for full fine-tuning) equal one device's."""
    from virtual_devices import run_script

    out = run_script(SHARDED, devices=8, timeout=900)
    for kind, r in out.items():
        assert r["diff"] <= 1e-5 and r["values_diff"] <= 1e-5, (kind, r)
        assert abs(r["value_loss"][0] - r["value_loss"][1]) <= 1e-6, (kind, r)
