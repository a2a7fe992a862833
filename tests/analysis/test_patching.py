"""Interpretability toolkit on tiny random models: known answers for activation / path /
attribution patching, the logit lens, probes, attention comparison and steering studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jax
import jax.numpy as jnp

import jaxsteer
from jaxsteer import Ablate, ModelConfig, Patch, Steer
from jaxsteer.analysis import (
    AdaptiveSteer,
    Node,
    accumulated_lens,
    activation_patching,
    all_receivers,
    attention_change,
    attribution_patching,
    combination_gains,
    combined_steer,
    compare_attribution,
    compare_patterns,
    decodability_vs_causality,
    first_token_effect,
    harvest,
    logit_lens,
    path_patching,
    persistence,
    token_rank,
    train_probes,
    transfer_steer,
    vector_lens,
)
from jaxsteer.models.config import RopeConfig
from jaxsteer.models.params import param_shapes, unflatten
from jaxsteer.models.decoder import unembed

V = 64
T = 7
ANSWERS = (3, 7)


def make_model(n_layers=3, seed=0, scale=0.3, **kw) -> jaxsteer.Model:
    """Tiny GQA Llama (4 query heads, 2 KV heads, d=32) with weights large enough to be nonlinear
    (drawn like `jaxsteer.init_params`, but with numpy: no per-shape compilations)."""
    cfg = ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=V, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
        head_dim=8, d_mlp=48, rope_full=RopeConfig(10000.0), **{"norm_eps": 1e-6, **kw},
    )
    rng = np.random.RandomState(seed)
    flat = {
        path: ((1.0 if path.endswith("norm") else 0.0) + rng.normal(0, 0.1 if path.endswith("norm") else scale, shape))
        .astype(np.float32)
        for path, shape in sorted(param_shapes(cfg).items())
    }
    return jaxsteer.Model(params=jax.tree_util.tree_map(jnp.asarray, unflatten(flat)), config=cfg)


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def pair():
    rng = np.random.RandomState(0)
    clean = rng.randint(0, V, (1, T))
    corrupt = clean.copy()
    corrupt[0, 2] = (clean[0, 2] + 5) % V
    corrupt[0, 4] = (clean[0, 4] + 9) % V
    return clean, corrupt


def _metric(model, toks, ivs=()):
    logits, _ = jaxsteer.forward(model, toks, interventions=ivs)
    return float(logits[0, -1, ANSWERS[0]] - logits[0, -1, ANSWERS[1]])


# --------------------------------------------------------------------------- activation patching


def test_patching_known_answers(model, pair, tmp_path):
    clean, corrupt = pair
    L = model.config.n_layers
    # Patching a whole layer's resid_pre with its clean value is the clean run from there on: 1.0.
    whole = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, over=("layer",))
    np.testing.assert_allclose(whole.values, np.ones(L), atol=1e-5)
    assert whole.clean_metric == pytest.approx(_metric(model, clean), abs=1e-5)
    assert whole.corrupt_metric == pytest.approx(_metric(model, corrupt), abs=1e-5)
    assert abs(whole.clean_metric - whole.corrupt_metric) > 0.5  # the corruption matters
    # Noising: the corrupted value at every position of the last layer's resid_post gives 0.0.
    noised = activation_patching(model, clean, corrupt, site="resid_post", answers=ANSWERS, over=("layer",),
                                 direction="noise")
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
        logits, _ = jaxsteer.forward(model, corrupt, attention_mask=attention_mask,
                                     interventions=[Patch(tr[site], site=site, mask=mask)])
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
    ref = _loop_reference(model, clean, corrupt, "z", [(l, None, h) for l in range(L) for h in range(H)], heads_axis=True)
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)
    # attention pattern, layers x positions x heads (query position)
    res = activation_patching(model, clean, corrupt, site="pattern", answers=ANSWERS,
                              over=("layer", "position", "head"), positions=[2, 4, 6], batch_size=5)
    ref = _loop_reference(model, clean, corrupt, "pattern",
                          [(l, [t], h) for l in range(L) for t in (2, 4, 6) for h in range(H)], heads_axis=True)
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)
    res.plot(str(tmp_path / "heads.png"))  # one panel per head
    assert (tmp_path / "heads.png").stat().st_size > 1000
    # KV heads of v, and position groups patched jointly
    res = activation_patching(model, clean, corrupt, site="v", answers=ANSWERS,
                              over=("layer", "position", "head"), positions={"corrupted": [2, 4], "last": [-1]})
    assert res.positions == ["corrupted", "last"] and res.raw.shape == (L, 2, KV)
    ref = _loop_reference(model, clean, corrupt, "v",
                          [(l, p, h) for l in range(L) for p in ([2, 4], [T - 1]) for h in range(KV)], heads_axis=True)
    np.testing.assert_allclose(res.raw.ravel(), ref, atol=2e-5)


def test_sweep_with_left_padding_and_a_batch(model):
    rng = np.random.RandomState(3)
    clean = rng.randint(0, V, (2, T))
    corrupt = clean.copy()
    corrupt[:, 5] = (corrupt[:, 5] + 1) % V
    mask = np.ones((2, T), np.int32)
    mask[1, :3] = 0  # row 1 is left-padded
    fast = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, attention_mask=mask)
    full = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, attention_mask=mask, fast=False)
    np.testing.assert_allclose(fast.raw, full.raw, atol=2e-5)
    ref = _loop_reference(model, clean, corrupt, "resid_pre", [(1, [t], 0) for t in range(T)], attention_mask=mask)
    np.testing.assert_allclose(fast.raw[1], ref, atol=2e-5)
    # a metric over every position: the fast path stitches unchanged early positions from the base run
    metric = lambda logits: jnp.mean(jax.nn.log_softmax(logits)[..., 3])
    fast = activation_patching(model, clean, corrupt, site="attn_out", metric=metric, metric_positions=None,
                               attention_mask=mask, position_buckets=3)
    full = activation_patching(model, clean, corrupt, site="attn_out", metric=metric, metric_positions=None,
                               attention_mask=mask, fast=False)
    np.testing.assert_allclose(fast.raw, full.raw, atol=2e-6)
    assert np.ptp(fast.raw) > 1e-3


def test_patching_a_steering_vector_and_plots(model, tmp_path):
    """Clean = the steered run, corrupted = the unsteered run of the same tokens. The vector is added
    at layer 0's resid_post, so patching that whole layer restores the steered metric exactly."""
    toks = np.random.RandomState(5).randint(0, V, (1, T))
    vec = 3.0 * np.random.RandomState(6).normal(size=(model.config.d_model,)).astype(np.float32)
    steer = Steer(jnp.asarray(vec), layers=(0,))
    whole = activation_patching(model, toks, toks, site="resid_post", answers=ANSWERS, clean_interventions=[steer],
                                over=("layer",))
    assert whole.values[0] == pytest.approx(1.0, abs=1e-5)
    whole.plot(str(tmp_path / "layers.png"))
    assert (tmp_path / "layers.png").stat().st_size > 1000
    # noising direction: the steered run is the base (a Steer in the base run: the fast path keeps it)
    res_n = activation_patching(model, toks, toks, site="resid_post", answers=ANSWERS, clean_interventions=[steer],
                                direction="noise", over=("layer",))
    res_f = activation_patching(model, toks, toks, site="resid_post", answers=ANSWERS, clean_interventions=[steer],
                                direction="noise", over=("layer",), fast=False)
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
    patched, _ = jaxsteer.forward(model, corrupt, interventions=[Patch(src[sender.site], site=sender.site,
                                                                       mask=sender.mask(c, T))])
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
    _, mlp_run = jaxsteer.forward(model, corrupt, interventions=[
        Patch(tx.resid_mid[last] + delta, site="resid_mid", layers=(last,))], record=("mlp_out",))
    want = unembed(model, tx.resid_post[last] - tx.mlp_out[last] + mlp_run.mlp_out[last])
    got = path_patching(model, corrupt, clean, sender=sender, receivers=[Node("mlp_in", last)])
    np.testing.assert_allclose(got, want, atol=2e-5)
    # both = activation patching of the attention output
    both = path_patching(model, corrupt, clean, sender=sender, receivers=[Node("mlp_in", last), Node("resid_post", last)])
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
    _, run1 = jaxsteer.forward(model, corrupt, record=("q",), interventions=[
        Patch(src.attn_out, site="attn_out", layers=(0,))])
    frozen, _ = jaxsteer.forward(model, corrupt, interventions=[
        Patch(run1.q, site="q", layers=(1,), heads=(3,)), Patch(bz.z, site="z", layers=(1,), heads=(3,))])
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
    attr = attribution_patching(lin, clean, corrupt, sites=sites, answers=ANSWERS,
                                over={"v": ("layer", "position", "head")})
    for s in sites:
        act = activation_patching(lin, clean, corrupt, site=s, answers=ANSWERS, over=attr[s].axes, fast=False)
        assert attr[s].values.shape == act.values.shape
        assert np.abs(act.values).max() > 0.05, s  # a non-trivial sweep
        np.testing.assert_allclose(attr[s].values, act.values, atol=1e-4, err_msg=s)
        assert compare_attribution(attr[s], act)["pearson"] > 0.9999


