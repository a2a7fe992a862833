"""A steering task as training data for the RL and ES learners, so vectors trained with reward sit
beside the extracted ones in `jaxsteer steer eval` (docs/steering.md, the comparison).

A run config points at these by name (they take no arguments, as "py:" dataset specs must):

    data:
      train: "py:jaxsteer.steering.training:sentiment_train"       # the task's pair prompts
      eval: "py:jaxsteer.steering.training:sentiment_validation"   # its validation prompts
      reward: "jaxsteer.steering.training:task_reward"             # +1 when the task scores it, else -1
      prompt_template: chat                                        # the harness's encoding
"""

from __future__ import annotations

import functools

from ..errors import InputError
from ..train.data import Example
from .evaluate import Task, load_task

SPLITS = ("train", "validation", "test")


@functools.lru_cache(maxsize=16)
def cached_task(name: str) -> Task:
    """`load_task(name)`, read once per process (the reward asks for it on every completion)."""
    return load_task(name)


def task_examples(name: str, split: str) -> list[Example]:
    """A task's prompts as training examples whose answer names the task (what `task_reward` reads).

    Args:
        name: a shipped task's name or a task JSON file (`load_task`).
        split: "train" (the contrastive pairs' prompts), "validation" or "test".

    Returns:
        One `Example` per prompt.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {SPLITS}, got {split!r}")
    task = cached_task(name)
    prompts = [p for p, _, _ in task.pairs] if split == "train" else getattr(task, split)
    return [Example(p, name, {"task": name, "split": split}) for p in prompts]


def task_reward(prompt: str, completion: str, reference: str) -> float:
    """+1 when the task named by `reference` scores `completion` as a success, else -1."""
    return 1.0 if cached_task(reference).score([prompt], [completion]) > 0 else -1.0


def sentiment_train() -> list[Example]:
    """The sentiment task's 32 pair prompts ("py:jaxsteer.steering.training:sentiment_train")."""
    return task_examples("sentiment", "train")


def sentiment_validation() -> list[Example]:
    """The sentiment task's validation prompts."""
    return task_examples("sentiment", "validation")


def sentiment_test() -> list[Example]:
    """The sentiment task's test prompts."""
    return task_examples("sentiment", "test")


__all__ = ["task_examples", "task_reward", "sentiment_train", "sentiment_validation", "sentiment_test"]
