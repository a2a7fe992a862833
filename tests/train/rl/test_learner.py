"""The RL loop end to end on a tiny random model and a token-id task (no tokenizer):
steering, LoRA and full fine-tuning learn (beat the untrained policy, the null run, by a margin
it cannot reach: train_toy.assert_learns); micro-batching does not change the
update; kill-and-resume in a new process equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as T
import yaml

from jaxsteer.train import train
from jaxsteer.train.build import build_model
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.rl.learner import setup_training
from jaxsteer.train.rl.step import compile_step
from jaxsteer.train.sharding import make_mesh
from tests import ROOT, TESTS

KINDS = {
    "steering": {"lr": 0.3},
    "lora": {"lr": 0.05, "trainable.lora_rank": 4},
    "full": {"lr": 0.01},
}


def _cfg(out, **kw):
    base = {"model.random_scale": 0.2, "prompts_per_step": 8, "sampling.max_new_tokens": 2, "steps": 6}
    base.update(kw)
    return config_from_dict(T.config_dict(str(out), **base))


@pytest.fixture(scope="module")
def steering_run(tmp_path_factory):
    """Six uninterrupted steering steps, checkpoints every 2 (kept: 2, 4, 6)."""
    out = tmp_path_factory.mktemp("straight")
    cfg = _cfg(out, **{"lr": 0.3, "checkpoint.every": 2, "checkpoint.keep": 3})
    return cfg, train(cfg)


def _rises(history):
    r = [h["reward_mean"] for h in history]
    return np.mean(r[-2:]) - np.mean(r[:2]), r


def test_reward_rises_steering(steering_run):
    _, result = steering_run
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253; trained: 0.628
    gain, r = _rises(result.history)
    assert gain > 0.4, r  # the sampled reward too; a lr 1e-12 run "rises" by 0.219 on these prompts
    assert result.history[0]["zero_std_fraction"] < 1.0
    assert {
        "reward_std",
        "accuracy",
        "entropy",
        "grad_norm",
        "completion_length",
        "clip_fraction",
        "rollout_tokens_per_s",
        "rollout_s",
        "update_s",
    } <= set(result.history[0])
    assert os.path.exists(result.files["vectors_npy"]) and os.path.exists(result.files["vectors_safetensors"])
    records = [json.loads(l) for l in open(result.files["metrics"])]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 7))


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_reward_rises(tmp_path, kind):
    kw = {"trainable.kind": kind, **KINDS[kind], "checkpoint.every": 0}
    result = train(_cfg(tmp_path, **kw))
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253; trained: LoRA 0.744, full 0.633
    gain, r = _rises(result.history)
    assert gain > 0.4, r  # a lr 1e-12 run: 0.219


def _batch(rng, rows, P, N, vocab, G=4):
    """A rollout-shaped batch: groups of G rows share a (left-padded) prompt; ragged completions."""
    tokens = rng.randint(2, vocab, size=(rows, P + N)).astype(np.int32)
    mask = np.ones_like(tokens)
    for g in range(0, rows, G):
        tokens[g : g + G, :P] = tokens[g, :P]
        mask[g : g + G, : rng.randint(0, 3)] = 0  # some left padding
    for i in range(rows):  # ragged completion lengths
        mask[i, P + rng.randint(1, N + 1) :] = 0
    return {
        "tokens": tokens,
        "mask": mask,
        "old_logp": -rng.rand(rows, N).astype(np.float32),
        "advantages": rng.randn(rows).astype(np.float32),
        "rewards": np.sign(rng.randn(rows)).astype(np.float32),
    }


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_micro_batches_do_not_change_the_update(tmp_path, aggregation):
    """One step on a batch as 1 micro-batch == the same batch as 4 micro-batches (grad accumulation)."""
    results = []
    for M in (1, 4):
        cfg = _cfg(
            tmp_path,
            **{
                "optimizer.micro_batches": M,
                "rl.loss.aggregation": aggregation,
                "rl.loss.dash_tau": 0.5,
                "model.random_scale": 0.2,
            },
        )
        model, _ = build_model(cfg.model)
        mesh = make_mesh(devices=jax.devices()[:1])
        setup = setup_training(cfg, model, mesh)
        step = compile_step(setup.spec, setup.tx)
        batch = _batch(np.random.RandomState(0), 32, 6, 4, T.VOCAB)
        batch = {k: jnp.asarray(v.reshape(M, -1, *v.shape[1:])) for k, v in batch.items()}
        state, metrics = step(setup.model, setup.state, batch, 6)
        results.append((jax.device_get(state["trainable"]), jax.device_get(metrics)))
    (t1, m1), (t4, m4) = results
    np.testing.assert_allclose(t1["vectors"], t4["vectors"], atol=1e-6)
    for k in ("loss", "grad_norm", "entropy", "kept_fraction"):
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _resume_in_new_process(config: dict, path) -> subprocess.CompletedProcess:
    """Write `config` to `path` and run `jaxsteer train PATH --resume` in a fresh interpreter."""
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "jaxsteer.cli", "train", str(path), "--resume", "--logit-lens", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_kill_and_resume_in_a_new_process(steering_run, tmp_path):
    """Steps 1-4, stop, restore in a new process, steps 5-6 == six steps straight."""
    cfg, straight = steering_run
    run = tmp_path / "resumed"
    shutil.copytree(cfg.output_dir, run)
    ck = run / "checkpoints"
    for d in os.listdir(ck):
        if d.isdigit() and int(d) > 4:
            shutil.rmtree(ck / d)
    # the run "died" after step 4: drop its later log lines and outputs too
    for name in ("steering_vectors.npy", "steering_vectors.safetensors", "summary.json"):
        if (run / name).exists():
            os.remove(run / name)
    data = T.config_dict(
        str(run),
        **{
            "model.random_scale": 0.2,
            "prompts_per_step": 8,
            "sampling.max_new_tokens": 2,
            "steps": 6,
            "lr": 0.3,
            "checkpoint.every": 2,
            "checkpoint.keep": 3,
        },
    )
    proc = _resume_in_new_process(data, tmp_path / "cfg.yaml")
    assert "resumed from" in proc.stdout and "at step 4" in proc.stdout, proc.stdout
    np.testing.assert_array_equal(np.load(run / "steering_vectors.npy"), np.load(straight.files["vectors_npy"]))
    straight_log = [json.loads(l) for l in open(straight.files["metrics"]) if '"train"' in l]
    resumed_log = [json.loads(l) for l in open(run / "metrics.jsonl") if '"train"' in l]
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight_log, resumed_log, strict=False):  # same data order and samples => same rewards and losses
        for k in ("reward_mean", "accuracy", "loss", "grad_norm"):
            assert a[k] == b[k], (a["step"], k, a[k], b[k])


@pytest.mark.parametrize(
    "variant",
    [
        {"rl.dash": True, "optimizer.micro_batches": 2, "rl.loss.dash_tau": 0.1},
        {
            "rl.updates_per_batch": 2,
            "rl.loss.importance_cap": 2.0,
            "rl.loss.clip_eps_low": 0.2,
            "rl.loss.clip_eps_high": 0.28,
            "rl.loss.kl_coef": 0.01,
        },
        {"algorithm": "expert_iteration", "rl.log_kl": True},
    ],
    ids=["dash", "rapid-offpolicy-clip-kl", "expert-iteration"],
)
def test_algorithm_variants_run_and_learn(tmp_path, variant):
    result = train(_cfg(tmp_path, **{"lr": 0.3, "checkpoint.every": 0, **variant}))
    # untrained / lr 1e-12: 0.253 (its sampled reward still "rises" by 0.219); trained: DASH 0.628,
    # RAPID off-policy 0.676, expert iteration 0.646 (at lr 0.1 it reached only 0.383)
    T.assert_learns(result)
    h = result.history[-1]
    if "rl.loss.dash_tau" in variant:
        assert 0 < h["kept_fraction"] <= 1
    if variant.get("rl.loss.kl_coef") or variant.get("rl.log_kl"):
        assert h["kl"] is not None and h["kl"] >= 0


def test_eval_of_a_trained_run(steering_run):
    """`jaxsteer eval`'s function: base vs trained, greedy (Wilson CI) and sampled pass@1."""
    import dataclasses

    from jaxsteer.train import evaluate_run

    cfg, _ = steering_run
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, samples=4, n=16))
    out = evaluate_run(cfg)
    assert out["step"] == 6 and out["n"] == 16
    for label in ("base", "trained"):
        r = out[label]
        lo, hi = r["greedy_ci"]
        assert 0 <= lo <= r["greedy_acc"] <= hi <= 1
        lo, hi = r["pass1_ci"]
        assert 0 <= lo <= r["pass1"] <= hi <= 1 and r["pass1_k"] == 4
    assert out["trained"]["pass1"] > out["base"]["pass1"]


