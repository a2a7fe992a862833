"""The TransformerLens-style cache surface (issue 21): `record="all"`, TransformerLens hook names
wherever a site is accepted, `run_with_cache` with a cache indexable by (site, layer) and alias.
The token helpers are tested in test_tokens.py, the short reprs in test_display.py."""

from __future__ import annotations

import numpy as np
import pytest

import jaxsteer
from jaxsteer import SITES, Ablate, Patch, Steer
from jaxsteer.models.sites import parse_site

TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)


def test_record_all_and_tl_names(tiny_model):
    logits, cache = jaxsteer.run_with_cache(tiny_model, TOKENS)
    assert sorted(cache) == sorted(SITES)
    np.testing.assert_array_equal(logits, jaxsteer.forward(tiny_model, TOKENS)[0])
    _, named = jaxsteer.forward(tiny_model, TOKENS, record=("blocks.1.hook_resid_post", "attn.hook_z", "hook_pattern"))
    assert sorted(named) == ["pattern", "resid_post", "z"]  # a name's layer is dropped: every layer is recorded
    post = cache["resid_post"]
    np.testing.assert_array_equal(cache["resid_post", 2], post[2])
    np.testing.assert_array_equal(cache["blocks.2.hook_resid_post"], post[2])
    np.testing.assert_array_equal(cache["hook_resid_post"], post)
    np.testing.assert_array_equal(cache["blocks.0.attn.hook_z"], cache["z"][0])
    np.testing.assert_array_equal(cache["blocks.1.attn.hook_pattern"], cache.pattern[1])
    # the aliases mean the same values: resid_post of layer l is resid_pre of layer l + 1
    np.testing.assert_array_equal(cache["blocks.1.hook_resid_post"], cache["blocks.2.hook_resid_pre"])
    np.testing.assert_allclose(cache["hook_resid_mid"], cache["resid_pre"] + cache["hook_attn_out"], atol=1e-6)
    with pytest.raises(KeyError, match="was not recorded"):
        named["mlp_out"]


def test_tl_names_with_a_layer_select_that_layer_in_interventions(tiny_model):
    v = np.random.RandomState(0).normal(size=(tiny_model.config.d_model,)).astype(np.float32)
    ref = jaxsteer.forward(tiny_model, TOKENS, interventions=Steer(v, layers=(1,)))[0]
    alias = jaxsteer.forward(tiny_model, TOKENS, interventions=Steer(v, site="blocks.1.hook_resid_post"))[0]
    np.testing.assert_array_equal(alias, ref)
    a = Ablate(site="blocks.2.attn.hook_z", heads=(1,))
    assert (a.site, a.layers) == ("z", (2,))
    np.testing.assert_array_equal(
        jaxsteer.forward(tiny_model, TOKENS, interventions=a)[0],
        jaxsteer.forward(tiny_model, TOKENS, interventions=Ablate(site="z", layers=(2,), heads=(1,)))[0],
    )
    assert Patch(np.zeros((2, 4, 32)), site="hook_mlp_out").site == "mlp_out"
    with pytest.raises(ValueError, match=r"names layer 1 but layers=\(2,\)"):
        Steer(v, site="blocks.1.hook_resid_post", layers=(2,))
    with pytest.raises(ValueError, match="layer 7 out of range"):
        jaxsteer.forward(tiny_model, TOKENS, interventions=Steer(v, site="blocks.7.hook_resid_post"))


@pytest.mark.parametrize("name", ["hook_attn_in", "blocks.3.ln1.hook_normalized", "ln2.hook_normalized"])
def test_tl_names_that_mean_something_else_are_refused_with_the_reason(tiny_model, name):
    with pytest.raises(ValueError, match="has no jaxsteer alias: TransformerLens"):
        jaxsteer.forward(tiny_model, TOKENS, record=name)


def test_unknown_site_lists_the_sites(tiny_model):
    with pytest.raises(ValueError, match="unknown site 'resid'; sites are: resid_pre"):
        jaxsteer.forward(tiny_model, TOKENS, record="resid")
    assert parse_site("blocks.12.attn.hook_q") == ("q", 12)


def test_patching_accepts_tl_names(tiny_model):
    from jaxsteer.analysis import activation_patching

    kw = dict(answers=(3, 4), batch_size=4)
    a = activation_patching(tiny_model, TOKENS[:1], TOKENS[1:], site="hook_resid_pre", **kw)
    b = activation_patching(tiny_model, TOKENS[:1], TOKENS[1:], site="resid_pre", **kw)
    assert a.site == "resid_pre"
    np.testing.assert_array_equal(a.values, b.values)
