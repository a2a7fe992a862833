"""Device mesh and shardings for training: a `Mesh` with axes ("data", "fsdp").

- Batches: rows sharded over both axes (every device holds a slice of the batch; the fsdp axis is
  data parallel too, as in ZeRO-3 / FSDP). Micro-batched arrays `[M, b, ...]` keep the
  micro-batch axis unsharded.
- Small trainables (steering vectors, LoRA) and their optimizer state: replicated.
- Full fine-tuning (and the frozen base when `fsdp > 1`): each array is split along its largest
  axis divisible by the fsdp size (replicated when none is); XLA inserts the all-gathers.

- Rollouts (`sample_on_mesh`): the public sampler `models.generate.sample_tokens` jitted on the
  mesh with the prompts split over both batch axes, so each device prefills and decodes only its
  slice of the prompts (with their `samples_per_prompt` rows); fsdp-split weights are gathered by
  XLA as in the update. Random draws are the same as unsharded (each row draws with its own key).
  With `SamplingConfig.refill_slots` each device runs the refill sampler on its slice (`refill_on_mesh`).

The same code runs on 1 CPU device, N virtual CPU devices, a GPU or a TPU slice. Across
processes, each process passes its own rows to `global_batch` / `sample_on_mesh` and gets one
global array back (or its own rows, `distributed.local_rows`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..errors import InputError
from ..models.generate import Generation, PreparedPrompts, SamplingConfig, decode_completions, sample_tokens
from ..models.refill import sample_tokens_refill
from .distributed import local_rows, process_max

BATCH_AXES = ("data", "fsdp")
T = TypeVar("T")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A ("data", "fsdp") mesh.

    Args:
        data: data-parallel devices (-1: the rest).
        fsdp: devices each weight is sharded over (-1: the rest).
        devices: the devices (default: all).

    Returns:
        The mesh.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise InputError("mesh: at most one axis may be -1")
    if data == -1:
        if n % fsdp:
            raise InputError(f"mesh: {n} devices do not split into fsdp={fsdp}")
        data = n // fsdp
    if fsdp == -1:
        if n % data:
            raise InputError(f"mesh: {n} devices do not split into data={data}")
        fsdp = n // data
    if data * fsdp != n:
        raise InputError(f"mesh: data={data} x fsdp={fsdp} != {n} devices")
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
    spec: list[str | None] = [None] * len(shape)
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
    spec: list[str | tuple[str, ...] | None] = [None] * ndim
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


def replicate(tree: T, mesh: Mesh) -> T:
    """Every array leaf as a global array replicated on `mesh` (arrays already on its devices and
    Python scalars stay; host values must be equal on every process)."""
    rep = replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and x.sharding.device_set == rep.device_set:
            return x
        if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
            return x
        return jax.make_array_from_process_local_data(rep, np.asarray(x))

    return jax.tree_util.tree_map(one, tree)


@functools.partial(jax.jit, static_argnames=("sampling", "mesh"))
def sample_rows(model, prompt, mask, stop_ids, pad_id, key, interventions, *, sampling, mesh):
    """`sample_tokens` on global arrays with the rows (prompts in, completions out) constrained to
    the batch axes of `mesh` (what `sample_on_mesh` runs; `.lower(...)` shows the per-device program).
    With `sampling.refill_slots` every device runs the refill sampler on its own prompts
    (`refill_on_mesh`)."""
    if sampling.refill_slots:
        return refill_on_mesh(model, prompt, mask, stop_ids, pad_id, key, interventions, sampling, mesh)
    rows = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(BATCH_AXES, *[None] * (x.ndim - 1))))
    out = sample_tokens(model, rows(prompt), rows(mask), stop_ids, pad_id, key, interventions, sampling)
    return tuple(rows(x) for x in out)


def refill_on_mesh(model, prompt, mask, stop_ids, pad_id, key, interventions, sampling: SamplingConfig, mesh: Mesh):
    """The refill sampler (`models.refill`) on each device's slice of the prompts, with its own
    `sampling.refill_slots` slots and queue (`shard_map`): rows keep their global index for their
    random draws, so the tokens are those of one device. The weights are gathered whole on every
    device for the loop (fsdp-split weights are not re-gathered per layer as in the static sampler)."""
    rows_per_shard = prompt.shape[0] // n_batch_shards(mesh) * sampling.samples_per_prompt

    def shard(model, prompt, mask, stop_ids, pad_id, key, interventions):
        offset = jax.lax.axis_index(BATCH_AXES) * rows_per_shard
        return sample_tokens_refill(model, prompt, mask, stop_ids, pad_id, key, interventions, sampling, offset)

    rows, rep = P(BATCH_AXES), P()
    run = jax.shard_map(
        shard, mesh=mesh, in_specs=(rep, rows, rows, rep, rep, rep, rep), out_specs=(rows,) * 3, check_vma=False
    )
    return run(model, prompt, mask, stop_ids, pad_id, key, interventions)


def sample_on_mesh(
    model,
    prepared: PreparedPrompts,
    key: jax.Array,
    interventions: tuple,
    sampling: SamplingConfig,
    mesh: Mesh,
    tokenizer: Any = None,
) -> Generation:
    """`sample_tokens` on `mesh` with this process's prompts split over the batch axes.

    Every device samples only its slice; the tokens are those of `sample_tokens` without a mesh, for
    any number of processes. Prompts that do not divide over the process's devices are split as rows
    instead (each prompt repeated `samples_per_prompt` times; same rows, each prefilled on its
    device); rows that do not divide either are padded by repeating the last prompt and dropped (each
    row draws with its own key, `row_keys`, so the kept rows are unchanged). The prompt width is
    padded to the widest process's. `sampling.refill_slots` > 0: each device refills its own slots
    (`refill_on_mesh`).

    Args:
        model: the decoder.
        prepared: this process's prompts (`prepare_prompts`).
        key: the sampling key.
        interventions: as for `sample_tokens`.
        sampling: the sampler's settings.
        mesh: the ("data", "fsdp") mesh.
        tokenizer: decodes the completions (None: no texts).

    Returns:
        This process's rows as a `Generation` (prompts repeated `samples_per_prompt` times).
    """
    toks, mask = _widest(prepared, process_max(prepared.tokens.shape[1]))
    n, R = len(toks), sampling.samples_per_prompt
    local_shards = n_batch_shards(mesh) // jax.process_count()
    if n % local_shards and (n * R) % local_shards == 0:  # split rows, not prompts
        toks, mask = np.repeat(toks, R, axis=0), np.repeat(mask, R, axis=0)
        run_sampling, per_row = dataclasses.replace(sampling, samples_per_prompt=1), 1
    else:
        run_sampling, per_row = sampling, R
    rows = -(-len(toks) // local_shards) * local_shards
    toks, mask = (np.pad(x, ((0, rows - len(x)), (0, 0)), mode="edge") for x in (toks, mask))
    batch = batch_sharding(mesh, 2, micro=False)
    prompt, pmask = (jax.make_array_from_process_local_data(batch, x) for x in (toks, mask))
    model, stop_ids, key, interventions = replicate((model, prepared.stop_ids, key, interventions), mesh)
    out = sample_rows(
        model, prompt, pmask, stop_ids, prepared.pad_id, key, interventions, sampling=run_sampling, mesh=mesh
    )
    tokens, logprobs, lengths = (local_rows(x)[: n * R] for x in out)
    ptoks, pmask = (np.repeat(x, per_row, axis=0)[: n * R] for x in (toks, mask))
    return Generation(tokens, logprobs, lengths, ptoks, pmask, decode_completions(tokenizer, tokens, lengths))


def _widest(prepared: PreparedPrompts, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The prepared prompts left-padded to `width` columns."""
    extra = ((0, 0), (width - prepared.tokens.shape[1], 0))
    return np.pad(prepared.tokens, extra, constant_values=prepared.pad_id), np.pad(prepared.mask, extra)


__all__ = [
    "make_mesh",
    "replicated",
    "fsdp_spec",
    "tree_shardings",
    "batch_sharding",
    "n_batch_shards",
    "global_batch",
    "put",
    "replicate",
    "sample_rows",
    "refill_on_mesh",
    "sample_on_mesh",
]
