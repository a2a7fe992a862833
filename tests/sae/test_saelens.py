"""SAELens interop against SAELens itself: directories SAELens writes load in jaxsteer with the
same encode / decode, jaxsteer's exports load in SAELens with the same outputs, and whatever
jaxsteer cannot reproduce is refused by name."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxsteer import sae
from jaxsteer.sae.saelens import load_saelens, save_saelens

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

D, F = 12, 40
X = np.random.default_rng(0).normal(size=(16, D)).astype(np.float32)


def randomised(kind, d=D, f=F, k=5, seed=0, **kw):
    """A jaxsteer SAE with random biases, decoder norms and thresholds."""
    if kind == "matryoshka":
        kw["matryoshka_widths"] = (f // 4, f)
    cfg = sae.SAEConfig(
        kind=kind,
        d_in=d,
        d_sae=f,
        k=k if kind in ("topk", "batchtopk", "htopk", "matryoshka") else 0,
        layer=3,
        site=kw.pop("site", "resid_post"),
        **kw,
    )
    s = sae.init_sae(cfg, jax.random.PRNGKey(seed))
    ks = jax.random.split(jax.random.PRNGKey(seed + 1), 4)
    p = dict(
        s.params,
        b_enc=0.1 * jax.random.normal(ks[0], (f,)),
        b_dec=0.2 * jax.random.normal(ks[1], (d,)),
        W_dec=s.params["W_dec"] * jax.random.uniform(ks[2], (f, 1), minval=0.5, maxval=1.5),
    )
    if kind == "jumprelu":
        p["threshold"] = jax.random.uniform(ks[3], (f,), maxval=0.4)
    if kind in ("batchtopk", "matryoshka"):
        p["threshold"] = jnp.asarray(0.3)
    return sae.SAE(p, cfg)


def sl_encode_decode(sl, x):
    with torch.no_grad():
        z = sl.encode(torch.from_numpy(x))
        return z.numpy(), sl.decode(z).numpy()


def assert_same_as_saelens(sl, s, x=X, x_sae=None):
    """SAELens SAE `sl` on `x` and jaxsteer SAE `s` on `x_sae` (default `x`) give the same codes
    (1e-5) and decode SAELens' codes to the same reconstruction; some latent fires."""
    z_sl, x_sl = sl_encode_decode(sl, x)
    x_sae = x if x_sae is None else x_sae
    z = np.asarray(sae.encode(s, x_sae))
    np.testing.assert_allclose(z, z_sl.reshape(z.shape), atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(s, z_sl.reshape(z.shape))), x_sl.reshape(x_sae.shape), atol=1e-5)
    assert (z > 0).any()


def _randomise_torch(sl, threshold=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sl.b_enc.copy_(0.1 * torch.randn(sl.b_enc.shape, generator=g))
        sl.b_dec.copy_(0.2 * torch.randn(sl.b_dec.shape, generator=g))
        sl.W_dec.mul_(torch.rand(sl.W_dec.shape[0], 1, generator=g) + 0.5)
        if threshold is not None:
            sl.threshold.copy_(threshold * torch.rand(sl.threshold.shape, generator=g))
    return sl


def meta(hook="blocks.2.hook_mlp_out"):
    return sae_lens.saes.sae.SAEMetadata(hook_name=hook, model_name="tiny")


# ----- SAELens writes, jaxsteer reads -------------------------------------------------------------


def saelens_sae(case):
    """A SAELens inference SAE (its own classes) for each case; returns (sae, site, layer)."""
    if case == "standard":
        return sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta()))
    if case == "standard_no_b_dec_in":
        return sae_lens.StandardSAE(
            sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta(), apply_b_dec_to_input=False)
        )
    if case.startswith("topk"):
        return sae_lens.TopKSAE(
            sae_lens.TopKSAEConfig(
                d_in=D, d_sae=F, k=6, metadata=meta(), rescale_acts_by_decoder_norm=case == "topk_rescaled"
            )
        )
    if case == "jumprelu":
        return sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F, metadata=meta()))
    raise KeyError(case)


