"""Generation-time patching between runs decoded side by side (`generate(runs=)`, `OnRuns`,
`CrossRunPatch`, the `attn_to_resid` / `attn_to_mlp` routes) and the penultimate-layer head-swap
study built on them."""

from __future__ import annotations

import numpy as np
import pytest

import jaxsteer
from jaxsteer import CrossRunPatch, OnRuns, Steer
from jaxsteer.analysis import head_swap_interventions, head_swap_study

PROMPTS = [[5, 9, 14, 3], [7, 2], [11, 12, 13, 20, 21], [4, 4, 8]]


def _vector(model, seed=3, norm=3.0):
    v = np.random.RandomState(seed).normal(size=model.config.d_model)
    return (norm * v / np.linalg.norm(v)).astype(np.float32)


def _gen(model, ivs=(), runs=1, **kw):
    kw = {"max_new_tokens": 6, "greedy": True, "stop_tokens": (), **kw}
    return jaxsteer.generate(model, PROMPTS, interventions=ivs, runs=runs, **kw)


def test_runs_without_interventions_decode_like_one_run(tiny_model):
    for kw in ({}, {"greedy": False, "seed": 4}, {"greedy": False, "seed": 4, "samples_per_prompt": 2}):
        one, three = _gen(tiny_model, **kw), _gen(tiny_model, runs=3, **kw)
        np.testing.assert_array_equal(three.tokens, one.tokens)
        np.testing.assert_allclose(three.logprobs, one.logprobs, atol=1e-6)
        assert three.tokens.shape == one.tokens.shape


def test_on_runs_steers_only_the_selected_rows(tiny_model):
    tokens = np.array(PROMPTS[0] * 2).reshape(1, -1).repeat(4, 0)  # 2 runs x 2 rows
    steer = Steer(_vector(tiny_model), layers=(1,))
    plain, _ = jaxsteer.forward(tiny_model, tokens)
    steered, _ = jaxsteer.forward(tiny_model, tokens, interventions=steer)
    mixed, _ = jaxsteer.forward(tiny_model, tokens, interventions=OnRuns(steer, runs=2, selected=(1,)))
    np.testing.assert_array_equal(np.asarray(mixed[:2]), np.asarray(plain[:2]))
    np.testing.assert_array_equal(np.asarray(mixed[2:]), np.asarray(steered[2:]))


def test_cross_run_patch_copies_the_source_run_bitwise(tiny_model):
    tokens = np.array(PROMPTS[2] * 2).reshape(1, -1).repeat(4, 0)
    steer = OnRuns(Steer(_vector(tiny_model), layers=(0,)), runs=2, selected=(1,))
    _, ref = jaxsteer.forward(tiny_model, tokens, interventions=steer, record=("z", "resid_post"))
    patch = CrossRunPatch(runs=2, source=1, target=0, site="z", layers=(1,), heads=(2,))
    _, tr = jaxsteer.forward(tiny_model, tokens, interventions=[steer, patch], record=("z",))
    z, zr = np.asarray(tr.z), np.asarray(ref.z)
    np.testing.assert_array_equal(z[1, :2, :, 2], zr[1, 2:, :, 2])  # head 2 of layer 1 from run 1
    np.testing.assert_array_equal(z[1, :2, :, [0, 1, 3]], zr[1, :2, :, [0, 1, 3]])  # other heads untouched
    np.testing.assert_array_equal(z[:, 2:], zr[:, 2:])  # the source run is untouched
    assert np.abs(zr[1, 2:, :, 2] - zr[1, :2, :, 2]).max() > 1e-3  # the runs did differ there


def test_routes_send_the_patched_attention_to_one_path_only(tiny_model):
    """Route "mlp": the residual keeps run 2's attention output, the MLP reads run 1's (all heads
    swapped); route "resid" the other way round."""
    final = tiny_model.config.n_layers - 1
    tokens = np.array(PROMPTS[2] * 3).reshape(1, -1).repeat(3, 0)
    vec = _vector(tiny_model)
    for route, patched, kept in (("mlp", "attn_to_mlp", "attn_to_resid"), ("resid", "attn_to_resid", "attn_to_mlp")):
        ivs, runs = head_swap_interventions(tiny_model, vec, np.ones(4), route=route)
        assert runs == 3
        sites = ("attn_out", "attn_to_resid", "attn_to_mlp", "resid_pre", "resid_mid")
        _, tr = jaxsteer.forward(tiny_model, tokens, interventions=ivs, record=sites)
        t = {k: np.asarray(v[final]) for k, v in tr.items()}
        np.testing.assert_array_equal(t[patched][0], t["attn_out"][1])
        np.testing.assert_array_equal(t[kept][0], t["attn_out"][2])
        # the residual adds the kept (resp. patched) route; the steered run's output differs from both
        np.testing.assert_allclose(t["resid_mid"][0], t["resid_pre"][0] + t["attn_to_resid"][0] + vec, atol=1e-5)
        assert np.abs(t["attn_out"][1] - t["attn_out"][2]).max() > 1e-3


