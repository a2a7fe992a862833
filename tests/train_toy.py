"""A tokenizer-free toy RL task for the training tests (importable from subprocesses too).

Prompts are random token ids; the reward is +1 when the first generated token is one of
`GOOD` (a quarter of the vocabulary), else -1, so a random tiny model starts near 25% and any
trainable kind can push it up within a few steps.
"""

from __future__ import annotations

import numpy as np

from jaxsteer.train.data import Example
from jaxsteer.train.rewards import token_reward

VOCAB = 32
GOOD = tuple(range(8, 16))
RANDOM_MODEL = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_mlp=64,
                    eos_token_ids=[1], pad_token_id=0, max_position_embeddings=128)


def examples(n: int = 64, seed: int = 0, length: int = 5) -> list[Example]:
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        ids = rng.randint(2, VOCAB, size=length).tolist()
        out.append(Example(f"toy-{seed}-{i}", "good", {"prompt_ids": ids}))
    return out


def eval_examples() -> list[Example]:
    return examples(32, seed=1)


@token_reward
def first_token_reward(prompt_ids, completion_ids, reference) -> float:
    return 1.0 if completion_ids and completion_ids[0] in GOOD else -1.0


def config_dict(output_dir: str, **overrides) -> dict:
    """A small complete run config (as plain data) for the toy task."""
    cfg = {
        "model": {"spec": "random", "random": dict(RANDOM_MODEL), "random_seed": 0},
        "trainable": {"kind": "steering"},
        "algorithm": {"prompts_per_step": 4},
        "sampling": {"max_new_tokens": 4, "bucket": 8},
        "data": {"train": "py:train_toy:examples", "eval": "py:train_toy:eval_examples",
                 "reward": "train_toy:first_token_reward"},
        "eval": {"before": False, "after": False, "n": 32},
        "checkpoint": {"every": 2, "keep": 3},
        "steps": 4,
        "output_dir": output_dir,
        "progress": False,
        "plot": False,
        "tensorboard": False,
    }
    if overrides.get("algorithm.name", "grpo") not in ("es", "eggroll", "essa"):  # RL-only fields
        cfg["algorithm"].update(group_size=4, micro_batches=2)
        cfg["lr"] = 0.05
    for k, v in overrides.items():
        if "." in k:
            sec, f = k.split(".", 1)
            cfg.setdefault(sec, {})[f] = v
        else:
            cfg[k] = v
    return cfg
