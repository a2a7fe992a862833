"""Activation, path and attribution patching (jaxsteer.analysis.patching) on tiny random models:
known answers, vmapped sweeps against loops of single patches, and clear errors for bad inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Patch, Steer
from jaxsteer.analysis import (
    Node,
    activation_patching,
    all_receivers,
    attribution_patching,
    compare_attribution,
    path_patching,
)
from jaxsteer.models.decoder import unembed
from tests.analysis.conftest import ANSWERS, T, V, logit_diff, make_model

# --------------------------------------------------------------------------- activation patching


def test_patching_known_answers(model, pair, tmp_path):
    clean, corrupt = pair
    L = model.config.n_layers
    # Patching a whole layer's resid_pre with its clean value is the clean run from there on: 1.0.
    whole = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, over=("layer",))
    np.testing.assert_allclose(whole.values, np.ones(L), atol=1e-5)
    assert whole.clean_metric == pytest.approx(logit_diff(model, clean), abs=1e-5)
    assert whole.corrupt_metric == pytest.approx(logit_diff(model, corrupt), abs=1e-5)
    assert abs(whole.clean_metric - whole.corrupt_metric) > 0.5  # the corruption matters
    # Noising: the corrupted value at every position of the last layer's resid_post gives 0.0.
    noised = activation_patching(
        model, clean, corrupt, site="resid_post", answers=ANSWERS, over=("layer",), direction="noise"
    )
    assert noised.values[-1] == pytest.approx(0.0, abs=1e-5)
    # Per position: at layer 0 only the corrupted tokens matter; nothing before the first one does.
    grid = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS)
    assert grid.values.shape == (L, T) and grid.axes == ("layer", "position")
    np.testing.assert_allclose(grid.values[0, [0, 1, 3, 5, 6]], 0.0, atol=1e-5)
    np.testing.assert_allclose(grid.values[:, :2], 0.0, atol=1e-5)  # before the first corrupted token
    assert np.abs(grid.values[0, [2, 4]]).max() > 0.05
    grid.plot(str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    js = grid.save_json(str(tmp_path / "sweep.json"))
    assert '"site": "resid_pre"' in open(js).read()


def _loop_reference(model, clean, corrupt, site, entries, attention_mask=None, heads_axis=False):
    """A Python loop of single patched forward passes, one per (layer, positions, head) entry (the
    selection is a data mask, so the loop compiles once per site)."""
    _, tr = jaxsteer.forward(model, clean, attention_mask=attention_mask, record=(site,))
    c = model.config
    n_heads = c.n_kv_heads if site in ("k", "v") else c.n_heads
    out = []
    for layer, pos, head in entries:
        mask = np.zeros((c.n_layers, clean.shape[1]) + ((n_heads,) if heads_axis else ()), np.float32)
        sel = (layer, slice(None) if pos is None else list(pos)) + ((head,) if heads_axis else ())
        mask[sel] = 1
        logits, _ = jaxsteer.forward(
            model, corrupt, attention_mask=attention_mask, interventions=[Patch(tr[site], site=site, mask=mask)]
        )
        out.append(np.mean(np.asarray(logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]])))
    return np.asarray(out)


def test_vmapped_sweep_equals_loop_of_single_patches(model, pair, tmp_path):
    clean, corrupt = pair
    L, H, KV = model.config.n_layers, model.config.n_heads, model.config.n_kv_heads
    # residual site, layers x positions
    res = activation_patching(model, clean, corrupt, site="resid_mid", answers=ANSWERS, batch_size=4)
    ref = _loop_reference(model, clean, corrupt, "resid_mid", [(l, [t], 0) for l in range(L) for t in range(T)])
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)
    # per-head site, layers x heads (every position)
    res = activation_patching(model, clean, corrupt, site="z", answers=ANSWERS)
    assert res.axes == ("layer", "head") and res.raw.shape == (L, H)
    ref = _loop_reference(
        model, clean, corrupt, "z", [(l, None, h) for l in range(L) for h in range(H)], heads_axis=True
    )
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)
    # attention pattern, layers x positions x heads (query position)
    res = activation_patching(
        model,
        clean,
        corrupt,
        site="pattern",
        answers=ANSWERS,
        over=("layer", "position", "head"),
        positions=[2, 4, 6],
        batch_size=5,
    )
    ref = _loop_reference(
        model,
        clean,
        corrupt,
        "pattern",
        [(l, [t], h) for l in range(L) for t in (2, 4, 6) for h in range(H)],
        heads_axis=True,
    )
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)
    res.plot(str(tmp_path / "heads.png"))  # one panel per head
    assert (tmp_path / "heads.png").stat().st_size > 1000
    # KV heads of v, and position groups patched jointly
    res = activation_patching(
        model,
        clean,
        corrupt,
        site="v",
        answers=ANSWERS,
        over=("layer", "position", "head"),
        positions={"corrupted": [2, 4], "last": [-1]},
    )
    assert res.positions == ["corrupted", "last"] and res.raw.shape == (L, 2, KV)
    ref = _loop_reference(
        model,
        clean,
        corrupt,
        "v",
        [(l, p, h) for l in range(L) for p in ([2, 4], [T - 1]) for h in range(KV)],
        heads_axis=True,
    )
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)


def test_sweep_with_left_padding_and_a_batch(model):
    rng = np.random.RandomState(3)
    clean = rng.randint(0, V, (2, T))
    corrupt = clean.copy()
    corrupt[:, 5] = (corrupt[:, 5] + 1) % V
    mask = np.ones((2, T), np.int32)
    mask[1, :3] = 0  # row 1 is left-padded
    fast = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, attention_mask=mask)
    full = activation_patching(
        model, clean, corrupt, site="resid_pre", answers=ANSWERS, attention_mask=mask, fast=False
    )
    np.testing.assert_allclose(fast.raw, full.raw, atol=2e-5)
    ref = _loop_reference(model, clean, corrupt, "resid_pre", [(1, [t], 0) for t in range(T)], attention_mask=mask)
    np.testing.assert_allclose(fast.raw[1], ref, atol=2e-5)
    # a metric over every position: the fast path stitches unchanged early positions from the base run
    metric = lambda logits: jnp.mean(jax.nn.log_softmax(logits)[..., 3])
    fast = activation_patching(
        model,
        clean,
        corrupt,
        site="attn_out",
        metric=metric,
        metric_positions=None,
        attention_mask=mask,
        position_buckets=3,
    )
    full = activation_patching(
        model, clean, corrupt, site="attn_out", metric=metric, metric_positions=None, attention_mask=mask, fast=False
    )
    np.testing.assert_allclose(fast.raw, full.raw, atol=2e-6)
    assert np.ptp(fast.raw) > 1e-3


def test_patching_a_steering_vector_and_plots(model, tmp_path):
    """Clean = the steered run, corrupted = the unsteered run of the same tokens. The vector is added
    at layer 0's resid_post, so patching that whole layer restores the steered metric exactly."""
    toks = np.random.RandomState(5).randint(0, V, (1, T))
    vec = 3.0 * np.random.RandomState(6).normal(size=(model.config.d_model,)).astype(np.float32)
    steer = Steer(jnp.asarray(vec), layers=(0,))
    whole = activation_patching(
        model, toks, toks, site="resid_post", answers=ANSWERS, clean_interventions=[steer], over=("layer",)
    )
    assert whole.values[0] == pytest.approx(1.0, abs=1e-5)
    whole.plot(str(tmp_path / "layers.png"))
    assert (tmp_path / "layers.png").stat().st_size > 1000
    # noising direction: the steered run is the base (a Steer in the base run: the fast path keeps it)
    res_n = activation_patching(
        model,
        toks,
        toks,
        site="resid_post",
        answers=ANSWERS,
        clean_interventions=[steer],
        direction="noise",
        over=("layer",),
    )
    res_f = activation_patching(
        model,
        toks,
        toks,
        site="resid_post",
        answers=ANSWERS,
        clean_interventions=[steer],
        direction="noise",
        over=("layer",),
        fast=False,
    )
    np.testing.assert_allclose(res_n.raw, res_f.raw, atol=2e-5)
    assert res_n.values[0] == pytest.approx(0.0, abs=1e-5)


