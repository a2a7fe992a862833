"""Shared pieces of the ES tests: the tiny model, one strategy per space shared by every file (so
that each compiled population program is built once per process), a planted token reward, a random
LoRA and the ESSA space built on it, and the toy prompts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.train.data import Example
from jaxsteer.train.es import CMAES, EggrollSpace, OpenES, SteeringSpace, essa_product_space
from jaxsteer.train.trainable import TrainableConfig
from tests.conftest import TINY_CONFIG, random_model  # noqa: F401  (random_model: for the sharded subprocess)

CFG = TINY_CONFIG
PROMPTS = [[5, 6, 7], [8, 9, 10, 11]]
N_NEW = 4
KEY = jax.random.PRNGKey(0)

# One strategy per space, shared by the loop-equality, planted-reward and resume tests so that each
# compiled population program is built once.
STEER = (SteeringSpace(), OpenES(population=16, sigma=1.0, lr=4.0))
EGG = (EggrollSpace(rank=1), OpenES(population=16, sigma=0.05, lr=0.01))


@pytest.fixture(scope="package")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="package")
def essa(model):
    return essa_product_space(model, rank=4, seed=0), CMAES(population=16, sigma=1.0)


def low_tokens(prompt_ids, completion, reference) -> float:
    """Planted reward on token ids: the fraction of generated tokens with id < 20."""
    return float(np.mean(np.asarray(completion) < 20)) if len(completion) else 0.0


low_tokens.uses_tokens = True


@pytest.fixture(scope="package")
def lora(model):
    return random_lora(model)


def random_lora(model):
    """A trained-looking LoRA (random a and b) on q, v and down projections: `(trainable, cfg)`."""
    cfg = TrainableConfig(kind="lora", lora_rank=4, lora_alpha=8.0, lora_targets=("q_proj", "v_proj", "down_proj"))
    rng = np.random.RandomState(5)
    trainable = {}
    for p in cfg.lora_targets:
        L, d_in, d_out = model.params["layers"][p].shape
        trainable[p] = {
            "a": jnp.asarray(rng.normal(size=(L, d_in, 4)) * 0.3, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(L, 4, d_out)) * 0.3, jnp.float32),
        }
    return trainable, cfg


def prompt_examples():
    """One example per prompt of `PROMPTS` (token ids, no reference)."""
    return [Example(f"p{i}", "", {"prompt_ids": p}) for i, p in enumerate(PROMPTS)]
