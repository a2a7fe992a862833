"""Application controls (jaxsteer.models.controls) on the tiny random model: token selection equals
masking by hand, per-row vectors equal running rows one by one, a condition selects exactly the
rows above threshold, in forward and in generate; jit / vmap / grad; clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer import Conditional, OnRuns, OnTokens, RowSteer, Steer, compose, forward, generate, prepare_controls
from jaxsteer.models.controls import prefill_split
from jaxsteer.models.decoder import embed, run_layers

L, D, V = 3, 32, 53


def _vec(seed, shape=(L, D), scale=3.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.integers(2, V, size=(3, 9)), jnp.int32)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kw,hand",
    [
        (dict(select="prompt"), lambda tok, col: col < 5),
        (dict(select="generated"), lambda tok, col: col >= 5),
        (dict(first=2), lambda tok, col: (col >= 5) & (col < 7)),
        (dict(triggers=[7, 11, 30]), lambda tok, col: np.isin(tok, [7, 11, 30])),
        (dict(select="generated", triggers=[7, 11, 30]), lambda tok, col: (col >= 5) & np.isin(tok, [7, 11, 30])),
    ],
)
def test_token_selection_equals_masking_by_hand(tiny_model, batch, kw, hand):
    tokens = np.asarray(batch).copy()
    tokens[:, ::3] = 11  # make sure some trigger ids occur
    v = _vec(1)
    col = np.arange(tokens.shape[1])[None].repeat(len(tokens), 0)
    mask = hand(tokens, col).astype(np.float32)
    assert 0 < mask.sum() < mask.size
    got, _ = forward(tiny_model, tokens, interventions=OnTokens(Steer(v), **kw), prompt_length=5)
    want, _ = forward(tiny_model, tokens, interventions=Steer(v, positions=mask))
    _close(got, want)
    plain, _ = forward(tiny_model, tokens)
    assert not np.allclose(got, plain, atol=1e-3)


def test_wrappers_forward_the_token_binding(tiny_model):
    """`OnRuns(OnTokens(...))`: the run selection passes the token context to what it wraps; equal
    to one `Steer` masked by hand over (run, position)."""
    tokens = np.asarray(np.random.default_rng(3).integers(2, V, size=(4, 9)), np.int32)
    tokens[:, 1::2] = 11
    v = _vec(4)
    iv = OnRuns(OnTokens(Steer(v), select="generated", triggers=[11]), runs=2, selected=(1,))
    col = np.arange(tokens.shape[1])[None].repeat(len(tokens), 0)
    mask = ((col >= 5) & (tokens == 11) & (np.arange(4) >= 2)[:, None]).astype(np.float32)
    got, _ = forward(tiny_model, tokens, interventions=iv, prompt_length=5)
    want, _ = forward(tiny_model, tokens, interventions=Steer(v, positions=mask))
    _close(got, want)
    np.testing.assert_array_equal(np.asarray(got)[:2], np.asarray(forward(tiny_model, tokens[:2])[0]))


def test_token_selection_in_generate_matches_forward_masked_by_hand(tiny_model):
    prompts = [[5, 9, 12, 3], [8, 8, 20]]
    v = _vec(2, scale=6.0)
    k = 3
    out = generate(
        tiny_model, prompts, max_new_tokens=8, greedy=True, stop_tokens=(), interventions=OnTokens(Steer(v), first=k)
    )
    plain = generate(tiny_model, prompts, max_new_tokens=8, greedy=True, stop_tokens=())
    assert (out.tokens != plain.tokens).any()  # the control did something
    seq, mask = out.sequences()
    P = out.prompt_tokens.shape[1]
    hand = np.zeros(seq.shape, np.float32)
    hand[:, P : P + k] = 1  # the first k generated tokens' positions
    logits, _ = forward(tiny_model, seq, attention_mask=mask, interventions=Steer(v, positions=hand))
    np.testing.assert_array_equal(np.asarray(logits[:, P - 1 : -1]).argmax(-1), out.tokens)
    trig = generate(
        tiny_model,
        prompts,
        max_new_tokens=8,
        greedy=True,
        stop_tokens=(),
        interventions=OnTokens(Steer(v), triggers=[int(plain.tokens[0, 0])]),
    )
    seq, mask = trig.sequences()
    hand = np.isin(seq, [int(plain.tokens[0, 0])]).astype(np.float32)
    logits, _ = forward(tiny_model, seq, attention_mask=mask, interventions=Steer(v, positions=hand))
    np.testing.assert_array_equal(np.asarray(logits[:, P - 1 : -1]).argmax(-1), trig.tokens)


def test_per_row_vectors_equal_running_rows_one_by_one(tiny_model, batch):
    vecs = _vec(3, (3, L, D))
    scales = jnp.asarray([1.0, -0.5, 2.0])
    got, _ = forward(tiny_model, batch, interventions=RowSteer(vecs, scale=scales, layers=(0, 2)))
    bank = _vec(4, (5, D))
    index = jnp.asarray([4, 0, 4])
    got_bank, _ = forward(tiny_model, batch, interventions=RowSteer(bank, index=index))
    for b in range(3):
        one, _ = forward(tiny_model, batch[b : b + 1], interventions=Steer(vecs[b], scale=scales[b], layers=(0, 2)))
        _close(got[b], one[0])
        one, _ = forward(tiny_model, batch[b : b + 1], interventions=Steer(bank[index[b]]))
        _close(got_bank[b], one[0])


def test_per_row_vectors_in_generate_equal_separate_generations(tiny_model):
    prompts = [[5, 9, 12, 3], [8, 8, 20], [30, 2]]
    bank = _vec(5, (2, L, D), scale=5.0)
    index = [1, 0, 1]
    out = generate(
        tiny_model,
        prompts,
        max_new_tokens=6,
        greedy=True,
        stop_tokens=(),
        interventions=RowSteer(bank, index=jnp.asarray(index)),
    )
    for b, p in enumerate(prompts):
        one = generate(
            tiny_model, [p], max_new_tokens=6, greedy=True, stop_tokens=(), interventions=Steer(bank[index[b]])
        )
        np.testing.assert_array_equal(out.tokens[b], one.tokens[0])
    # samples_per_prompt: each prompt's samples share its vector
    many = generate(
        tiny_model,
        prompts,
        max_new_tokens=6,
        greedy=True,
        stop_tokens=(),
        samples_per_prompt=2,
        interventions=RowSteer(bank, index=jnp.asarray(index)),
    )
    np.testing.assert_array_equal(many.tokens[::2], out.tokens)
    np.testing.assert_array_equal(many.tokens[1::2], out.tokens)


def _scores_by_hand(model, tokens, layer, condition, mask=None):
    _, trace = forward(model, tokens, attention_mask=mask, record="resid_post")
    acts = np.asarray(trace.resid_post[layer], np.float64)  # [B, T, d]
    m = np.ones(acts.shape[:2]) if mask is None else np.asarray(mask, np.float64)
    mean = (acts * m[..., None]).sum(1) / m.sum(1, keepdims=True)
    c = np.asarray(condition, np.float64)
    return mean @ c / (np.linalg.norm(mean, axis=-1) * np.linalg.norm(c))


def test_condition_selects_exactly_the_rows_above_threshold(tiny_model):
    tokens = jnp.asarray(np.random.default_rng(6).integers(2, V, size=(6, 7)), jnp.int32)
    cond = _vec(7, (D,), 1.0)
    scores = _scores_by_hand(tiny_model, tokens, 1, cond)
    thr = float(np.median(scores))
    above = scores > thr
    assert 0 < above.sum() < len(above)
    v = _vec(8)
    iv = Conditional(Steer(v), cond, threshold=thr, layer=1)
    (prepared,) = prepare_controls(tiny_model, tokens, iv)
    _close(prepared.score, scores)
    np.testing.assert_array_equal(np.asarray(prepared.decision), above)
    got, _ = forward(tiny_model, tokens, interventions=iv)
    steered, _ = forward(tiny_model, tokens, interventions=Steer(v))
    plain, _ = forward(tiny_model, tokens)
    np.testing.assert_array_equal(np.asarray(got)[above], np.asarray(steered)[above])
    np.testing.assert_array_equal(np.asarray(got)[~above], np.asarray(plain)[~above])
    less = prepare_controls(tiny_model, tokens, iv.replace(compare="less"))[0]
    np.testing.assert_array_equal(np.asarray(less.decision), scores < thr)


def test_condition_in_generate_reads_the_prompt_and_reports_its_decision(tiny_model):
    prompts = [[5, 9, 12, 3], [8, 8, 20], [30, 2, 40, 41, 7], [3, 3]]
    cond = _vec(9, (D,), 1.0)
    seqs = generate(tiny_model, prompts, max_new_tokens=1, greedy=True, stop_tokens=())
    scores = _scores_by_hand(tiny_model, seqs.prompt_tokens, 2, cond, seqs.prompt_mask)
    thr = float(np.median(scores))
    v = _vec(10, scale=6.0)
    out = generate(
        tiny_model,
        prompts,
        max_new_tokens=6,
        greedy=True,
        stop_tokens=(),
        interventions=Conditional(OnTokens(Steer(v), select="generated"), cond, threshold=thr, layer=2),
    )
    np.testing.assert_array_equal(out.decisions[0], scores > thr)
    _close(out.condition_scores[0], scores)
    steered = generate(
        tiny_model,
        prompts,
        max_new_tokens=6,
        greedy=True,
        stop_tokens=(),
        interventions=OnTokens(Steer(v), select="generated"),
    )
    plain = generate(tiny_model, prompts, max_new_tokens=6, greedy=True, stop_tokens=())
    for b, on in enumerate(out.decisions[0]):
        np.testing.assert_array_equal(out.tokens[b], (steered if on else plain).tokens[b])


def test_condition_decided_inside_the_prefill_equals_the_two_pass_version(tiny_model):
    """Behaviour above the condition layer: the prefill decides the condition from its own
    activations (no extra read); the decision equals the hand-computed one and the tokens equal
    those of the same control with that decision given by hand (the two-pass route)."""
    prompts = [[5, 9, 12, 3], [8, 8, 20], [30, 2, 40, 41, 7], [3, 3], [17, 4, 4, 9]]
    cond = _vec(12, (D,), 1.0)
    seqs = generate(tiny_model, prompts, max_new_tokens=1, greedy=True, stop_tokens=())
    scores = _scores_by_hand(tiny_model, seqs.prompt_tokens, 0, cond, seqs.prompt_mask)
    thr = float(np.median(scores))
    iv = Conditional(Steer(_vec(13, scale=8.0), layers=(1, 2)), cond, threshold=thr, layer=0)
    assert prefill_split((iv,)) == 0 and prefill_split((iv, Steer(_vec(14)))) is None
    kw = dict(max_new_tokens=6, greedy=True, stop_tokens=())
    out = generate(tiny_model, prompts, interventions=iv, **kw)
    np.testing.assert_array_equal(out.decisions[0], scores > thr)
    _close(out.condition_scores[0], scores)
    (two_pass,) = prepare_controls(tiny_model, seqs.prompt_tokens, iv, attention_mask=seqs.prompt_mask)
    np.testing.assert_array_equal(np.asarray(two_pass.decision), scores > thr)
    by_hand = generate(tiny_model, prompts, interventions=iv.replace(decision=jnp.asarray(scores > thr)), **kw)
    np.testing.assert_array_equal(out.tokens, by_hand.tokens)
    np.testing.assert_array_equal(out.logprobs, by_hand.logprobs)
    plain = generate(tiny_model, prompts, **kw)
    assert not np.array_equal(out.tokens, plain.tokens)  # the steered rows do change


def test_run_layers_static_start_layer_equals_the_traced_one(tiny_model, batch):
    h0 = embed(tiny_model, batch)
    pos = jnp.broadcast_to(jnp.arange(batch.shape[1], dtype=jnp.int32), batch.shape)
    static = run_layers(tiny_model, h0, pos, pos, (), frozenset({"resid_post"}), None, None, 1)
    traced = run_layers(tiny_model, h0, pos, pos, (), frozenset({"resid_post"}), None, None, jnp.asarray(1))
    _close(static[0], traced[0])
    _close(static[1]["resid_post"], traced[1]["resid_post"])
    assert not np.asarray(static[1]["resid_post"][0]).any()


def test_controls_jit_vmap_and_grad(tiny_model, batch):
    v = _vec(11)

    @jax.jit
    def loss(vecs, scale):
        logits, _ = forward(
            tiny_model, batch, interventions=OnTokens(RowSteer(vecs, scale=scale), first=2), prompt_length=4
        )
        return jax.nn.log_softmax(logits)[:, -1, 3].sum()

    vecs = jnp.stack([v, -v, 0 * v])
    g = jax.grad(loss)(vecs, jnp.ones(3))
    assert g.shape == vecs.shape and float(jnp.abs(g).sum()) > 0
    # the gradient reaches only the selected tokens' layers: vectors act at columns 4, 5
    eps = 1e-3
    d = jnp.zeros_like(vecs).at[0, 1, 0].set(eps)
    fd = (loss(vecs + d, jnp.ones(3)) - loss(vecs - d, jnp.ones(3))) / (2 * eps)
    np.testing.assert_allclose(float(fd), float(g[0, 1, 0]), rtol=2e-2, atol=1e-3)
    many = jax.vmap(lambda s: loss(vecs, s))(jnp.asarray([[0.0] * 3, [1.0] * 3]))
    np.testing.assert_allclose(np.asarray(many)[1], float(loss(vecs, jnp.ones(3))), rtol=1e-5)
    w = jnp.asarray([0.5, 2.0])
    _close(compose([v, 2 * v], w), 4.5 * v)
    gw = jax.grad(lambda w: compose(jnp.stack([v, -v]), w).sum())(w)
    _close(gw, [v.sum(), -v.sum()])


def test_bad_controls_are_clear_errors(tiny_model, batch):
    v = _vec(12)
    with pytest.raises(ValueError, match=r"RowSteer: vectors have shape \(3, 3, 31\)"):
        forward(tiny_model, batch, interventions=RowSteer(jnp.zeros((3, L, D - 1))))
    with pytest.raises(ValueError, match="index 7 \\(row 1\\) is out of range for a bank of 5"):
        forward(tiny_model, batch, interventions=RowSteer(jnp.zeros((5, D)), index=jnp.asarray([0, 7, 1])))
    with pytest.raises(ValueError, match="RowSteer has 2 rows but the batch has 3"):
        forward(tiny_model, batch, interventions=RowSteer(jnp.zeros((2, D))))
    with pytest.raises(ValueError, match="condition vector has shape \\(31,\\)"):
        forward(tiny_model, batch, interventions=Conditional(Steer(v), jnp.zeros(D - 1), layer=1))
    with pytest.raises(ValueError, match="layer 3 out of range"):
        forward(tiny_model, batch, interventions=Conditional(Steer(v), jnp.ones(D), layer=3))
    with pytest.raises(ValueError, match="OnTokens triggers: token id 99 .* outside the vocabulary"):
        forward(tiny_model, batch, interventions=OnTokens(Steer(v), triggers=[3, 99]))
    with pytest.raises(ValueError, match="pass prompt_length="):
        forward(tiny_model, batch, interventions=OnTokens(Steer(v), select="generated"))
    with pytest.raises(ValueError, match="select must be one of"):
        forward(tiny_model, batch, interventions=OnTokens(Steer(v), select="completion"))
    with pytest.raises(ValueError, match="RowSteer has 1 rows but the batch has 2"):
        generate(tiny_model, [[3, 4], [5]], max_new_tokens=2, interventions=RowSteer(jnp.zeros((1, D))))
    with pytest.raises(ValueError, match="compose: 2 vectors but weights"):
        compose([v, v], [1.0])