def test_attribution_patching_noise_direction_and_groups(model, pair):
    clean, corrupt = pair
    attr = attribution_patching(model, clean, corrupt, sites=("resid_pre", "pattern", "z"), answers=ANSWERS,
                                direction="noise", positions={"corrupted": [2, 4], "rest": [0, 1, 3, 5, 6]},
                                over={"pattern": ("layer", "position", "head")})
    act = activation_patching(model, clean, corrupt, site="resid_pre", answers=ANSWERS, direction="noise",
                              positions={"corrupted": [2, 4], "rest": [0, 1, 3, 5, 6]})
    assert attr["resid_pre"].values.shape == act.values.shape == (3, 2)
    # at layer 0 positions that are identical in both runs contribute exactly nothing
    assert attr["resid_pre"].values[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert attr["pattern"].values.shape == (3, 2, 4)
    assert attr["z"].values.shape == (3, 4)
    r = compare_attribution(attr["resid_pre"], act)
    assert r["n"] == 6 and np.isfinite(r["max_abs_diff"])


# --------------------------------------------------------------------------- logit lens


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
    np.testing.assert_allclose(res.top_logprobs[-1, 0], np.sort(np.asarray(jax.nn.log_softmax(logits[0])), -1)[:, ::-1][:, :4],
                               atol=1e-5)
    # row 0 is the lens of the embeddings; mid-layer residuals interleave with incl_mid
    mid = accumulated_lens(model, clean, k=2, incl_mid=True)
    assert mid.top_ids.shape[0] == 2 * L + 1 and mid.labels[:3] == ["0_pre", "0_mid", "1_pre"]
    path = res.plot(str(tmp_path / "acc.png"))
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
    patch = activation_patching(model, clean, corrupt, site="resid_post", answers=ANSWERS,
                                positions={"last": [-1], "op": [3]})
    rep = decodability_vs_causality(probes, patch)
    assert rep.probe.shape == rep.patching.shape == (2, model.config.n_layers)
    np.testing.assert_allclose(rep.patching[0], patch.values[:, 0])
    assert "decodability" in rep.table()
    rep.plot(str(tmp_path / "dc.png"))
    assert (tmp_path / "dc.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no position column"):
        decodability_vs_causality(probes, patch, group_positions={"op": ["nope"]})


# --------------------------------------------------------------------------- attention comparison


def test_attention_comparison(model, pair, tmp_path):
    clean, corrupt = pair
    L, H = model.config.n_layers, model.config.n_heads
    same = attention_change(model, clean)
    np.testing.assert_allclose(same.js, 0, atol=1e-6)
    np.testing.assert_allclose(same.max_abs, 0, atol=0)
    vec = 2.0 * np.random.RandomState(0).normal(size=model.config.d_model).astype(np.float32)
    cmp = attention_change(model, clean, interventions_b=[Steer(jnp.asarray(vec), layers=(0,))])
    assert cmp.js.shape == cmp.max_abs.shape == (L, H)
    np.testing.assert_allclose(cmp.js[0], 0, atol=1e-6)  # steering after layer 0's attention
    assert (cmp.js[1:] > 1e-4).all() and (cmp.js <= 1).all() and (cmp.max_abs <= 1).all()
    # against a direct numpy computation
    _, ta = jaxsteer.forward(model, clean, record=("pattern",))
    _, tb = jaxsteer.forward(model, clean, record=("pattern",), interventions=[Steer(jnp.asarray(vec), layers=(0,))])
    p, q = np.asarray(ta.pattern[2, 0, 1], np.float64), np.asarray(tb.pattern[2, 0, 1], np.float64)
    m = (p + q) / 2
    kl = lambda a, b: np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / np.where(b > 0, b, 1)), 0), -1)
    np.testing.assert_allclose(cmp.js[2, 1], np.mean(0.5 * kl(p, m) + 0.5 * kl(q, m)), atol=1e-5)
    np.testing.assert_allclose(cmp.max_abs[2, 1], np.abs(p - q).max(), atol=1e-6)
    # padding rows are ignored
    mask = np.ones((1, T), np.int32)
    mask[0, :2] = 0
    padded = compare_patterns(ta.pattern, tb.pattern, mask)
    assert np.isnan(padded.js_by_position[:, :, :2]).all() and np.isfinite(padded.js).all()
    cmp.plot(str(tmp_path / "attn.png"))
    assert (tmp_path / "attn.png").stat().st_size > 1000