@pytest.mark.parametrize("case", ["standard", "standard_no_b_dec_in", "topk", "topk_rescaled", "jumprelu"])
def test_saelens_sae_loads_in_jaxsteer(case, tmp_path):
    sl = _randomise_torch(saelens_sae(case), threshold=0.3 if case == "jumprelu" else None)
    sl.save_model(str(tmp_path))
    s = load_saelens(str(tmp_path))
    assert (s.config.site, s.config.layer, s.config.model) == ("mlp_out", 2, "tiny")
    assert s.config.apply_b_dec_to_input == (case != "standard_no_b_dec_in")
    assert_same_as_saelens(sae_lens.SAE.load_from_disk(str(tmp_path)), s)


@pytest.mark.parametrize("training", ["batchtopk", "matryoshka_batchtopk"])
def test_saelens_batchtopk_training_and_inference_directories_load(training, tmp_path):
    if training == "batchtopk":
        sl = sae_lens.BatchTopKTrainingSAE(sae_lens.BatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4))
    else:
        sl = sae_lens.MatryoshkaBatchTopKTrainingSAE(
            sae_lens.MatryoshkaBatchTopKTrainingSAEConfig(d_in=D, d_sae=F, k=4, matryoshka_widths=[10, 25, F])
        )
    _randomise_torch(sl)
    sl.topk_threshold = torch.tensor(0.025, dtype=torch.double)  # decoder rows start at norm 0.1
    sl.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sl.save_model(str(tmp_path / "train"))  # training format: scalar topk_threshold, decoder-norm rescaling
    sl.save_inference_model(str(tmp_path / "infer"))  # SAELens' inference form: JumpReLU, norms folded
    s = load_saelens(str(tmp_path / "train"))
    assert s.config.kind == training.removesuffix("_batchtopk") and s.config.rescale_acts_by_decoder_norm
    if training != "batchtopk":
        assert s.config.matryoshka_widths == (10, 25, F)
    np.testing.assert_allclose(float(s.params["threshold"]), 0.025)
    inference = sae_lens.SAE.load_from_disk(str(tmp_path / "infer"))
    assert_same_as_saelens(inference, s)
    assert_same_as_saelens(inference, load_saelens(str(tmp_path / "infer")))


def write_old_format_topk(path, k=4, **cfg_extra):
    """A pre-6.0 TopK directory as many public releases hold it: the architecture in
    activation_fn_str / activation_fn_kwargs, the site in hook_point, weights from a SAELens TopK SAE."""
    sl = _randomise_torch(sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D, d_sae=F, k=k)))
    sl.save_model(str(path))
    cfg = {
        "architecture": "standard",
        "d_in": D,
        "d_sae": F,
        "dtype": "float32",
        "device": "cpu",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": k},
        "hook_point": "blocks.4.hook_resid_post",
        "hook_point_layer": 4,
        "model_name": "gpt2",
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "sae_lens_training_version": "3.13.0",
        **cfg_extra,
    }
    with open(path / "cfg.json", "w") as f:
        json.dump(cfg, f)


def test_old_format_topk_loads_as_saelens_loads_it(tmp_path):
    write_old_format_topk(tmp_path, k=4)
    sl = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert isinstance(sl, sae_lens.TopKSAE) and sl.cfg.k == 4
    s = load_saelens(str(tmp_path))
    assert (s.config.kind, s.config.k, s.config.site, s.config.layer) == ("topk", 4, "resid_post", 4)
    assert_same_as_saelens(sl, s)
    assert np.all(np.sum(np.asarray(sae.encode(s, X)) > 0, axis=-1) <= 4)


def test_expected_average_only_in_is_refused_by_name_or_folded(tmp_path):
    write_old_format_topk(tmp_path, normalize_activations=True)
    with pytest.raises(ValueError, match="expected_average_only_in.*norm_scaling_factor"):
        load_saelens(str(tmp_path))
    sl = sae_lens.SAE.load_from_disk(str(tmp_path))  # SAELens' disk loader leaves the scale out: 1.0 matches it
    assert_same_as_saelens(sl, load_saelens(str(tmp_path), norm_scaling_factor=1.0))
    sl.fold_activation_norm_scaling_factor(2.5)  # a release's constant, folded as SAELens' from_pretrained does
    assert_same_as_saelens(sl, load_saelens(str(tmp_path), norm_scaling_factor=2.5))


