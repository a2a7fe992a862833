"""The sharded update on 8 virtual CPU devices equals the single-device update.

Runs in a subprocess: `XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before
jax is imported. Meshes: data=8 (steering, replicated vectors) and data=4 x fsdp=2 (full
fine-tuning with fsdp-sharded parameters and optimizer state; LoRA)."""

from __future__ import annotations

from virtual_devices import run_script

SCRIPT = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
assert len(jax.devices()) == 8, jax.devices()
import train_toy as T
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.build import build_model
from jaxsteer.train.rl.learner import setup_training
from jaxsteer.train.sharding import global_batch, make_mesh
from jaxsteer.train.rl.step import compile_step

def batch(rows, P, N):
    rng = np.random.RandomState(0)
    tokens = rng.randint(2, T.VOCAB, size=(rows, P + N)).astype(np.int32)
    tokens[:, :P] = np.repeat(tokens[::4, :P], 4, axis=0)  # groups of G=4 rows share a prompt
    mask = np.ones_like(tokens); mask[:8, :2] = 0
    for i in range(rows):
        mask[i, P + rng.randint(1, N + 1):] = 0
    return {"tokens": tokens, "mask": mask, "old_logp": -rng.rand(rows, N).astype(np.float32),
            "advantages": rng.randn(rows).astype(np.float32), "rewards": np.sign(rng.randn(rows)).astype(np.float32)}

out = {}
for kind, data, fsdp in (("steering", 8, 1), ("full", 4, 2), ("lora", 4, 2)):
    res = []
    for mesh in (make_mesh(1, 1, jax.devices()[:1]), make_mesh(data, fsdp)):
        cfg = config_from_dict(T.config_dict("/tmp/unused", **{"trainable.kind": kind, "model.random_scale": 0.2,
                                "optimizer.micro_batches": 2, "lr": 0.01, "rl.loss.kl_coef": 0.05,
                                "optimizer.eps": 1e-3}))  # a large eps: Adam is not sign(g) for g ~ 0
        model, _ = build_model(cfg.model)
        setup = setup_training(cfg, model, mesh)
        step = compile_step(setup.spec, setup.tx, base_shardings=setup.base_shardings,
                            state_shardings=setup.state_shardings, batch_shardings=setup.batch_shardings,
                            metric_sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        b = {k: v.reshape(2, -1, *v.shape[1:]) for k, v in batch(16, 6, 4).items()}
        state = setup.state
        for _ in range(2):
            state, metrics = step(setup.model, state, {k: global_batch(v, mesh) for k, v in b.items()}, 6)
        shardings = sorted({str(x.sharding.spec) for x in jax.tree_util.tree_leaves(state["trainable"])})
        res.append((jax.device_get(state), jax.device_get(metrics), shardings))
    (s1, m1, _), (s8, m8, specs) = res
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)))
    scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree_util.tree_leaves(s1["trainable"]))
    out[kind] = {"max_abs_diff": diff, "scale": scale, "loss": [float(m1["loss"]), float(m8["loss"])],
                 "grad_norm": [float(m1["grad_norm"]), float(m8["grad_norm"])], "specs": specs}
print("RESULT" + json.dumps(out))
"""


def test_sharded_step_equals_single_device():
    out = run_script(SCRIPT, devices=8, timeout=900)
    for kind, r in out.items():
        assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["scale"]), (kind, r)
        assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5, (kind, r)
        assert abs(r["grad_norm"][0] - r["grad_norm"][1]) <= 1e-4 * max(1.0, r["grad_norm"][0]), (kind, r)
    assert any("fsdp" in s for s in out["full"]["specs"]), out["full"]  # params really are split
    assert out["steering"]["specs"] in (["P()"], ["PartitionSpec()"])  # replicated
