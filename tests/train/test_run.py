"""Runs fail safely (issue 11): concurrent runs on one directory, resuming with a changed config,
non-finite training, and bad configs found before the model loads. Tiny random model, token-id task."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import jax
import pytest
import train_toy as T
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxsteer.train import train
from jaxsteer.train.checkpoint import Checkpointer
from jaxsteer.train.config import ConfigError, apply_overrides, config_from_dict
from jaxsteer.train.metrics import read_log
from jaxsteer.train.run import NonFiniteError, resume_conflicts
from tests import ROOT, TESTS


def _cfg(out, **kw):
    base = {
        "model.random_scale": 0.2,
        "prompts_per_step": 4,
        "sampling.max_new_tokens": 2,
        "steps": 3,
        "checkpoint.every": 1,
        "checkpoint.keep": 5,
    }
    base.update(kw)
    return config_from_dict(T.config_dict(str(out), **base))


def _cli(config: dict, path, *extra) -> subprocess.Popen:
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT, os.environ.get("PYTHONPATH", "")]), JAX_PLATFORMS="cpu"
    )
    return subprocess.Popen(
        [sys.executable, "-m", "jaxsteer.cli", "train", str(path), "--logit-lens", "0", *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_second_run_on_a_busy_directory_is_refused_and_the_first_is_intact(tmp_path):
    out = tmp_path / "run"
    config = T.config_dict(
        str(out), steps=12, **{"checkpoint.every": 3, "checkpoint.keep": 10, "sampling.max_new_tokens": 2}
    )
    first = _cli(config, tmp_path / "a.yaml")
    lock = out / ".lock"
    deadline = time.time() + 300
    while not (lock.is_file() and lock.read_text().strip()):  # the first run holds the directory
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.2)
    second = _cli(config, tmp_path / "b.yaml")
    _, err2 = second.communicate(timeout=300)
    out1, err1 = first.communicate(timeout=600)
    assert second.returncode != 0 and f"in use by process {first.pid}" in err2, err2[-2000:]
    assert first.returncode == 0, err1[-3000:]
    steps = [r["step"] for r in read_log(str(out / "metrics.jsonl")) if r["kind"] == "train"]
    assert steps == list(range(1, 13))  # one run's records, none interleaved
    assert Checkpointer(str(out / "checkpoints")).all_steps() == [3, 6, 9, 12]


@pytest.fixture(scope="module")
def three_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("three")
    cfg = _cfg(out)
    train(cfg)
    return cfg


def test_resume_with_a_changed_config_is_refused_and_config_yaml_kept(three_steps):
    cfg = three_steps
    original = cfg.output_dir + "/config.yaml"
    before = open(original).read()
    for change in ({"lr": 0.5}, {"rl.group_size": 2}, {"data.train": "py:train_toy:eval_examples"}, {"eval.n": 8}):
        changed = config_from_dict(T.config_dict(cfg.output_dir, **{**_overrides(), **change}))
        with pytest.raises(ConfigError, match=rf"differs from the one that made the checkpoints.*{list(change)[0]}"):
            train(changed, resume=True)
    assert open(original).read() == before
    with pytest.raises(ConfigError, match=r"latest checkpoint .* is at step 3 but steps=2"):
        train(config_from_dict(T.config_dict(cfg.output_dir, **{**_overrides(), "steps": 2})), resume=True)
    # changing only how long it runs (and how it reports) is fine
    longer = train(
        config_from_dict(T.config_dict(cfg.output_dir, **{**_overrides(), "steps": 4, "progress": False})), resume=True
    )
    assert [h["step"] for h in longer.history] == [4]
    assert open(original).read() == before and os.path.isfile(cfg.output_dir + "/config.resumed.yaml")


def _overrides():
    return {
        "model.random_scale": 0.2,
        "prompts_per_step": 4,
        "sampling.max_new_tokens": 2,
        "steps": 3,
        "checkpoint.every": 1,
        "checkpoint.keep": 5,
    }


def test_resume_conflicts_names_each_change():
    """Each setting a resume would change is named (old keys of a saved config are migrated first:
    `lr` is `optimizer.lr`); how long it runs and how often it evaluates may change."""
    old = {"lr": 0.01, "data": {"train": "a"}, "steps": 3, "eval": {"every": 0, "n": 200}}
    new = config_from_dict(
        {"optimizer": {"lr": 0.02}, "data": {"train": "b"}, "steps": 9, "eval": {"every": 2, "n": 8}}
    )
    assert resume_conflicts(old, new) == ["data.train: 'a' -> 'b'", "eval.n: 200 -> 8", "optimizer.lr: 0.01 -> 0.02"]


def test_non_finite_training_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    @T.token_reward
    def reward_turns_nan(prompt_ids, completion_ids, reference):
        calls["n"] += 1
        return float("nan") if calls["n"] > 2 * 4 * 4 else T.first_token_reward(prompt_ids, completion_ids, reference)

    cfg = _cfg(tmp_path / "nan", steps=5)
    with pytest.raises(
        NonFiniteError, match=r"step 3: loss, grad_norm, trainable became non-finite.*checkpoint is step 2"
    ):
        train(cfg, reward_fn=reward_turns_nan)
    ck = Checkpointer(str(tmp_path / "nan" / "checkpoints"))
    assert ck.all_steps() == [1, 2]
    _, meta = ck.read_meta()
    assert meta["step"] == 2
    log = read_log(str(tmp_path / "nan" / "metrics.jsonl"))
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]


@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"data.train": "arithmetic:n=abc"}, r"data.train: .*n='abc' should be int"),
        ({"data.train": "arithmetic:n=10,digts=2"}, r"data.train: .*no argument 'digts'"),
        ({"data.train": "gsm8k:/no/such.jsonl"}, r"data.train: .*does not exist"),
        ({"data.train": "py:train_toy:nope"}, r"data.train=.*train_toy has no function 'nope'"),
        ({"data.reward": "nosuchreward"}, r"data.reward: unknown reward"),
        ({"mesh.data": 2}, r"mesh: data=2 x fsdp=1 != 1 devices"),
    ],
)
def test_bad_configs_fail_before_the_model_loads(tmp_path, overrides, needle):
    # the model spec points nowhere: a check that ran after loading would fail on the model instead
    cfg = config_from_dict(
        T.config_dict(
            str(tmp_path / "x"), **{"model.spec": str(tmp_path / "no-model"), "model.random": None, **overrides}
        )
    )
    with pytest.raises(ConfigError, match=needle):
        train(cfg, devices=jax.devices()[:1])


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["optimizer.lr=inf"], r"optimizer.lr=inf: must be a finite number"),
        (["optimizer.lr=nan"], r"optimizer.lr=nan: must be a finite number"),
        (["rl.loss.kl_coef=-inf"], r"rl.loss.kl_coef=-inf"),
        (["rl.group_size=1"], r"group_size=1 gives a zero rloo advantage"),
        (["eval.n=0"], r"eval.n and eval.batch_size must be >= 1"),
    ],
)
def test_nonsense_values_are_refused(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(apply_overrides(T.config_dict(str(tmp_path)), overrides))


KEYS = st.sampled_from(
    [
        "lr",
        "steps",
        "seed",
        "rl.group_size",
        "algorithm",
        "sampling.temperature",
        "data.train",
        "eval.n",
        "rl.loss.kl_coef",
        "trainable.kind",
        "mesh.data",
        "nosuch",
        "a.b.c",
        "algorithm",
        "es.sigma",
        "",
    ]
)
VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-3, 10).map(str),
    st.sampled_from(["inf", "nan", "-1e9", "true", "null", "[1, 2]", "{a: 1}", "1e-3", "'x'"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_config_parser_raises_only_config_errors(pairs):
    try:
        config_from_dict(apply_overrides(T.config_dict("runs/x"), [f"{k}={v}" for k, v in pairs]))
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.floats(), st.integers(), st.text(max_size=5)),
        lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3),
        max_leaves=8,
    )
)
def test_config_from_arbitrary_data_raises_only_config_errors(data):
    try:
        config_from_dict(data if isinstance(data, dict) else {"x": data})
    except ConfigError:
        pass
