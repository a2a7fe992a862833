"""Checkpoints with Orbax `CheckpointManager`: train state + JSON metadata, validated on restore.

A checkpoint step directory holds two items:

- `state`: the pytree `{"step", "trainable", "opt", "rng"}` (Orbax `StandardSave`; every process
  writes its own shards, so it is multi-host safe; the write is atomic: a temporary directory
  renamed when complete);
- `meta`: JSON with the format tag, the model identity (architecture, n_layers, d_model,
  vocab_size, heads, d_mlp), the trainable config, the expected tree (path -> shape, dtype), a
  per-leaf fingerprint (crc32 of the bytes, or a float sum for arrays spread over hosts), the
  data-iterator state and the effective run config.

`restore` never loads partially: it reads `meta` first and compares model identity, trainable
kind/config and every leaf's shape and dtype with what the current run expects, raising
`CheckpointError` naming the first difference; then it restores into the expected abstract tree
(with the run's shardings) and checks the fingerprints. Unreadable or corrupted files raise
`CheckpointError` too.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ..errors import JaxsteerError

FORMAT = "jaxsteer-train-checkpoint/1"


class CheckpointError(JaxsteerError, RuntimeError):
    """A checkpoint that cannot be used with this run (mismatched, corrupted or missing)."""


class CheckpointDamagedError(CheckpointError):
    """A checkpoint whose files are unreadable or whose data fail their fingerprints."""


def model_identity(model, spec: str | None = None) -> dict:
    """The shape of a model that its checkpoints must match on restore.

    Args:
        model: the model (its `config`).
        spec: the model spec, recorded too when given.

    Returns:
        Architecture, layers, widths, heads and vocabulary size (and `spec`) as plain data.
    """
    c = model.config
    ident = {
        "architecture": c.architecture,
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "vocab_size": c.vocab_size,
        "n_heads": c.n_heads,
        "n_kv_heads": c.n_kv_heads,
        "d_mlp": c.d_mlp,
    }
    if spec is not None:
        ident["spec"] = spec
    return ident


def _path_str(path) -> str:
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def tree_description(tree: Any) -> dict[str, dict]:
    """`{path: {"shape": [...], "dtype": str}}` for every leaf."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out[_path_str(path)] = {
            "shape": list(np.shape(leaf)),
            "dtype": str(jnp.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype),
        }
    return out


def _leaf_print(leaf, as_sum: bool = False) -> Any:
    """`"crc:<crc32>"` of a leaf's bytes when this process holds all of it (or a full replica),
    else (or with `as_sum`) the float sum of its absolute values, computed by every process."""
    here = getattr(leaf, "is_fully_addressable", True)
    if as_sum or not (here or leaf.is_fully_replicated):
        return float(jax.jit(lambda x: jnp.sum(jnp.abs(x.astype(jnp.float32))))(leaf))
    local = leaf if here else leaf.addressable_data(0)
    return f"crc:{zlib.crc32(np.ascontiguousarray(np.asarray(local)).tobytes()) & 0xFFFFFFFF:08x}"


