"""Shared fixtures of the analysis tests: a tiny GQA Llama with weights large enough to be
nonlinear (`model`), a clean / corrupted prompt pair (`pair`) and the answer logit difference the
patching tests measure."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import ModelConfig
from jaxsteer.models.config import RopeConfig
from jaxsteer.models.params import param_shapes, unflatten

V = 64
T = 7
ANSWERS = (3, 7)


def make_model(n_layers=3, seed=0, scale=0.3, **kw) -> jaxsteer.Model:
    """Tiny GQA Llama (4 query heads, 2 KV heads, d=32) with weights large enough to be nonlinear
    (drawn like `jaxsteer.init_params`, but with numpy: no per-shape compilations)."""
    cfg = ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=V,
        d_model=32,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_mlp=48,
        rope_full=RopeConfig(10000.0),
        **{"norm_eps": 1e-6, **kw},
    )
    rng = np.random.RandomState(seed)
    flat = {
        path: (
            (1.0 if path.endswith("norm") else 0.0) + rng.normal(0, 0.1 if path.endswith("norm") else scale, shape)
        ).astype(np.float32)
        for path, shape in sorted(param_shapes(cfg).items())
    }
    return jaxsteer.Model(params=jax.tree_util.tree_map(jnp.asarray, unflatten(flat)), config=cfg)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def pair():
    rng = np.random.RandomState(0)
    clean = rng.randint(0, V, (1, T))
    corrupt = clean.copy()
    corrupt[0, 2] = (clean[0, 2] + 5) % V
    corrupt[0, 4] = (clean[0, 4] + 9) % V
    return clean, corrupt


def logit_diff(model, toks, ivs=()):
    """The first answer's logit minus the second's at the last position of row 0."""
    logits, _ = jaxsteer.forward(model, toks, interventions=ivs)
    return float(logits[0, -1, ANSWERS[0]] - logits[0, -1, ANSWERS[1]])
