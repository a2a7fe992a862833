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
import socket
import sys
import threading
import time
from typing import Any

import jax
import numpy as np

from ..errors import InputError

ENV = {
    "coordinator": "JAXSTEER_COORDINATOR",
    "num_processes": "JAXSTEER_NUM_PROCESSES",
    "process_id": "JAXSTEER_PROCESS_ID",
    "startup_timeout": "JAXSTEER_STARTUP_TIMEOUT",
}
STARTUP_TIMEOUT = 120.0  # seconds a process waits for all the others to join


def check_coordinator(address: str, process_id: int) -> tuple[str, int]:
    """`(host, port)` of a HOST:PORT coordinator address.

    Args:
        address: "HOST:PORT".
        process_id: this process's id (process 0 serves the address, so its port must be free).

    Returns:
        The host and the port.

    Raises:
        ValueError: naming the address when the port is not in 1..65535, the host does not resolve,
            or (process 0) the port is taken.
    """
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--coordinator {address!r}: expected HOST:PORT with a port in 1..65535")
    try:
        socket.getaddrinfo(host, int(port), proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as err:
        raise InputError(f"--coordinator {address!r}: cannot resolve host {host!r} ({err})") from None
    if process_id == 0:  # the coordinator service binds every interface on this port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("", int(port)))
            except OSError as err:
                raise InputError(
                    f"--coordinator {address!r}: process 0 cannot serve on port {port} "
                    f"({err.strerror}); choose a free port"
                ) from None
    return host, int(port)


def cluster_args(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict | None:
    """`jax.distributed.initialize` keyword arguments from explicit values, else the JAXSTEER_* variables.

    Args:
        coordinator: "HOST:PORT" of process 0.
        num_processes: the number of processes.
        process_id: this process's id.

    Returns:
        The keyword arguments, or None when nothing names a coordinator (a single-process run).
    """
    coordinator = coordinator or os.environ.get(ENV["coordinator"])
    num_processes = num_processes if num_processes is not None else _env_number("num_processes", int)
    process_id = process_id if process_id is not None else _env_number("process_id", int)
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise InputError("--num-processes / --process-id need --coordinator HOST:PORT")
        return None
    if num_processes is None or process_id is None:
        raise InputError("--coordinator needs --num-processes N and --process-id I")
    if num_processes < 1:
        raise InputError(f"--num-processes must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise InputError(f"--process-id {process_id} must be in [0, {num_processes})")
    check_coordinator(coordinator, process_id)
    return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}


def _env_number(name: str, kind: type):
    text = os.environ.get(ENV[name])
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise InputError(f"{ENV[name]}={text!r} is not {'an integer' if kind is int else 'a number'}") from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    timeout: float | None = None,
) -> bool:
    """Join a multi-process run. Call before any other JAX work.

    While the processes gather, a line every few seconds says who it waits for; after `timeout`
    seconds without all of them, it prints one line naming the coordinator and the process ids that
    never joined, and exits the process with status 1 (JAX's runtime would otherwise abort with a
    C++ stack trace after 300 s).

    Args:
        coordinator: "HOST:PORT" of process 0 (default: JAXSTEER_* variables, `cluster_args`).
        num_processes: the number of processes.
        process_id: this process's id.
        auto: without a coordinator, use JAX's own cluster detection.
        timeout: seconds to wait for every process (default JAXSTEER_STARTUP_TIMEOUT or `STARTUP_TIMEOUT`).

    Returns:
        Whether it joined a multi-process run.
    """
    kwargs = cluster_args(coordinator, num_processes, process_id)
    if kwargs is None and not auto:
        return False
    timeout = float(timeout if timeout is not None else _env_number("startup_timeout", float) or STARTUP_TIMEOUT)
    if not (timeout > 0 and np.isfinite(timeout)):
        raise InputError(f"--startup-timeout must be a positive number of seconds, got {timeout}")
    platforms = jax.config.jax_platforms  # type: ignore[attr-defined]  # JAX's options are dynamic attributes
    if platforms == "cpu" or (not platforms and _cpu_only()):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    joined = threading.Event()
    threading.Thread(
        target=_startup_watch, args=(kwargs, timeout, joined), daemon=True, name="jaxsteer-startup-watch"
    ).start()
    try:
        jax.distributed.initialize(**(kwargs or {}), initialization_timeout=int(timeout) + 60)
    finally:
        joined.set()
    return True


def _startup_watch(kwargs: dict | None, timeout: float, joined: threading.Event) -> None:
    """Progress lines while `jax.distributed.initialize` waits for the other processes; one line
    and `os._exit(1)` when they have not all joined after `timeout` seconds."""
    where = (
        f"coordinator {kwargs['coordinator_address']}" if kwargs else "the coordinator found by JAX's cluster detection"
    )
    me = kwargs["process_id"] if kwargs else None
    others = [i for i in range(kwargs["num_processes"]) if i != me] if kwargs else []
    who = f"{kwargs['num_processes']} processes" if kwargs else "every process"
    start, every = time.monotonic(), max(1.0, min(10.0, timeout / 4))
    while not joined.wait(every):
        waited = time.monotonic() - start
        if waited >= timeout:
            missing = (
                f"process {others[0]} never joined"
                if len(others) == 1
                else f"not all of processes {', '.join(map(str, others))} joined"
                if others
                else "not every process joined"
            )
            sys.stderr.write(
                f"jaxsteer: start-up timed out after {timeout:g} s at {where}: {missing} (this is process "
                f"{me if me is not None else '?'}); start them with the same --coordinator and "
                "--num-processes, or raise --startup-timeout\n"
            )
            sys.stderr.flush()
            os._exit(1)
        sys.stderr.write(
            f"jaxsteer: waiting for {who} at {where} (this is process {me if me is not None else '?'}): "
            f"{waited:.0f} s of {timeout:g} s\n"
        )
        sys.stderr.flush()


def _cpu_only() -> bool:
    """Whether no accelerator plugin is installed (then the CPU needs gloo for cross-process collectives)."""
    import importlib.util

    return not any(
        importlib.util.find_spec(m)
        for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu", "jax_rocm60_plugin", "jax_rocm7_plugin")
    )


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


__all__ = [
    "ENV",
    "STARTUP_TIMEOUT",
    "check_coordinator",
    "cluster_args",
    "initialize",
    "local_rows",
    "to_host",
    "process_max",
    "gather_rows",
]
