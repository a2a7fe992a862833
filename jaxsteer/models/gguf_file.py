"""GGUF files without torch: a fast header reader, the model config and the tokenizer.

`GGUFFile` parses a GGUF (v2/v3) header with `struct` (the metadata of the default model
reads in well under a second; `gguf.GGUFReader` builds a Python object per array element and
takes ~6 s), checks that every tensor lies inside the file, and memory-maps the tensor data;
dequantisation is left to `gguf.quants`. `gguf_config` maps llama.cpp's metadata keys to a
`ModelConfig` through the same `from_hf_config` the directory loader uses, and
`gguf_tokenizer` rebuilds the tokenizer from `tokenizer.ggml.*` with the `tokenizers`
library (byte-level BPE for `gpt2` vocabularies, SentencePiece-style BPE with byte fallback
for `llama` ones), wrapped as a transformers `PreTrainedTokenizerFast`.
"""

from __future__ import annotations

import math
import mmap
import pathlib
import re
import struct
import warnings
from typing import Any

import numpy as np

from ..errors import JaxsteerError
from .config import ModelConfig, UnsupportedConfigError, from_hf_config

__all__ = ["GGUFError", "GGUFFile", "TensorInfo", "gguf_config", "gguf_hf_config", "gguf_tokenizer"]

SUPPORTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "gemma3")
SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")
_HF_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}
_HF_ARCH = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}

# GGUF value types: id -> struct format (scalars); 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_MAGIC = b"GGUF"


class GGUFError(JaxsteerError, ValueError):
    """A GGUF file is damaged, truncated or lacks a metadata key jaxsteer needs."""


class TensorInfo:
    """One tensor's entry in the header: name, numpy-order shape, ggml type and byte range."""

    __slots__ = ("name", "shape", "ggml_type", "offset", "nbytes")

    def __init__(self, name: str, shape: tuple[int, ...], ggml_type: int, offset: int, nbytes: int):
        self.name, self.shape, self.ggml_type, self.offset, self.nbytes = name, shape, ggml_type, offset, nbytes