@pytest.mark.parametrize("kind", ["steering", "lora"])
def test_grouped_scoring_equals_full_rows(kind):
    """Running each prompt once and repeating its K/V cache for the group == scoring every row,
    in values and in gradients."""
    from jaxsteer.train.scoring import grouped_sequence_logprobs, sequence_logprobs
    from jaxsteer.train.trainable import TrainableConfig, apply_trainable, init_trainable

    cfg = _cfg("/tmp/unused")
    model, _ = build_model(cfg.model)
    tcfg = TrainableConfig(kind=kind)
    tr = init_trainable(model, tcfg, jax.random.PRNGKey(0))
    tr = jax.tree_util.tree_map(lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(2), x.shape), tr)
    b = _batch(np.random.RandomState(1), 12, 7, 5, T.VOCAB, G=4)
    tokens, mask = jnp.asarray(b["tokens"]), jnp.asarray(b["mask"])
    adv = jnp.asarray(b["advantages"])

    def loss(tr, grouped):
        m, ivs = apply_trainable(model, tr, tcfg)
        if grouped:
            lp, ent = grouped_sequence_logprobs(m, tokens, mask, ivs, completion_start=7, group_size=4, temperature=0.7)
        else:
            lp, ent = sequence_logprobs(m, tokens, mask, ivs, completion_start=7, temperature=0.7)
        return jnp.sum(lp * adv[:, None]) + jnp.sum(ent), (lp, ent)

    (l0, (lp0, e0)), g0 = jax.value_and_grad(loss, has_aux=True)(tr, False)
    (l1, (lp1, e1)), g1 = jax.value_and_grad(loss, has_aux=True)(tr, True)
    np.testing.assert_allclose(lp1, lp0, atol=2e-5)
    np.testing.assert_allclose(e1, e0, atol=2e-5)
    for a, b_ in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=False):
        np.testing.assert_allclose(a, b_, atol=2e-5, rtol=1e-4)


