"""A tokenizer-free toy RL task for the training tests (importable from subprocesses too).

Prompts are random token ids; the reward is +1 when the first generated token is one of
`GOOD` (a quarter of the vocabulary), else -1, so a random tiny model starts near 25% and any
trainable kind can push it up within a few steps.

Learning is judged by `good_probability`: the exact probability of a GOOD first token on the eval
prompts (no sampling noise), compared with the untrained policy. The sampled per-step reward is a
poor judge: its prompts change every step, and a run whose policy never moves (lr = 1e-12,
tests/train/rl/test_learner.py config, seed 0) still rises by +0.219 between the first two and the last
two of six steps, because the later steps' prompts happen to favour GOOD tokens.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxsteer.train.data import Example
from jaxsteer.train.rewards import token_reward

VOCAB = 32
GOOD = tuple(range(8, 16))
RANDOM_MODEL = dict(
    vocab_size=VOCAB,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_mlp=64,
    eos_token_ids=[1],
    pad_token_id=0,
    max_position_embeddings=128,
)


def examples(n: int = 64, seed: int = 0, length: int = 5) -> list[Example]:
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        ids = rng.randint(2, VOCAB, size=length).tolist()
        out.append(Example(f"toy-{seed}-{i}", "good", {"prompt_ids": ids}))
    return out


def eval_examples() -> list[Example]:
    return examples(32, seed=1)


def sft_examples(n: int = 16, seed: int = 0) -> list[Example]:
    """Prompts whose reference completion is the token ids [9, 12, 1] (two GOOD tokens, then EOS)."""
    return [Example(e.prompt, e.answer, {**e.meta, "target_ids": [9, 12, 1]}) for e in examples(n, seed)]


@token_reward
def first_token_reward(prompt_ids, completion_ids, reference) -> float:
    return 1.0 if completion_ids and completion_ids[0] in GOOD else -1.0


def config_dict(output_dir: str, **overrides) -> dict:
    """A small complete run config (as plain data) for the toy task; `overrides` are dotted keys
    (renamed ones are moved to their new names, as `jaxsteer.config` does)."""
    from jaxsteer.config import renamed_key
    from jaxsteer.train.config import ES_ALGORITHMS, RL_ALGORITHMS, TrainConfig

    overrides = {renamed_key(TrainConfig, k) or k: v for k, v in overrides.items()}
    algorithm = overrides.get("algorithm", "grpo")
    cfg: dict = {
        "model": {"spec": "random", "random": dict(RANDOM_MODEL), "random_seed": 0},
        "trainable": {"kind": "steering"},
        "prompts_per_step": 4,
        "sampling": {"max_new_tokens": 4, "bucket": 8},
        "data": {
            "train": "py:train_toy:examples",
            "eval": "py:train_toy:eval_examples",
            "reward": "train_toy:first_token_reward",
        },
        "eval": {"before": False, "after": False, "n": 32},
        "checkpoint": {"every": 2, "keep": 3},
        "steps": 4,
        "output_dir": output_dir,
        "progress": False,
        "plot": False,
        "tensorboard": False,
    }
    if algorithm in RL_ALGORITHMS:
        cfg["rl"] = {"group_size": 4}
    if algorithm not in ES_ALGORITHMS:  # the gradient learners' settings
        cfg["optimizer"] = {"lr": 0.05, "micro_batches": 2}
    for k, v in overrides.items():
        *parents, last = k.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    return cfg


def good_probability(model, trainable=None, trainable_cfg=None, examples=None) -> float:
    """Mean over `examples` (default: the eval prompts) of P(first completion token in GOOD) at
    temperature 1: the exact expected (reward + 1) / 2 of the policy; `trainable=None` = untrained."""
    from jaxsteer import forward
    from jaxsteer.train.trainable import build_policy

    policy, ivs = build_policy(model, trainable, trainable_cfg) if trainable is not None else (model, ())
    tokens = np.asarray([e.meta["prompt_ids"] for e in (examples or eval_examples())], np.int32)
    logits, _ = forward(policy, tokens, interventions=ivs)
    probs = jax.nn.softmax(logits[:, -1].astype(np.float32), axis=-1)
    return float(np.mean(np.sum(np.asarray(probs)[:, list(GOOD)], axis=-1)))


# The learning tests' setting: a bigger initial spread (random_scale) so the policy is not uniform,
# 8 prompts x 4 samples per step, 2 new tokens, 6 steps.
LEARN = {
    "model.random_scale": 0.2,
    "prompts_per_step": 8,
    "sampling.max_new_tokens": 2,
    "steps": 6,
    "checkpoint.every": 0,
}
# The untrained policy puts 0.253 of its first-token mass on GOOD (eval prompts, seed 0); so does a
# run at lr = 1e-12, which never moves. Trained runs reach 0.49 in 6 steps with the per-row sampling
# keys (steering 0.490, full 0.490, DASH 0.492, adaptive 0.492; the sampling stream before them gave
# 0.63-0.74, and LoRA, RAPID and expert iteration still clear more). A margin of 0.2 over the untrained
# policy is out of a null run's reach (it stays at 0.253 exactly).
LEARN_MARGIN = 0.2


def assert_learns(result, margin: float = LEARN_MARGIN) -> tuple[float, float]:
    """Assert the trained policy beats the untrained one (the null run) on `good_probability` by
    `margin`; returns `(untrained, trained)`."""
    null = good_probability(result.model)
    trained = good_probability(result.model, result.trainable, result.config.trainable)
    assert trained > null + margin, f"trained {trained:.4f} vs untrained (null run) {null:.4f}; need +{margin}"
    return null, trained
