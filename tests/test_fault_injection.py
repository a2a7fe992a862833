"""Fault injection (issue 20): damaged checkpoints resume to the same result as an undamaged run,
for RL and SAE runs, one test per kind of damage. Tiny random models, 4-step toy runs."""

from __future__ import annotations

import glob
import os
import shutil
import warnings

import numpy as np
import pytest

import train_toy as T
from jaxsteer.train import train
from jaxsteer.train.checkpoint import Checkpointer
from jaxsteer.train.config import config_from_dict


def _truncate_an_array_file(step_dir):
    files = sorted(f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
                   if os.path.isfile(f) and os.path.getsize(f) > 64 and "metadata" not in os.path.basename(f).lower())
    assert files, os.listdir(step_dir)
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


DAMAGE = {
    "truncated array file": _truncate_an_array_file,
    "state/_METADATA deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "state/ deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "meta/metadata deleted": lambda d: os.remove(os.path.join(d, "meta", "metadata")),
}


def _rl_cfg(out):
    return config_from_dict(T.config_dict(str(out), **{"model.random_scale": 0.2, "sampling.max_new_tokens": 2,
                                                       "steps": 4, "checkpoint.every": 2, "checkpoint.keep": 3}))


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("undamaged")
    result = train(_rl_cfg(out))
    return out, np.asarray(result.trainable["vectors"])


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_after_a_damaged_latest_checkpoint_finishes_equal_to_an_undamaged_run(undamaged, tmp_path, kind):
    reference_dir, reference = undamaged
    run = tmp_path / "run"
    shutil.copytree(reference_dir, run)
    for name in ("steering_vectors.npy", "steering_vectors.safetensors", "summary.json"):
        if (run / name).exists():
            os.remove(run / name)
    DAMAGE[kind](str(run / "checkpoints" / "4"))
    with pytest.warns(UserWarning, match=r"step 4.*moved to .*damaged-4.*resuming from .*step 2"):
        result = train(_rl_cfg(run), resume=True)
    got = np.asarray(result.trainable["vectors"])
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert (run / "checkpoints" / "damaged-4").is_dir()
    assert Checkpointer(str(run / "checkpoints")).all_steps() == [2, 4]
    assert os.path.isfile(run / "steering_vectors.npy")
    with warnings.catch_warnings():  # a later --resume finds the re-saved step 4 intact
        warnings.simplefilter("error", UserWarning)
        again = train(_rl_cfg(run), resume=True)
    np.testing.assert_allclose(np.asarray(again.trainable["vectors"]), reference, atol=1e-6)


@pytest.fixture(scope="module")
def sae_undamaged(tmp_path_factory):
    from test_sae_train import CharTokenizer, run_cfg, tiny_sae_model

    from jaxsteer.sae.run import train_sae

    root = tmp_path_factory.mktemp("sae")
    text = root / "corpus.txt"
    words = np.array(["alpha", "beta", "gamma", "one", "two", "plus", "equals", "the"])
    text.write_text("\n\n".join(" ".join(np.random.default_rng(i).choice(words, 30)) for i in range(40)))
    model = tiny_sae_model()
    cfg = lambda out: run_cfg(str(text), out, **{"train.steps": 4, "save_every": 2, "keep": 3})  # noqa: E731
    straight = train_sae(cfg(root / "a"), model=model, tokenizer=CharTokenizer(), progress=False)
    return cfg, model, CharTokenizer(), straight


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_sae_resume_after_a_damaged_latest_checkpoint_equals_an_undamaged_run(sae_undamaged, tmp_path, kind):
    from jaxsteer.sae.run import load_sae, train_sae

    cfg, model, tok, straight = sae_undamaged
    run = tmp_path / "b"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "sae")
    DAMAGE[kind](str(run / "checkpoints" / "4"))
    with pytest.warns(UserWarning, match=r"step 4.*moved to .*damaged-4.*resuming from .*step 2"):
        train_sae(cfg(run), model=model, tokenizer=tok, resume=True, progress=False)
    a, b = load_sae(straight), load_sae(str(run))
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
    assert Checkpointer(str(run / "checkpoints")).all_steps() == [2, 4]