def test_bad_patching_inputs_raise_clear_errors(model, pair):
    clean, corrupt = pair
    with pytest.raises(ValueError, match="same shape"):
        activation_patching(model, clean, corrupt[:, :-1], answers=ANSWERS)
    with pytest.raises(ValueError, match="no heads"):
        activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, over=("layer", "head"))
    with pytest.raises(ValueError, match="over must start"):
        activation_patching(model, clean, corrupt, answers=ANSWERS, over=("position",))
    with pytest.raises(ValueError, match="metric or answers"):
        activation_patching(model, clean, corrupt)
    with pytest.raises(ValueError, match="out of range"):
        activation_patching(model, clean, corrupt, answers=ANSWERS, layers=[9])


# --------------------------------------------------------------------------- path patching


SENDERS = [Node("z", 1, heads=(2,)), Node("resid_pre", 1, positions=(3,)), Node("mlp_in", 0)]


@pytest.mark.parametrize("sender", SENDERS, ids=str)
def test_path_patching_all_receivers_is_activation_patching_and_none_is_nothing(model, pair, sender):
    clean, corrupt = pair
    c = model.config
    _, src = jaxsteer.forward(model, clean, record=(sender.site,))
    patched, _ = jaxsteer.forward(
        model, corrupt, interventions=[Patch(src[sender.site], site=sender.site, mask=sender.mask(c, T))]
    )
    base, _ = jaxsteer.forward(model, corrupt)
    assert np.abs(np.asarray(patched - base)).max() > 1e-2  # the sender matters
    got = path_patching(model, corrupt, clean, sender=sender, receivers=all_receivers(c, sender))
    np.testing.assert_allclose(got, patched, atol=2e-5)
    none = path_patching(model, corrupt, clean, sender=sender, receivers=[])
    np.testing.assert_allclose(none, base, atol=0)


