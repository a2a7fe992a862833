"""Checkpoints: round trip, and a clear CheckpointError (never a partial load) for mismatched
models, mismatched trainables, and corrupted files."""

from __future__ import annotations

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.train.checkpoint import Checkpointer, CheckpointError

IDENT = {
    "architecture": "LlamaForCausalLM",
    "n_layers": 2,
    "d_model": 8,
    "vocab_size": 32,
    "n_heads": 2,
    "n_kv_heads": 1,
    "d_mlp": 16,
}
TCFG = {"kind": "steering", "layers": None, "site": "resid_post", "rank": None}


def _state(shape=(2, 8), seed=0):
    k = jax.random.PRNGKey(seed)
    return {
        "train": {
            "step": jnp.int32(3),
            "trainable": {"vectors": jax.random.normal(k, shape)},
            "opt": {"mu": jnp.ones(shape), "count": jnp.int32(3)},
        },
        "rng": jax.random.PRNGKey(7),
    }


def _save(tmp_path, state=None, step=3):
    ck = Checkpointer(str(tmp_path / "ck"), keep=2)
    ck.save(step, state if state is not None else _state(), {"model": IDENT, "trainable": TCFG, "data_state": {"i": 5}})
    return ck


def test_round_trip(tmp_path):
    state = _state()
    ck = _save(tmp_path, state)
    target = jax.tree_util.tree_map(jnp.zeros_like, state)
    restored, meta = ck.restore(target, identity=IDENT, trainable_config=TCFG)
    assert meta["step"] == 3 and meta["data_state"] == {"i": 5}
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=False):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keep_last_k(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"), keep=2)
    for step in (1, 2, 3):
        ck.save(step, _state(), {"model": IDENT, "trainable": TCFG})
    assert ck.all_steps() == [2, 3]


@pytest.mark.parametrize(
    "identity, tcfg, target, needle",
    [
        (dict(IDENT, d_model=16), TCFG, None, r"different model: d_model=8 in the checkpoint, 16 in this run"),
        (dict(IDENT, architecture="Qwen2ForCausalLM"), TCFG, None, r"different model: architecture"),
        (IDENT, dict(TCFG, kind="lora"), None, r"different trainable: kind='steering' in the checkpoint, 'lora'"),
        (IDENT, TCFG, _state(shape=(3, 8)), r"'train/trainable/vectors' has shape \(2, 8\).*expects \(3, 8\)"),
        (
            IDENT,
            TCFG,
            {"train": {"trainable": {"a": jnp.zeros(2)}}, "rng": jnp.zeros(2, jnp.uint32)},
            r"different state structure",
        ),
    ],
)
def test_mismatch_is_a_clear_error(tmp_path, identity, tcfg, target, needle):
    ck = _save(tmp_path)
    target = target if target is not None else _state()
    with pytest.raises(CheckpointError, match=needle):
        ck.restore(target, identity=identity, trainable_config=tcfg)


def _data_files(root):
    files = [
        f
        for f in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if os.path.isfile(f) and "state" in f.split(os.sep) and os.path.getsize(f) > 0
    ]
    return files


def test_corrupted_data_is_a_clear_error(tmp_path):
    _save(tmp_path)
    target = _state()
    files = _data_files(str(tmp_path / "ck"))
    assert files
    for f in files:  # overwrite every byte of the array data with garbage of the same size
        size = os.path.getsize(f)
        with open(f, "wb") as fh:
            fh.write(np.random.RandomState(0).bytes(size))
    with pytest.raises(CheckpointError, match=r"corrupted"):
        Checkpointer(str(tmp_path / "ck")).restore(target, identity=IDENT, trainable_config=TCFG)


def test_truncated_data_is_a_clear_error(tmp_path):
    _save(tmp_path)
    for f in _data_files(str(tmp_path / "ck")):
        with open(f, "r+b") as fh:
            fh.truncate(max(0, os.path.getsize(f) // 2))
    with pytest.raises(CheckpointError, match=r"corrupted"):
        Checkpointer(str(tmp_path / "ck")).restore(_state(), identity=IDENT, trainable_config=TCFG)


def test_corrupted_meta_is_a_clear_error(tmp_path):
    _save(tmp_path)
    metas = [f for f in glob.glob(str(tmp_path / "ck" / "*" / "meta" / "metadata"))]
    assert metas
    for f in metas:
        with open(f, "w") as fh:
            fh.write("{not json")
    with pytest.raises(CheckpointError, match=r"metadata is missing or unreadable"):
        Checkpointer(str(tmp_path / "ck")).restore(_state(), identity=IDENT, trainable_config=TCFG)


def test_flipped_value_is_caught_by_fingerprint(tmp_path):
    """A checkpoint whose arrays decode fine but differ from what was saved is refused."""
    _save(tmp_path)
    metas = [f for f in glob.glob(str(tmp_path / "ck" / "*" / "meta" / "metadata"))]
    for f in metas:  # simulate silent corruption: the recorded fingerprint no longer matches
        meta = json.load(open(f))
        key = "train/trainable/vectors"
        meta["fingerprint"][key] = "crc:00000000"
        json.dump(meta, open(f, "w"))
    with pytest.raises(CheckpointError, match=r"does not match its recorded fingerprint"):
        Checkpointer(str(tmp_path / "ck")).restore(_state(), identity=IDENT, trainable_config=TCFG)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint found"):
        Checkpointer(str(tmp_path / "empty")).restore(_state(), identity=IDENT, trainable_config=TCFG)


def test_damaged_latest_falls_back_to_the_newest_intact_step(tmp_path):
    ck = Checkpointer(str(tmp_path / "ck"), keep=3)
    for step in (1, 2, 3):
        ck.save(step, _state(seed=step), {"model": IDENT, "trainable": TCFG})
    for f in _data_files(str(tmp_path / "ck" / "3")):  # a kill / disk fault damaged the newest one
        with open(f, "r+b") as fh:
            fh.truncate(max(0, os.path.getsize(f) // 2))
    fresh = Checkpointer(str(tmp_path / "ck"))
    with pytest.warns(
        UserWarning, match=r"step 3.*corrupted.*moved to .*damaged-3; .*newest intact checkpoint, step 2"
    ):
        restored, meta = fresh.restore(_state(), identity=IDENT, trainable_config=TCFG)
    assert meta["step"] == 2
    np.testing.assert_array_equal(
        np.asarray(restored["train"]["trainable"]["vectors"]),
        np.asarray(_state(seed=2)["train"]["trainable"]["vectors"]),
    )
    # the damaged step was moved aside (kept for inspection), so training re-reaches and re-saves it
    assert fresh.all_steps() == [1, 2] and os.path.isdir(tmp_path / "ck" / "damaged-3")
    fresh.save(3, _state(seed=3), {"model": IDENT, "trainable": TCFG})
    assert fresh.restore(_state(), identity=IDENT, trainable_config=TCFG)[1]["step"] == 3
    # an intact checkpoint that does not fit this run is an error, never skipped over
    with pytest.raises(CheckpointError, match="different model"):
        fresh.restore(_state(), identity=dict(IDENT, d_model=16), trainable_config=TCFG)
