"""DAPO's data side (jaxsteer.train.rl.dynamic): dynamic sampling (drop groups whose rewards all
agree, refill), the soft overlong punishment in `collect`, DAPO's config fields, a run with all four
DAPO parts, and the shipped DAPO config's mini-batch clipping. The overlong penalty's boundary values
are tested in tests/train/test_rewards.py, clip-higher's gradient in test_losses.py."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from jaxsteer.train.config import SamplingSpec, config_from_dict
from jaxsteer.train.data import Example
from jaxsteer.train.rewards import token_reward
from jaxsteer.train.rl.dynamic import fill_batch, informative_groups
from jaxsteer.train.rl.losses import group_advantages
from jaxsteer.train.rl.rollout import collect
from tests import ROOT

PLANTED = 2  # prompts that start with this token always get the same reward


@token_reward
def planted_reward(prompt_ids, completion_ids, reference) -> float:
    if prompt_ids[0] == PLANTED:
        return -1.0  # every sample of a planted prompt agrees: no learning signal
    return 1.0 if completion_ids and completion_ids[0] % 2 == 0 else -1.0


def _examples(seed: int, n: int, planted: int):
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        ids = rng.randint(3, 50, size=4).tolist()
        if i < planted:
            ids[0] = PLANTED
        out.append(Example(f"p{seed}-{i}", "x", {"prompt_ids": ids}))
    return out


def test_dynamic_sampling_refills_a_batch_without_the_planted_prompts(tiny_model):
    G, n_prompts = 4, 4
    rounds = itertools.count()
    seen = []

    def sample(r):
        examples = _examples(next(rounds), n_prompts, planted=2)  # half of every round is planted
        seen.append(r)
        return collect(
            tiny_model,
            (),
            examples,
            [e.meta["prompt_ids"] for e in examples],
            group_size=G,
            calls=1,
            tokenizer=None,
            key=jax.random.PRNGKey(r),
            reward_fn=planted_reward,
            advantage_fn=lambda x: np.asarray(group_advantages(x, G, "rloo")),
            sampling=SamplingSpec(max_new_tokens=4, temperature=2.0),
            stop_tokens=(),
        )

    batch, stats = fill_batch(sample, n_prompts, G, max_rounds=8, pad_id=0)
    assert len(batch.rewards) == n_prompts * G  # the batch is full
    assert stats["dynamic_rounds"] >= 1 and stats["dynamic_short_groups"] == 0 and seen == list(range(len(seen)))
    assert informative_groups(batch.rewards, G).all()  # no group without signal (the planted ones) is left
    assert stats["dynamic_dropped_groups"] >= 2 * len(seen)
    assert not np.any(batch.tokens[:, batch.prompt_width - 4] == PLANTED)
    assert np.abs(batch.advantages).sum() > 0


def test_dynamic_sampling_cap_completes_with_dropped_groups(tiny_model):
    G = 2

    def sample(r):
        examples = _examples(r, 2, planted=2)  # nothing but planted prompts
        return collect(
            tiny_model,
            (),
            examples,
            [e.meta["prompt_ids"] for e in examples],
            group_size=G,
            calls=1,
            tokenizer=None,
            key=jax.random.PRNGKey(r),
            reward_fn=planted_reward,
            advantage_fn=lambda x: np.asarray(group_advantages(x, G, "rloo")),
            sampling=SamplingSpec(max_new_tokens=3),
            stop_tokens=(),
        )

    batch, stats = fill_batch(sample, 2, G, max_rounds=2, pad_id=0)
    assert len(batch.rewards) == 4 and stats["dynamic_rounds"] == 2 and stats["dynamic_short_groups"] == 2
    assert np.all(batch.advantages == 0)


def test_overlong_shaping_in_collect(tiny_model):
    """collect adds the penalty to the rewards (advantages from the shaped rewards) and keeps the task reward."""
    G = 2
    examples = _examples(0, 2, planted=0)
    out = collect(
        tiny_model,
        (),
        examples,
        [e.meta["prompt_ids"] for e in examples],
        group_size=G,
        calls=1,
        tokenizer=None,
        key=jax.random.PRNGKey(0),
        reward_fn=planted_reward,
        advantage_fn=lambda x: np.asarray(x),
        sampling=SamplingSpec(max_new_tokens=4),
        stop_tokens=(),
        overlong_buffer=2,
    )
    assert np.all(out.lengths == 4)  # no stop token: every completion runs to the limit
    np.testing.assert_allclose(out.rewards, out.task_rewards - 1.0)
    np.testing.assert_allclose(out.advantages, out.rewards)


def test_dapo_config_fields():
    cfg = config_from_dict(
        {"algorithm": {"dynamic_sampling": True, "overlong_buffer": 8}, "sampling": {"max_new_tokens": 32}}
    )
    assert cfg.rl.dynamic_sampling and cfg.rl.overlong_buffer == 8
    with pytest.raises(ValueError, match="overlong_buffer"):
        config_from_dict({"algorithm": {"overlong_buffer": 64}, "sampling": {"max_new_tokens": 32}})
    with pytest.raises(ValueError, match="not used"):
        config_from_dict({"algorithm": {"name": "es", "dynamic_sampling": True}})


def test_dapo_run_on_the_toy_task(tmp_path):
    """All four DAPO parts in one run (clip-higher, token-mean loss, dynamic sampling, overlong shaping),
    and it learns."""
    import train_toy as T

    from jaxsteer.train import train

    flags = {
        **T.LEARN,
        "rl.dynamic_sampling": True,
        "rl.overlong_buffer": 1,
        "rl.loss.clip_eps_low": 0.2,
        "rl.loss.clip_eps_high": 0.28,
        "rl.loss.aggregation": "token_mean",
        "lr": 0.3,
    }
    result = train(config_from_dict(T.config_dict(str(tmp_path / "dapo"), **flags)))
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253
    h = result.history[-1]
    assert {"dynamic_rounds", "dynamic_dropped_groups", "dynamic_short_groups"} <= set(h)
    assert h["dynamic_short_groups"] == 0 and h["zero_std_fraction"] == 0.0


# --------------------------------------------------------------------------- mini-batch updates


def test_shipped_dapo_config_clips_after_the_first_minibatch(tmp_path):
    """experiments/smollm2_arithmetic_dapo.yaml's loss and algorithm sections (4 mini-batch updates per
    rollout batch, clip 0.2 / 0.28) on the toy task at the toy's learning rate (its 2-layer, d=32
    model barely moves at the shipped 0.01; SmolLM2 at 0.01 clips 14% of the later mini-batches'
    tokens at step 1): the first mini-batch is on-policy (ratio 1, nothing clipped); the later ones
    see ratios that clip-higher bounds, so their clip fraction is > 0."""
    import os

    import train_toy as T

    from jaxsteer.config import config_to_dict, flatten
    from jaxsteer.train import train
    from jaxsteer.train.config import config_from_dict, load_config
    from jaxsteer.train.metrics import read_log

    shipped = load_config(os.path.join(ROOT, "experiments", "smollm2_arithmetic_dapo.yaml"))
    assert shipped.rl.updates_per_batch > 1 and shipped.rl.loss.clip_eps_high > shipped.rl.loss.clip_eps_low
    flags = {f"rl.{k}": v for k, v in flatten(config_to_dict(shipped.rl)).items()}
    flags.update(
        {
            "algorithm": shipped.algorithm,
            "prompts_per_step": shipped.prompts_per_step,
            "optimizer.micro_batches": shipped.optimizer.micro_batches,
        }
    )
    flags.update(
        {
            "steps": 2,
            "checkpoint.every": 0,
            "sampling.max_new_tokens": 4,
            "rl.overlong_buffer": 0,
            "model.random_scale": 0.2,
        }
    )
    cfg = config_from_dict(T.config_dict(str(tmp_path), **flags))
    result = train(cfg)
    log = read_log(result.files["metrics"])
    assert len(log) == 2
    for rec in log:
        assert rec["clip_fraction_after_first"] > 0, rec
        # the first mini-batch clips nothing (ratio 1): the mean over all 4 is 3/4 of the later ones'
        assert rec["clip_fraction"] == pytest.approx(rec["clip_fraction_after_first"] * 3 / 4, rel=1e-5)
