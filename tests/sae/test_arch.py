"""SAE architectures and losses: known answers on tiny synthetic data (seconds on 2 CPU cores)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import TESTS
from jaxsteer import sae
from jaxsteer.sae.arch import topk_mask
from jaxsteer.sae.losses import sparse_topk


def planted(n, d=16, n_atoms=32, active=3, seed=0):
    """Samples that are sparse positive combinations of a planted unit-norm dictionary."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(n_atoms, d))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    idx = np.stack([rng.choice(n_atoms, active, replace=False) for _ in range(n)])
    coef = rng.uniform(0.5, 1.5, size=(n, active))
    x = np.einsum("na,nad->nd", coef, atoms[idx]) + 0.3  # an offset for b_dec to find
    return x.astype(np.float32), atoms


def batches(x, batch, seed=0):
    rng = np.random.default_rng(seed)
    while True:
        yield x[rng.choice(len(x), batch, replace=False)]


def recovered_fraction(w_dec, atoms, threshold=0.9):
    w = np.asarray(w_dec, np.float64)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    return float(np.mean((atoms @ w.T).max(axis=1) > threshold))


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_planted_dictionary_is_recovered(kind):
    x, atoms = planted(8192)
    cfg = sae.SAEConfig(kind=kind, d_in=16, d_sae=64, k=3)
    step = sae.StepConfig(lr=3e-3, total_steps=1200, k_aux=8, dead_batches=50)
    model, hist = sae.fit(cfg, batches(x, 256), step, seed=1)
    assert recovered_fraction(model.params["W_dec"], atoms) >= 0.8
    assert hist[-1]["explained_variance"] > 0.85
    if kind == "batchtopk":  # the inference threshold was learned and gives about k latents per input
        theta = float(model.params["threshold"])
        assert theta > 0
        l0 = float(jnp.mean(jnp.sum(sae.encode(model, x[:1024]) > 0, axis=-1)))
        assert 1.5 < l0 < 6


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


def test_htopk_loss_equals_explicit_loop_over_k():
    cfg = sae.SAEConfig(kind="htopk", d_in=12, d_sae=48, k=6)
    s = sae.init_sae(cfg, jax.random.PRNGKey(3))
    s = sae.SAE(dict(s.params, b_dec=jnp.full((12,), 0.1), b_enc=jnp.full((48,), 0.05)), cfg)
    x = jax.random.normal(jax.random.PRNGKey(4), (10, 12))
    var = float(jnp.sum((x - x.mean(0)) ** 2))

    @jax.jit
    def loop_errors(params):  # the explicit loop: encode with budget j, decode densely
        t = sae.SAE(params, cfg)
        return [jnp.sum((x - sae.decode(t, topk_mask(sae.pre_acts(t, x), j))) ** 2) for j in range(1, 7)]

    errs = [float(e) for e in loop_errors(s.params)]
    hl = jax.jit(sae.htopk_loss, static_argnums=2)
    np.testing.assert_allclose(float(hl(s, x, None)), np.mean(errs) / var, rtol=1e-5)
    np.testing.assert_allclose(float(hl(s, x, (2, 5))), (errs[1] + errs[4]) / 2 / var, rtol=1e-5)
    # and its gradient equals the loop's gradient
    g1 = jax.jit(jax.grad(lambda p: sae.htopk_loss(sae.SAE(p, cfg), x)))(s.params)
    g2 = jax.jit(jax.grad(lambda p: sum(loop_errors(p)) / 6 / var))(s.params)
    for k in g1:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), atol=1e-5)


def test_kron_encoder_equals_materialised_matrices():
    cfg = sae.SAEConfig(kind="kron", d_in=10, d_sae=3 * 4 * 5, k=7, kron_heads=3, kron_m=4, kron_n=5)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    key = jax.random.split(jax.random.PRNGKey(1), 3)
    s = sae.SAE(dict(s.params, b_p=0.2 * jax.random.normal(key[0], (12,)), b_q=0.2 * jax.random.normal(key[1], (15,)),
                     b_dec=0.1 * jax.random.normal(key[2], (10,))), cfg)
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


def test_residual_sae_improves_domain_and_leaves_base_untouched():
    general, _ = planted(4096, n_atoms=24, seed=0)
    rng = np.random.default_rng(5)
    domain_dir = rng.normal(size=(4, 16))
    domain_dir /= np.linalg.norm(domain_dir, axis=1, keepdims=True)
    domain = general[:2048] + (rng.uniform(0.5, 1.5, (2048, 1)) * domain_dir[rng.integers(0, 4, 2048)]).astype(np.float32)
    base_cfg = sae.SAEConfig(kind="topk", d_in=16, d_sae=32, k=3)
    base, _ = sae.fit(base_cfg, batches(general, 256), sae.StepConfig(lr=3e-3, total_steps=400), seed=0)
    frozen = jax.tree_util.tree_map(np.array, base.params)
    res_cfg = sae.SAEConfig(kind="topk", d_in=16, d_sae=16, k=1, decoder_bias=False)
    res, _ = sae.fit(res_cfg, batches(domain, 256, seed=1), sae.StepConfig(lr=3e-3, total_steps=300), seed=0, base=base)
    assert "b_dec" not in res.params
    for k, v in base.params.items():
        np.testing.assert_array_equal(np.asarray(v), frozen[k])
    test = domain[-512:]
    err_base = float(np.mean((test - np.asarray(sae.reconstruct(base, test))) ** 2))
    err_both = float(np.mean((test - np.asarray(sae.residual_reconstruct(base, res, test))) ** 2))
    assert err_both < 0.7 * err_base


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


def test_sparse_topk_is_sorted_and_relu():
    vals, idx = sparse_topk(jnp.array([[0.5, -2.0, 3.0, 1.0]]), 3)
    np.testing.assert_allclose(np.asarray(vals), [[3.0, 1.0, 0.5]])
    np.testing.assert_array_equal(np.asarray(idx), [[2, 3, 0]])


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="kind"):
        sae.SAEConfig(kind="nope", d_in=4, d_sae=8)
    with pytest.raises(ValueError, match="k"):
        sae.SAEConfig(kind="topk", d_in=4, d_sae=8, k=0)
    with pytest.raises(ValueError, match="heads"):
        sae.SAEConfig(kind="kron", d_in=4, d_sae=8, k=2, kron_heads=2, kron_m=2, kron_n=3)


def test_sparse_encoder_gradient_equals_autodiff():
    from jaxsteer.sae.losses import gather_decode, total_variance

    cfg = sae.SAEConfig(kind="topk", d_in=12, d_sae=48, k=5)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s = sae.SAE(dict(s.params, b_dec=jnp.full((12,), 0.3), b_enc=jnp.linspace(-0.1, 0.1, 48)), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 12))

    def reference(params):  # plain autodiff through top_k
        t = sae.SAE(params, cfg)
        vals, idx = sparse_topk(sae.pre_acts(t, x), cfg.k)
        return jnp.sum((x - gather_decode(t, vals, idx)) ** 2) / total_variance(x)

    g_ref = jax.jit(jax.grad(reference))(s.params)
    g_new = jax.jit(jax.grad(lambda p: sae.train_forward(sae.SAE(p, cfg), x, None)[0]))(s.params)
    for k in g_ref:
        np.testing.assert_allclose(np.asarray(g_new[k]), np.asarray(g_ref[k]), rtol=1e-4, atol=1e-6)


def test_latent_axis_sharded_over_8_devices_matches_one_device():
    import os
    import subprocess
    import sys

    script = os.path.join(TESTS, "sae_sharded_check.py")
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
