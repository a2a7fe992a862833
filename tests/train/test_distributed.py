"""`jaxsteer train`'s cluster arguments (flags or JAXSTEER_* variables) for jax.distributed, checked
without starting processes (tests/integration/test_multiprocess.py runs real ones)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsteer.train.distributed import ENV, cluster_args, gather_rows, initialize, local_rows, process_max


def test_flags_and_environment(monkeypatch):
    for v in ENV.values():
        monkeypatch.delenv(v, raising=False)
    assert cluster_args() is None and initialize() is False  # single process: nothing to join
    assert cluster_args("localhost:1", 2, 1) == {
        "coordinator_address": "localhost:1",
        "num_processes": 2,
        "process_id": 1,
    }
    monkeypatch.setenv(ENV["coordinator"], "10.0.0.1:1234")
    monkeypatch.setenv(ENV["num_processes"], "4")
    monkeypatch.setenv(ENV["process_id"], "3")
    assert cluster_args() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert cluster_args(process_id=0)["process_id"] == 0  # a flag beats the variable


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"coordinator": "localhost:1"}, "--num-processes"),
        ({"num_processes": 2, "process_id": 0}, "--coordinator"),
        ({"coordinator": "localhost:1", "num_processes": 2, "process_id": 2}, "process-id"),
    ],
)
def test_incomplete_or_bad_arguments_are_refused(monkeypatch, kw, match):
    for v in ENV.values():
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(ValueError, match=match):
        cluster_args(**kw)


def test_single_process_helpers_are_identities():
    import jax.numpy as jnp

    x = np.arange(6).reshape(3, 2)
    assert (local_rows(jnp.asarray(x)) == x).all() and gather_rows(x) is x and process_max(7) == 7
