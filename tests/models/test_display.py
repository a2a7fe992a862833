"""Notebook displays and short reprs (issue 21): results print shapes not contents (traces, models,
generations), render HTML tables, and the logit lens can show probabilities that agree with a
softmax of the logits."""

from __future__ import annotations

import jax
import numpy as np

import jaxsteer
from jaxsteer.analysis import activation_patching
from jaxsteer.analysis.lens import accumulated_lens, vector_lens

TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)


def test_lens_probabilities_match_softmax_and_render(tiny_model):
    lens = accumulated_lens(tiny_model, TOKENS[:1], k=3)
    r = lens.select(0, -1)
    top, bottom = r.probabilities()
    # row "final" / the last layer's resid_post through the final norm and unembedding = the model's logits
    logits = jaxsteer.forward(tiny_model, TOKENS[:1])[0][0, -1]
    p = np.asarray(jax.nn.softmax(logits))
    np.testing.assert_allclose(top[-1], np.sort(p)[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(bottom[-1], np.sort(p)[:3], rtol=1e-4)
    text = lens.table(probs=True)
    assert "(probability)" in text.splitlines()[0] and f"{top[-1, 0]:.3f}" in text
    html = lens._repr_html_()
    assert "<table>" in html and "top 1" in html
    assert repr(lens).startswith("LensResult(top_ids=i") and len(repr(lens)) < 700


def test_patching_and_vector_lens_displays(tiny_model):
    res = activation_patching(tiny_model, TOKENS[:1], TOKENS[1:], answers=(3, 4), batch_size=4)
    html = res._repr_html_()
    assert html.count("<tr>") >= tiny_model.config.n_layers + 1 and "activation patching at resid_pre" in html
    assert repr(res).startswith("PatchingResult(values=f") and "\n" not in repr(res)
    v = vector_lens(tiny_model, np.ones((3, 32), np.float32), k=2)
    assert "<pre>" in v._repr_html_() or "<table>" in v._repr_html_()


def test_config_html():
    from jaxsteer.train.config import load_config

    html = load_config(None, ["steps=3"])._repr_html_()
    assert (
        "<code>steps</code>" in html
        and "<code>model.spec</code>" in html
        and "<code>sampling.max_new_tokens</code>" in html
    )


def test_short_reprs(tiny_model):
    _, cache = jaxsteer.run_with_cache(tiny_model, TOKENS, names=("resid_post", "pattern"))
    assert repr(cache) == "Trace(pattern: f32[3, 2, 4, 4, 4], resid_post: f32[3, 2, 4, 32])"
    r = repr(tiny_model)
    assert r.startswith("Model(LlamaForCausalLM, 3 layers, d_model=32, heads=4/2, vocab=53,") and len(r) < 120
    assert "<table>" in cache._repr_html_() and "f32[3, 2, 4, 32]" in cache._repr_html_()
    out = jaxsteer.generate(tiny_model, [[3, 4]], max_new_tokens=2, greedy=True)
    assert repr(out).startswith("Generation(tokens=i32[1, 2], lengths=") and len(repr(out)) < 200
