"""The logit lens, accumulated lens and vector lens (jaxsteer.analysis.lens) on a tiny random model:
known answers and plots."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxsteer
from jaxsteer.analysis import (
    accumulated_lens,
    logit_lens,
    token_rank,
    vector_lens,
)
from tests.analysis.conftest import T, V


def test_logit_lens_of_unembedding_rows_ranks_the_token_first(model):
    w = np.asarray(model.params["unembed"])  # the tiny config has untied embeddings
    ids = np.arange(0, V, 5)
    res = logit_lens(model, w[ids], final_norm=False, k=3)
    np.testing.assert_array_equal(res.top_ids[:, 0], ids)
    np.testing.assert_array_equal(token_rank(model, w[ids], ids, final_norm=False), 0)
    # bottom-k is the top-k of the negated vector
    neg = logit_lens(model, -w[ids], final_norm=False, k=3)
    np.testing.assert_array_equal(neg.bottom_ids, res.top_ids)


def test_accumulated_lens_final_row_is_the_models_output(model, pair, tmp_path):
    clean, _ = pair
    logits, _ = jaxsteer.forward(model, clean)
    res = accumulated_lens(model, clean, k=4)
    L = model.config.n_layers
    assert res.top_ids.shape == (L + 1, 1, T, 4) and res.labels[-1] == "final"
    want = np.argsort(-np.asarray(logits[0]), axis=-1)[:, :4]
    np.testing.assert_array_equal(res.top_ids[-1, 0], want)
    np.testing.assert_allclose(
        res.top_logprobs[-1, 0], np.sort(np.asarray(jax.nn.log_softmax(logits[0])), -1)[:, ::-1][:, :4], atol=1e-5
    )
    # row 0 is the lens of the embeddings; mid-layer residuals interleave with incl_mid
    mid = accumulated_lens(model, clean, k=2, incl_mid=True)
    assert mid.top_ids.shape[0] == 2 * L + 1 and mid.labels[:3] == ["0_pre", "0_mid", "1_pre"]
    assert res.plot(str(tmp_path / "acc.png")) == str(tmp_path / "acc.png")
    assert (tmp_path / "acc.png").stat().st_size > 1000
    table = res.table(position=-1)
    assert "final" in table and len(table.splitlines()) == L + 2


def test_vector_lens_of_steering_vectors_table_and_plot(model, tmp_path):
    vecs = np.random.RandomState(0).normal(size=(model.config.n_layers, model.config.d_model)).astype(np.float32)
    raw = vector_lens(model, vecs, k=5)
    w_u = np.asarray(model.params["unembed"])
    want = np.argsort(-(vecs @ w_u.T), axis=-1)[:, :5]
    np.testing.assert_array_equal(raw.top_ids, want)
    normed = vector_lens(model, vecs, k=5, final_norm=True)
    assert normed.final_norm and not raw.final_norm
    assert raw.labels[0] == "layer 0" and "#" in raw.top_tokens[0, 0]  # no tokenizer: ids shown as #id
    assert len(raw.table().splitlines()) == model.config.n_layers + 1
    raw.plot(str(tmp_path / "lens.png"))
    assert (tmp_path / "lens.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="d_model"):
        logit_lens(model, np.zeros((3, 5)))