def test_identical_runs_change_nothing_and_all_heads_equal_the_steered_model(tiny_model):
    L = tiny_model.config.n_layers
    vec = _vector(tiny_model)
    plain = _gen(tiny_model)
    for route in ("both", "mlp", "resid"):  # a zero vector makes every run the unsteered model
        ivs, runs = head_swap_interventions(tiny_model, np.zeros_like(vec), np.ones(4), route=route)
        np.testing.assert_array_equal(_gen(tiny_model, ivs, runs).tokens, plain.tokens)
    steered = _gen(tiny_model, Steer(vec, layers=(L - 2,)))
    ivs, runs = head_swap_interventions(tiny_model, vec, np.ones(4), route="both")
    swapped = _gen(tiny_model, ivs, runs)
    np.testing.assert_array_equal(swapped.tokens, steered.tokens)
    np.testing.assert_allclose(swapped.logprobs, steered.logprobs, atol=1e-5)
    skip_attention = _gen(tiny_model, Steer(vec, site="resid_mid", layers=(L - 1,)))
    for route in ("both", "mlp", "resid"):  # no head swapped: the vector simply skips the attention
        ivs, runs = head_swap_interventions(tiny_model, vec, np.zeros(4), route=route)
        np.testing.assert_array_equal(_gen(tiny_model, ivs, runs).tokens, skip_attention.tokens)
    assert (steered.tokens != plain.tokens).any()  # the vector matters on this model


def test_head_swap_study_scores_every_condition(tiny_model, tmp_path):
    vec = _vector(tiny_model, norm=6.0)
    answers = [7] * len(PROMPTS)
    score = lambda completion, answer: answer in completion  # token 7 anywhere in the completion
    res = head_swap_study(
        tiny_model,
        vec,
        PROMPTS,
        answers,
        score,
        routes=("both", "mlp"),
        head_routes=("mlp",),
        max_new_tokens=6,
        batch_size=3,
        progress=False,
    )
    acc = res.accuracy()
    assert len(res.conditions) == 4 + 4 + 2 and res.correct.shape == (10, len(PROMPTS))
    assert "head 0 / mlp" in acc and "head 0 / both" not in acc and "all heads / both" in acc
    np.testing.assert_array_equal(
        res.correct[res.conditions.index("all heads / both")], res.correct[res.conditions.index("steered")]
    )
    steered = _gen(tiny_model, Steer(vec, layers=(tiny_model.config.n_layers - 2,)), stop_tokens=None)
    expect = [7 in row[:n].tolist() for row, n in zip(steered.tokens, steered.lengths, strict=True)]
    assert acc["steered"] == pytest.approx(np.mean(expect))
    assert res.per_head("mlp").shape == (4,)
    with pytest.raises(ValueError, match="no single-head swaps"):
        res.per_head("both")
    assert "skip layer" in res.table()
    res.plot(str(tmp_path / "swap.png"))
    assert (tmp_path / "swap.png").stat().st_size > 1000


def test_head_swap_refuses_bad_input(tiny_model):
    vec = _vector(tiny_model)
    L = tiny_model.config.n_layers
    with pytest.raises(ValueError, match="route"):
        head_swap_interventions(tiny_model, vec, np.ones(4), route="attention")
    with pytest.raises(ValueError, match="layer"):
        head_swap_interventions(tiny_model, vec, np.ones(4), layer=L - 1)
    with pytest.raises(ValueError, match="vector"):
        head_swap_interventions(tiny_model, vec[:5], np.ones(4))
    with pytest.raises(ValueError, match="same run"):
        CrossRunPatch(runs=2, source=1, target=1).check(tiny_model.config)
    with pytest.raises(ValueError, match="head_mask"):
        CrossRunPatch(runs=2, head_mask=np.ones(3)).check(tiny_model.config)
    with pytest.raises(ValueError, match="out of range"):
        OnRuns(Steer(vec), runs=2, selected=(2,)).check(tiny_model.config)
    with pytest.raises(ValueError, match="split into 3 runs"):
        jaxsteer.forward(tiny_model, np.zeros((4, 3), np.int32), interventions=CrossRunPatch(runs=3))
    with pytest.raises(ValueError, match="site must be one of"):  # before anything asks the site for heads
        head_swap_study(tiny_model, vec, PROMPTS, [1] * len(PROMPTS), lambda c, a: True, site="attn_out")
    with pytest.raises(ValueError, match="prompts and"):
        head_swap_study(tiny_model, vec, PROMPTS, [1], lambda c, a: True)