def test_pattern_masks_with_heads_select_the_right_heads(model, pair):
    """A data mask [L, T, H] on `pattern` ([B, H, T, S]) selects the same entries as layers/heads/positions."""
    clean, _ = pair
    mask = np.zeros((model.config.n_layers, T, model.config.n_heads), np.float32)
    mask[1, 3:, 2] = 1
    pos = (np.arange(T) >= 3).astype(np.float32)
    _, a = jaxsteer.forward(model, clean, interventions=[Ablate(site="pattern", mask=mask)], record=("pattern",))
    _, b = jaxsteer.forward(model, clean, interventions=[Ablate(site="pattern", layers=(1,), heads=(2,), positions=pos)],
                            record=("pattern",))
    np.testing.assert_allclose(a.pattern, b.pattern, atol=0)


# --------------------------------------------------------------------------- steering studies


def test_adaptive_steer_equals_steer_with_the_gate_as_scale(model, pair):
    clean, _ = pair
    c = model.config
    rng = np.random.RandomState(2)
    vec = jnp.asarray(rng.normal(size=(c.n_layers, c.d_model)).astype(np.float32))
    # constant gate (w = 0): an ordinary Steer scaled by sigmoid(b)
    ad = AdaptiveSteer(vec, jnp.zeros(c.d_model), b=0.7, scale=2.0)
    want, _ = jaxsteer.forward(model, clean, interventions=[Steer(vec, scale=2.0 * float(jax.nn.sigmoid(0.7)))])
    got, _ = jaxsteer.forward(model, clean, interventions=[ad])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a real gate at one layer: the per-token scale sigmoid(w . h_t + b) from the unsteered residual
    w = jnp.asarray(rng.normal(size=c.d_model).astype(np.float32))
    ad = AdaptiveSteer(vec, w, b=jnp.full((c.n_layers,), -0.3), layers=(1,))
    _, tr = jaxsteer.forward(model, clean, record=("resid_post",))
    gate = np.asarray(jax.nn.sigmoid(tr.resid_post[1] @ w - 0.3))  # [B, T]
    assert gate.std() > 0.05  # the gate really varies by token
    want, _ = jaxsteer.forward(model, clean, interventions=[Steer(vec[1], layers=(1,), scale=gate)])
    got, _ = jaxsteer.forward(model, clean, interventions=[ad])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # trainable by jax.grad
    g = jax.grad(lambda a: jaxsteer.forward(model, clean, interventions=[a])[0][0, -1, 3])(ad)
    assert np.abs(np.asarray(g.w)).sum() > 0 and np.abs(np.asarray(g.vector)).sum() > 0
    with pytest.raises(ValueError, match="expected"):
        jaxsteer.forward(model, clean, interventions=[AdaptiveSteer(vec, jnp.zeros(5))])


