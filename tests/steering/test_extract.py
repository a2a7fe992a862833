"""Steering-vector extraction (jaxsteer.steering.extract): known answers on hand-made
activations, token reading checked against a recorded trace, and each method end to end on the
tiny random model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.sae.arch import SAEConfig, init_sae
from jaxsteer.steering import (
    ContrastData,
    contrast_data,
    contrast_vector,
    extract,
    match_norms,
    mean_difference,
    pca_direction,
    probe_direction,
    register_method,
    sae_direction,
    sae_features,
)

V = 53  # tests/conftest.py TINY_CONFIG


class CharTokenizer:
    """One token per character (ids 2..V-1), no chat template."""

    pad_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + ord(c) % (V - 2) for c in text]}


def _data(acts, labels, pair=None, completions=None):
    n = acts.shape[1]
    pair = np.full(n, -1) if pair is None else np.asarray(pair)
    return ContrastData(
        np.asarray(acts, np.float32), np.asarray(labels), pair, "resid_post", "last", [[2]] * n, completions or [[]] * n
    )


def _paired(rng, direction, n_pairs=12, d=8, L=2, noise=0.1):
    """Pairs that differ by ~direction, plus shared per-pair content and noise."""
    base = rng.normal(size=(L, n_pairs, d)) * 2
    pos = base + direction + noise * rng.normal(size=base.shape)
    neg = base - direction + noise * rng.normal(size=base.shape)
    acts = np.stack([pos, neg], axis=2).reshape(L, 2 * n_pairs, d)  # pos0, neg0, pos1, neg1, ...
    return _data(acts, np.tile([1, 0], n_pairs), np.repeat(np.arange(n_pairs), 2))


def test_mean_difference_known_answer():
    acts = np.array([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0], [1.0, -2.0]]])  # [L=1, N=4, d=2]
    v = mean_difference(_data(acts, [1, 1, 0, 0]))
    np.testing.assert_allclose(v, [[(1 + 3) / 2 - 0.5, (2 + 4) / 2 + 1.0]])


def test_pca_recovers_the_direction_with_its_sign():
    rng = np.random.default_rng(0)
    u = np.zeros(8)
    u[3] = 1.5
    data = _paired(rng, u)
    v = pca_direction(data)
    assert v.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1, rtol=1e-6)
    assert (v[:, 3] > 0.99).all()  # the direction, pointing to the positives
    flipped = _data(data.acts, 1 - data.labels, data.pair)  # swap which member is positive
    assert (pca_direction(flipped)[:, 3] < -0.99).all()


def test_pca_centered_is_the_top_variance_axis_of_the_differences():
    rng = np.random.default_rng(1)
    n, d = 40, 6
    spread = rng.normal(size=n)  # the differences vary along axis 1 (and shift along axis 0)
    diffs = np.zeros((1, n, d))
    diffs[0, :, 0] = 0.5
    diffs[0, :, 1] = 3 * spread
    neg = rng.normal(size=(1, n, d))
    acts = np.stack([neg + diffs, neg], axis=2).reshape(1, 2 * n, d)
    data = _data(acts, np.tile([1, 0], n), np.repeat(np.arange(n), 2))
    assert abs(pca_direction(data, center=True)[0, 1]) > 0.99
    raw = pca_direction(data, center=False)[0]
    assert abs(raw[1]) > 0.9 and raw.shape == (d,)


def test_pca_needs_pairs():
    with pytest.raises(ValueError, match="contrastive pairs"):
        pca_direction(_data(np.zeros((1, 4, 2)), [1, 1, 0, 0]))


def test_probe_direction_points_to_the_positives():
    rng = np.random.default_rng(2)
    n, d = 80, 6
    labels = np.arange(n) % 2
    acts = rng.normal(size=(1, n, d))
    acts[0, :, 2] += np.where(labels == 1, 2.0, -2.0)
    acts[0, :, 4] *= 10  # a loud irrelevant axis: the raw-space weight must not follow it
    v = probe_direction(_data(acts, labels), steps=200)
    assert v[0, 2] > 0.9, v
    np.testing.assert_allclose(np.linalg.norm(v[0]), 1, rtol=1e-6)


def test_probe_result_weights_reproduce_its_predictions():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 50, 5)) * np.array([1, 5, 0.2, 1, 3]) + 4
    y = (x[0, :, 1] + x[0, :, 2] > 4).astype(np.int32)
    res = jaxsteer.analysis.train_probes(x, y, steps=100)
    logits = np.einsum("lnd,ldo->lno", x, res.weights) + res.bias[:, None]
    acc = (logits.argmax(-1) == y).mean(-1)
    # the same probes scored on all rows: between the train and held-out accuracies it reports
    lo = np.minimum(res.scores, res.train_scores) - 1e-6
    hi = np.maximum(res.scores, res.train_scores) + 1e-6
    assert ((acc >= lo) & (acc <= hi)).all(), (acc, res.scores, res.train_scores)


def _sae_with_rows(rows):
    d_sae, d = rows.shape
    sae = init_sae(SAEConfig(kind="relu", d_in=d, d_sae=d_sae), jax.random.PRNGKey(0))
    rows = jnp.asarray(rows, jnp.float32)
    return sae.replace(params={**sae.params, "W_dec": rows, "W_enc": rows.T})


def test_sae_direction_by_index_and_by_activation_difference():
    d = 4
    rows = np.eye(d)[[0, 1, 2, 3, 0]] * np.array([[1], [1], [2], [1], [-1]])
    sae = _sae_with_rows(rows)
    acts = np.zeros((2, 4, d))
    acts[1, :2, 2] = 3.0  # positives fire latent 2 (its row is 2 * e2) at layer 1
    acts[1, 2:, 1] = 3.0  # negatives fire latent 1
    data = _data(acts, [1, 1, 0, 0])
    idx, gap = sae_features(data, sae, layer=1, top=1)
    assert idx.tolist() == [2] and gap[0] > 0
    v = sae_direction(data, sae=sae, layer=1)
    np.testing.assert_allclose(v[1], [0, 0, 1, 0], atol=1e-6)
    assert not v[0].any()
    v = sae_direction(data, sae=sae, layer=0, features=[0, 1])
    np.testing.assert_allclose(v[0], np.array([1, 1, 0, 0]) / np.sqrt(2), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        sae_direction(data, sae=sae, layer=0, features=[5])
    with pytest.raises(ValueError, match="width"):
        sae_direction(_data(np.zeros((1, 2, 3)), [1, 0]), sae=sae, layer=0, features=[0])


def test_contrast_data_reads_the_tokens_it_says(tiny_model):
    tok = CharTokenizer()
    pairs = [("ab", "xyz", "q"), ("hello", "ok", "nope")]
    tokens = [[tok(p)["input_ids"] + tok(c)["input_ids"] for c in (pos, neg)] for p, pos, neg in pairs]
    for read in ("last", "mean", 2):
        data = contrast_data(tiny_model, tok, pairs=pairs, read=read, chat=False, batch_size=3)
        assert data.acts.shape == (3, 4, 32) and data.labels.tolist() == [1, 0, 1, 0]
        for i, (_, *comps) in enumerate(pairs):
            for j, comp in enumerate(comps):
                ids = tokens[i][j]
                _, trace = jaxsteer.forward(tiny_model, jnp.asarray([ids]), record="resid_post")
                acts = np.asarray(trace.resid_post[:, 0])  # [L, T, d]
                n_comp = len(comp)
                want = {"last": acts[:, -1], "mean": acts[:, -n_comp:].mean(1), 2: acts[:, -2:].mean(1)}[read]
                np.testing.assert_allclose(data.acts[:, 2 * i + j], want, atol=1e-5)


def test_methods_end_to_end_on_the_tiny_model(tiny_model):
    tok = CharTokenizer()
    pairs = [("say ", "yes", "no"), ("ok ", "good", "bad"), ("hm ", "great", "awful"), ("so ", "nice", "mean")]
    data = contrast_data(tiny_model, tok, pairs=pairs, read="mean", chat=False)
    md = extract("mean_difference", data)
    for name in ("pca", "probe"):
        v = extract(name, data)
        assert v.shape == md.shape and np.isfinite(v).all()
    sup = extract("supervised", data, model=tiny_model, layers=(1,), steps=30, learning_rate=0.1)
    assert not sup[0].any() and not sup[2].any() and np.linalg.norm(sup[1]) > 0
    # the trained vector raises the positives' completion log-probability over no vector
    from jaxsteer.train.scoring import sequence_logprobs

    ids = [tok(p)["input_ids"] for p, _, _ in pairs]
    comps = [tok(c)["input_ids"] for _, c, _ in pairs]
    P, C = max(map(len, ids)), max(map(len, comps))
    toks = np.zeros((len(pairs), P + C), np.int32)
    mask = np.zeros_like(toks)
    for r, (p, c) in enumerate(zip(ids, comps, strict=True)):
        toks[r, P - len(p) : P + len(c)] = p + c
        mask[r, P - len(p) : P + len(c)] = 1
    before = float(sequence_logprobs(tiny_model, toks, mask, completion_start=P)[0].sum())
    after = float(
        sequence_logprobs(tiny_model, toks, mask, jaxsteer.Steer(jnp.asarray(sup)), completion_start=P)[0].sum()
    )
    assert after > before + 1.0, (before, after)
    scaled = match_norms(extract("pca", data), md)
    np.testing.assert_allclose(np.linalg.norm(scaled, axis=-1), np.linalg.norm(md, axis=-1), rtol=1e-5)


def test_contrast_vector_is_the_mean_difference_of_last_tokens(tiny_model):
    tok = CharTokenizer()
    pos, neg = ["happy day", "joy"], ["sad", "gloomy day"]
    v = contrast_vector(tiny_model, tok, pos, neg, chat=False)
    last = []
    for text in pos + neg:
        _, trace = jaxsteer.forward(tiny_model, jnp.asarray([tok(text)["input_ids"]]), record="resid_post")
        last.append(np.asarray(trace.resid_post[:, 0, -1]))
    want = (last[0] + last[1]) / 2 - (last[2] + last[3]) / 2
    np.testing.assert_allclose(v, want, atol=1e-5)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown extraction method 'nope'"):
        extract("nope", _data(np.zeros((1, 2, 2)), [1, 0]))
    with pytest.raises(ValueError, match="exists already"):
        register_method("pca", pca_direction)
    with pytest.raises(ValueError, match="read must be"):
        from jaxsteer.steering import read_weights

        read_weights([2], [0], 4, "first")
    with pytest.raises(ValueError, match="pair 0 has 4 parts"):
        contrast_data(None, CharTokenizer(), pairs=[("a", "b", "c", "d")])
    with pytest.raises(ValueError, match="one label per prompt"):
        contrast_data(None, CharTokenizer(), prompts=["a", "b"], labels=[1])
    with pytest.raises(ValueError, match="supervised method needs positive completions"):
        extract("supervised", _data(np.zeros((1, 2, 2)), [1, 0]), model=None)
