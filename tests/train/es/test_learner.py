"""The ES loop (jaxsteer.train.es.learner): members of a generation share one prompt batch, planted
rewards improve on a tiny model, exact resume, `train` with an ES config, the `es` config section,
and spaces and strategies built from the config."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.train.config import ConfigError
from jaxsteer.train.data import Example
from jaxsteer.train.es import ESConfig, ESLoopSpec, build_es, run_es
from jaxsteer.train.es.spaces import EggrollSpace, ESSASpace, FullSpace, TrainableSpace, essa_space
from jaxsteer.train.es.strategies import CMAES, OpenES, SepCMAES
from jaxsteer.train.rewards import get_reward_fn
from jaxsteer.train.trainable import TrainableConfig, apply_trainable
from tests.train.es.conftest import CFG, EGG, KEY, N_NEW, STEER, low_tokens, prompt_examples


def test_essa_members_of_a_generation_share_one_prompt_batch(model, lora):
    """Every member of a generation is scored on the same prompt mini-batch; the next generation
    draws a new one."""
    trainable, cfg = lora
    space, strategy = essa_space(model, trainable, cfg, targets=("q_proj",)), CMAES(population=4, sigma=0.1)
    seen = []

    def record(prompt_ids, completion, reference):
        seen.append(tuple(prompt_ids))
        return float(len(completion))

    record.uses_tokens = True
    examples = [Example(f"p{i}", "", {"prompt_ids": [3 + i, 4, 5 + i]}) for i in range(6)]
    spec = ESLoopSpec(generations=2, prompts_per_generation=3, max_new_tokens=2, stop_tokens=(), seed=1)
    run_es(model, space, strategy, examples, record, spec, log=None)
    assert len(seen) == 2 * 4 * 3  # generations x members x prompts
    batches = [[seen[g * 12 + m * 3 : g * 12 + m * 3 + 3] for m in range(4)] for g in range(2)]
    for members in batches:
        assert all(b == members[0] for b in members) and len(set(members[0])) == 3
    assert set(batches[0][0]) != set(batches[1][0])


@pytest.mark.parametrize("which", ["steering", "eggroll", "essa"])
def test_planted_reward_improves(model, essa, which):
    space, strategy = {"steering": STEER, "eggroll": EGG, "essa": essa}[which]
    spec = ESLoopSpec(generations=8, prompts_per_generation=2, max_new_tokens=N_NEW, stop_tokens=())
    res = run_es(model, space, strategy, prompt_examples(), low_tokens, spec, log=None)
    f = [h["fitness_mean"] for h in res.history]
    assert len(f) == 8 and int(res.state["generation"]) == 8
    assert np.mean(f[-2:]) > f[0] + 0.1, f


def test_resume_is_exact(model, essa, tmp_path):
    """Two generations into a `Run`, then resume it for two more == four straight."""
    from jaxsteer.train.run import Run

    space, strategy = essa
    spec = ESLoopSpec(generations=4, prompts_per_generation=2, max_new_tokens=N_NEW, stop_tokens=(), seed=3)
    straight = run_es(model, space, strategy, prompt_examples() * 3, low_tokens, spec, log=None)
    quiet = dict(tensorboard=False, progress=False, plot=False)
    run = Run(str(tmp_path / "b"), **quiet)
    first = run_es(
        model, space, strategy, prompt_examples() * 3, low_tokens, dataclasses.replace(spec, generations=2), run=run
    )
    run.close()
    assert int(first.state["generation"]) == 2
    run = Run(str(tmp_path / "b"), resume=True, **quiet)
    resumed = run_es(model, space, strategy, prompt_examples() * 3, low_tokens, spec, run=run)
    run.close()
    assert len(resumed.history) == 2
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state), strict=False):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(straight.history[2:], resumed.history, strict=False):
        assert a["fitness_mean"] == b["fitness_mean"] and a["update_norm"] == b["update_norm"]


def test_train_es_from_a_train_config(model, tmp_path):
    """`train` with algorithm = es runs ES over the config's trainable (steering), with the
    same run directory as RL: config, metrics, checkpoints, exported vectors, summary; and
    `evaluate_run` restores the centre from the checkpoint (= the returned one)."""
    from jaxsteer.train import evaluate_run, train
    from jaxsteer.train.config import config_from_dict
    from jaxsteer.train.evaluate import evaluate_policy
    from jaxsteer.train.metrics import read_log

    cfg = config_from_dict(
        {  # population / sigma / lr = STEER's: the compiled program is reused
            "steps": 2,
            "output_dir": str(tmp_path),
            "algorithm": {"name": "es", "prompts_per_step": 2},
            "es": {"population": 16, "sigma": 1.0, "lr": 4.0},
            "sampling": {"max_new_tokens": N_NEW, "bucket": 8},
            "eval": {"before": False, "after": False},
            "progress": False,
            "plot": False,
            "tensorboard": False,
        }
    )
    res = train(cfg, model=model, reward_fn=low_tokens, train_examples=prompt_examples())
    assert res.trainable["vectors"].shape == (CFG.n_layers, CFG.d_model) and np.abs(res.trainable["vectors"]).max() > 0
    assert [r["step"] for r in read_log(res.files["metrics"])] == [1, 2]
    assert os.path.isdir(res.files["checkpoints"]) and os.path.exists(tmp_path / "config.yaml")
    np.testing.assert_array_equal(np.load(res.files["vectors_npy"]), res.trainable["vectors"])
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["algorithm"] == "es" and summary["rollouts"] == 2 * 16 * 2 and summary["peak_rss_mb"] > 0
    examples = prompt_examples()[:4]
    out = evaluate_run(cfg, model=model, eval_examples=examples, reward_fn=low_tokens)
    assert out["step"] == 2
    ids = [e.meta["prompt_ids"] for e in examples]
    steered = evaluate_policy(
        *apply_trainable(model, res.trainable, TrainableConfig()),
        examples,
        ids,
        tokenizer=None,
        reward_fn=get_reward_fn(low_tokens),
        max_new_tokens=N_NEW,
    )
    assert out["trained"]["greedy_acc"] == steered["greedy_acc"]


def test_es_config_section():
    """`es.*` keys are checked like every other config key; a field only the other learner reads
    is an error naming it (RL-only fields in an ES run, `es.*` in an RL run)."""
    from jaxsteer.train.config import ConfigError, config_from_dict, config_to_dict

    with pytest.raises(ConfigError, match=r"lr, rl.group_size: not used by evolution strategies"):
        config_from_dict({"algorithm": {"name": "essa", "group_size": 1}, "lr": 0.1})
    with pytest.raises(ConfigError, match=r"es.population: not used by the RL learner"):
        config_from_dict({"algorithm": {"name": "grpo"}, "es": {"population": 8}})
    cfg = config_from_dict({"algorithm": {"name": "essa"}, "es": {"population": 8, "targets": ["q_proj"]}})
    assert cfg.is_es and cfg.es.targets == ("q_proj",) and cfg.rollouts_per_step == 8 * cfg.prompts_per_step
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="es.strategy"):
        config_from_dict({"algorithm": {"name": "es"}, "es": {"strategy": "adam"}})
    with pytest.raises(ConfigError, match="unknown config key 'es.popsize'"):
        config_from_dict({"es": {"popsize": 8}})
    with pytest.raises(ConfigError, match="es.targets"):
        config_from_dict({"es": {"targets": ["wq"]}})
    with pytest.raises(ConfigError, match="algorithm"):
        config_from_dict({"algorithm": {"name": "a2c"}})


def test_config_builds_spaces_and_strategies(model, lora):
    trainable, cfg = lora
    space, strat = build_es(model, ESConfig(population=8), "es")
    assert isinstance(space, TrainableSpace) and isinstance(strat, OpenES)
    space, strat = build_es(model, ESConfig(rank=2, targets=("q_proj",)), "eggroll")
    assert isinstance(space, EggrollSpace) and space.rank == 2 and set(space.init(model)) == {"q_proj"}
    space, strat = build_es(model, ESConfig(alpha=0.25, space="essa_product"), "essa", cfg, trainable)
    assert isinstance(strat, CMAES) and space.n_active == 1
    space, strat = build_es(model, ESConfig(alpha=0.5, targets=("q_proj", "v_proj")), "essa", cfg, trainable)
    assert (
        isinstance(space, ESSASpace) and set(space.s_a) == {"q_proj", "v_proj"} and set(space.frozen) == {"down_proj"}
    )
    with pytest.raises(ConfigError, match="have no adapter"):
        build_es(model, ESConfig(targets=("k_proj",)), "essa", cfg, trainable)  # the fixture has no k_proj adapter
    space, strat = build_es(model, ESConfig(space="full", strategy="sep_cma", population=8), "es")
    assert isinstance(space, FullSpace) and isinstance(strat, SepCMAES)
    with pytest.raises(ValueError):
        OpenES(population=5)  # antithetic pairs need an even population
    with pytest.raises(ValueError, match="SepCMAES"):
        CMAES(max_dim=10).init({"x": jnp.zeros(11)}, KEY)
    with pytest.raises(TypeError):
        CMAES().member(EggrollSpace(), CMAES().init({"x": jnp.zeros(2)}, KEY), 0)
