"""Training precision and rematerialisation as config switches: `model.dtype` ("auto" = bfloat16
on accelerators, float32 on CPU; trainables, optimizer moments, logits and losses float32) and
`model.remat` (same update, less memory, read by `jaxsteer plan`); `sampling.call_rows` (micro-batches
sampled together up to 128 rows per sampler call)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as T

from jaxsteer.cli.plan import format_plan
from jaxsteer.models.decoder import forward
from jaxsteer.train import train
from jaxsteer.train.build import build_model
from jaxsteer.train.config import ConfigError, config_from_dict, load_config, resolve_dtype
from jaxsteer.train.gradient import compile_update
from jaxsteer.train.plan import abstract_model, model_config, plan
from jaxsteer.train.rl.learner import setup_training, step_spec
from jaxsteer.train.rl.step import compile_step, train_step
from jaxsteer.train.scoring import sequence_logprobs
from jaxsteer.train.sft.learner import setup_sft, sft_spec, sft_step
from jaxsteer.train.sharding import make_mesh
from jaxsteer.train.state import init_state, make_optimizer
from jaxsteer.train.trainable import init_trainable


def toy_config(out="/tmp/unused", **kw):
    base = {"model.random_scale": 0.2, "prompts_per_step": 8, "sampling.max_new_tokens": 2, "steps": 6}
    base.update(kw)
    return config_from_dict(T.config_dict(str(out), **base))


def toy_batch(rng, rows, P, N, vocab, G=4):
    """Rollout-shaped rows: groups of G share a left-padded prompt; ragged completions."""
    tokens = rng.randint(2, vocab, size=(rows, P + N)).astype(np.int32)
    mask = np.ones_like(tokens)
    for g in range(0, rows, G):
        tokens[g : g + G, :P] = tokens[g, :P]
        mask[g : g + G, : rng.randint(0, 3)] = 0
    for i in range(rows):
        mask[i, P + rng.randint(1, N + 1) :] = 0
    return {
        "tokens": tokens,
        "mask": mask,
        "old_logp": -rng.rand(rows, N).astype(np.float32),
        "advantages": rng.randn(rows).astype(np.float32),
        "rewards": np.sign(rng.randn(rows)).astype(np.float32),
    }


def run_updates(cfg, n_steps=2, P=6, N=4, rows=32):
    """`(trainable, per-step losses)` after `n_steps` jitted updates of `cfg` on one fixed batch."""
    model, _ = build_model(cfg.model)
    mesh = make_mesh(devices=jax.devices()[:1])
    if cfg.algorithm == "sft":  # the SFT learner's NLL update (it reads tokens and mask)
        setup = setup_sft(cfg, model, mesh)
        step = compile_update(functools.partial(sft_step, spec=sft_spec(cfg), tx=setup.tx))
    else:
        setup = setup_training(cfg, model, mesh)
        step = compile_step(setup.spec, setup.tx)
    M = cfg.optimizer.micro_batches
    b = toy_batch(np.random.RandomState(0), rows, P, N, T.VOCAB, G=max(cfg.rl.group_size, 1))
    b = {k: jnp.asarray(v.reshape(M, -1, *v.shape[1:])) for k, v in b.items()}
    state, losses = setup.state, []
    for _ in range(n_steps):
        state, m = step(setup.model, state, b, P)
        losses.append(float(m["loss"]))
    return jax.device_get(state), losses


# --------------------------------------------------------------------------- config


def test_config_values_and_errors():
    cfg = load_config(None, ["model.remat=dots"])
    assert cfg.model.remat == "dots" and cfg.model.remat_arg == "dots_with_no_batch_dims_saveable"
    assert load_config(None, ["model.remat=true"]).model.remat_arg is True
    assert load_config(None).model.remat is False and load_config(None).model.dtype == "auto"
    assert step_spec(load_config(None, ["model.remat=true"])).remat is True
    for bad, field in (
        (["model.remat=sometimes"], "model.remat"),
        (["model.dtype=float16"], "model.dtype"),
        (["model.remat=true", "algorithm=es"], "model.remat"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(None, bad)


def test_auto_dtype_is_bfloat16_on_accelerators_only():
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "gpu") == "bfloat16" and resolve_dtype("auto", "tpu") == "bfloat16"
    assert resolve_dtype("float32", "tpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("auto") == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    model, _ = build_model(toy_config(**{"model.dtype": "bfloat16"}).model)  # explicit YAML value wins
    assert model.params["embed"].dtype == jnp.bfloat16


# --------------------------------------------------------------------------- remat


@pytest.mark.parametrize(
    "overrides, policies",
    [
        (
            {"trainable.kind": "steering"},
            (True, "dots"),
        ),  # grouped scoring: prompt once per group, K/V cache under remat
        ({"trainable.kind": "lora", "trainable.lora_rank": 4}, (True,)),
        (
            {"trainable.kind": "lora", "algorithm": "sft", "rl.group_size": 1, "prompts_per_step": 32},
            (True,),
        ),  # SFT's NLL update, rows scored whole
    ],
)
def test_remat_gives_the_same_update(overrides, policies):
    """Two AdamW updates with remat off and on (and a policy) give the same parameters. (lr 1e-2:
    Adam divides by sqrt(v), so a larger lr magnifies float32 rounding in near-zero gradients.)"""
    overrides = {**overrides, "lr": 0.01}
    s0, l0 = run_updates(toy_config(**overrides, **{"model.remat": False}))
    for remat in policies:
        s, l = run_updates(toy_config(**overrides, **{"model.remat": remat}))
        np.testing.assert_allclose(l, l0, rtol=1e-5, atol=1e-6)
        for a, b in zip(
            jax.tree_util.tree_leaves(s["trainable"]), jax.tree_util.tree_leaves(s0["trainable"]), strict=False
        ):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    start = run_updates(toy_config(**overrides), 0)[0]["trainable"]
    moved = max(
        float(np.max(np.abs(a - b)))
        for a, b in zip(jax.tree_util.tree_leaves(s0["trainable"]), jax.tree_util.tree_leaves(start), strict=False)
    )
    assert moved > 1e-3  # the updates did something


def compiled_update(remat, kind="steering"):
    """The RL update of a deeper, longer-context tiny model, lowered for abstract inputs."""
    random = dict(T.RANDOM_MODEL, n_layers=8, d_model=64, d_mlp=256, head_dim=16, max_position_embeddings=512)
    cfg = toy_config(
        **{
            "model.random": random,
            "model.remat": remat,
            "trainable.kind": kind,
            "sampling.max_new_tokens": 64,
            "optimizer.micro_batches": 1,
        }
    )
    model = abstract_model(model_config(cfg.model), jnp.float32)
    tx, _ = make_optimizer(cfg.optimizer.lr, cfg.steps)
    state = jax.eval_shape(lambda m: init_state(init_trainable(m, cfg.trainable, jax.random.PRNGKey(0)), tx), model)
    B, P, N = cfg.rollouts_per_step, 64, 64
    S = jax.ShapeDtypeStruct
    batch = {
        "tokens": S((1, B, P + N), jnp.int32),
        "mask": S((1, B, P + N), jnp.int32),
        "old_logp": S((1, B, N), jnp.float32),
        "advantages": S((1, B), jnp.float32),
        "rewards": S((1, B), jnp.float32),
    }
    fn = jax.jit(functools.partial(train_step, spec=step_spec(cfg), tx=tx, prompt_width=P))
    return fn.lower(model, state, batch)


def test_remat_lowers_the_update_memory():
    """Same program shape, but the compiled update keeps fewer temporaries with remat (XLA's own
    accounting), and the jaxpr carries the checkpoint (remat) primitive."""
    off, on = compiled_update(False), compiled_update(True)
    t_off = off.compile().memory_analysis().temp_size_in_bytes
    t_on = on.compile().memory_analysis().temp_size_in_bytes
    assert t_on < 0.7 * t_off, (t_on, t_off)
    cfg = toy_config(**{"model.remat": True})
    model, _ = build_model(cfg.model)
    setup = setup_training(cfg, model, make_mesh(devices=jax.devices()[:1]))
    b = toy_batch(np.random.RandomState(0), 32, 6, 4, T.VOCAB)
    b = {k: jnp.asarray(v.reshape(2, -1, *v.shape[1:])) for k, v in b.items()}
    for remat, expect in ((True, True), (False, False)):
        spec = step_spec(toy_config(**{"model.remat": remat}))
        jaxpr = str(
            jax.make_jaxpr(functools.partial(train_step, spec=spec, tx=setup.tx, prompt_width=6))(
                setup.model, setup.state, b
            )
        )
        assert ("checkpoint" in jaxpr or "remat" in jaxpr) == expect


def test_plan_follows_the_remat_setting():
    """`jaxsteer plan` judges the fit by the update the config runs: with or without remat."""
    base = {
        "model": {"spec": "random", "random": dict(T.RANDOM_MODEL, n_layers=8, max_position_embeddings=2048)},
        "algorithm": {"group_size": 4, "prompts_per_step": 16},
        "sampling": {"max_new_tokens": 512},
    }
    off = plan(config_from_dict(base), prompt_len=512)
    on = plan(config_from_dict({**base, "model": {**base["model"], "remat": True}}), prompt_len=512)
    assert on.configured == "update, remat" and off.configured == "update, no remat"
    cap = int((on.peaks["update, remat"] + off.peaks["update, no remat"]) / 2)
    off = plan(config_from_dict(base), prompt_len=512, capacity=cap)
    on = plan(config_from_dict({**base, "model": {**base["model"], "remat": True}}), prompt_len=512, capacity=cap)
    assert on.fits and not off.fits
    assert "model.remat=true" in format_plan(on) and "does NOT fit" in format_plan(off).splitlines()[-1]


# --------------------------------------------------------------------------- precision


def test_bfloat16_weights_float32_trainables_moments_and_logits():
    for kind in ("steering", "lora", "full"):
        cfg = toy_config(**{"model.dtype": "bfloat16", "trainable.kind": kind})
        model, _ = build_model(cfg.model)
        assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(model.params))
        setup = setup_training(cfg, model, make_mesh(devices=jax.devices()[:1]))
        floats = [
            x
            for x in jax.tree_util.tree_leaves((setup.state["trainable"], setup.state["opt"]))
            if jnp.issubdtype(x.dtype, jnp.floating)
        ]
        assert floats and all(x.dtype == jnp.float32 for x in floats), kind
        b = toy_batch(np.random.RandomState(0), 32, 6, 4, T.VOCAB)
        b = {k: jnp.asarray(v.reshape(2, -1, *v.shape[1:])) for k, v in b.items()}
        state, metrics = compile_step(setup.spec, setup.tx)(setup.model, setup.state, b, 6)
        dtypes = {
            x.dtype
            for x in jax.tree_util.tree_leaves((state["trainable"], state["opt"]))
            if jnp.issubdtype(x.dtype, jnp.floating)
        }
        assert dtypes == {jnp.dtype(jnp.float32)}, (kind, dtypes)
        assert metrics["loss"].dtype == jnp.float32
    tokens = jnp.asarray(b["tokens"][0])
    logits, _ = forward(model, tokens)
    assert logits.dtype == jnp.float32
    lp, ent = sequence_logprobs(model, tokens, jnp.asarray(b["mask"][0]), completion_start=6)
    assert lp.dtype == jnp.float32 and ent.dtype == jnp.float32


def test_bfloat16_training_lowers_the_loss_like_float32():
    """SFT on fixed rows: both precisions lower the NLL by a comparable amount over 8 updates."""
    drops = {}
    for dtype in ("float32", "bfloat16"):
        cfg = toy_config(
            **{
                "model.dtype": dtype,
                "trainable.kind": "lora",
                "trainable.lora_rank": 4,
                "lr": 0.05,
                "algorithm": "sft",
                "prompts_per_step": 32,
            }
        )
        _, losses = run_updates(cfg, n_steps=8)
        drops[dtype] = (losses[0] - losses[-1]) / losses[0]
    assert drops["float32"] > 0.2 and drops["bfloat16"] > 0.2, drops
    assert abs(drops["bfloat16"] - drops["float32"]) < 0.25 * drops["float32"], drops


def test_bfloat16_rl_raises_the_reward_like_float32(tmp_path):
    """The same run (seed, prompts, sampling keys) in both precisions: each learns (beats the untrained
    policy by train_toy's margin) and they end at about the same policy."""
    learned, vectors = {}, {}
    for dtype in ("float32", "bfloat16"):
        cfg = toy_config(tmp_path / dtype, **{"model.dtype": dtype, "lr": 0.3, "checkpoint.every": 0})
        result = train(cfg)
        learned[dtype] = T.assert_learns(result)  # untrained: 0.253 in both precisions
        vectors[dtype] = np.asarray(result.trainable["vectors"]).ravel()
    (null32, p32), (null16, p16) = learned["float32"], learned["bfloat16"]
    assert abs(null16 - null32) < 0.01 and abs(p16 - p32) < 0.1, learned
    cos = (
        vectors["float32"]
        @ vectors["bfloat16"]
        / np.linalg.norm(vectors["float32"])
        / np.linalg.norm(vectors["bfloat16"])
    )
    assert cos > 0.9, cos


# --------------------------------------------------------------------------- decode batch


def test_sampler_calls_merge_micro_batches_up_to_call_rows():
    """Rollouts sample whole micro-batches together up to `sampling.call_rows` rows per call (the
    decode matmuls' rate rises with rows), never splitting a micro-batch; `jaxsteer plan`'s rollout
    follows the same layout."""
    from jaxsteer.train.rl.learner import sampler_calls

    def calls(prompts, group, micro, **kw):
        return sampler_calls(
            load_config(
                None,
                [
                    f"prompts_per_step={prompts}",
                    f"rl.group_size={group}",
                    f"optimizer.micro_batches={micro}",
                    *(f"{k}={v}" for k, v in kw.items()),
                ],
            )
        )

    assert calls(8, 8, 1) == 1
    assert calls(8, 4, 2) == 1  # 32 rows: one call instead of two of 16
    assert calls(64, 8, 8) == 4  # 512 rows: calls of 128 (2 micro-batches each)
    assert calls(256, 8, 8) == 8  # 2048 rows: a micro-batch (256) is already over 128
    assert calls(64, 8, 8, **{"sampling.call_rows": 512}) == 1
    assert calls(64, 8, 8, **{"sampling.call_rows": 0}) == 8  # one call per micro-batch
    assert calls(64, 8, 8, **{"rl.dash": "true"}) == 1
    cfg = config_from_dict(
        {
            "model": {"spec": "random", "random": T.RANDOM_MODEL},
            "algorithm": {"prompts_per_step": 64, "group_size": 8, "micro_batches": 8},
        }
    )
    assert plan(cfg, data=2, prompt_len=8).rollout_rows == 128 / 2
    with pytest.raises(ConfigError, match="sampling.call_rows"):
        load_config(None, ["sampling.call_rows=-1"])
