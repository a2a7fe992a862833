"""Probes (jaxsteer.analysis.probes): probes recover a planted signal and not shuffled labels,
harvesting and the decodability report on a tiny random model; probes as reusable directions
(issue 21): unit directions per layer that point along a planted signal, true layer labels after
harvesting or selecting some layers, the split recorded, and a direction used as a Steer vector
moves the probe's logit the way it says."""

from __future__ import annotations

import numpy as np
import pytest

import jaxsteer
from jaxsteer.analysis import (
    activation_patching,
    decodability_vs_causality,
    harvest,
    train_probes,
)
from jaxsteer.analysis.probes import Activations, probe_layers
from tests.analysis.conftest import ANSWERS, T, V


def _planted(n=200, d=16, seed=0):
    rng = np.random.RandomState(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    labels = rng.randint(0, 2, size=n)
    noise = rng.normal(size=(3, n, d))
    acts = noise.copy()
    acts[2] += 3.0 * (2 * labels[:, None] - 1) * u  # only layer 2 carries the label, along u
    return acts.astype(np.float32), labels, u


def test_directions_point_along_the_planted_signal():
    acts, labels, u = _planted()
    res = train_probes(acts, labels, steps=200, test_fraction=0.3, seed=4)
    assert res.directions.shape == (3, 16) and res.test_fraction == 0.3 and res.seed == 4
    np.testing.assert_allclose(np.linalg.norm(res.directions, axis=-1), 1.0, atol=1e-6)
    assert res.directions[2] @ u > 0.8  # class 1 lies along +u (a random unit vector: |cos| ~ 0.25)
    assert abs(res.directions[0] @ u) < 0.6
    # the raw-space weights reproduce the probe's predictions
    pred = (acts[2] @ res.weights[2] + res.bias[2]).argmax(-1)
    assert (pred == labels).mean() > 0.95
    # a different seed draws a different held-out split
    assert not np.array_equal(
        train_probes(acts, labels, steps=5, seed=5).scores, train_probes(acts, labels, steps=5, seed=4).scores
    )
    with pytest.raises(ValueError, match="test_fraction must be in"):
        train_probes(acts, labels, test_fraction=1.0)


def test_regression_and_multiclass_directions():
    acts, labels, u = _planted()
    y = acts[2] @ u + 0.01 * np.random.RandomState(1).normal(size=len(labels))
    reg = train_probes(acts[2:], y.astype(np.float32), steps=200)
    assert reg.directions.shape == (1, 16) and reg.directions[0] @ u > 0.9
    three = np.random.RandomState(2).randint(0, 3, size=len(labels))
    multi = train_probes(acts, three, steps=20)
    assert multi.directions.shape == (3, 3, 16)


def test_layer_labels_survive_harvesting_and_selecting_layers(tiny_model):
    rng = np.random.RandomState(0)
    tokens = rng.randint(2, 53, size=(40, 6)).astype(np.int32)
    labels = (tokens[:, -1] > 27).astype(np.int32)
    acts = harvest(tiny_model, tokens, layers=(2,))
    assert acts.layers == [2] and acts.values.shape == (1, 1, 40, 32)
    full = harvest(tiny_model, tokens)
    np.testing.assert_array_equal(full.select(layers=[2]).values, acts.values)
    res = train_probes(acts, labels, steps=100)
    assert res.layers == [2] and res.groups == ["last"]
    assert "layer" in res.table() and res.table().splitlines()[2].startswith("    2")
    one = train_probes(full, labels, steps=100).at(2)
    assert one.layers == [2] and np.ndim(one.scores) == 0 and one.directions.shape == (32,)
    np.testing.assert_allclose(one.scores, res.scores[0, 0])
    assert probe_layers(tiny_model, tokens, labels, layers=(1, 2), steps=5).layers == [1, 2]
    with pytest.raises(ValueError, match=r"layer 7 was not harvested \(have \[0, 1, 2\]\)"):
        full.select(layers=[7])
    # the direction steers: adding it at layer 2's resid_post raises the probe's class-1 logit
    v = one.directions
    _, base = jaxsteer.forward(tiny_model, tokens[:4], record="resid_post")
    _, steered = jaxsteer.forward(
        tiny_model, tokens[:4], record="resid_post", interventions=jaxsteer.Steer(v * 2.0, layers=(2,))
    )
    logit = lambda x: (np.asarray(x["resid_post", 2][:, -1]) @ one.weights + one.bias) @ np.array([-1.0, 1.0])  # noqa: E731
    assert (logit(steered) > logit(base)).all()
    assert repr(res).startswith("ProbeResult(accuracy f32[1, 1]") or repr(res).startswith(
        "ProbeResult(accuracy f64[1, 1]"
    )
    assert "<table>" in res._repr_html_() and isinstance(acts, Activations) and "f32[1, 1, 40, 32]" in repr(acts)


# --------------------------------------------------------------------------- probes


def test_probes_recover_a_planted_signal_and_not_shuffled_labels():
    rng = np.random.RandomState(0)
    L, N, d = 4, 400, 24
    acts = rng.normal(size=(L, N, d)).astype(np.float32)
    w = rng.normal(size=d)
    labels = (acts[2] @ w > 0).astype(np.int32)  # decodable at layer 2 only
    acts[3] = acts[3] + 3.0 * labels[:, None] * w / np.linalg.norm(w)  # and (shifted mean) at layer 3
    res = train_probes(acts, labels)
    assert res.metric == "accuracy" and res.scores.shape == (L,)
    assert res.scores[2] > 0.9 and res.scores[3] > 0.9
    assert res.scores[0] < 0.7 and res.scores[1] < 0.7
    shuffled = train_probes(acts, rng.permutation(labels))
    assert np.all(shuffled.scores < 0.7)
    assert abs(shuffled.chance - 0.5) < 0.1
    # regression: R^2 near 1 where the target is linear in the activation, near 0 elsewhere
    y = acts[1] @ w + 0.1 * rng.normal(size=N)
    reg = train_probes(acts, y.astype(np.float32))
    assert reg.metric == "r2" and reg.scores[1] > 0.95 and reg.scores[0] < 0.2
    # multi-class, with a [G, L] lead shape
    three = np.digitize(acts[0] @ w, [-2.0, 2.0]).astype(np.int32)
    multi = train_probes(np.stack([acts, acts[::-1]]), three, groups=["a", "b"])
    assert multi.scores.shape == (2, L) and multi.scores[0, 0] > 0.85 and multi.scores[1, -1] > 0.85


def test_harvest_groups_and_decodability_report(model, tmp_path):
    rng = np.random.RandomState(1)
    N = 20
    tokens = rng.randint(0, V, (N, T))
    mask = np.ones((N, T), np.int32)
    mask[::2, :2] = 0  # left padding on every other row
    op = rng.randint(2, T, N)
    acts = harvest(model, tokens, attention_mask=mask, groups={"last": -1, "op": op, "mean": mask}, batch_size=8)
    assert acts.values.shape == (3, model.config.n_layers, N, model.config.d_model)
    _, tr = jaxsteer.forward(model, tokens, attention_mask=mask, record=("resid_post",))
    rp = np.asarray(tr.resid_post)
    np.testing.assert_allclose(acts.values[0], rp[:, :, -1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(acts.values[1], rp[:, np.arange(N), op], rtol=1e-4, atol=1e-4)
    want_mean = (rp * mask[None, :, :, None]).sum(2) / mask.sum(1)[None, :, None]
    np.testing.assert_allclose(acts.values[2], want_mean, rtol=1e-4, atol=1e-4)

    labels = (tokens[:, -1] % 2).astype(np.int32)
    probes = train_probes(acts.values[:2], labels, groups=["last", "op"], steps=50)
    assert probes.scores.shape == (2, model.config.n_layers)
    clean = tokens[:1]
    corrupt = clean.copy()
    corrupt[0, -1] = (corrupt[0, -1] + 1) % V
    patch = activation_patching(
        model, clean, corrupt, site="resid_post", answers=ANSWERS, positions={"last": [-1], "op": [3]}
    )
    rep = decodability_vs_causality(probes, patch)
    assert rep.probe.shape == rep.patching.shape == (2, model.config.n_layers)
    np.testing.assert_allclose(rep.patching[0], patch.values[:, 0])
    assert "decodability" in rep.table()
    rep.plot(str(tmp_path / "dc.png"))
    assert (tmp_path / "dc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no position column"):
        decodability_vs_causality(probes, patch, group_positions={"op": ["nope"]})