def test_path_patching_routes_last_layer_attention_to_mlp_or_residual(model, pair):
    """METHODS section 1: the final layer's attention output from another run, routed to the MLP
    input only, to the residual only (direct path to the logits), or both."""
    clean, corrupt = pair
    c = model.config
    last = c.n_layers - 1
    sender = Node("attn_out", last)
    _, tc = jaxsteer.forward(model, clean, record=("attn_out", "resid_mid"))
    _, tx = jaxsteer.forward(model, corrupt, record=("attn_out", "resid_mid", "mlp_out", "resid_post"))
    delta = tc.attn_out[last] - tx.attn_out[last]
    # residual only: the final residual gets the new attention output, the MLP sees the old one
    want = unembed(model, tx.resid_post[last] + delta)
    got = path_patching(model, corrupt, clean, sender=sender, receivers=[Node("resid_post", last)])
    np.testing.assert_allclose(got, want, atol=2e-5)
    # MLP only: the MLP reads the new residual, the residual keeps the old attention output
    _, mlp_run = jaxsteer.forward(
        model,
        corrupt,
        interventions=[Patch(tx.resid_mid[last] + delta, site="resid_mid", layers=(last,))],
        record=("mlp_out",),
    )
    want = unembed(model, tx.resid_post[last] - tx.mlp_out[last] + mlp_run.mlp_out[last])
    got = path_patching(model, corrupt, clean, sender=sender, receivers=[Node("mlp_in", last)])
    np.testing.assert_allclose(got, want, atol=2e-5)
    # both = activation patching of the attention output
    both = path_patching(
        model, corrupt, clean, sender=sender, receivers=[Node("mlp_in", last), Node("resid_post", last)]
    )
    ref, _ = jaxsteer.forward(model, corrupt, interventions=[Patch(tc.attn_out, site="attn_out", layers=(last,))])
    np.testing.assert_allclose(both, ref, atol=2e-5)
    # receivers must be downstream reader or residual sites
    with pytest.raises(ValueError, match="not downstream"):
        path_patching(model, corrupt, clean, sender=sender, receivers=[Node("q", 0)])
    with pytest.raises(ValueError, match="cannot be a receiver"):
        path_patching(model, corrupt, clean, sender=Node("z", 0), receivers=[Node("mlp_out", 1)])


