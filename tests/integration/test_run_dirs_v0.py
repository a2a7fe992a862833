"""Run directories written before the config refactor (tests/data/runs_v0, commit d97a370: old key
names in config.yaml and in the checkpoints' metadata) still load, evaluate and resume with today's
code; a resumed old run ends where an uninterrupted run of today's code does, for each kind of run
directory: RL steering, SFT LoRA, ES, ESSA (warm start from the SFT run) and SAE."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
import train_toy as T

from jaxsteer.train import evaluate_run, load_run, train
from jaxsteer.train.config import config_from_dict, load_config
from tests import TESTS

FIXTURE = os.path.join(TESTS, "data", "runs_v0")

# today's spelling of each old run's settings (the generator's overrides, see the fixture's README)
COMMON = {"steps": 4, "checkpoint.every": 2, "checkpoint.keep": 1, "model.random_scale": 0.2}
RUNS = {
    "rl_steering": {"optimizer.lr": 0.3},
    "sft_lora": {
        "algorithm": "sft",
        "optimizer.micro_batches": 1,
        "trainable.kind": "lora",
        "trainable.lora_rank": 2,
        "optimizer.lr": 0.05,
        "data.train": "py:train_toy:sft_examples",
    },
    "es": {"algorithm": "es", "es": {"population": 4, "sigma": 0.5, "lr": 1.0}},
    "essa": {"algorithm": "essa", "es": {"population": 4, "sigma": 0.5}},
}


@pytest.fixture
def runs(tmp_path) -> str:
    """A fresh copy of the fixture (a resumed test changes its run) with `@RUNS@` replaced by the copy's path."""
    root = str(tmp_path / "runs")
    shutil.copytree(FIXTURE, root)
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                text = open(path, encoding="utf-8").read()
            except UnicodeDecodeError:
                continue
            if "@RUNS@" in text:
                open(path, "w", encoding="utf-8").write(text.replace("@RUNS@", root))
    return root


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


@pytest.mark.parametrize("kind", list(RUNS))
def test_old_training_run_loads_evaluates_and_resumes(runs, kind, tmp_path):
    run_dir = os.path.join(runs, kind)
    loaded = load_run(run_dir)
    assert loaded.step == 2 and loaded.config.algorithm == RUNS[kind].get("algorithm", "grpo")
    report = evaluate_run(loaded.config)
    assert 0.0 <= report["trained"]["greedy_acc"] <= 1.0 and report["n"] == 32
    # resume the old run with its own (old-vocabulary) config.yaml, two more steps
    old_cfg = load_config(os.path.join(run_dir, "config.yaml"), ["steps=4"], warn=False)
    if kind.startswith("rl"):
        shutil.copytree(run_dir, str(tmp_path / kind))  # a second copy of the old run, resumed below
    resumed = train(old_cfg, resume=True)
    extra = {"model.init_from": os.path.join(runs, "sft_lora")} if kind == "essa" else {}
    new_cfg = T.config_dict(str(tmp_path / kind), **COMMON, **RUNS[kind], **extra)
    if kind.startswith("rl"):
        # sampled rollouts: the fixture's first two steps were drawn before the per-row sampling keys
        # (cfc128f), so a fresh run differs from step 1; resuming a second copy of the old run with
        # today's vocabulary must continue it exactly as its old config.yaml does
        fresh = train(config_from_dict(new_cfg), resume=True)
        assert len(fresh.history) == 2  # it continued from the old step-2 checkpoint
    else:  # greedy ES members, SFT: no sampling, so an uninterrupted run today is the reference
        fresh = train(config_from_dict(new_cfg))
    assert len(resumed.history) == 2
    for a, b in zip(_leaves(resumed.trainable), _leaves(fresh.trainable), strict=True):
        np.testing.assert_array_equal(a, b)


def test_old_sae_run_resumes_and_evaluates(runs, tmp_path):
    from jaxsteer.train.sae.config import load_run_config
    from jaxsteer.train.sae.run import eval_run, load_sae, train_sae
    from tests.train.sae.test_run import CharTokenizer, run_cfg, tiny_sae_model

    model, tok = tiny_sae_model(), CharTokenizer()
    run_dir = os.path.join(runs, "sae_topk")
    cfg = load_run_config(os.path.join(run_dir, "config.yaml"), warn=False)
    assert cfg.output_dir == run_dir and cfg.steps == 4 and cfg.checkpoint.every == 2
    train_sae(cfg, model=model, tokenizer=tok, resume=True, progress=False)
    fresh_cfg = run_cfg(
        os.path.join(runs, "sae_corpus.txt"),
        tmp_path / "sae",
        overrides=["steps=4", "checkpoint.every=2", "checkpoint.keep=1"],
    )
    train_sae(fresh_cfg, model=model, tokenizer=tok, progress=False)
    a, b = load_sae(run_dir), load_sae(str(tmp_path / "sae"))
    for x, y in zip(_leaves(a.params), _leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    res = eval_run(run_dir, model=model, tokenizer=tok, say=lambda *_: None)
    assert 0.0 < res["explained_variance"] <= 1.0
