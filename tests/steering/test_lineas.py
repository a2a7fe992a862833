"""LinEAS: the distributional loss against known answers, the affine map as an intervention and a
trainable kind (identity at init, forward / generate / export), and learning against an lr=0 run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_CONFIG, random_model

import jaxsteer
from jaxsteer import Affine
from jaxsteer.steering.lineas import sliced_wasserstein, sparse_group_prox, train_lineas, wasserstein_1d
from jaxsteer.train.export import load_affine, save_affine
from jaxsteer.train.trainable import TrainableConfig, apply_trainable, init_trainable


def test_wasserstein_1d_known_answers():
    x, y = jnp.array([3.0, 1.0, 2.0]), jnp.array([10.0, 30.0, 20.0])
    # equal sizes: mean squared difference of the sorted samples
    assert float(wasserstein_1d(x, y)) == pytest.approx(((1 - 10) ** 2 + (2 - 20) ** 2 + (3 - 30) ** 2) / 3)
    # unequal sizes: quantile functions 0|1 (steps at 1/2) and 0|.5|1 (steps at 1/3, 2/3) differ by
    # 0.5 on (1/3, 1/2] and (1/2, 2/3]: 2 * (1/6) * 0.25
    assert float(wasserstein_1d(jnp.array([1.0, 0.0]), jnp.array([0.5, 1.0, 0.0]))) == pytest.approx(1 / 12)
    assert float(wasserstein_1d(y, y[::-1])) == 0.0
    # batched along leading axes; order of the samples never matters
    both = wasserstein_1d(jnp.stack([x, y]), jnp.stack([y, x]))
    np.testing.assert_allclose(both, [wasserstein_1d(x, y)] * 2)


def test_sliced_wasserstein_slices():
    rng = np.random.RandomState(0)
    a, b = jnp.asarray(rng.normal(size=(6, 3))), jnp.asarray(rng.normal(2.0, 1.0, size=(4, 3)))
    per_axis = [float(wasserstein_1d(a[:, k], b[:, k])) for k in range(3)]
    assert float(sliced_wasserstein(a, b)) == pytest.approx(np.mean(per_axis), rel=1e-6)
    direction = jnp.array([[0.6, 0.8, 0.0]])
    assert float(sliced_wasserstein(a, b, direction)) == pytest.approx(
        float(wasserstein_1d(a @ direction[0], b @ direction[0])), rel=1e-6
    )
    # a shift of one cloud by c along every axis costs exactly c^2 when the clouds are otherwise equal
    assert float(sliced_wasserstein(a, a + 0.5)) == pytest.approx(0.25, rel=1e-5)
    with pytest.raises(ValueError, match=r"\[n, d\] and \[m, d\]"):
        sliced_wasserstein(a, b[:, :2])


def test_sparse_group_prox_known_answer():
    t = {"scale": jnp.array([[0.5, -0.05], [0.02, 0.0]]), "shift": jnp.array([[-2.0, 0.0], [0.01, -0.03]])}
    out = sparse_group_prox(t, l1=0.1, group=0.0)
    np.testing.assert_allclose(out["scale"], [[0.4, 0.0], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(out["shift"], [[-1.9, 0.0], [0.0, 0.0]], atol=1e-7)
    # group shrinkage: layer 0 has norm 5 (3, 4) and shrinks by 1 - 1/5; layer 1 (norm 0.5) vanishes
    t = {"scale": jnp.array([[3.0], [0.3]]), "shift": jnp.array([[4.0], [0.4]])}
    out = sparse_group_prox(t, l1=0.0, group=1.0)
    np.testing.assert_allclose(out["scale"][:, 0], [2.4, 0.0], atol=1e-6)
    np.testing.assert_allclose(out["shift"][:, 0], [3.2, 0.0], atol=1e-6)


@pytest.fixture(scope="module")
def model():
    return random_model(TINY_CONFIG, scale=0.3)


PROMPT = np.array([[4, 9, 17, 23, 30]])


def test_identity_init_leaves_logits_unchanged(model):
    cfg = TrainableConfig(kind="lineas", site="mlp_in")
    t = init_trainable(model, cfg, jax.random.PRNGKey(0))
    assert t["scale"].shape == t["shift"].shape == (3, 32)
    _, ivs = apply_trainable(model, t, cfg)
    assert isinstance(ivs[0], Affine)
    plain, _ = jaxsteer.forward(model, PROMPT)
    steered, _ = jaxsteer.forward(model, PROMPT, interventions=ivs)
    np.testing.assert_array_equal(steered, plain)


def test_affine_acts_only_at_its_layers_and_checks_shapes(model):
    scale = jnp.full((32,), 2.0)
    shift = jnp.arange(32, dtype=jnp.float32)
    _, tr = jaxsteer.forward(model, PROMPT, record=("resid_post",))
    _, st = jaxsteer.forward(
        model, PROMPT, record=("resid_post",), interventions=Affine(scale, shift, site="resid_post", layers=(1,))
    )
    np.testing.assert_array_equal(st["resid_post"][0], tr["resid_post"][0])
    # layer 1's input is unchanged, so its output is exactly the affine map of the plain output
    np.testing.assert_allclose(st["resid_post"][1], 2.0 * tr["resid_post"][1] + shift, rtol=1e-6)
    with pytest.raises(ValueError, match="Affine: shift has shape"):
        jaxsteer.forward(model, PROMPT, interventions=Affine(scale, jnp.zeros(5)))
    with pytest.raises(ValueError, match="not a residual-width"):
        jaxsteer.forward(model, PROMPT, interventions=Affine(scale, shift, site="z"))


def _sets():
    """Unpaired source and target prompts from disjoint halves of the vocabulary."""
    rng = np.random.RandomState(1)
    src = rng.randint(2, 26, (8, 6))
    tgt = rng.randint(27, 53, (6, 6))
    ones = lambda a: np.ones_like(a)
    return (src, ones(src)), (tgt, ones(tgt))


def test_training_lowers_the_loss_against_the_null_run(model, tmp_path):
    source, target = _sets()
    kw = dict(steps=40, site="mlp_in", progress=False)
    null = train_lineas(model, source, target, lr=0.0, **kw)
    res = train_lineas(model, source, target, lr=3.0, **kw)
    assert null.final_loss == pytest.approx(null.losses[0])  # lr = 0: nothing moves
    assert res.losses[0] == pytest.approx(null.losses[0], rel=1e-6)  # same start (the identity)
    assert res.final_loss < 0.3 * null.final_loss, (res.final_loss, null.final_loss)
    ev = res.evaluate(model, source, target)  # the same sets: the identity's loss is the null run's
    assert ev["identity"] == pytest.approx(null.final_loss, rel=1e-5)
    assert ev["lineas"] == pytest.approx(res.final_loss, rel=1e-5)

    # the trained map works in generate: greedy decoding picks the steered forward's argmax
    ivs = res.interventions(model)
    gen = jaxsteer.generate(model, [list(PROMPT[0])], max_new_tokens=3, greedy=True, interventions=ivs)
    seq = np.concatenate([PROMPT, gen.tokens[:, :2]], axis=1)
    logits, _ = jaxsteer.forward(model, seq, interventions=ivs)
    np.testing.assert_array_equal(gen.tokens[0], np.argmax(np.asarray(logits[0, -3:]), axis=-1))
    assert np.abs(np.asarray(jaxsteer.forward(model, seq)[0] - logits)).max() > 1e-2  # the map changes the model

    # export round trip
    path = save_affine(str(tmp_path / "lineas.npz"), res.trainable, res.config, model.config.n_layers)
    loaded = load_affine(path)
    again, _ = jaxsteer.forward(model, seq, interventions=loaded)
    np.testing.assert_array_equal(again, logits)


def test_sparsity_zeroes_neurons_and_layers(model):
    source, target = _sets()
    kw = dict(steps=15, lr=3.0, site="mlp_in", progress=False)
    sparse = train_lineas(model, source, target, l1=0.03, **kw)
    assert sparse.sparsity()["zero_params"] > 0.7  # measured 0.85 (0 without l1)
    assert sparse.final_loss < 0.9 * sparse.losses[0]  # and still steers (measured 0.57 / 0.74)
    none = train_lineas(model, source, target, group=1e3, **kw)
    assert none.sparsity()["identity_layers"] == 1.0
    with pytest.raises(ValueError, match="pooling"):
        train_lineas(model, source, target, pooling="max", **kw)


def test_per_row_affine_bank_equals_one_map_per_row(model):
    from jaxsteer.steering.evaluate import row_interventions

    rng = np.random.default_rng(3)
    scale = jnp.asarray(1 + 0.3 * rng.normal(size=(3, 3, 32)), jnp.float32)
    shift = jnp.asarray(0.3 * rng.normal(size=(3, 3, 32)), jnp.float32)
    vectors = jnp.zeros((3, 3, 32), jnp.float32)
    tokens = np.repeat(PROMPT, 3, axis=0)
    index = jnp.asarray([2, 0, 1])
    rows, _ = jaxsteer.forward(
        model,
        tokens,
        interventions=row_interventions({"vectors": vectors, "scale": scale, "shift": shift}, index, "mlp_in"),
    )
    for b, k in enumerate(np.asarray(index)):
        one, _ = jaxsteer.forward(model, PROMPT, interventions=Affine(scale[k], shift[k], site="mlp_in"))
        np.testing.assert_allclose(rows[b], one[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="banks"):
        jaxsteer.forward(model, tokens, interventions=Affine(scale, shift[:, 0], index=index))


def test_lineas_joins_the_steering_harness(model, monkeypatch):
    from jaxsteer.steering import evaluate
    from tests.steering.test_evaluate import CharTokenizer, _task

    tok = CharTokenizer()
    monkeypatch.setattr(
        evaluate, "general_text_windows", lambda t, n, length: [t("some plain text here")["input_ids"]] * 2
    )
    rng = np.random.default_rng(4)
    lineas = Affine(
        jnp.asarray(1 + 0.5 * rng.normal(size=(3, 32)), jnp.float32),
        jnp.asarray(rng.normal(size=(3, 32)), jnp.float32),
        site="mlp_in",
    )
    res = evaluate.sweep(
        model,
        tok,
        _task(),
        methods=("mean_difference",),
        layers=(1,),
        scales=(2,),
        maps={"lineas": lineas},
        trained_scales=(0, 1),
        max_new_tokens=4,
        say=lambda *a: None,
    )
    rows = {(r["method"], r["scale"]): r for r in res.rows}
    assert set(rows) == {("mean_difference", 2.0), ("lineas", 0.0), ("lineas", 1.0)}
    assert rows["lineas", 0.0]["kl"] == pytest.approx(0, abs=1e-6)  # strength 0: the identity
    assert rows["lineas", 0.0]["ppl"] == pytest.approx(res.baseline["ppl"], rel=1e-5)
    assert rows["lineas", 1.0]["kl"] > 1e-3
    assert "| lineas | own |" in res.table()