def test_path_patching_through_one_head_only(model, pair):
    """Sender at layer 0; receiver = one query head of layer 1. Run 2 differs from the base only
    through that head: ablating the head's output afterwards removes the whole effect."""
    clean, corrupt = pair
    sender, recv = Node("attn_out", 0), Node("q", 1, heads=(3,))
    got = path_patching(model, corrupt, clean, sender=sender, receivers=[recv])
    base, _ = jaxsteer.forward(model, corrupt)
    assert np.abs(np.asarray(got - base)).max() > 1e-3
    # the same run with head 3's z at layer 1 frozen to the base run is the base run
    _, bz = jaxsteer.forward(model, corrupt, record=("z",))
    _, src = jaxsteer.forward(model, clean, record=("attn_out",))
    _, run1 = jaxsteer.forward(
        model, corrupt, record=("q",), interventions=[Patch(src.attn_out, site="attn_out", layers=(0,))]
    )
    frozen, _ = jaxsteer.forward(
        model,
        corrupt,
        interventions=[
            Patch(run1.q, site="q", layers=(1,), heads=(3,)),
            Patch(bz.z, site="z", layers=(1,), heads=(3,)),
        ],
    )
    np.testing.assert_allclose(frozen, base, atol=2e-5)


# --------------------------------------------------------------------------- attribution patching


def _linear_model():
    """A model whose logits are affine in every activation: zero q/k (uniform causal attention,
    a linear average of v), zero down_proj (no MLP), and RMSNorms with eps = 1e10 and weights
    1e5, so each norm multiplies by exactly 1e5 / sqrt(1e10 + ms) = 1 in float32 (ms << 512)."""
    m = make_model(n_layers=2, norm_eps=1e10)
    p = dict(m.params)
    lay = dict(p["layers"])
    for n in ("attn_norm", "mlp_norm"):
        lay[n] = jnp.full_like(lay[n], 1e5)
    p["final_norm"] = jnp.full_like(p["final_norm"], 1e5)
    for n in ("q_proj", "k_proj", "down_proj"):
        lay[n] = jnp.zeros_like(lay[n])
    p["layers"] = lay
    return m.replace(params=p)


def test_attribution_patching_is_exact_on_a_linear_model(pair):
    clean, corrupt = pair
    lin = _linear_model()
    sites = ("resid_pre", "v")
    attr = attribution_patching(
        lin, clean, corrupt, sites=sites, answers=ANSWERS, over={"v": ("layer", "position", "head")}
    )
    for s in sites:
        act = activation_patching(lin, clean, corrupt, site=s, answers=ANSWERS, over=attr[s].axes, fast=False)
        assert attr[s].values.shape == act.values.shape
        assert np.abs(act.values).max() > 0.05, s  # a non-trivial sweep
        np.testing.assert_allclose(attr[s].values, act.values, atol=1e-4, err_msg=s)
        assert compare_attribution(attr[s], act)["pearson"] > 0.9999


def test_attribution_patching_noise_direction_and_groups(model, pair):
    clean, corrupt = pair
    attr = attribution_patching(
        model,
        clean,
        corrupt,
        sites=("resid_pre", "pattern", "z"),
        answers=ANSWERS,
        direction="noise",
        positions={"corrupted": [2, 4], "rest": [0, 1, 3, 5, 6]},
        over={"pattern": ("layer", "position", "head")},
    )
    act = activation_patching(
        model,
        clean,
        corrupt,
        site="resid_pre",
        answers=ANSWERS,
        direction="noise",
        positions={"corrupted": [2, 4], "rest": [0, 1, 3, 5, 6]},
    )
    assert attr["resid_pre"].values.shape == act.values.shape == (3, 2)
    # at layer 0 positions that are identical in both runs contribute exactly nothing
    assert attr["resid_pre"].values[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert attr["pattern"].values.shape == (3, 2, 4)
    assert attr["z"].values.shape == (3, 4)
    r = compare_attribution(attr["resid_pre"], act)
    assert r["n"] == 6 and np.isfinite(r["max_abs_diff"])
