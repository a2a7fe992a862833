"""Attention comparison (jaxsteer.analysis.attention) on a tiny random model: pattern changes
between prompts and head masks that select the right heads."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import jaxsteer
from jaxsteer import Ablate, Steer
from jaxsteer.analysis import (
    attention_change,
    compare_patterns,
)
from tests.analysis.conftest import T


def test_attention_comparison(model, pair, tmp_path):
    clean, corrupt = pair
    L, H = model.config.n_layers, model.config.n_heads
    same = attention_change(model, clean)
    np.testing.assert_allclose(same.js, 0, atol=1e-6)
    np.testing.assert_allclose(same.max_abs, 0, atol=0)
    vec = 2.0 * np.random.RandomState(0).normal(size=model.config.d_model).astype(np.float32)
    cmp = attention_change(model, clean, interventions_b=[Steer(jnp.asarray(vec), layers=(0,))])
    assert cmp.js.shape == cmp.max_abs.shape == (L, H)
    np.testing.assert_allclose(cmp.js[0], 0, atol=1e-6)  # steering after layer 0's attention
    assert (cmp.js[1:] > 1e-4).all() and (cmp.js <= 1).all() and (cmp.max_abs <= 1).all()
    # against a direct numpy computation
    _, ta = jaxsteer.forward(model, clean, record=("pattern",))
    _, tb = jaxsteer.forward(model, clean, record=("pattern",), interventions=[Steer(jnp.asarray(vec), layers=(0,))])
    p, q = np.asarray(ta.pattern[2, 0, 1], np.float64), np.asarray(tb.pattern[2, 0, 1], np.float64)
    m = (p + q) / 2
    kl = lambda a, b: np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0), -1)
    np.testing.assert_allclose(cmp.js[2, 1], np.mean(0.5 * kl(p, m) + 0.5 * kl(q, m)), atol=1e-5)
    np.testing.assert_allclose(cmp.max_abs[2, 1], np.abs(p - q).max(), atol=1e-6)
    # padding rows are ignored
    mask = np.ones((1, T), np.int32)
    mask[0, :2] = 0
    padded = compare_patterns(ta.pattern, tb.pattern, mask)
    assert np.isnan(padded.js_by_position[:, :, :2]).all() and np.isfinite(padded.js).all()
    cmp.plot(str(tmp_path / "attn.png"))
    assert (tmp_path / "attn.png").stat().st_size > 1000


def test_pattern_masks_with_heads_select_the_right_heads(model, pair):
    """A data mask [L, T, H] on `pattern` ([B, H, T, S]) selects the same entries as layers/heads/positions."""
    clean, _ = pair
    mask = np.zeros((model.config.n_layers, T, model.config.n_heads), np.float32)
    mask[1, 3:, 2] = 1
    pos = (np.arange(T) >= 3).astype(np.float32)
    _, a = jaxsteer.forward(model, clean, interventions=[Ablate(site="pattern", mask=mask)], record=("pattern",))
    _, b = jaxsteer.forward(
        model,
        clean,
        interventions=[Ablate(site="pattern", layers=(1,), heads=(2,), positions=pos)],
        record=("pattern",),
    )
    np.testing.assert_allclose(a.pattern, b.pattern, atol=0)
