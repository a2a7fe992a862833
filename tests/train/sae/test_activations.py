"""The activation stream (jaxsteer.train.sae.activations): shuffled batches that resume bit for bit
from a JSON state."""

import json

import numpy as np

from jaxsteer.train.sae.activations import ActivationStream
from tests.train.sae.test_run import D, V, model  # noqa: F401, F811  (the tiny 3-layer fixture)


def test_stream_is_shuffled_and_resumable(model):  # noqa: F811 (the imported fixture)
    windows = np.random.RandomState(1).randint(0, V, (20, 8))
    a = ActivationStream(
        model, windows, site="resid_post", layer=1, batch_size=10, contexts_per_forward=4, buffer_batches=2
    )
    first = [next(a) for _ in range(3)]
    state = a.get_state()
    rest = [next(a) for _ in range(4)]
    b = ActivationStream(
        model, windows, site="resid_post", layer=1, batch_size=10, contexts_per_forward=4, buffer_batches=2
    )
    b.set_state(json.loads(json.dumps(state)))
    for x, y in zip(rest, [next(b) for _ in range(4)], strict=True):
        np.testing.assert_array_equal(x, y)
    assert first[0].shape == (10, D)


def test_cached_activations_from_disk_and_from_memory_agree(tmp_path):
    """The same rows in the same order from a .npy cache and from the array itself; every epoch
    visits each row at most once and reshuffles; state resumes."""
    from jaxsteer.train.sae.activations import CachedActivations

    acts = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / "a.npy", acts)
    disk, mem = CachedActivations(str(tmp_path / "a.npy"), 8, seed=1), CachedActivations(acts, 8, seed=1)
    a, b = [next(disk) for _ in range(12)], [next(mem) for _ in range(12)]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    epoch0, epoch1 = np.concatenate(a[:6])[:, 0], np.concatenate(a[6:])[:, 0]
    assert len(set(epoch0)) == 48 and not np.array_equal(epoch0, epoch1)
    again = CachedActivations(acts, 8, seed=1)
    again.set_state(mem.get_state())
    np.testing.assert_array_equal(next(again), next(mem))
