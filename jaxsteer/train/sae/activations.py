"""Activations for SAE training, computed on the fly from jaxsteer traces.

- The stream harvests from `truncate(model, layer + 1)` (`jaxsteer.models.params`): the model
  with only the layers it needs (no later layers, no unembedding).
- `read_texts(spec)`: text from a local `.txt` (one document per blank-line-separated block),
  `.jsonl` / `.json` (a `text` field), `.parquet` (a `text` column), a directory of those, or
  `hf:NAME[:SPLIT]` (a Hugging Face dataset already in the local cache; `datasets` is optional).
- `context_loader(...)`: tokenised, packed `[ctx]` windows through a grain pipeline (shuffled per
  epoch, resumable from `get_state()`).
- `ActivationStream`: the shuffling buffer. It fills `buffer_batches` forward passes (one
  compiled call each), permutes the activations with a key derived from `(seed, refill index)`
  and serves `batch_size` rows at a time. Its state is the grain state at the start of the
  current refill plus the position inside it, so a resumed run recomputes the same buffer and
  continues bit for bit without storing activations in the checkpoint.
- `cache_activations(...)` / `CachedActivations`: the optional on-disk cache (one `.npy`,
  memory-mapped) for repeated sweeps and benchmarks.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...errors import InputError, NotFoundError
from ...models.decoder import forward
from ...models.params import Model, truncate


def _read_file(path: str) -> list[str]:
    if path.endswith((".jsonl", ".json")):
        with open(path) as f:
            if path.endswith(".json"):
                rows = json.load(f)
            else:
                rows = [json.loads(ln) for ln in f if ln.strip()]
        return [r["text"] if isinstance(r, dict) else str(r) for r in rows]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return [str(t) for t in pq.read_table(path, columns=["text"]).column("text").to_pylist()]
    with open(path, encoding="utf-8", errors="replace") as f:
        blocks = f.read().split("\n\n")
    return [b.strip() for b in blocks if b.strip()]


def read_texts(spec: str) -> list[str]:
    """Documents from a local file / directory or `hf:NAME[:SPLIT]` (see module doc)."""
    if spec.startswith("hf:"):
        import datasets  # optional; reads the local cache (HF_HUB_OFFLINE respected)

        name, _, split = spec[3:].partition(":")
        ds = datasets.load_dataset(name, split=split or "train")
        return [str(t) for t in ds["text"]]
    if spec.startswith("py:"):  # a function returning texts: "py:module:function"
        import importlib

        module, _, fn = spec[3:].partition(":")
        return [str(t) for t in getattr(importlib.import_module(module), fn)()]
    if os.path.isdir(spec):
        files = sorted(
            f
            for ext in ("txt", "jsonl", "json", "parquet")
            for f in glob.glob(os.path.join(spec, f"**/*.{ext}"), recursive=True)
        )
        return [t for f in files for t in _read_file(f)]
    if not os.path.exists(spec):
        raise NotFoundError(
            f"text source {spec!r} not found (a .txt/.jsonl/.json/.parquet file, a directory, hf:NAME or py:module:fn)"
        )
    return _read_file(spec)


def pack_tokens(texts: list[str], tokenizer: Any, context: int, bos: int | None, sep: str = "\n\n") -> np.ndarray:
    """Tokenise documents, join them with `sep` and cut `[N, context]` windows, each starting
    with `bos` when given (as SAELens does: BOS only at position 0, where `skip_first` drops it;
    a BOS inside a window would be an attention-sink outlier in the training data)."""
    sep_ids = tokenizer(sep, add_special_tokens=False)["input_ids"] if sep else []
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.extend(sep_ids)
    body = context - (1 if bos is not None else 0)
    n = len(ids) // body
    if n == 0:
        raise InputError(f"the text has {len(ids)} tokens, fewer than one context of {context}")
    out = np.asarray(ids[: n * body], np.int32).reshape(n, body)
    if bos is not None:
        out = np.concatenate([np.full((n, 1), bos, np.int32), out], axis=1)
    return out


def context_loader(windows: np.ndarray, batch: int, seed: int):
    """A grain iterator over `[batch, context]` token windows, reshuffled every epoch, forever."""
    import grain

    ds = grain.MapDataset.source(list(range(len(windows)))).shuffle(seed=int(seed) % 2**32).repeat(None)
    ds = ds.batch(batch, drop_remainder=True, batch_fn=lambda rows: windows[np.asarray(rows)])
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


class ActivationStream:
    """Shuffled `[batch_size, d]` activation batches from token windows (see module doc).

    Drops the first `skip_first` positions of each window (BOS / attention-sink outliers)."""

    def __init__(
        self,
        model: Model,
        windows: np.ndarray,
        *,
        site: str,
        layer: int,
        batch_size: int,
        contexts_per_forward: int = 8,
        buffer_batches: int = 8,
        seed: int = 0,
        skip_first: int = 1,
    ):
        self.model = truncate(model, layer + 1)
        self.windows, self.site, self.layer = windows, site, layer
        self.batch_size, self.cpf, self.buffer_batches = batch_size, contexts_per_forward, buffer_batches
        self.seed, self.skip_first = seed, skip_first
        self.loader = context_loader(windows, contexts_per_forward, seed)
        self.refill_index, self.pos = 0, 0
        self.start_state = self.loader.get_state()
        self.buffer = None
        self._harvest = jax.jit(self._harvest_fn)

    def _harvest_fn(self, model, tokens):
        _, trace = forward(model, tokens, record=(self.site,), return_logits=False)
        acts = trace[self.site][self.layer][:, self.skip_first :]
        return acts.reshape(acts.shape[0] * acts.shape[1], -1).astype(jnp.float32)  # z: heads flattened

    def _refill(self) -> None:
        self.start_state = self.loader.get_state()
        chunks = [
            np.asarray(self._harvest(self.model, jnp.asarray(next(self.loader)))) for _ in range(self.buffer_batches)
        ]
        buf = np.concatenate(chunks)
        perm = np.random.default_rng([self.seed, self.refill_index]).permutation(len(buf))
        self.buffer = buf[perm]
        self.pos = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.buffer is None or self.pos + self.batch_size > len(self.buffer):
            if self.buffer is not None:
                self.refill_index += 1
            self._refill()
            assert self.buffer is not None  # _refill fills it
            if self.batch_size > len(self.buffer):
                raise InputError(f"batch_size {self.batch_size} exceeds the buffer ({len(self.buffer)} activations)")
        out = self.buffer[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return out

    def get_state(self) -> dict:
        """JSON-able position: the grain state at the start of the current buffer + offset."""
        return {
            "loader": self.start_state,
            "refill_index": self.refill_index,
            "pos": self.pos,
            "filled": self.buffer is not None,
        }

    def set_state(self, state: dict) -> None:
        self.refill_index = int(state["refill_index"])
        self.loader.set_state(state["loader"])
        if state.get("filled", True):
            self._refill()
            self.pos = int(state["pos"])
        else:
            self.buffer, self.pos = None, 0


def cache_activations(
    stream: Iterator[np.ndarray], n_batches: int, path: str, dtype=np.float32, progress: bool = True
) -> str:
    """Write `n_batches` batches of a stream to one `.npy` file (for repeated sweeps), with a
    progress bar (`progress=False` for none)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=n_batches, desc="caching activations", unit="batch", disable=not progress, leave=False)
    first = np.asarray(next(stream))
    bar.update()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_batches * len(first), first.shape[1]))
    out[: len(first)] = first
    for i in range(1, n_batches):
        out[i * len(first) : (i + 1) * len(first)] = next(stream)
        bar.update()
    bar.close()
    out.flush()
    return path