def fingerprint(tree: Any) -> dict[str, Any]:
    """Per leaf: `"crc:<crc32>"` of the bytes when the array is on this host, else the float sum
    of its absolute values (arrays split over processes)."""
    return {_path_str(path): _leaf_print(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check_fingerprints(saved: dict, tree: Any, where: str) -> None:
    """A sum written by N processes is compared as a sum whatever the layout now (N -> M restore)."""
    leaves = {_path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    for key, value in saved.items():
        if key not in leaves:
            continue
        mine = _leaf_print(leaves[key], as_sum=not isinstance(value, str))
        if isinstance(value, str) != isinstance(mine, str):
            continue  # a crc written by one process, a leaf split over processes now: Orbax checks its data
        if isinstance(value, str):
            ok = value == mine
        else:
            ok = abs(value - mine) <= 1e-5 * max(1.0, abs(value))
        if not ok:
            raise CheckpointDamagedError(
                f"{where}: the data of {key!r} does not match its recorded fingerprint (corrupted file?)"
            )


def _one_line(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _diff_dicts(name: str, saved: dict, expected: dict, where: str) -> None:
    for k in sorted(set(saved) | set(expected)):
        if saved.get(k) != expected.get(k):
            raise CheckpointError(
                f"{where} was written for a different {name}: {k}={saved.get(k)!r} in the checkpoint, "
                f"{expected.get(k)!r} in this run"
            )


def _diff_trees(saved: dict, expected: dict, where: str) -> None:
    missing = sorted(set(expected) - set(saved))
    extra = sorted(set(saved) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{where} has a different state structure: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for k in sorted(expected, key=lambda k: ("trainable" not in k, k)):  # trainable leaves first
        if saved[k] != expected[k]:
            raise CheckpointError(
                f"{where}: {k!r} has shape {tuple(saved[k]['shape'])} ({saved[k]['dtype']}) in the checkpoint, "
                f"this run expects {tuple(expected[k]['shape'])} ({expected[k]['dtype']})"
            )


class Checkpointer:
    """Save every N steps, keep the last K, restore with validation (see module docstring)."""

    def __init__(self, directory: str, *, keep: int = 2, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only, enable_async_checkpointing=False
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write `state` at `step` with `meta` (plus format, step, tree description, fingerprint); waits."""
        meta = dict(meta, format=FORMAT, step=int(step), tree=tree_description(state), fingerprint=fingerprint(state))
        self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        self.manager.wait_until_finished()

    def read_meta(self, step: int | None = None) -> tuple[int, dict]:
        """(step, metadata) of `step` (default: the latest); CheckpointError if none / unreadable."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} (steps: {steps})")
        where = f"checkpoint {self.directory} step {step}"
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - any failure to read means the files are damaged
            raise CheckpointDamagedError(
                f"{where}: metadata is missing or unreadable (corrupted?): {type(e).__name__}: {_one_line(e)}"
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{where}: not a jaxsteer training checkpoint "
                f"(format {meta.get('format') if isinstance(meta, dict) else None!r})"
            )
        return step, meta

    def restore(
        self,
        abstract_state: Any,
        *,
        identity: dict,
        trainable_config: dict,
        step: int | None = None,
        fallback: bool = True,
    ) -> tuple[Any, dict]:
        """Validated restore into the structure / shapes / shardings of `abstract_state`.

        Without `step`, the latest checkpoint; if its files are damaged and `fallback`, the newest earlier
        one that is intact, with a warning naming what was wrong. The damaged steps after it are moved
        aside to `damaged-<step>/` (kept for inspection, out of the manager's view), so the resumed run
        re-reaches and re-saves them. A checkpoint that is intact but does not fit this run is an error,
        never skipped.

        Args:
            abstract_state: a pytree of `jax.ShapeDtypeStruct` or arrays.
            identity: the model's identity (`model_identity`), which must match the saved one.
            trainable_config: what is trained, which must match the saved one.
            step: the step to restore (None: the latest).
            fallback: fall back to an earlier intact checkpoint when the latest is damaged.

        Returns:
            `(state, meta)`.
        """
        if step is not None or not fallback:
            return self._restore_step(abstract_state, identity, trainable_config, step)
        damaged: dict[int, str] = {}
        for candidate in sorted(self.all_steps(), reverse=True):
            try:
                out = self._restore_step(abstract_state, identity, trainable_config, candidate)
            except CheckpointDamagedError as err:
                damaged[candidate] = str(err)
                continue
            if damaged:
                import warnings

                moved = self.move_aside(sorted(damaged))
                warnings.warn(
                    f"{'; '.join(damaged.values())}; moved to {', '.join(moved)}; resuming from the newest "
                    f"intact checkpoint, step {candidate}",
                    stacklevel=2,
                )
            return out
        if damaged:
            raise CheckpointDamagedError(
                f"every checkpoint in {self.directory} is damaged: {'; '.join(damaged.values())}. Start afresh "
                f"(without --resume), or move the damaged step directories away"
            )
        return self._restore_step(abstract_state, identity, trainable_config, None)  # raises: no checkpoint

    def move_aside(self, steps: list[int]) -> list[str]:
        """Rename each step's directory to `damaged-<step>` (`damaged-<step>.<n>` if taken; process
        0 renames, every process waits for it) and reload the manager. Returns the new paths."""
        moved = []
        for step in steps:
            target = os.path.join(self.directory, f"damaged-{step}")
            n = 1
            while os.path.exists(target):
                target, n = os.path.join(self.directory, f"damaged-{step}.{n}"), n + 1
            if jax.process_index() == 0:
                os.rename(os.path.join(self.directory, str(step)), target)
            moved.append(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxsteer-damaged-checkpoints-moved")
        self.manager.reload()
        return moved

    def _restore_step(
        self, abstract_state: Any, identity: dict, trainable_config: dict, step: int | None
    ) -> tuple[Any, dict]:
        step, meta = self.read_meta(step)
        where = f"checkpoint {self.directory} step {step}"
        _diff_dicts(
            "model",
            {k: meta.get("model", {}).get(k) for k in identity if k != "spec"},
            {k: v for k, v in identity.items() if k != "spec"},
            where,
        )
        _diff_dicts("trainable", meta.get("trainable", {}), trainable_config, where)
        _diff_trees(meta.get("tree", {}), tree_description(abstract_state), where)
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), abstract_state
        )
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))[
                "state"
            ]
        except Exception as e:  # noqa: BLE001
            raise CheckpointDamagedError(
                f"{where}: the saved state cannot be read (corrupted?): {type(e).__name__}: {_one_line(e)}"
            ) from None
        if jax.tree_util.tree_structure(restored) != jax.tree_util.tree_structure(target):
            raise CheckpointError(f"{where}: restored state has a different structure")
        _check_fingerprints(meta.get("fingerprint", {}), restored, where)
        return restored, meta

    def close(self) -> None:
        self.manager.close()


def encode_data_state(state: Any) -> Any:
    """A data-iterator state as JSON-able data (bytes are base64-encoded)."""
    if isinstance(state, bytes):
        import base64

        return {"__bytes__": base64.b64encode(state).decode()}
    return json.loads(json.dumps(state))


def decode_data_state(state: Any) -> Any:
    """A data-iterator state from `encode_data_state`'s JSON-able form (base64 back to bytes)."""
    if isinstance(state, dict) and set(state) == {"__bytes__"}:
        import base64

        return base64.b64decode(state["__bytes__"])
    return state


__all__ = [
    "CheckpointDamagedError",
    "CheckpointError",
    "Checkpointer",
    "model_identity",
    "tree_description",
    "fingerprint",
    "encode_data_state",
    "decode_data_state",
]
