"""A steering task as RL / ES training data (jaxsteer.steering.training): the examples, the reward's
known answers, and a run config that points at them resolves before any model loads."""

from __future__ import annotations

import os

import pytest

from jaxsteer.steering.evaluate import load_task
from jaxsteer.steering.training import sentiment_test, sentiment_train, task_examples, task_reward
from jaxsteer.train import load_config
from jaxsteer.train.build import check_before_loading, load_examples
from tests import ROOT


def test_task_examples_and_reward_known_answers():
    task = load_task("sentiment")
    train = sentiment_train()
    assert [e.prompt for e in train] == [p for p, _, _ in task.pairs] and {e.answer for e in train} == {"sentiment"}
    assert [e.prompt for e in sentiment_test()] == task.test
    assert not {e.prompt for e in train} & set(task.test)
    assert task_reward("Describe your evening.", "It was wonderful and I loved it.", "sentiment") == 1.0
    assert task_reward("Describe your evening.", "It was awful and I hated it.", "sentiment") == -1.0
    assert task_reward("Describe your evening.", "It was a Tuesday.", "sentiment") == -1.0  # no more positive words
    with pytest.raises(ValueError, match="split must be one of"):
        task_examples("sentiment", "dev")


def test_a_sentiment_run_config_resolves(tmp_path):
    cfg = load_config(
        os.path.join(ROOT, "experiments/smollm2_sentiment_steering.yaml"),
        [f"output_dir={tmp_path}", "steps=1", "eval.n=4"],
    )
    check_before_loading(cfg)  # dataset functions and the reward resolve
    assert len(load_examples(cfg.data.train)) == 32 and len(load_examples(cfg.data.eval)) == 12