def test_essa_warm_start_from_a_lora_run(tmp_path):
    """`algorithm: essa` with `model.init_from` = a LoRA run's directory: the ESSA centre at
    start reproduces that run's LoRA policy exactly, and a generation runs through `train`."""
    import jaxsteer
    from jaxsteer.train.es import center_member, es_space_for_run
    from jaxsteer.train.state import load_trainable
    from jaxsteer.train.trainable import build_policy

    lora_dir = tmp_path / "lora"
    lora_cfg = _cfg(lora_dir, **{"trainable.kind": "lora", "trainable.lora_rank": 4, "lr": 0.05, "steps": 2})
    lora_run = train(lora_cfg)
    essa_cfg = config_from_dict(
        T.config_dict(
            str(tmp_path / "essa"),
            **{
                "model.random_scale": 0.2,
                "algorithm": "essa",
                "prompts_per_step": 4,
                "sampling.max_new_tokens": 2,
                "steps": 1,
                "es.population": 4,
                "model.init_from": str(lora_dir),
            },
        )
    )
    model = lora_run.model
    space, _ = es_space_for_run(essa_cfg, model)
    tokens = np.array([[5, 6, 7, 8, 9, 10]])
    _, _, trainable, _ = load_trainable(lora_cfg, model=model)
    lora_model, lora_ivs = build_policy(model, trainable, lora_cfg.trainable)
    want, _ = jaxsteer.forward(lora_model, tokens, interventions=lora_ivs)
    m, ivs = space.apply(model, center_member(space, space.init(model)))
    got, _ = jaxsteer.forward(m, tokens, interventions=ivs)
    assert np.abs(np.asarray(want) - np.asarray(jaxsteer.forward(model, tokens)[0])).max() > 1e-4  # the LoRA matters
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5)
    result = train(essa_cfg)
    summary = json.load(open(tmp_path / "essa" / "summary.json"))
    assert summary["algorithm"] == "essa" and summary["space"] == "ESSASpace" and len(result.history) == 1
    bad = config_from_dict(
        T.config_dict(str(tmp_path / "bad"), **{"algorithm": "essa", "model.init_from": str(tmp_path / "essa")})
    )
    with pytest.raises(ValueError, match="needs a gradient run"):  # an ES run's directory holds no trained adapters
        es_space_for_run(bad, model)


def test_es_kill_and_resume_in_a_new_process(tmp_path):
    """ES through `jaxsteer train`: generations 1-2, stop, `--resume` in a new process for 3-4
    == four generations straight (same centre, same fitness per generation)."""
    es_cfg = {
        "algorithm": "es",
        "prompts_per_step": 4,
        "sampling.max_new_tokens": 2,
        "es.population": 8,
        "es.sigma": 0.5,
        "es.lr": 0.5,
        "model.random_scale": 0.2,
        "steps": 4,
        "checkpoint.every": 2,
        "checkpoint.keep": 3,
    }
    straight = train(config_from_dict(T.config_dict(str(tmp_path / "straight"), **es_cfg)))
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", run)
    shutil.rmtree(run / "checkpoints" / "4")
    for name in ("steering_vectors.npy", "steering_vectors.safetensors", "summary.json"):
        os.remove(run / name)
    proc = _resume_in_new_process(T.config_dict(str(run), **es_cfg), tmp_path / "cfg.yaml")
    assert "at generation 2" in proc.stdout, proc.stdout
    assert np.abs(straight.trainable["vectors"]).max() > 0
    np.testing.assert_array_equal(np.load(run / "steering_vectors.npy"), np.load(straight.files["vectors_npy"]))
    straight_log = [json.loads(l) for l in open(straight.files["metrics"]) if '"train"' in l]
    resumed_log = [json.loads(l) for l in open(run / "metrics.jsonl") if '"train"' in l]
    assert [r["step"] for r in resumed_log] == [1, 2, 3, 4]
    for a, b in zip(straight_log, resumed_log, strict=False):
        assert (a["fitness_mean"], a["fitness_max"], a["update_norm"]) == (
            b["fitness_mean"],
            b["fitness_max"],
            b["update_norm"],
        )


def test_rejection_sampling_sft_raises_the_reward(tmp_path):
    flags = {**T.LEARN, "algorithm": "expert_iteration", "lr": 0.3}
    result = train(config_from_dict(T.config_dict(str(tmp_path / "rs"), **flags)))
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253 (sampled reward "rises" by 0.219); trained: 0.646