class _Cursor:
    """Little-endian reads from a bytes-like buffer; running past the end is a GGUFError."""

    def __init__(self, buf, path: pathlib.Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        """The one value of `struct` format `fmt` (e.g. "Q") at the cursor."""
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF header (needed {size} bytes at offset {self.pos})")
        (out,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: truncated GGUF header (string of {n} bytes at offset {self.pos})")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def strings(self, count: int) -> list[str]:
        """`count` strings in a row (the vocabulary and merges: the bulk of a GGUF header)."""
        buf, pos, size, out = self.buf, self.pos, len(self.buf), []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > size:
                break
            (n,) = unpack(buf, pos)
            if pos + 8 + n > size:
                break
            out.append(buf[pos + 8 : pos + 8 + n].decode("utf-8", errors="replace"))
            pos += 8 + n
        else:
            self.pos = pos
            return out
        raise GGUFError(f"{self.path}: truncated GGUF header (string array at offset {pos})")

    def value(self, vtype: int):
        if vtype == 6:  # float32: the shortest decimal that rounds to it (1e-05, not 9.99999974738e-06)
            return float(str(np.float32(self.take("f"))))
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.take("I"), self.take("Q")
            if item_type in _SCALARS and item_type != 7:
                dtype = np.dtype("<" + _SCALARS[item_type])
                end = self.pos + count * dtype.itemsize
                if end > len(self.buf):
                    raise GGUFError(f"{self.path}: truncated GGUF header (array at offset {self.pos})")
                arr = np.frombuffer(self.buf, dtype, count, self.pos).copy()
                self.pos = end
                return arr.tolist()
            if item_type == _STRING:
                return self.strings(count)
            return [self.value(item_type) for _ in range(count)]
        raise GGUFError(f"{self.path}: unknown GGUF value type {vtype} at offset {self.pos}")


class GGUFFile:
    """Read-only view of a GGUF file: `metadata` (key -> value), `tensors` (name -> TensorInfo).

    Raises GGUFError naming the file when the magic, version, header or tensor extents are
    wrong (a truncated download is caught here, not inside numpy). `read(name)` dequantises
    one tensor to float32 in numpy (row-major, i.e. Hugging Face `[out, in]`) order.
    """

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        try:
            with open(self.path, "rb") as fh:
                self._mmap = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError) as err:  # an empty file cannot be mapped
            raise GGUFError(f"{self.path}: cannot read GGUF file ({err})") from err
        self._map = np.frombuffer(self._mmap, np.uint8)
        cur = _Cursor(self._mmap, self.path)
        if len(self._map) < 4 or bytes(self._map[:4]) != _MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (bad magic)")
        cur.pos = 4
        self.version = cur.take("I")
        if self.version not in (2, 3):
            raise GGUFError(
                f"{self.path}: GGUF version {self.version} is not supported (2 or 3; big-endian files are not)"
            )
        n_tensors, n_kv = cur.take("Q"), cur.take("Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.metadata[key] = cur.value(cur.take("I"))
        infos = [self._tensor_entry(cur) for _ in range(n_tensors)]
        alignment = int(self.metadata.get("general.alignment", 32))
        data_start = -(-cur.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, shape, ggml_type, rel in infos:
            info = TensorInfo(
                name, shape, ggml_type, data_start + rel, _tensor_nbytes(name, shape, ggml_type, self.path)
            )
            if info.offset + info.nbytes > len(self._map):
                raise GGUFError(
                    f"{self.path}: tensor {name} ends at byte {info.offset + info.nbytes} but the file has "
                    f"{len(self._map)} bytes (truncated download?)"
                )
            self.tensors[name] = info
        self._check_layout(alignment)

    def _check_layout(self, alignment: int) -> None:
        """Tensors lie back to back (each padded to `alignment`, as llama.cpp and gguf-py write
        them): an overlap or a gap means a tensor's recorded type or shape is wrong (an F32
        tensor relabelled F16 would otherwise load as plausible-looking garbage). Norm weights
        must be F32, F16 or BF16 (llama.cpp never quantises them)."""
        import gguf

        ordered = sorted(self.tensors.values(), key=lambda t: t.offset)
        for info, nxt in zip(ordered, ordered[1:] + [None], strict=True):
            end = info.offset + info.nbytes
            limit = nxt.offset if nxt is not None else len(self._map)
            kind = gguf.GGMLQuantizationType(info.ggml_type).name
            what = f"{self.path}: tensor {info.name} ({kind}, shape {info.shape}, {info.nbytes} bytes)"
            if info.name.endswith("norm.weight") and kind not in ("F32", "F16", "BF16"):
                raise GGUFError(f"{what}: a norm weight must be F32, F16 or BF16 (llama.cpp never quantises norms)")
            following = f"the next tensor {nxt.name}" if nxt is not None else "the end of the file"
            if end > limit:
                raise GGUFError(
                    f"{what} overlaps {following} at byte {limit}: its recorded type or shape "
                    "is wrong (damaged header?)"
                )
            if limit - end >= max(alignment, 1):
                raise GGUFError(
                    f"{what} is followed by {limit - end} unused bytes before {following}: its recorded "
                    "type or shape is wrong (damaged header?)"
                )

    @staticmethod
    def _tensor_entry(cur: _Cursor):
        name = cur.string()
        n_dims = cur.take("I")
        dims = [cur.take("Q") for _ in range(n_dims)]
        ggml_type, offset = cur.take("I"), cur.take("Q")
        return name, tuple(int(d) for d in reversed(dims)), int(ggml_type), int(offset)

    @property
    def architecture(self) -> str:
        return str(self.require("general.architecture"))

    def require(self, key: str):
        """The metadata value of `key`; a GGUFError naming the key and the file if it is absent."""
        if key not in self.metadata:
            raise GGUFError(f"{self.path}: GGUF metadata key {key!r} is missing")
        return self.metadata[key]

    def read(self, name: str) -> np.ndarray:
        """Dequantised float32 tensor `name`; non-finite values are a GGUFError naming it."""
        import gguf

        info = self.tensors[name]
        raw = self._map[info.offset : info.offset + info.nbytes]
        qtype = gguf.GGMLQuantizationType(info.ggml_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        row_bytes = info.shape[-1] // block * type_size if info.shape else type_size
        w = gguf.quants.dequantize(raw.reshape(-1, row_bytes), qtype).reshape(info.shape).astype(np.float32, copy=False)
        if not np.isfinite(w).all():
            bad = int(np.size(w) - np.count_nonzero(np.isfinite(w)))
            raise GGUFError(
                f"{self.path}: tensor {name} has {bad} non-finite value(s) after dequantisation (damaged file?)"
            )
        return w


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: int, path: pathlib.Path) -> int:
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType(ggml_type)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as err:
        raise GGUFError(f"{path}: tensor {name} has unknown ggml type {ggml_type}") from err
    n = math.prod(shape)
    if shape and shape[-1] % block:
        raise GGUFError(f"{path}: tensor {name} row length {shape[-1]} is not a multiple of its block size {block}")
    return n // block * type_size


# --------------------------------------------------------------------------- config


def _positive(f: GGUFFile, key: str, value: Any, kind: type = float) -> Any:
    """`value` (metadata `key`) as a finite `kind` > 0; a GGUFError naming the key otherwise."""
    try:
        number = kind(value)
        ok = math.isfinite(number) and number > 0 and not isinstance(value, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise GGUFError(f"{f.path}: GGUF metadata {key}={value!r} must be a finite number > 0 (damaged file?)")
    return number


def _check_metadata(f: GGUFFile, arch: str, cfg: dict) -> None:
    """Values that would load but make every forward NaN or wrong: norm epsilon, sizes, context
    length and the special token ids (which must lie inside the vocabulary)."""
    _positive(f, f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    for key, name in (
        ("context_length", "max_position_embeddings"),
        ("embedding_length", "hidden_size"),
        ("block_count", "num_hidden_layers"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("feed_forward_length", "intermediate_size"),
        ("vocab_size", "vocab_size"),
    ):
        _positive(f, f"{arch}.{key}", cfg[name], int)
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
        value = f.metadata.get(f"tokenizer.ggml.{key}")
        if value is not None and not (isinstance(value, int) and 0 <= value < cfg["vocab_size"]):
            raise GGUFError(
                f"{f.path}: GGUF metadata tokenizer.ggml.{key}={value!r} is outside the vocabulary "
                f"[0, {cfg['vocab_size']}) (damaged file?)"
            )


def _rope_parameters(f: GGUFFile, arch: str, default_theta: float) -> dict:
    kind = f.metadata.get(f"{arch}.rope.scaling.type", "none")
    base = f.metadata.get(f"{arch}.rope.freq_base", default_theta)
    rope = {"rope_type": "default", "rope_theta": _positive(f, f"{arch}.rope.freq_base", base)}
    if kind == "linear":
        factor = f.require(f"{arch}.rope.scaling.factor")
        rope.update(rope_type="linear", factor=_positive(f, f"{arch}.rope.scaling.factor", factor))
    elif kind not in ("none", ""):
        raise UnsupportedConfigError(f"{f.path}: GGUF {arch}.rope.scaling.type={kind!r} is not supported")
    return rope


def _gemma3_layer_types(f: GGUFFile, n_layers: int) -> list[str]:
    """Per-layer attention kind: the file's `sliding_window_pattern`, else llama.cpp's Gemma 3 rule
    (every sixth layer global)."""
    pattern = f.metadata.get("gemma3.attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        if len(pattern) != n_layers:
            raise GGUFError(f"{f.path}: sliding_window_pattern has {len(pattern)} entries for {n_layers} layers")
        sliding = [bool(p) for p in pattern]
    else:
        sliding = [(i + 1) % int(pattern) != 0 for i in range(n_layers)]
    return ["sliding_attention" if s else "full_attention" for s in sliding]


def gguf_hf_config(f: GGUFFile) -> dict:
    """The Hugging Face config (as a dict) that the GGUF's metadata describes.

    Raises UnsupportedConfigError for an architecture jaxsteer does not port and GGUFError for
    a required key that is missing.

    Args:
        f: the opened GGUF file.

    Returns:
        A dict `from_hf_config` reads.
    """
    arch = f.architecture
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise UnsupportedConfigError(
            f"{f.path}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_GGUF_ARCHITECTURES)})"
        )
    key = lambda name: f.require(f"{arch}.{name}")  # noqa: E731
    d, n_heads, n_layers = int(key("embedding_length")), int(key("attention.head_count")), int(key("block_count"))
    head_dim = int(f.metadata.get(f"{arch}.attention.key_length", d // n_heads))
    rotary = f.metadata.get(f"{arch}.rope.dimension_count")
    if rotary is not None and int(rotary) != head_dim:
        raise UnsupportedConfigError(
            f"{f.path}: partial rotary embeddings (rope.dimension_count={rotary}) are not supported"
        )
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    vocab = f.metadata.get(f"{arch}.vocab_size", len(tokens) if tokens else None)
    if vocab is None:
        raise GGUFError(f"{f.path}: neither {arch}.vocab_size nor tokenizer.ggml.tokens gives the vocabulary size")
    cfg = dict(
        model_type=_HF_MODEL_TYPE[arch],
        architectures=[_HF_ARCH[arch]],
        vocab_size=int(vocab),
        hidden_size=d,
        intermediate_size=int(key("feed_forward_length")),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=int(f.metadata.get(f"{arch}.attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        max_position_embeddings=int(key("context_length")),
        tie_word_embeddings="output.weight" not in f.tensors,
        bos_token_id=f.metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=f.metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=f.metadata.get("tokenizer.ggml.padding_token_id"),
    )
    _check_metadata(f, arch, cfg)
    if arch != "gemma3":
        cfg.update(hidden_act="silu", rope_parameters=_rope_parameters(f, arch, 10000.0))
        return cfg
    # Gemma 3: llama.cpp stores no query_pre_attn_scalar; it uses head_dim, except for the
    # 62-layer 27B model (d_model / n_heads), and an explicit attention.scale when present.
    scale = f.metadata.get("gemma3.attention.scale")
    query_scalar = scale**-2 if scale else (d / n_heads if n_layers == 62 else head_dim)
    local_theta = _positive(f, "gemma3.rope.freq_base_swa", f.metadata.get("gemma3.rope.freq_base_swa", 10000.0))
    cfg.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=query_scalar,
        sliding_window=int(key("attention.sliding_window")),
        layer_types=_gemma3_layer_types(f, n_layers),
        final_logit_softcapping=f.metadata.get("gemma3.final_logit_softcapping"),
        rope_parameters={
            "full_attention": _rope_parameters(f, arch, 1_000_000.0),
            "sliding_attention": {"rope_type": "default", "rope_theta": local_theta},
        },
    )
    return cfg


def gguf_config(f: GGUFFile) -> ModelConfig:
    """`ModelConfig` of a GGUF file from its metadata alone (no transformers, no torch).

    Args:
        f: the opened GGUF file.

    Returns:
        The `ModelConfig`.
    """
    return from_hf_config(gguf_hf_config(f))


# --------------------------------------------------------------------------- tokenizer

# Pre-tokenizer split patterns, keyed by `tokenizer.ggml.pre` (llama.cpp's names).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
_GPT2_PRE = ("default", "gpt-2", "gpt2", None)
_CONTROL, _USER_DEFINED = 3, 4
_SPIECE_SPACE = "\u2581"


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _byte_level_pieces(meta: dict, path: pathlib.Path):
    """(tokenizer model, normalizer, pre_tokenizer, decoder) for a `gpt2` (byte-level BPE) vocabulary."""
    from tokenizers import Regex, decoders, models, pre_tokenizers

    alphabet = _byte_level_alphabet()
    foreign = re.compile("[^" + re.escape("".join(alphabet.values())) + "]")
    # Tokens written in plain text instead of the byte alphabet are respelled so BPE can reach them.
    vocab = {}
    for i, tok in enumerate(meta["tokenizer.ggml.tokens"]):
        vocab[tok if not foreign.search(tok) else "".join(alphabet[b] for b in tok.encode("utf-8"))] = i
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False)
    pre = meta.get("tokenizer.ggml.pre")
    if pre == "smollm":  # SmolLM's tokenizer.json: every digit its own pre-token, then GPT-2's split
        pre_tok = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    elif pre in _SPLITS:
        pre_tok = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        if pre not in _GPT2_PRE:
            warnings.warn(f"{path}: unknown tokenizer.ggml.pre={pre!r}; using GPT-2's pre-tokenizer", stacklevel=3)
        pre_tok = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return model, None, pre_tok, decoders.ByteLevel()


def _sentencepiece_merges(tokens: list[str], priority: list[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two
    vocabulary pieces, the token with the higher priority merging first."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, tok in enumerate(tokens):
        for k in range(1, len(tok)):
            left, right = tok[:k], tok[k:]
            if left in index and right in index:
                ranked.append((-priority[i], index[left], index[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece_pieces(meta: dict, arch: str):
    """(model, normalizer, pre_tokenizer, decoder) for a `llama` (SentencePiece-style) vocabulary."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    if arch.startswith("gemma"):
        # Gemma files spell all-space tokens with real spaces; the model sees them as U+2581.
        tokens = [_SPIECE_SPACE * len(t) if t and not t.strip(" ") else t for t in tokens]
        priority = [-float(i) for i in range(len(tokens))]  # Gemma's merge order is the file order
    else:
        priority = [float(s) for s in meta.get("tokenizer.ggml.scores", [-float(i) for i in range(len(tokens))])]
    if "tokenizer.ggml.merges" in meta:
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = _sentencepiece_merges(tokens, priority)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=merges,
        unk_token=tokens[unk_id] if unk_id is not None else None,
        byte_fallback=True,
        fuse_unk=True,
    )
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", not arch.startswith("gemma")))
    dec = [decoders.Replace(_SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if not prefix:
        return model, normalizers.Replace(" ", _SPIECE_SPACE), None, decoders.Sequence(dec)
    # As transformers' Llama tokenizer: the dummy prefix is added unless the text already starts
    # with a space (SentencePiece itself would add it always).
    pre = pre_tokenizers.Metaspace(replacement=_SPIECE_SPACE, prepend_scheme="first", split=False)
    return model, None, pre, decoders.Sequence(dec + [decoders.Strip(" ", 1, 0)])


def gguf_tokenizer(f: GGUFFile):
    """The tokenizer described by a GGUF's `tokenizer.*` metadata, as a `PreTrainedTokenizerFast`.

    Control tokens become special tokens, user-defined ones added tokens; BOS/EOS/UNK/PAD and
    the chat template come from the file (a missing pad token is set to EOS). Raises
    UnsupportedConfigError for tokenizer models other than `gpt2` and `llama`.

    Args:
        f: the opened GGUF file.

    Returns:
        A `transformers.PreTrainedTokenizerFast`.
    """
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    meta = f.metadata
    kind = f.require("tokenizer.ggml.model")
    if kind == "gpt2":
        model, normalizer, pre_tok, decoder = _byte_level_pieces(meta, f.path)
    elif kind == "llama":
        model, normalizer, pre_tok, decoder = _sentencepiece_pieces(meta, f.architecture)
    else:
        raise UnsupportedConfigError(
            f"{f.path}: GGUF tokenizer model {kind!r} is not supported "
            f"(supported: {', '.join(SUPPORTED_TOKENIZER_MODELS)}); pass a tokenizer explicitly: "
            "jaxsteer.load(spec, tokenizer='path/or/hub-id') or tokenizer=<tokenizer object>"
        )
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tok is not None:
        tok.pre_tokenizer = pre_tok
    tok.decoder = decoder
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL]
    )
    tok.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty == _USER_DEFINED
        ]
    )

    def token(key: str):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos = token("bos_token_id")
    if meta.get("tokenizer.ggml.add_bos_token", kind == "llama") and bos is not None:
        bos_id = meta["tokenizer.ggml.bos_token_id"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=token("eos_token_id"),
        unk_token=token("unknown_token_id"),
        pad_token=token("padding_token_id") or token("eos_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
    )
    return wrapped
