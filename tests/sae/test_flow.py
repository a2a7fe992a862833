"""Cross-layer feature flow: SAEs built so that feature i of one level is feature p(i) of the next
give exactly the edges i -> p(i), from activations and through a model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer import sae
from jaxsteer.sae.flow import activation_correlation, feature_flow, flow_graph
from tests.sae.test_splice import TOKENS, model  # noqa: F401  (the tiny Llama fixture, d_model 16)

D, F = 16, 24


def base_sae(site="resid_post", layer=0, seed=0):
    s = sae.init_sae(sae.SAEConfig(kind="topk", d_in=D, d_sae=F, k=4, site=site, layer=layer), jax.random.PRNGKey(seed))
    return sae.SAE(dict(s.params, b_enc=0.05 * jnp.ones(F)), s.config)


def permuted(s, perm, site, layer):
    """The same SAE with its latents reordered: latent perm[i] of the result is latent i of `s`."""
    inv = np.argsort(perm)
    p = dict(s.params, W_enc=s.params["W_enc"][:, inv], b_enc=s.params["b_enc"][inv], W_dec=s.params["W_dec"][inv])
    return sae.SAE(p, sae.SAEConfig(**dict(s.config.to_dict(), site=site, layer=layer)))


PERM1 = np.random.default_rng(0).permutation(F)
PERM2 = np.random.default_rng(1).permutation(F)


def test_known_permutation_is_recovered_from_activations():
    a = base_sae()
    b, c = permuted(a, PERM1, "resid_post", 1), permuted(permuted(a, PERM1, "resid_post", 1), PERM2, "resid_post", 2)
    x = np.random.default_rng(2).normal(size=(400, D)).astype(np.float32)
    for by in ("correlation", "decoder_cosine", "encoder_cosine"):
        g = flow_graph([a, b, c], [x, x, x], top=1, by=by)
        starts = [f for lv, f in g.nodes if lv == 0]
        assert starts and all(g.successors((0, f))[0][0] == (1, int(PERM1[f])) for f in starts)
        for f in starts:
            ((mid, w1),) = g.successors((0, f))
            ((end, w2),) = g.successors(mid)
            assert (
                end == (2, int(PERM2[PERM1[f]]))
                and w1 == pytest.approx(1.0, abs=1e-5)
                and w2 == pytest.approx(1.0, abs=1e-5)
            )
    g = flow_graph([a, b], [x, x], features=[3, 5], top=2)
    assert {e["src"] for e in g.edges} == {(0, 3), (0, 5)} and len(g.edges) == 4
    assert all(set(e) >= {"correlation", "decoder_cosine", "encoder_cosine", "weight"} for e in g.edges)


def test_correlation_known_values():
    rng = np.random.default_rng(0)
    za = rng.normal(size=(500, 3))
    zb = np.stack([2 * za[:, 0] + 1, -za[:, 1], np.zeros(500)], 1)
    c = activation_correlation(za, zb)
    np.testing.assert_allclose(np.diag(c), [1.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(c[:, :2], np.corrcoef(za.T, zb[:, :2].T)[:3, 3:], atol=1e-5)


def test_flow_through_the_model_and_plot(model, tmp_path):  # noqa: F811
    """resid_pre of layer 1 is resid_post of layer 0: an SAE there and its permutation at the
    next site read the same activations, so the harvested flow finds the permutation exactly."""
    a = base_sae("resid_post", 0)
    b = permuted(a, PERM1, "resid_pre", 1)
    tokens = np.concatenate([TOKENS] * 4)
    g = feature_flow(model, [a, b], tokens, top=1, batch=3)
    assert len(g.edges) == len([n for n in g.nodes if n[0] == 0]) > 3
    for e in g.edges:
        assert e["dst"] == (1, int(PERM1[e["src"][1]])) and e["correlation"] == pytest.approx(1.0, abs=1e-4)
    fig = g.plot(str(tmp_path / "flow.png"), labels={g.nodes[0]: "first"}, node_colors={g.nodes[0]: "red"})
    faces = [tuple(c.get_facecolor()[0]) for c in fig.axes[0].collections]
    assert faces.count((1.0, 0.0, 0.0, 1.0)) == 1 and faces.count((1.0, 1.0, 1.0, 1.0)) == len(g.nodes) - 1
    assert (tmp_path / "flow.png").stat().st_size > 1000 and fig.axes[0].get_xticklabels()[
        0
    ].get_text() == "resid_post L0"