class CachedActivations:
    """Shuffled batches from an on-disk activation cache (`.npy`, memory-mapped) or an in-memory
    `[N, d]` array; a new permutation every epoch, each batch's rows in storage order; resumable."""

    def __init__(self, path: str | np.ndarray, batch_size: int, seed: int = 0):
        self.data = np.load(path, mmap_mode="r") if isinstance(path, (str, os.PathLike)) else np.asarray(path)
        if self.data.ndim != 2 or len(self.data) < batch_size:
            raise InputError(f"CachedActivations: need [N >= batch_size={batch_size}, d] rows, got {self.data.shape}")
        self.batch_size, self.seed = batch_size, seed
        self.n = len(self.data) // batch_size
        self.i = 0
        self._perm = (-1, None)

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.data)))
        perm = self._perm[1]
        assert perm is not None  # set just above for this epoch
        return perm

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        epoch, j = divmod(self.i, self.n)
        perm = self._permutation(epoch)
        self.i += 1
        return np.asarray(self.data[np.sort(perm[j * self.batch_size : (j + 1) * self.batch_size])], np.float32)

    def get_state(self) -> dict:
        return {"i": self.i}

    def set_state(self, state: dict) -> None:
        self.i = int(state["i"])


__all__ = ["read_texts", "pack_tokens", "context_loader", "ActivationStream", "cache_activations", "CachedActivations"]
