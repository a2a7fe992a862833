"""Interventions under jax transforms (issue 21): inside `jit`, `vmap`, `lax.map` and `grad`,
with the intervention's values closed over (concrete arrays captured by the traced function)
or passed as arguments (tracers). Before the fix a closed-over `jax.Array` made the finiteness
check stage its reduction into the trace and `bool()` raised TracerBoolConversionError, so the
README's `jax.lax.map(patched_logits, masks, batch_size=30)` sweep failed as written."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Ablate, AdaptiveSteer, Patch, Steer

TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)


@pytest.fixture(scope="module")
def setup(tiny_model):
    L, d = tiny_model.config.n_layers, tiny_model.config.d_model
    rng = np.random.RandomState(0)
    vectors = jnp.asarray(rng.normal(size=(L, d)), jnp.float32)
    _, clean = jaxsteer.forward(tiny_model, TOKENS[::-1], record=("resid_pre",))
    return tiny_model, vectors, clean.resid_pre


# One builder per intervention: value -> intervention, plus the value to close over / pass in.
BUILDERS = {
    "steer": (lambda v: Steer(v, layers=(1,)), lambda vec, pre: vec),
    "patch": (lambda v: Patch(v, site="resid_pre", layers=(2,)), lambda vec, pre: pre),
    "ablate_mean": (lambda v: Ablate(values=v, site="mlp_out", mode="mean"), lambda vec, pre: vec),
    "adaptive": (lambda v: AdaptiveSteer(v, w=0.1 * v, b=0.5), lambda vec, pre: vec),
}


def _last_logits(model, iv):
    return jaxsteer.forward(model, TOKENS, interventions=[iv])[0][:, -1]


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_jit_and_lax_map_with_closed_over_and_argument_values(setup, kind):
    model, vectors, pre = setup
    build, pick = BUILDERS[kind]
    value = pick(vectors, pre)
    eager = _last_logits(model, build(value))
    closed = jax.jit(lambda: _last_logits(model, build(value)))()
    argument = jax.jit(lambda v: _last_logits(model, build(v)))(value)
    scales = jnp.asarray([0.0, 1.0, 2.0])
    mapped_closed = jax.lax.map(lambda s: _last_logits(model, build(value)) * s, scales, batch_size=2)
    mapped_arg = jax.lax.map(lambda s: _last_logits(model, build(value * s)), jnp.ones(3))
    for got in (closed, argument, mapped_closed[1], mapped_arg[0]):
        np.testing.assert_allclose(got, eager, atol=1e-5)
    np.testing.assert_allclose(mapped_closed[2], 2 * eager, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_vmap_and_grad_with_closed_over_and_argument_values(setup, kind):
    model, vectors, pre = setup
    build, pick = BUILDERS[kind]
    value = pick(vectors, pre)
    stacked = jnp.stack([value, 0.5 * value])
    batched = jax.vmap(lambda v: _last_logits(model, build(v)))(stacked)
    for i in range(2):
        np.testing.assert_allclose(batched[i], _last_logits(model, build(stacked[i])), atol=1e-5)
    # closed-over value, vmapped over something else (a logit scale)
    closed = jax.vmap(lambda s: s * _last_logits(model, build(value)))(jnp.asarray([1.0, 3.0]))
    np.testing.assert_allclose(closed[1], 3 * _last_logits(model, build(value)), atol=1e-4)

    def loss(v):
        return _last_logits(model, build(v))[:, 7].sum()

    g = jax.grad(loss)(value)
    assert g.shape == value.shape and bool(jnp.isfinite(g).all()) and float(jnp.abs(g).max()) > 0
    # closed-over intervention, gradient w.r.t. the model's final norm
    g_norm = jax.grad(
        lambda n: jaxsteer.forward(
            model.replace(params={**model.params, "final_norm": n}), TOKENS, interventions=[build(value)]
        )[0][:, -1, 7].sum()
    )(model.params["final_norm"])
    assert bool(jnp.isfinite(g_norm).all()) and float(jnp.abs(g_norm).max()) > 0


def test_readme_patching_sweep_runs_and_equals_a_loop(setup):
    """README's sweep, verbatim in shape: a lax.map over one-hot [L, T] masks, patching a closed-over trace."""
    model, _, clean_pre = setup
    L, T = model.config.n_layers, TOKENS.shape[1]
    masks = jnp.eye(L * T).reshape(L * T, L, T)

    def patched_logits(mask):
        logits, _ = jaxsteer.forward(model, TOKENS, interventions=[Patch(clean_pre, site="resid_pre", mask=mask)])
        return logits[:, -1]

    sweep = jax.lax.map(patched_logits, masks, batch_size=5)
    for i in (0, 5, L * T - 1):
        np.testing.assert_allclose(sweep[i], patched_logits(masks[i]), atol=1e-5)


def test_closed_over_non_finite_value_is_still_refused_inside_jit(setup):
    model, vectors, _ = setup
    bad = vectors.at[1, 3].set(jnp.nan)
    with pytest.raises(
        ValueError, match=r"Steer at 'resid_post': vector has a non-finite value \(nan\) at index \[1, 3\]"
    ):
        jax.jit(lambda: _last_logits(model, Steer(bad)))()
    with pytest.raises(ValueError, match="non-finite"):
        jax.lax.map(lambda s: _last_logits(model, Steer(bad, scale=s)), jnp.ones(2))
