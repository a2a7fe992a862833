"""SAE architectures (jaxsteer.sae.arch): encode / decode against their definitions, the Kronecker
encoder against materialised matrices, dtypes and config checks, on tiny synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer import sae


def test_topk_encode_decode_match_definition():
    cfg = sae.SAEConfig(kind="topk", d_in=8, d_sae=32, k=4)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s = sae.SAE(dict(s.params, b_dec=jnp.linspace(-1, 1, 8), b_enc=jnp.linspace(-0.2, 0.2, 32)), cfg)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    p = {k: np.asarray(v, np.float64) for k, v in s.params.items()}
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    ref = np.zeros_like(pre)
    for r in range(5):
        top = np.argsort(-pre[r])[:4]
        ref[r, top] = np.maximum(pre[r, top], 0)
    z = np.asarray(sae.encode(s, x))
    np.testing.assert_allclose(z, ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(s, z)), ref @ p["W_dec"] + p["b_dec"], atol=1e-5)


def test_kron_encoder_equals_materialised_matrices():
    cfg = sae.SAEConfig(kind="kron", d_in=10, d_sae=3 * 4 * 5, k=7, kron_heads=3, kron_m=4, kron_n=5)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    key = jax.random.split(jax.random.PRNGKey(1), 3)
    s = sae.SAE(
        dict(
            s.params,
            b_p=0.2 * jax.random.normal(key[0], (12,)),
            b_q=0.2 * jax.random.normal(key[1], (15,)),
            b_dec=0.1 * jax.random.normal(key[2], (10,)),
        ),
        cfg,
    )
    x = np.random.default_rng(2).normal(size=(6, 10)).astype(np.float32)
    wp, wq, bp, bq = (np.asarray(a, np.float64) for a in sae.kron_full_matrices(s))
    xc = x - np.asarray(s.params["b_dec"], np.float64)
    # independent reference: every latent (g, i, j) as an explicit loop over heads and pairs
    P = xc @ np.asarray(s.params["W_p"], np.float64) + np.asarray(s.params["b_p"], np.float64)
    Q = xc @ np.asarray(s.params["W_q"], np.float64) + np.asarray(s.params["b_q"], np.float64)
    ref = np.zeros((6, 60))
    for g in range(3):
        for i in range(4):
            for j in range(5):
                p, q = P[:, g * 4 + i], Q[:, g * 5 + j]
                ref[:, g * 20 + i * 5 + j] = np.where((p > 0) & (q > 0), np.sqrt(np.abs(p * q)), 0)
    full = np.sqrt(np.maximum(xc @ wp + bp, 0) * np.maximum(xc @ wq + bq, 0))
    np.testing.assert_allclose(full, ref, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(sae.pre_acts)(s, x)), ref, atol=1e-5)
    assert sae.encoder_flops(cfg) == 2 * 10 * 3 * (4 + 5)
    g = jax.jit(jax.grad(lambda p: jnp.sum(sae.reconstruct(sae.SAE(p, cfg), x) ** 2)))(s.params)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in g.values())


def test_mand_is_a_soft_and():
    p = jnp.array([2.0, 2.0, -1.0, 0.0, 9.0])
    q = jnp.array([8.0, -3.0, 4.0, 5.0, 1.0])
    np.testing.assert_allclose(np.asarray(sae.mand(p, q)), [4.0, 0, 0, 0, 3.0])


def test_bfloat16_close_to_float32():
    cfg = sae.SAEConfig(kind="topk", d_in=16, d_sae=64, k=4)
    s32 = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s16 = sae.astype(s32, "bfloat16")
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 16))
    rec = jax.jit(sae.reconstruct)
    r32, r16 = rec(s32, x), rec(s16, x)
    assert r16.dtype == jnp.bfloat16
    assert float(jnp.mean(jnp.abs(r16.astype(jnp.float32) - r32))) < 0.05 * float(jnp.mean(jnp.abs(r32)))
    loss, _ = jax.jit(sae.train_forward)(s16, x, None)
    assert jnp.isfinite(loss)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="kind"):
        sae.SAEConfig(kind="nope", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="k"):
        sae.SAEConfig(kind="topk", d_in=4, d_sae=8, k=0)
    with pytest.raises(ValueError, match="heads"):
        sae.SAEConfig(kind="kron", d_in=4, d_sae=8, k=2, kron_heads=2, kron_m=2, kron_n=3)
