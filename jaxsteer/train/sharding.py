"""Device mesh and shardings for training: a `Mesh` with axes ("data", "fsdp").

- Batches: rows sharded over both axes (every device holds a slice of the batch; the fsdp axis is
  data parallel too, as in ZeRO-3 / FSDP). Micro-batched arrays `[M, b, ...]` keep the
  micro-batch axis unsharded.
- Small trainables (steering vectors, LoRA) and their optimizer state: replicated.
- Full fine-tuning (and the frozen base when `fsdp > 1`): each array is split along its largest
  axis divisible by the fsdp size (replicated when none is); XLA inserts the all-gathers.

The same code runs on 1 CPU device, N virtual CPU devices, a GPU or a TPU slice. Across
processes, each process passes its own rows to `global_batch` and gets one global array back.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh over `devices` (default: all); -1 on one axis = the rest."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one axis may be -1")
    if data == -1:
        if n % fsdp:
            raise ValueError(f"mesh: {n} devices do not split into fsdp={fsdp}")
        data = n // fsdp
    if fsdp == -1:
        if n % data:
            raise ValueError(f"mesh: {n} devices do not split into data={data}")
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} != {n} devices")
    return Mesh(np.asarray(devices, dtype=object).reshape(data, fsdp), BATCH_AXES)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """Shard the largest axis divisible by `fsdp` (the last such axis on ties); else replicate."""
    if fsdp <= 1 or not shape:
        return P()
    best = None
    for ax, n in enumerate(shape):
        if n % fsdp == 0 and n >= fsdp and (best is None or n >= shape[best]):
            best = ax
    if best is None:
        return P()
    spec = [None] * len(shape)
    spec[best] = "fsdp"
    return P(*spec)


def tree_shardings(tree: Any, mesh: Mesh, shard: bool) -> Any:
    """NamedShardings for every array leaf: fsdp-split when `shard`, else replicated."""
    fsdp = mesh.shape["fsdp"]

    def one(x):
        shape = tuple(np.shape(x))
        return NamedSharding(mesh, fsdp_spec(shape, fsdp) if shard else P())

    return jax.tree_util.tree_map(one, tree)


def batch_sharding(mesh: Mesh, ndim: int, micro: bool = True) -> NamedSharding:
    """Rows over ("data", "fsdp"); with `micro` the leading axis is the unsharded micro-batch axis."""
    spec = [None] * ndim
    spec[1 if micro else 0] = BATCH_AXES
    return NamedSharding(mesh, P(*spec))


def n_batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local: np.ndarray, mesh: Mesh, micro: bool = True) -> jax.Array:
    """This process's rows -> one global array sharded over the batch axes (multi-host safe)."""
    local = np.asarray(local)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim, micro), local)


def put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put` of a pytree onto matching shardings."""
    return jax.device_put(tree, shardings)


__all__ = [
    "make_mesh",
    "replicated",
    "fsdp_spec",
    "tree_shardings",
    "batch_sharding",
    "n_batch_shards",
    "global_batch",
    "put",
]
