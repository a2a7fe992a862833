"""The steering evaluation harness (jaxsteer.steering.evaluate) on the tiny random model: side
effects against hand computation, batched task scores against one generation per vector, the
sweep's pick on validation, the shipped task file, and the CLI."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.models.generate import left_pad
from jaxsteer.steering.evaluate import Task, load_task, side_effects, sweep, task_scores

V = 53


class CharTokenizer:
    """One token per lowercase letter / space (ids 2..28), no chat template."""

    pad_token_id = 0
    eos_token_id = 1
    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + (ord(c) - 97) % 26 if c != " " else 28 for c in text.lower()]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(" " if i == 28 else chr(97 + (int(i) - 2) % 26) for i in ids if int(i) >= 2)


def _task():
    return Task(
        "toy",
        pairs=[("ab", "good", "bad"), ("cd", "nice", "poor"), ("ef", "fine", "sad")],
        validation=["hello", "the cat", "a dog"],
        test=["blue sky", "red"],
        lexicon={"positive": ["good", "nice"], "negative": ["bad", "sad"]},
    )


def test_side_effects_match_hand_computation(tiny_model):
    tok = CharTokenizer()
    neutral = tuple(map(jnp.asarray, left_pad([tok("hello")["input_ids"], tok("cat")["input_ids"]], 0)))
    text = tuple(map(jnp.asarray, left_pad([tok("the quick brown fox")["input_ids"]], 0)))
    v = np.random.default_rng(0).normal(size=(3, 32)).astype(np.float32)
    bank = jnp.asarray(np.stack([np.zeros_like(v), v, 2 * v]))
    kl, ppl = side_effects(tiny_model, bank, neutral, text, rows=4)
    assert kl[0] == pytest.approx(0, abs=1e-6) and kl[2] > kl[1] > 0
    for k in range(3):
        steer = jaxsteer.Steer(bank[k])
        base, _ = jaxsteer.forward(tiny_model, neutral[0], attention_mask=neutral[1])
        steered, _ = jaxsteer.forward(tiny_model, neutral[0], attention_mask=neutral[1], interventions=steer)
        p, q = jax.nn.log_softmax(base[:, :-1]), jax.nn.log_softmax(steered[:, :-1])
        m = np.asarray(neutral[1][:, :-1] * neutral[1][:, 1:], np.float64)
        per = (np.exp(p) * (p - q)).sum(-1)
        want = ((np.asarray(per) * m).sum(1) / m.sum(1)).mean()
        assert kl[k] == pytest.approx(want, rel=1e-4, abs=1e-6)
        logits, _ = jaxsteer.forward(tiny_model, text[0], interventions=steer)
        nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits[0, :-1])), np.asarray(text[0][0, 1:, None]), -1)
        assert ppl[k] == pytest.approx(np.exp(nll.mean()), rel=1e-4)


def test_task_scores_equal_one_generation_per_vector(tiny_model):
    tok = CharTokenizer()
    task = _task()
    rng = np.random.default_rng(1)
    bank = jnp.asarray(rng.normal(size=(3, 3, 32)) * 4, jnp.float32)
    scores = task_scores(tiny_model, tok, task, task.validation, bank, max_new_tokens=6, rows=4)
    for k in range(3):
        ids = task.encode(tok, task.validation)
        gen = jaxsteer.generate(
            tiny_model, ids, tokenizer=tok, max_new_tokens=6, greedy=True, interventions=jaxsteer.Steer(bank[k])
        )
        assert scores[k] == task.score(task.validation, gen.texts)


def test_lexicon_score_known_answer():
    task = _task()
    assert task.score(["", "", "", ""], ["good good bad", "bad", "so nice", "nothing"]) == 0.5


def test_sweep_picks_the_best_validation_scale_and_reports(tiny_model, tmp_path, monkeypatch):
    tok = CharTokenizer()
    from jaxsteer.steering import evaluate

    monkeypatch.setattr(
        evaluate, "general_text_windows", lambda t, n, length: [t("some plain text here")["input_ids"]] * 2
    )
    trained = np.random.default_rng(2).normal(size=(3, 32)).astype(np.float32)
    res = sweep(
        tiny_model,
        tok,
        _task(),
        methods=("mean_difference", "pca"),
        layers=(1, 2),
        scales=(0, 4),
        vectors={"rl": trained},
        trained_scales=(1,),
        max_new_tokens=4,
        say=lambda *a: None,
    )
    assert len(res.rows) == 2 * 2 * 2 + 1 and len(res.best) == 2 * 2 + 1
    for b in res.best:
        group = [r for r in res.rows if (r["method"], r["layer"]) == (b["method"], b["layer"])]
        assert b["val"] == max(r["val"] for r in group)
    zero = [r for r in res.rows if r["scale"] == 0]
    assert all(r["kl"] == pytest.approx(0, abs=1e-6) for r in zero)
    assert all(r["ppl"] == pytest.approx(res.baseline["ppl"], rel=1e-5) for r in zero)
    assert "| unsteered |" in res.table() and "| rl | own | 1 |" in res.table()
    assert res.plot(str(tmp_path / "s.png")).endswith("s.png")
    assert json.load(open(res.save(str(tmp_path / "s.json"))))["task"] == "toy"
    # trained vectors alone (no extraction method) give the same rows as inside the full sweep
    alone = sweep(tiny_model, tok, _task(), methods=(), layers=(1, 2), vectors={"rl": trained}, trained_scales=(1,),
                  max_new_tokens=4, say=lambda *a: None)  # fmt: skip
    (rl,) = [r for r in res.rows if r["method"] == "rl"]
    assert [r["method"] for r in alone.rows] == ["rl"]
    assert {k: alone.rows[0][k] for k in ("val", "kl", "ppl")} == pytest.approx(
        {k: rl[k] for k in ("val", "kl", "ppl")}
    )
    with pytest.raises(ValueError, match="nothing to sweep"):
        sweep(tiny_model, tok, _task(), methods=(), say=lambda *a: None)


def test_shipped_tasks_load():
    task = load_task("sentiment")
    assert len(task.pairs) >= 24 and len(task.validation) >= 10 and len(task.test) >= 20
    assert all(len(p) == 3 for p in task.pairs) and task.scorer == "lexicon"
    arith = load_task("arithmetic")
    assert arith.scorer == "correctness" and set(arith.validation).isdisjoint(arith.test)
    pairs, chat = arith.extraction_pairs()
    assert not chat and pairs[0][0] == arith.prompt_template.format(prompt=arith.pairs[0][0])
    assert task.extraction_pairs() == (list(task.pairs), True)
    p = arith.test[0]
    assert arith.score([p], [f"The answer is {arith.references[p]}."]) == 1.0
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        load_task("nope")
