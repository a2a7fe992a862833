"""SAELens on-disk format: jaxsteer -> SAELens and SAELens -> jaxsteer give the same encode / decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer import sae
from jaxsteer.sae.saelens import load_saelens, save_saelens

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

D, F = 12, 40


def randomised(kind, **kw):
    cfg = sae.SAEConfig(kind=kind, d_in=D, d_sae=F, k=5 if kind in ("topk", "batchtopk", "htopk") else 0,
                        layer=3, site="resid_post", **kw)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    ks = jax.random.split(jax.random.PRNGKey(1), 4)
    p = dict(s.params, b_enc=0.1 * jax.random.normal(ks[0], (F,)), b_dec=0.2 * jax.random.normal(ks[1], (D,)),
             W_dec=s.params["W_dec"] * jax.random.uniform(ks[2], (F, 1), minval=0.5, maxval=1.5))
    if kind == "jumprelu":
        p["threshold"] = jax.random.uniform(ks[3], (F,), maxval=0.4)
    if kind == "batchtopk":
        p["threshold"] = jnp.asarray(0.3)
    return sae.SAE(p, cfg)


X = np.random.default_rng(0).normal(size=(16, D)).astype(np.float32)


def sl_encode_decode(sl, x):
    with torch.no_grad():
        z = sl.encode(torch.from_numpy(x))
        return z.numpy(), sl.decode(z).numpy()


@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu", "batchtopk", "htopk"])
def test_jaxsteer_sae_loads_in_saelens(kind, tmp_path):
    s = randomised(kind)
    save_saelens(s, str(tmp_path), model_name="tiny")
    sl = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert sl.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    z_sl, x_sl = sl_encode_decode(sl, X)
    z = np.asarray(sae.encode(s, X))
    np.testing.assert_allclose(z_sl, z, atol=1e-5)
    np.testing.assert_allclose(x_sl, np.asarray(sae.decode(s, z)), atol=1e-5)
    assert (z > 0).any()
    back = load_saelens(str(tmp_path))  # and it reads back as the same kind
    assert back.config == s.config
    for k, v in s.params.items():
        np.testing.assert_array_equal(np.asarray(back.params[k]), np.asarray(v))


def _randomise_torch(sl, threshold=None):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sl.b_enc.copy_(0.1 * torch.randn(sl.b_enc.shape, generator=g))
        sl.b_dec.copy_(0.2 * torch.randn(sl.b_dec.shape, generator=g))
        if threshold is not None:
            sl.threshold.copy_(threshold * torch.rand(sl.threshold.shape, generator=g))


@pytest.mark.parametrize("arch", ["standard", "topk", "topk_rescaled", "jumprelu"])
def test_saelens_sae_loads_in_jaxsteer(arch, tmp_path):
    meta = sae_lens.saes.sae.SAEMetadata(hook_name="blocks.2.hook_mlp_out", model_name="tiny")
    if arch == "standard":
        sl = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta))
    elif arch.startswith("topk"):
        sl = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D, d_sae=F, k=6, metadata=meta,
                                                     rescale_acts_by_decoder_norm=arch == "topk_rescaled"))
    else:
        sl = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F, metadata=meta))
    _randomise_torch(sl, threshold=0.3 if arch == "jumprelu" else None)
    if arch == "topk_rescaled":
        with torch.no_grad():
            sl.W_dec.mul_(torch.linspace(0.5, 2.0, F)[:, None])
    sl.save_model(str(tmp_path))
    s = load_saelens(str(tmp_path))
    assert (s.config.site, s.config.layer) == ("mlp_out", 2)
    z_sl, x_sl = sl_encode_decode(sl, X)
    np.testing.assert_allclose(np.asarray(sae.encode(s, X)), z_sl, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(s, z_sl)), x_sl, atol=1e-5)


def test_saelens_batchtopk_training_directory_loads(tmp_path):
    cfg = sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4)
    sl = sae_lens.BatchTopKTrainingSAE(cfg)
    _randomise_torch(sl)
    sl.topk_threshold = torch.tensor(0.25, dtype=torch.double)
    sl.save_model(str(tmp_path))
    s = load_saelens(str(tmp_path))
    assert s.config.kind == "batchtopk" and s.config.rescale_acts_by_decoder_norm
    np.testing.assert_allclose(float(s.params["threshold"]), 0.25)
    with torch.no_grad():  # SAELens' own inference form: JumpReLU at the global threshold
        xt = torch.from_numpy(X)
        pre = (sl.process_sae_in(xt) @ sl.W_enc + sl.b_enc) * sl.W_dec.norm(dim=-1)
        z_ref = (pre.relu() * (pre > 0.25)).numpy()
        x_ref = sl.decode(torch.from_numpy(z_ref)).numpy()
    np.testing.assert_allclose(np.asarray(sae.encode(s, X)), z_ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(s, z_ref)), x_ref, atol=1e-5)


def test_kron_and_residual_round_trip_in_jaxsteer(tmp_path):
    cfg = sae.SAEConfig(kind="kron", d_in=D, d_sae=2 * 4 * 5, k=3, kron_heads=2, kron_m=4, kron_n=5)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    save_saelens(s, str(tmp_path / "kron"))
    back = load_saelens(str(tmp_path / "kron"))
    np.testing.assert_allclose(np.asarray(sae.reconstruct(back, X)), np.asarray(sae.reconstruct(s, X)), atol=1e-6)
    res = sae.init_sae(sae.SAEConfig(kind="topk", d_in=D, d_sae=F, k=3, decoder_bias=False), jax.random.PRNGKey(1))
    save_saelens(res, str(tmp_path / "res"))
    back = load_saelens(str(tmp_path / "res"))
    assert "b_dec" not in back.params
    np.testing.assert_allclose(np.asarray(sae.reconstruct(back, X)), np.asarray(sae.reconstruct(res, X)), atol=1e-6)


def test_bfloat16_sae_round_trips(tmp_path):
    s = sae.astype(randomised("topk"), "bfloat16")
    save_saelens(s, str(tmp_path))
    back = load_saelens(str(tmp_path))
    assert back.dtype == jnp.bfloat16
    for k, v in s.params.items():
        np.testing.assert_array_equal(np.asarray(back.params[k], np.float32), np.asarray(v, np.float32))
