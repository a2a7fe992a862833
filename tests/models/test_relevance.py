"""Relevance patching (RelP): the LRP backward of the one decoder on tiny random models.

Known answers: the forward is unchanged; relevance is conserved layer by layer (x . grad summed
over positions and features equals the logit at every layer, which plain gradients do not give);
one layer's LRP coefficients against a hand computation; and with no rules RelP is attribution
patching."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIG, random_model

import jaxsteer
from jaxsteer import Steer
from jaxsteer.analysis import attribution_patching, relevance_patching
from jaxsteer.models.relevance import RULES

GEMMA_LIKE = dataclasses.replace(
    TINY_CONFIG,
    architecture="Gemma3ForCausalLM",
    norm_offset=1.0,
    sandwich_norms=True,
    qk_norm=True,
    embed_scale=32**0.5,
    activation="gelu_tanh",
    final_logit_softcap=5.0,
    attn_logit_softcap=4.0,
    tie_word_embeddings=True,
)
TOKENS = np.array([[5, 17, 2, 40, 33, 8]])
TARGET = 11  # explain the logit of this token at the last position


def _logit(model, tokens, rules, delta=None):
    """The target logit, and its gradient w.r.t. a zero Steer delta at resid_pre and resid_post."""
    L, (B, T), d = model.config.n_layers, tokens.shape, model.config.d_model

    def f(deltas):
        ivs = (Steer(deltas[0], site="resid_pre"), Steer(deltas[1], site="resid_post"))
        logits, trace = jaxsteer.forward(
            model, tokens, interventions=ivs, record=("resid_pre", "resid_post"), lrp_rules=rules
        )
        return logits[0, -1, TARGET], trace

    zeros = jnp.zeros((2, L, B, T, d), jnp.float32)
    (value, trace), grads = jax.value_and_grad(f, has_aux=True)(zeros)
    return float(value), trace, grads


@pytest.mark.parametrize("config", [TINY_CONFIG, GEMMA_LIKE], ids=["llama", "gemma-like"])
def test_relevance_is_conserved_at_every_layer(config):
    model = random_model(config, scale=0.4)
    value, trace, grads = _logit(model, TOKENS, RULES)
    plain, _ = jaxsteer.forward(model, TOKENS)
    np.testing.assert_array_equal(value, plain[0, -1, TARGET])  # the rules leave the forward alone
    for site, g in zip(("resid_pre", "resid_post"), grads, strict=True):
        per_layer = np.asarray((trace[site] * g).sum(axis=(1, 2, 3)))  # [L]: relevance summed over T, d
        np.testing.assert_allclose(per_layer, value, rtol=2e-4, atol=2e-4, err_msg=site)
    # plain gradients are not conserved on this non-linear model (nor is any rule set missing one
    # rule: each non-linearity left to its gradient breaks the sum)
    _, trace, grads = _logit(model, TOKENS, ())
    per_layer = np.asarray((trace["resid_pre"] * grads[0]).sum(axis=(1, 2, 3)))
    assert np.abs(per_layer - value).max() > 0.05


def test_relevance_coefficients_of_one_layer_by_hand():
    """One Llama layer: the LRP coefficients at resid_mid, written out with numpy. The final norm
    and the MLP's norm are linear with their measured 1/rms (LN-rule), SiLU passes silu(a)/a
    (Identity-rule), and the product silu(g) * u sends half of its gradient to each factor
    (Half-rule)."""
    model = random_model(dataclasses.replace(TINY_CONFIG, n_layers=1, layer_types=()), scale=0.4)
    p = {k: np.asarray(v[0], np.float64) for k, v in model.params["layers"].items()}
    f32 = lambda x: np.asarray(x, np.float64)
    L, (B, T), d = 1, TOKENS.shape, model.config.d_model

    def f(delta):
        logits, trace = jaxsteer.forward(
            model,
            TOKENS,
            interventions=Steer(delta, site="resid_mid"),
            record=("resid_mid", "resid_post"),
            lrp_rules=RULES,
        )
        return logits[0, -1, TARGET], trace

    g, trace = jax.grad(f, has_aux=True)(jnp.zeros((L, B, T, d), jnp.float32))
    h, out = f32(trace["resid_mid"][0, 0, -1]), f32(trace["resid_post"][0, 0, -1])
    eps = model.config.norm_eps
    inv = lambda x: 1 / np.sqrt(np.mean(x * x) + eps)
    w_u = f32(model.params["unembed"])[TARGET]
    g_out = f32(model.params["final_norm"]) * inv(out) * w_u  # d logit / d resid_post, final norm linear
    x = p["mlp_norm"] * h * inv(h)
    a, u = x @ p["gate_proj"], x @ p["up_proj"]
    silu = a / (1 + np.exp(-a))
    g_mid = g_out @ p["down_proj"].T  # into the product silu(a) * u
    g_a = 0.5 * g_mid * u * (silu / a)  # Half-rule, then Identity-rule
    g_u = 0.5 * g_mid * silu
    g_x = p["gate_proj"] @ g_a + p["up_proj"] @ g_u
    expected = g_out + p["mlp_norm"] * inv(h) * g_x
    np.testing.assert_allclose(np.asarray(g[0, 0, -1]), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g[0, 0, :-1]), 0.0)  # earlier positions: no attention back


def test_unknown_rules_and_kernels_that_cannot_hold_the_pattern_are_refused():
    model = random_model(TINY_CONFIG)
    with pytest.raises(ValueError, match="unknown LRP rule 'LN'"):
        jaxsteer.forward(model, TOKENS, lrp_rules=("LN",))
    with pytest.raises(ValueError, match="AH-rule"):
        jaxsteer.forward(model, TOKENS, lrp_rules=RULES, attention="xla")


@pytest.fixture(scope="module")
def pair():
    clean = np.array([[3, 9, 14, 22, 7, 30, 12]])
    corrupt = clean.copy()
    corrupt[0, 2] = 41
    return clean, corrupt


def test_relp_without_rules_is_attribution_patching(pair):
    clean, corrupt = pair
    model = random_model(TINY_CONFIG, scale=0.4)
    sites = ("resid_pre", "mlp_out", "z")
    attr = attribution_patching(model, clean, corrupt, sites=sites, answers=(11, 12))
    none = relevance_patching(model, clean, corrupt, sites=sites, answers=(11, 12), rules=())
    relp = relevance_patching(model, clean, corrupt, sites=sites, answers=(11, 12))
    for s in sites:
        np.testing.assert_array_equal(none[s].values, attr[s].values)
        assert none[s].method == "attribution" and relp[s].method == "relevance"
        assert relp[s].values.shape == attr[s].values.shape
        assert relp[s].clean_metric == attr[s].clean_metric