def test_hook_z_sae_loads_on_the_z_site_flattened_as_saelens(tmp_path):
    H, hd = 3, 4
    cfg = sae_lens.TopKSAEConfig(
        d_in=H * hd, d_sae=F, k=5, reshape_activations="hook_z", metadata=meta("blocks.1.attn.hook_z")
    )
    _randomise_torch(sae_lens.TopKSAE(cfg)).save_model(str(tmp_path))
    sl = sae_lens.SAE.load_from_disk(str(tmp_path))
    s = load_saelens(str(tmp_path))
    assert (s.config.site, s.config.layer) == ("z", 1)
    xz = np.random.default_rng(1).normal(size=(5, 7, H, hd)).astype(np.float32)  # [B, T, heads, d_head]
    assert_same_as_saelens(sl, s, x=xz, x_sae=xz.reshape(5, 7, H * hd))
    save_saelens(s, str(tmp_path / "back"))  # and back: SAELens reshapes our export the same way
    assert_same_as_saelens(sae_lens.SAE.load_from_disk(str(tmp_path / "back")), s, x=xz, x_sae=xz.reshape(5, 7, H * hd))


def test_saelens_fields_win_over_private_metadata(tmp_path):
    save_saelens(randomised("topk", k=5), str(tmp_path))
    with open(tmp_path / "cfg.json") as f:
        cfg = json.load(f)
    cfg["k"] = 9  # edited by hand: SAELens uses the edit, so must jaxsteer
    with open(tmp_path / "cfg.json", "w") as f:
        json.dump(cfg, f)
    s = load_saelens(str(tmp_path))
    assert s.config.k == 9
    assert_same_as_saelens(sae_lens.SAE.load_from_disk(str(tmp_path)), s)


def test_unknown_or_missing_hook_names_are_errors_unless_the_site_is_given(tmp_path):
    for i, hook in enumerate(["blocks.5.ln2.hook_normalized", None]):
        sl = _randomise_torch(sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta(hook))))
        path = str(tmp_path / str(i))
        sl.save_model(path)
        with pytest.raises(ValueError, match="hook_name.*pass site= and layer="):
            load_saelens(path)
        s = load_saelens(path, site="mlp_in", layer=5)
        assert (s.config.site, s.config.layer) == ("mlp_in", 5)
        assert_same_as_saelens(sl, s)


def test_unsupported_architectures_and_options_are_refused_by_name(tmp_path):
    sl = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D, d_sae=F, metadata=meta()))
    sl.save_model(str(tmp_path / "gated"))
    with pytest.raises(ValueError, match="architecture 'gated'"):
        load_saelens(str(tmp_path / "gated"))
    sl = sae_lens.StandardSAE(
        sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta(), normalize_activations="layer_norm")
    )
    sl.save_model(str(tmp_path / "ln"))
    with pytest.raises(ValueError, match="normalize_activations='layer_norm'"):
        load_saelens(str(tmp_path / "ln"))


def test_dtype_at_load_and_fold_w_dec_norm(tmp_path):
    sl = _randomise_torch(saelens_sae("jumprelu"), threshold=0.3)
    sl.save_model(str(tmp_path))
    s16 = load_saelens(str(tmp_path), dtype="bfloat16")
    assert s16.dtype == jnp.bfloat16 and s16.config.dtype == "bfloat16"
    folded_sl = sae_lens.SAE.load_from_disk(str(tmp_path), fold_W_dec_norm=True)
    folded = load_saelens(str(tmp_path), fold_W_dec_norm=True)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(folded.params["W_dec"]), axis=-1), 1.0, atol=1e-6)
    assert_same_as_saelens(folded_sl, folded)


# ----- jaxsteer writes, SAELens reads -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu", "batchtopk", "htopk", "matryoshka"])
@pytest.mark.parametrize("rescale", [False, True])
def test_jaxsteer_sae_loads_in_saelens(kind, rescale, tmp_path):
    s = randomised(kind, rescale_acts_by_decoder_norm=rescale)
    save_saelens(s, str(tmp_path), model_name="tiny")
    sl = sae_lens.SAE.load_from_disk(str(tmp_path))
    assert sl.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    z_sl, x_sl = sl_encode_decode(sl, X)
    z = np.asarray(sae.encode(s, X))  # the SAE as trained (decoder norms not folded) gives SAELens' codes
    np.testing.assert_allclose(z_sl, z, atol=1e-5)
    np.testing.assert_allclose(x_sl, np.asarray(sae.decode(s, z)), atol=1e-5)
    assert (z > 0).any()
    back = load_saelens(str(tmp_path))  # and it reads back as the same kind computing the same function
    assert back.config.kind == kind and back.config.d_sae == F
    np.testing.assert_allclose(np.asarray(sae.encode(back, X)), z, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.reconstruct(back, X)), np.asarray(sae.reconstruct(s, X)), atol=1e-5)
    if not rescale:
        assert back.config == sae.SAEConfig(**dict(s.config.to_dict(), model="tiny"))


