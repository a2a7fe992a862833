"""Multi-process runs on JAX's own runtime (`jax.distributed`), and the host-side helpers they need.

    jaxsteer train CONFIG --coordinator 10.0.0.1:1234 --num-processes 4 --process-id 2
    JAXSTEER_COORDINATOR=10.0.0.1:1234 JAXSTEER_NUM_PROCESSES=4 JAXSTEER_PROCESS_ID=2 jaxsteer train CONFIG
    jaxsteer train CONFIG --distributed          # JAX's detection: TPU pods, SLURM, Open MPI, ...

Every process runs the same program on its own devices; arrays spanning processes are global
`jax.Array`s on one mesh. Each process feeds its own rows (`sharding.global_batch`), reads back
its own rows (`local_rows`), and small host values are agreed on with `process_max` /
`gather_rows`. On CPU the collectives go through gloo (set here before initialising).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

ENV = {"coordinator": "JAXSTEER_COORDINATOR", "num_processes": "JAXSTEER_NUM_PROCESSES",
       "process_id": "JAXSTEER_PROCESS_ID"}


def cluster_args(coordinator: str | None = None, num_processes: int | None = None,
                 process_id: int | None = None) -> dict | None:
    """`jax.distributed.initialize` keyword arguments from explicit values, else the JAXSTEER_*
    environment variables; None when neither names a coordinator (a single-process run)."""
    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    if num_processes is None and os.environ.get(ENV["num_processes"]):
        num_processes = int(os.environ[ENV["num_processes"]])
    if process_id is None and os.environ.get(ENV["process_id"]):
        process_id = int(os.environ[ENV["process_id"]])
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes / --process-id need --coordinator HOST:PORT")
        return None
    if num_processes is None or process_id is None:
        raise ValueError("--coordinator needs --num-processes N and --process-id I")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process-id {process_id} must be in [0, {num_processes})")
    return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False) -> bool:
    """Join a multi-process run: explicit values or JAXSTEER_* variables (`cluster_args`), or with
    `auto` JAX's own cluster detection. Call before any other JAX work. Returns whether it joined."""
    kwargs = cluster_args(coordinator, num_processes, process_id)
    if kwargs is None and not auto:
        return False
    platforms = jax.config.jax_platforms
    if platforms == "cpu" or (not platforms and _cpu_only()):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**(kwargs or {}))
    return True


def _cpu_only() -> bool:
    """Whether no accelerator plugin is installed (then the CPU needs gloo for cross-process collectives)."""
    import importlib.util

    return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu",
                                                          "jax_rocm60_plugin", "jax_rocm7_plugin"))


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over its leading axis: its addressable shards in
    row order, each row once (all of `x` when it is fully addressable)."""
    if x.is_fully_addressable:
        return np.asarray(x)
    parts: dict[int, Any] = {}
    for shard in x.addressable_shards:
        parts.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(parts[k]) for k in sorted(parts)])


def to_host(tree: Any) -> Any:
    """`jax.device_get` that also takes arrays split over processes (gathered; every process
    must call it)."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)


def process_max(value: int) -> int:
    """The largest of every process's `value` (itself in a single-process run)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray(value, np.int64))))


def gather_rows(x):
    """This process's rows of a host array, concatenated over all processes in process order
    (a no-op for one); rows keep their trailing shape."""
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    x = np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x)).reshape(-1, *x.shape[1:])


__all__ = ["ENV", "cluster_args", "initialize", "local_rows", "to_host", "process_max", "gather_rows"]
