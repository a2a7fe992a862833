"""`jaxsteer.load_run(dir)` (issue 21): a run directory written by a 2-step toy training run gives
back the model, tokenizer, trained interventions / weights and the prompt formatter it trained
with; generating from it equals generating with the trained state `train` returned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import train_toy

import jaxsteer
from jaxsteer.train import train
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.trainable import build_policy

PROMPTS = [[5, 6, 7, 8, 9], [3, 4, 5, 6, 7]]


def _train(tmp_path, kind):
    extra = {"trainable.kind": kind, "trainable.lora_rank": 2} if kind == "lora" else {}
    cfg = config_from_dict(train_toy.config_dict(str(tmp_path / kind), steps=2, **{"checkpoint.every": 2}, **extra))
    return train(cfg)


@pytest.fixture(scope="module")
def steering(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("runs"), "steering")


def test_load_run_returns_the_trained_vectors_and_generates_as_trained(steering):
    run = jaxsteer.load_run(steering.output_dir)
    assert run.step == 2 and run.config.trainable.kind == "steering" and run.tokenizer is None
    np.testing.assert_array_equal(run.vectors, np.load(steering.files["vectors_npy"]))
    assert len(run.interventions) == 1 and isinstance(run.interventions[0], jaxsteer.Steer)
    policy, ivs = build_policy(steering.model, steering.trainable, steering.config.trainable)
    want = jaxsteer.generate(policy, PROMPTS, interventions=ivs, max_new_tokens=4, greedy=True)
    got = run.generate(PROMPTS, greedy=True)  # max_new_tokens: the run's sampling.max_new_tokens (4)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    base = jaxsteer.generate(run.base_model, PROMPTS, max_new_tokens=4, greedy=True)
    assert not np.array_equal(base.logprobs, want.logprobs)  # the trained vectors do something
    assert repr(run).startswith(f"LoadedRun({steering.output_dir!r}, step=2, grpo on steering")


def test_load_run_lora_applies_the_adapters(tmp_path):
    result = _train(tmp_path, "lora")
    run = jaxsteer.load_run(result.output_dir)
    assert run.interventions == () and "lora" in run.model.params["layers"]
    policy, _ = build_policy(result.model, result.trainable, result.config.trainable)
    tokens = np.asarray(PROMPTS, np.int32)
    np.testing.assert_array_equal(jaxsteer.forward(run.model, tokens)[0], jaxsteer.forward(policy, tokens)[0])
    with pytest.raises(AttributeError, match="trained 'lora', not steering vectors"):
        _ = run.vectors


@pytest.mark.parametrize(
    "template,system", [("Q: {prompt}\nA:", None), ("chat", "Answer with a number."), ("chat", None)]
)
def test_load_run_formats_prompts_as_training_did(steering, real_model, template, system):
    from jaxsteer.train.build import encode_prompt
    from jaxsteer.train.data import Example

    _, tok = real_model
    run = jaxsteer.load_run(
        steering.output_dir,
        tokenizer=tok,
        overrides=[f"data.prompt_template={json.dumps(template)}", f"data.system={json.dumps(system)}"],
    )
    assert run.config.data.prompt_template == template
    want = encode_prompt(Example("What is 2 + 3?", "5"), tok, template, system)
    assert run.encode("What is 2 + 3?") == want
    if template == "chat" and system:
        assert "Answer with a number." in tok.decode(want)


def test_load_run_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a run directory"):
        jaxsteer.load_run(str(tmp_path))


def test_cli_generate_with_run(steering, capsys):
    from jaxsteer import cli

    # the toy run has token-id prompts and no tokenizer: a text prompt is a one-line error naming the cause
    with pytest.raises(
        SystemExit, match="jaxsteer generate: string prompts need a tokenizer|text prompts need a tokenizer"
    ):
        cli.main(["generate", "--run", steering.output_dir, "--prompt", "hi", "--greedy"])
    with pytest.raises(SystemExit, match="--no-chat does not apply with --run"):
        cli.main(["generate", "--run", steering.output_dir, "--prompt", "hi", "--no-chat"])


def test_load_run_of_an_es_run(tmp_path):
    cfg = config_from_dict(
        train_toy.config_dict(
            str(tmp_path / "es"),
            steps=2,
            **{"algorithm": "es", "es": {"population": 8, "sigma": 0.5, "lr": 1.0}, "checkpoint.every": 2},
        )
    )
    result = train(cfg)
    run = jaxsteer.load_run(result.output_dir)
    assert run.trainable is None and run.step == 2 and len(run.interventions) == 1
    np.testing.assert_array_equal(run.vectors, np.load(result.files["vectors_npy"]))
    policy, ivs = build_policy(result.model, result.trainable, result.config.trainable)
    tokens = np.asarray(PROMPTS, np.int32)
    np.testing.assert_allclose(
        jaxsteer.forward(run.model, tokens, interventions=run.interventions)[0],
        jaxsteer.forward(policy, tokens, interventions=ivs)[0],
        atol=1e-6,
    )
