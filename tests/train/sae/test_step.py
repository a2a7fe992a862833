"""SAE training steps (jaxsteer.train.sae.step): `fit` recovers a planted dictionary, a residual SAE
trains on top of a frozen base, and the latent axis sharded over 8 virtual devices gives the
one-device step."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer import sae
from jaxsteer.train.sae.step import StepConfig, fit
from tests import TESTS
from tests.sae.planted import batches, planted, recovered_fraction


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
def test_planted_dictionary_is_recovered(kind):
    x, atoms = planted(8192)
    cfg = sae.SAEConfig(kind=kind, d_in=16, d_sae=64, k=3)
    step = StepConfig(lr=3e-3, total_steps=1200, k_aux=8, dead_batches=50)
    model, hist = fit(cfg, batches(x, 256), step, seed=1)
    assert recovered_fraction(model.params["W_dec"], atoms) >= 0.8
    assert hist[-1]["explained_variance"] > 0.85
    if kind == "batchtopk":  # the inference threshold was learned and gives about k latents per input
        theta = float(model.params["threshold"])
        assert theta > 0
        l0 = float(jnp.mean(jnp.sum(sae.encode(model, x[:1024]) > 0, axis=-1)))
        assert 1.5 < l0 < 6


def test_residual_sae_improves_domain_and_leaves_base_untouched():
    general, _ = planted(4096, n_atoms=24, seed=0)
    rng = np.random.default_rng(5)
    domain_dir = rng.normal(size=(4, 16))
    domain_dir /= np.linalg.norm(domain_dir, axis=1, keepdims=True)
    domain = general[:2048] + (rng.uniform(0.5, 1.5, (2048, 1)) * domain_dir[rng.integers(0, 4, 2048)]).astype(
        np.float32
    )
    base_cfg = sae.SAEConfig(kind="topk", d_in=16, d_sae=32, k=3)
    base, _ = fit(base_cfg, batches(general, 256), StepConfig(lr=3e-3, total_steps=400), seed=0)
    frozen = jax.tree_util.tree_map(np.array, base.params)
    res_cfg = sae.SAEConfig(kind="topk", d_in=16, d_sae=16, k=1, decoder_bias=False)
    res, _ = fit(res_cfg, batches(domain, 256, seed=1), StepConfig(lr=3e-3, total_steps=300), seed=0, base=base)
    assert "b_dec" not in res.params
    for k, v in base.params.items():
        np.testing.assert_array_equal(np.asarray(v), frozen[k])
    test = domain[-512:]
    err_base = float(np.mean((test - np.asarray(sae.reconstruct(base, test))) ** 2))
    err_both = float(np.mean((test - np.asarray(sae.residual_reconstruct(base, res, test))) ** 2))
    assert err_both < 0.7 * err_base


def test_latent_axis_sharded_over_8_devices_matches_one_device():
    script = os.path.join(TESTS, "sae_sharded_check.py")
    out = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