@given(
    kind=st.sampled_from(["relu", "topk", "jumprelu", "batchtopk", "htopk", "matryoshka"]),
    rescale=st.booleans(),
    b_dec_in=st.booleans(),
    d=st.integers(2, 9),
    f=st.integers(4, 30),
    k=st.integers(1, 4),
    seed=st.integers(0, 99),
)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_configs_round_trip_through_saelens(kind, rescale, b_dec_in, d, f, k, seed, tmp_path_factory):
    s = randomised(kind, d=d, f=f, k=k, seed=seed, rescale_acts_by_decoder_norm=rescale, apply_b_dec_to_input=b_dec_in)
    path = str(tmp_path_factory.mktemp("rt"))
    save_saelens(s, path)
    x = np.random.default_rng(seed).normal(size=(8, d)).astype(np.float32)
    sl = sae_lens.SAE.load_from_disk(path)
    z_sl, x_sl = sl_encode_decode(sl, x)
    np.testing.assert_allclose(np.asarray(sae.encode(s, x)), z_sl, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sae.decode(s, z_sl)), x_sl, atol=1e-5)
    sl.save_model(path)  # SAELens re-saves it: jaxsteer reads SAELens' own file as the same function
    np.testing.assert_allclose(np.asarray(sae.encode(load_saelens(path), x)), z_sl, atol=1e-5)


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


# ----- releases on disk ---------------------------------------------------------------------------


def test_release_folder_with_several_sae_ids(tmp_path):
    for layer in (0, 2):
        sl = _randomise_torch(
            sae_lens.StandardSAE(
                sae_lens.StandardSAEConfig(d_in=D, d_sae=F, metadata=meta(f"blocks.{layer}.hook_resid_pre"))
            ),
            seed=layer,
        )
        sl.save_model(str(tmp_path / f"blocks.{layer}.hook_resid_pre"))
    with pytest.raises(ValueError, match=r"sae_id= one of \['blocks.0.hook_resid_pre', 'blocks.2.hook_resid_pre'\]"):
        load_saelens(str(tmp_path))
    s = load_saelens(str(tmp_path), sae_id="blocks.2.hook_resid_pre")
    assert (s.config.site, s.config.layer) == ("resid_pre", 2)
    assert_same_as_saelens(sae_lens.SAE.load_from_disk(str(tmp_path / "blocks.2.hook_resid_pre")), s)
    with pytest.raises(FileNotFoundError, match="sae_ids"):
        load_saelens(str(tmp_path), sae_id="blocks.1.hook_resid_pre")


def test_gemma_scope_params_npz(tmp_path):
    """Gemma Scope's layout (layer_N/width_W/average_l0_A/params.npz) read as SAELens' Gemma 2
    loader builds it: JumpReLU with apply_b_dec_to_input=False."""
    sl = _randomise_torch(
        sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D, d_sae=F, apply_b_dec_to_input=False)), threshold=0.3
    )
    folder = tmp_path / "layer_7" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.detach().numpy() for k, v in sl.state_dict().items()})
    with pytest.raises(ValueError, match="pass site="):
        load_saelens(str(tmp_path), sae_id="layer_7/width_16k/average_l0_71")
    with pytest.raises(ValueError, match=r"layer_7/width_16k/average_l0_71"):
        load_saelens(str(tmp_path))  # a release: lists its ids
    s = load_saelens(str(tmp_path), sae_id="layer_7/width_16k/average_l0_71", site="resid_post")
    assert (s.config.kind, s.config.site, s.config.layer, s.config.apply_b_dec_to_input) == (
        "jumprelu",
        "resid_post",
        7,
        False,
    )
    assert_same_as_saelens(sl, s)
