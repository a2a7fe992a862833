"""The interpretability toolkit on the real default model (SmolLM2-135M-Instruct) and the CLI."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.analysis import (
    accumulated_lens,
    activation_patching,
    attribution_patching,
    compare_attribution,
    tokenize_pair,
    vector_lens,
)

CLEAN, CORRUPT = "The capital of France is", "The capital of Italy is"


@pytest.fixture(scope="module")
def real(real_model):
    return real_model  # conftest.py: loaded once per session


@pytest.fixture(scope="module")
def capital(real):
    model, tok = real
    clean, corrupt = tokenize_pair(tok, CLEAN, CORRUPT)
    answers = (tok(" Paris")["input_ids"][0], tok(" Rome")["input_ids"][0])
    return clean, corrupt, answers


def test_capital_pair_tokenizes_to_equal_lengths(real, capital):
    _, tok = real
    clean, corrupt, answers = capital
    assert clean.shape == corrupt.shape == (1, 5)
    assert (clean != corrupt).sum() == 1  # only the country differs
    assert [tok.decode([a]) for a in answers] == [" Paris", " Rome"]
    with pytest.raises(ValueError, match="same length"):
        tokenize_pair(tok, CLEAN, "The capital of the United Kingdom is")


@pytest.fixture(scope="module")
def resid_sweep(real, capital):
    model, tok = real
    clean, corrupt, answers = capital
    return activation_patching(model, clean, corrupt, site="resid_pre", answers=answers, tokenizer=tok)


def test_resid_pre_sweep_on_the_real_model(real, resid_sweep):
    model, _ = real
    res = resid_sweep
    L = model.config.n_layers
    assert res.values.shape == (L, 5)
    assert res.clean_metric > 3 and res.corrupt_metric < -3  # Paris vs Rome flips between the prompts
    assert res.clean_tokens[3] == " France" and res.corrupt_tokens[3] == " Italy"
    # layer 0 at the country token is the whole clean run; unchanged tokens do nothing anywhere
    assert res.values[0, 3] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(res.values[:, :3], 0.0, atol=1e-4)
    assert abs(res.values[0, 4]) < 1e-4
    # information moves from the country token to the last token with depth
    assert res.values[-1, 4] > 0.9 and abs(res.values[-1, 3]) < 0.1
    assert res.values[:5, 3].min() > 0.8


def test_attribution_tracks_real_patching_on_the_real_model(real, capital, resid_sweep):
    model, _ = real
    clean, corrupt, answers = capital
    attr = attribution_patching(model, clean, corrupt, sites=("resid_pre", "z"), answers=answers)
    heads = activation_patching(model, clean, corrupt, site="z", answers=answers)
    # measured: Pearson 0.990 (resid_pre, 30 layers x 5 positions), 0.998 (z, 30 layers x 9 heads)
    for site, act in (("resid_pre", resid_sweep), ("z", heads)):
        assert attr[site].values.shape == act.values.shape
        r = compare_attribution(attr[site], act)
        assert r["pearson"] > 0.95, (site, r)


def test_lens_on_the_real_model(real, capital):
    model, tok = real
    clean, _, answers = capital
    res = accumulated_lens(model, clean, tokenizer=tok, k=3)
    assert res.top_tokens[-1, 0, -1, 0] == " Paris"  # with the final norm the last row is the model's output
    assert res.position_labels[3] == " France"
    w = np.asarray(model.params["embed"])  # tied embeddings: the unembedding rows
    ids = clean[0, [0, 1, 2, 4]]  # "The", " capital", " of", " is" (rarer tokens need not rank first in a real model)
    raw = vector_lens(model, w[ids], tokenizer=tok, k=5)
    np.testing.assert_array_equal(raw.top_ids[:, 0], ids)
    assert raw.top_tokens[1, 0] == " capital"
    np.testing.assert_array_equal(raw.top_ids, np.argsort(-(w[ids] @ w.T), axis=-1)[:, :5])


def _tiny_hf_dir(tmp_path, tok):
    """A tiny random Llama saved as a Hugging Face directory with the real tokenizer (for the CLI)."""
    import transformers
    from safetensors.numpy import save_file

    from jaxsteer.models.loading import to_hf_state_dict

    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    cfg.save_pretrained(tmp_path)
    model = jaxsteer.init_params(jaxsteer.from_hf_config(cfg), jnp.asarray([0, 1], jnp.uint32), scale=0.3)
    save_file(to_hf_state_dict(model), str(tmp_path / "model.safetensors"))
    tok.save_pretrained(tmp_path)
    return model


def test_cli_lens_and_patch(real, tmp_path, capsys):
    from jaxsteer import cli

    _, tok = real
    _tiny_hf_dir(tmp_path / "m", tok)
    vec = np.random.RandomState(0).normal(size=(2, 32)).astype(np.float32)
    np.save(tmp_path / "v.npy", vec)
    cli.main(
        [
            "lens",
            "--model",
            str(tmp_path / "m"),
            "--vectors",
            str(tmp_path / "v.npy"),
            "--top-k",
            "4",
            "--out",
            str(tmp_path / "lens.png"),
        ]
    )
    out = capsys.readouterr().out
    assert "layer 1" in out and (tmp_path / "lens.png").stat().st_size > 1000
    cli.main(
        [
            "patch",
            "--model",
            str(tmp_path / "m"),
            "--clean",
            CLEAN,
            "--corrupt",
            CORRUPT,
            "--answers",
            " Paris",
            " Rome",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    data = json.loads((tmp_path / "p" / "patching_resid_pre.json").read_text())
    assert np.asarray(data["values"]).shape == (2, 5)
    assert data["clean_tokens"][3] == " France"
    assert (tmp_path / "p" / "patching_resid_pre.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="same length"):
        cli.main(
            [
                "patch",
                "--model",
                str(tmp_path / "m"),
                "--clean",
                CLEAN,
                "--corrupt",
                "The capital of the UK is",
                "--answers",
                " Paris",
                " Rome",
            ]
        )