def test_adaptive_steer_in_generate_matches_forward(model):
    c = model.config
    rng = np.random.RandomState(4)
    ad = AdaptiveSteer(jnp.asarray(3 * rng.normal(size=c.d_model).astype(np.float32)),
                       jnp.asarray(rng.normal(size=c.d_model).astype(np.float32)), b=0.0, layers=(0, 2))
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    out = jaxsteer.generate(model, prompts, max_new_tokens=6, greedy=True, interventions=[ad], stop_tokens=[], bucket=8)
    seqs, mask = out.sequences()
    logits, _ = jaxsteer.forward(model, seqs, attention_mask=mask, interventions=[ad])
    P = out.prompt_tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(logits[:, P - 1:-1].argmax(-1)), out.tokens)
    plain, _ = jaxsteer.forward(model, seqs, attention_mask=mask)
    assert (np.asarray(plain[:, P - 1:-1].argmax(-1)) != out.tokens).any()  # the gated vector changes the choice


def test_persistence_first_token_effect_gains_and_transfer(model, tmp_path):
    c = model.config
    rng = np.random.RandomState(7)
    toks = rng.randint(0, V, (2, T))
    vec = rng.normal(size=c.d_model).astype(np.float32)
    per = persistence(model, toks, vec, 1, scale=2.0)
    assert per.cos.shape == (c.n_layers, 2, T)
    assert np.isnan(per.cos[0]).all()
    np.testing.assert_allclose(per.cos[1], 1.0, atol=1e-5)  # dh at the steered layer is the vector itself
    np.testing.assert_allclose(per.norm_ratio[1], 1.0, atol=1e-5)
    assert (per.cos[2] < 1 - 1e-4).any()  # later layers rotate it
    per.plot(str(tmp_path / "persist.png"))

    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    zero = first_token_effect(model, prompts, [Steer(jnp.zeros(c.d_model), layers=(2,))], max_new_tokens=4)
    np.testing.assert_allclose(zero.max_increase, 0, atol=1e-6)
    assert np.nansum(zero.argmax_changed) == 0
    big = first_token_effect(model, prompts, [Steer(jnp.asarray(5 * vec), layers=(2,))], max_new_tokens=4)
    s = big.summary()
    assert set(s) == {"first", "rest"} and s["first"]["max_increase"] > 0.01
    assert s["first"]["max_decrease"] < 0 and big.max_increase.shape == (2, 4)
    assert "first" in big.table()

    # normalised gain on a made-up accuracy: layers add up, capped at 1
    contrib = {0: 0.2, 1: 0.3, 2: 0.1}
    acc = lambda layers: min(1.0, 0.1 + sum(contrib[l] for l in layers))
    gains = combination_gains(acc, [0, 1, 2])
    # (acc_01 - max(acc_0, acc_1)) / (acc_all - max) = (0.6 - 0.4) / (0.7 - 0.4)
    assert gains.gain[0, 1] == pytest.approx(0.2 / 0.3)
    assert gains.gain[1, 0] == gains.gain[0, 1] and np.isnan(gains.gain[0, 0])
    assert gains.all_layers == pytest.approx(0.7)
    gains.plot(str(tmp_path / "gains.png"))
    st = combined_steer(np.ones((c.n_layers, c.d_model), np.float32), [2, 0])
    assert st.layers == (0, 2)

    other = make_model(seed=1)
    vecs = rng.normal(size=(c.n_layers, c.d_model)).astype(np.float32)
    steer = transfer_steer(vecs, model, other, scale=0.5)
    want, _ = jaxsteer.forward(other, toks, interventions=[Steer(jnp.asarray(vecs), scale=0.5)])
    got, _ = jaxsteer.forward(other, toks, interventions=[steer])
    np.testing.assert_allclose(got, want, atol=0)
    with pytest.raises(ValueError, match="n_layers 3 vs 4"):
        transfer_steer(vecs, model, dataclasses.replace(c, n_layers=4, layer_types=()))
    with pytest.raises(ValueError, match="d_model 32 vs 64"):
        transfer_steer(vecs, model.config, dataclasses.replace(c, d_model=64))
