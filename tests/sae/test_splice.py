"""Splicing SAEs into a tiny random model: identity SAEs and the error term leave logits unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import sae
from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.params import param_shapes, truncate, unflatten
from jaxsteer.sae.splice import site_activations

V, D, L = 50, 16, 3


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=V,
        d_model=D,
        n_layers=L,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        d_mlp=24,
        norm_eps=1e-6,
        rope_full=RopeConfig(10000.0),
        eos_token_ids=(1,),
    )
    rng = np.random.RandomState(0)
    flat = {
        p: ((1.0 if p.endswith("norm") else 0.0) + rng.normal(0, 0.1 if p.endswith("norm") else 0.3, s)).astype(
            np.float32
        )
        for p, s in sorted(param_shapes(cfg).items())
    }
    return jaxsteer.Model(params=jax.tree_util.tree_map(jnp.asarray, unflatten(flat)), config=cfg)


def identity_sae(layer=1, site="resid_post"):
    """relu([x, -x]) decoded by [I; -I] is x exactly."""
    eye = np.eye(D, dtype=np.float32)
    cfg = sae.SAEConfig(kind="relu", d_in=D, d_sae=2 * D, layer=layer, site=site)
    params = {
        "W_enc": jnp.asarray(np.concatenate([eye, -eye], 1)),
        "b_enc": jnp.zeros(2 * D),
        "W_dec": jnp.asarray(np.concatenate([eye, -eye], 0)),
        "b_dec": jnp.zeros(D),
    }
    return sae.SAE(params, cfg)


def random_sae(layer=1):
    cfg = sae.SAEConfig(kind="topk", d_in=D, d_sae=4 * D, k=3, layer=layer)
    return sae.init_sae(cfg, jax.random.PRNGKey(7))


TOKENS = np.random.RandomState(1).randint(2, V, (2, 7))


def test_identity_splice_leaves_logits_unchanged(model):
    clean, _ = jaxsteer.forward(model, TOKENS)
    for site in ("resid_post", "mlp_out", "resid_pre"):
        spliced, _ = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(identity_sae(site=site))])
        np.testing.assert_allclose(np.asarray(spliced), np.asarray(clean), atol=1e-5)


def test_keep_error_leaves_logits_unchanged_and_plain_splice_does_not(model):
    clean, _ = jaxsteer.forward(model, TOKENS)
    s = random_sae()
    kept, _ = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s, keep_error=True)])
    np.testing.assert_allclose(np.asarray(kept), np.asarray(clean), atol=1e-4)
    lossy, trace = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s)], record=("resid_post",))
    assert float(jnp.max(jnp.abs(lossy - clean))) > 1e-2
    # the spliced layer's output is exactly the reconstruction of its input
    _, ref = jaxsteer.forward(model, TOKENS, record=("resid_post",))
    np.testing.assert_allclose(
        np.asarray(trace.resid_post[1]), np.asarray(sae.reconstruct(s, ref.resid_post[1])), atol=1e-5
    )
    np.testing.assert_allclose(np.asarray(trace.resid_post[0]), np.asarray(ref.resid_post[0]), atol=1e-6)


def test_splice_composes_with_steer_and_works_in_generate(model):
    vec = jnp.asarray(np.random.RandomState(3).normal(size=(D,)).astype(np.float32))
    steer = jaxsteer.Steer(vec, layers=(0,))
    a, _ = jaxsteer.forward(model, TOKENS, interventions=[steer])
    b, _ = jaxsteer.forward(model, TOKENS, interventions=[steer, sae.Splice(identity_sae())])
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    prompts = [list(map(int, TOKENS[0, :4])), list(map(int, TOKENS[1, :5]))]
    g0 = jaxsteer.generate(model, prompts, max_new_tokens=5, greedy=True)
    g1 = jaxsteer.generate(model, prompts, max_new_tokens=5, greedy=True, interventions=[sae.Splice(identity_sae())])
    np.testing.assert_array_equal(np.asarray(g0.tokens), np.asarray(g1.tokens))


def test_feature_scale_ablates_exactly_the_chosen_features(model):
    """scale 0 on features F with the error kept: the layer outputs x - z_F W_dec[F]; scale 1 is a no-op."""
    s = random_sae()
    _, ref = jaxsteer.forward(model, TOKENS, record=("resid_post",))
    x = ref.resid_post[1]
    z = sae.encode(s, x)
    fired = np.flatnonzero(np.asarray(jnp.any(z > 0, axis=(0, 1))))
    chosen = fired[:3]
    scale = jnp.ones(4 * D).at[chosen].set(0.0)
    _, trace = jaxsteer.forward(
        model, TOKENS, interventions=[sae.Splice(s, feature_scale=scale, keep_error=True)], record=("resid_post",)
    )
    expected = x - z[..., chosen] @ s.params["W_dec"][chosen]
    np.testing.assert_allclose(np.asarray(trace.resid_post[1]), np.asarray(expected), atol=1e-5)
    assert float(jnp.max(jnp.abs(trace.resid_post[1] - x))) > 1e-3
    clean, _ = jaxsteer.forward(model, TOKENS)
    ones, _ = jaxsteer.forward(
        model, TOKENS, interventions=[sae.Splice(s, feature_scale=jnp.ones(4 * D), keep_error=True)]
    )
    np.testing.assert_allclose(np.asarray(ones), np.asarray(clean), atol=1e-4)
    # generation-safe: generate with the ablation equals the greedy argmax of forward with it
    prompts = [list(map(int, TOKENS[0, :4]))]
    iv = [sae.Splice(s, feature_scale=scale, keep_error=True)]
    g = jaxsteer.generate(model, prompts, max_new_tokens=1, greedy=True, interventions=iv)
    logits, _ = jaxsteer.forward(model, np.asarray(prompts), interventions=iv)
    assert int(g.tokens[0, 0]) == int(jnp.argmax(logits[0, -1]))
    with pytest.raises(ValueError, match="feature_scale"):
        jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s, feature_scale=jnp.ones(3))])


def test_feature_acts_and_attribution_gradient(model):
    s = random_sae()
    z = sae.feature_acts(model, s, TOKENS)
    _, ref = jaxsteer.forward(model, TOKENS, record=("resid_post",))
    np.testing.assert_allclose(np.asarray(z), np.asarray(sae.encode(s, ref.resid_post[1])), atol=1e-5)

    def metric(delta):
        logits, _ = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s, feature_delta=delta, keep_error=True)])
        return logits[0, -1, 5] - logits[0, -1, 6]

    delta = jnp.zeros((4 * D,))
    g = jax.grad(metric)(delta)
    assert g.shape == (4 * D,) and bool(jnp.all(jnp.isfinite(g)))
    # first-order prediction matches a small finite step along one feature
    f = int(jnp.argmax(jnp.abs(g)))
    eps = 1e-3
    step = delta.at[f].set(eps)
    np.testing.assert_allclose(float(metric(step) - metric(delta)) / eps, float(g[f]), rtol=0.05, atol=1e-3)


def test_splice_validation(model):
    with pytest.raises(ValueError, match="layer"):
        jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(random_sae(layer=5))])
    with pytest.raises(ValueError, match="d_in"):
        bad = sae.init_sae(sae.SAEConfig(kind="topk", d_in=8, d_sae=16, k=2), jax.random.PRNGKey(0))
        jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(bad)])


def test_top_contexts_are_the_largest_activations(model):
    from jaxsteer.sae.splice import top_contexts

    s = random_sae()
    windows = np.random.RandomState(4).randint(2, V, (6, 7))
    out = top_contexts(model, s, windows, [0, 5], n=3, batch=4, width=2)
    z = np.asarray(sae.feature_acts(model, s, windows))
    for f, rows in out.items():
        assert [r["value"] for r in rows] == sorted((r["value"] for r in rows), reverse=True)
        np.testing.assert_allclose(rows[0]["value"], z[..., f].max(), rtol=1e-5)
        assert z[rows[0]["row"], rows[0]["pos"], f] == pytest.approx(rows[0]["value"], rel=1e-5)


def test_z_site_sae_splices_the_flattened_heads(model):
    """A hook_z SAE (d_in = n_heads * head_dim) splices at z: the layer's z becomes the
    reconstruction of its heads flattened head-major, reshaped back; other layers are untouched."""
    H, hd = model.config.n_heads, model.config.head_dim
    cfg = sae.SAEConfig(kind="topk", d_in=H * hd, d_sae=24, k=4, site="z", layer=1)
    s = sae.init_sae(cfg, jax.random.PRNGKey(3))
    _, ref = jaxsteer.forward(model, TOKENS, record=("z",))
    _, trace = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s)], record=("z",))
    flat = ref.z[1].reshape(*TOKENS.shape, H * hd)
    want = np.asarray(sae.reconstruct(s, flat)).reshape(*TOKENS.shape, H, hd)
    np.testing.assert_allclose(np.asarray(trace.z[1]), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(trace.z[0]), np.asarray(ref.z[0]), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(sae.feature_acts(model, s, TOKENS)), np.asarray(sae.encode(s, flat)), atol=1e-5
    )
    kept, _ = jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s, keep_error=True)])
    clean, _ = jaxsteer.forward(model, TOKENS)
    np.testing.assert_allclose(np.asarray(kept), np.asarray(clean), atol=1e-4)
    with pytest.raises(ValueError, match="d_in=12; site 'z' of this model has width 16"):
        narrow = sae.init_sae(
            sae.SAEConfig(kind="topk", d_in=12, d_sae=24, k=4, site="z", layer=1), jax.random.PRNGKey(0)
        )
        jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(narrow)])


def test_truncated_harvest_equals_full_trace(model):
    toks = np.random.RandomState(0).randint(0, V, (2, 9))
    assert truncate(model, 2).config.n_layers == 2
    _, full = jaxsteer.forward(model, toks, record=("resid_post", "mlp_out"))
    got = site_activations(model, toks, "mlp_out", (0, 1))
    np.testing.assert_allclose(np.asarray(got), np.asarray(full.mlp_out[:2]), atol=1e-6)
