"""Architecture configuration: one frozen dataclass describes every supported decoder.

Llama, Qwen2 and Gemma3 (text) differ only by the fields below; `from_hf_config`
translates a Hugging Face config and refuses any field value it does not implement.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..errors import JaxsteerError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM")
_MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class UnsupportedConfigError(JaxsteerError, ValueError):
    """A Hugging Face config field has a value that jaxsteer does not implement."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one layer type: base, scaling type and its parameters.

    Attributes:
        theta: the RoPE base (`rope_theta`).
        rope_type: "default", "linear" or "llama3" (`SUPPORTED_ROPE_TYPES`).
        factor: the scaling factor (linear and llama3).
        low_freq_factor: llama3's low-frequency factor.
        high_freq_factor: llama3's high-frequency factor.
        original_max_position_embeddings: llama3's original context length.
    """

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inv_freq(self, head_dim: int) -> np.ndarray:
        """Inverse frequencies `[head_dim // 2]` (float32), including any scaling."""
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
        inv = (1.0 / (np.float32(self.theta) ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            inv = inv / np.float32(self.factor)
        elif self.rope_type == "llama3":
            low_wavelen = self.original_max_position_embeddings / self.low_freq_factor
            high_wavelen = self.original_max_position_embeddings / self.high_freq_factor
            wavelen = 2 * math.pi / inv
            scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
            smooth = (self.original_max_position_embeddings / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor
            )
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            inv = np.where(medium, smoothed, scaled).astype(np.float32)
        return inv


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Static description of a decoder-only transformer (hashable; a jit-static field).

    Attributes:
        architecture: the Hugging Face class name, one of `SUPPORTED_ARCHITECTURES`.
        vocab_size: the vocabulary size V.
        d_model: the residual width d.
        n_layers: the number of layers L.
        n_heads: query heads H.
        n_kv_heads: key / value heads KV (grouped-query attention when KV < H).
        head_dim: the width of one head.
        d_mlp: the MLP's hidden width.
        norm_eps: RMSNorm's epsilon.
        rope_full: the rotary embedding of full-attention layers.
        rope_sliding: that of sliding-window layers (None: as `rope_full`).
        layer_types: per layer, "full_attention" or "sliding_attention".
        sliding_window: sliding layers attend to at most this many positions (the query's own included).
        tie_word_embeddings: the unembedding is the embedding matrix.
        qkv_bias: q / k / v projections have biases (Qwen2).
        qk_norm: RMSNorm on queries and keys per head (Gemma 3).
        norm_offset: RMSNorm multiplies by `(offset + w)` (Gemma: 1).
        sandwich_norms: extra norms after attention and after the MLP (Gemma).
        embed_scale: multiply embeddings by this (Gemma: sqrt(d_model)); None: 1.
        attn_scale: the softmax scale; 0 means `head_dim ** -0.5`.
        activation: the MLP's gate activation ("silu" or "gelu_pytorch_tanh").
        final_logit_softcap: `cap * tanh(logits / cap)` on the logits (None: off).
        attn_logit_softcap: the same on attention scores (None: off).
        bos_token_id: the BOS id, if any.
        eos_token_ids: the ids that end generation.
        pad_token_id: the pad id, if any.
        max_position_embeddings: the context length the model was trained for.
        lime: LIMe (arXiv 2502.09245), for models trained from scratch (no Hugging Face checkpoint
            has it): each layer attends with a learned per-KV-head mix of the keys / values of every
            layer up to it (`params["layers"]["lime_router"] [L, KV, L, KV]`; `decoder.lime_mix`).
    """

    architecture: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    norm_eps: float
    rope_full: RopeConfig
    rope_sliding: RopeConfig | None = None
    layer_types: tuple[str, ...] = ()
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    norm_offset: float = 0.0
    sandwich_norms: bool = False
    embed_scale: float | None = None
    attn_scale: float = 0.0
    activation: str = "silu"
    final_logit_softcap: float | None = None
    attn_logit_softcap: float | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    max_position_embeddings: int = 8192
    lime: bool = False

    def __post_init__(self):
        if not self.layer_types:
            object.__setattr__(self, "layer_types", ("full_attention",) * self.n_layers)
        if len(self.layer_types) != self.n_layers:
            raise UnsupportedConfigError(f"layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        if self.n_heads % self.n_kv_heads:
            raise UnsupportedConfigError(
                f"num_attention_heads={self.n_heads} is not a multiple of num_key_value_heads={self.n_kv_heads}"
            )

    @property
    def softmax_scale(self) -> float:
        return self.attn_scale if self.attn_scale else self.head_dim**-0.5

    @property
    def has_sliding_layers(self) -> bool:
        return "sliding_attention" in self.layer_types

    def layer_windows(self) -> np.ndarray:
        """Per-layer attention window `[L]` (int32); full-attention layers get a huge window."""
        big = np.iinfo(np.int32).max
        return np.array([self.sliding_window if t == "sliding_attention" else big for t in self.layer_types], np.int32)

    def n_params(self) -> int:
        """Number of parameters (tied embeddings counted once)."""
        d, f, h, kv, hd = self.d_model, self.d_mlp, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * hd * (h + 2 * kv) + h * hd * d + (hd * (h + 2 * kv) if self.qkv_bias else 0)
        attn += 2 * hd if self.qk_norm else 0
        norms = d * (4 if self.sandwich_norms else 2)
        per_layer = attn + 3 * d * f + norms
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        routing = kv * kv * self.n_layers * (self.n_layers + 1) // 2 if self.lime else 0  # the weights LIMe uses
        return self.n_layers * per_layer + emb + d + routing


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    return getattr(cfg, name, default) if not isinstance(cfg, dict) else cfg.get(name, default)


def _rope_from_dict(params: dict, field: str) -> RopeConfig:
    params = dict(params or {})
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedConfigError(
            f"{field}.rope_type={rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    if params.get("partial_rotary_factor", 1.0) not in (1.0, None):
        raise UnsupportedConfigError(
            f"{field}.partial_rotary_factor={params['partial_rotary_factor']} is not supported"
        )
    if "rope_theta" not in params:
        raise UnsupportedConfigError(f"{field} has no rope_theta")
    kw: dict[str, Any] = dict(theta=float(params["rope_theta"]), rope_type=rope_type)
    if rope_type in ("linear", "llama3"):
        kw["factor"] = float(params["factor"])
    if rope_type == "llama3":
        kw.update(
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    return RopeConfig(**kw)


def _eos_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _reject(cfg: Any, field: str, ok: Any) -> None:
    value = _get(cfg, field, None)
    good = ok(value) if callable(ok) else value == ok
    if not good:
        raise UnsupportedConfigError(f"config field {field}={value!r} is not supported by jaxsteer")


def from_hf_config(hf_config: Any) -> ModelConfig:
    """Translate a transformers `PretrainedConfig` (or its dict) into a `ModelConfig`.

    Raises `UnsupportedConfigError` naming the field for anything not implemented.

    Args:
        hf_config: a `PretrainedConfig` or its `to_dict()`.

    Returns:
        The `ModelConfig`.
    """
    model_type = _get(hf_config, "model_type")
    archs = _get(hf_config, "architectures") or []
    arch = _MODEL_TYPE_TO_ARCH.get(model_type)
    if arch is None:
        raise UnsupportedConfigError(
            f"model_type={model_type!r} (architectures={archs}) is not supported; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    for a in archs:
        if a not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedConfigError(f"architectures entry {a!r} is not supported")

    d = int(_get(hf_config, "hidden_size"))
    n_heads = int(_get(hf_config, "num_attention_heads"))
    n_kv = int(_get(hf_config, "num_key_value_heads") or n_heads)
    head_dim = int(_get(hf_config, "head_dim") or d // n_heads)
    n_layers = int(_get(hf_config, "num_hidden_layers"))
    layer_types = tuple(_get(hf_config, "layer_types") or ("full_attention",) * n_layers)
    for t in layer_types:
        if t not in ("full_attention", "sliding_attention"):
            raise UnsupportedConfigError(f"layer_types entry {t!r} is not supported")

    rope = _get(hf_config, "rope_parameters")
    if rope is None:  # transformers < 5 layout
        rope = dict(_get(hf_config, "rope_scaling") or {})
        rope["rope_theta"] = _get(hf_config, "rope_theta", 10000.0)
    _reject(hf_config, "pretraining_tp", lambda v: v in (None, 1))

    common: dict[str, Any] = dict(
        vocab_size=int(_get(hf_config, "vocab_size")),
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_mlp=int(_get(hf_config, "intermediate_size")),
        norm_eps=float(_get(hf_config, "rms_norm_eps")),
        layer_types=layer_types,
        tie_word_embeddings=bool(_get(hf_config, "tie_word_embeddings", False)),
        bos_token_id=_get(hf_config, "bos_token_id"),
        eos_token_ids=_eos_ids(_get(hf_config, "eos_token_id")),
        pad_token_id=_get(hf_config, "pad_token_id"),
        max_position_embeddings=int(_get(hf_config, "max_position_embeddings") or 8192),
    )
    if "sliding_attention" in layer_types:
        sw = _get(hf_config, "sliding_window")
        if not sw:
            raise UnsupportedConfigError("layer_types has sliding_attention layers but sliding_window is unset")
        common["sliding_window"] = int(sw)

    if model_type in ("llama", "qwen2"):
        act = _get(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise UnsupportedConfigError(f"config field hidden_act={act!r} is not supported (only 'silu')")
        _reject(hf_config, "mlp_bias", lambda v: not v)
        if model_type == "llama":
            _reject(hf_config, "attention_bias", lambda v: not v)
        if isinstance(rope, dict) and "full_attention" in rope:
            rope = rope["full_attention"]
        return ModelConfig(
            architecture=arch,
            rope_full=_rope_from_dict(rope, "rope_parameters"),
            qkv_bias=(model_type == "qwen2"),
            activation="silu",
            **common,
        )

    # gemma3_text
    act = _get(hf_config, "hidden_activation", "gelu_pytorch_tanh")
    if act != "gelu_pytorch_tanh":
        raise UnsupportedConfigError(f"config field hidden_activation={act!r} is not supported")
    _reject(hf_config, "attention_bias", lambda v: not v)
    _reject(hf_config, "use_bidirectional_attention", lambda v: not v)
    rope = rope or {}
    if "full_attention" not in rope:
        raise UnsupportedConfigError("Gemma3 rope_parameters must be keyed by layer type")
    return ModelConfig(
        architecture=arch,
        rope_full=_rope_from_dict(rope["full_attention"], "rope_parameters.full_attention"),
        rope_sliding=_rope_from_dict(rope["sliding_attention"], "rope_parameters.sliding_attention"),
        qk_norm=True,
        norm_offset=1.0,
        sandwich_norms=True,
        embed_scale=float(d**0.5),
        attn_scale=float(_get(hf_config, "query_pre_attn_scalar")) ** -0.5,
        activation="gelu_tanh",
        final_logit_softcap=_get(hf_config, "final_logit_softcapping"),
        # transformers' Gemma3 attention never passes attn_logit_softcapping on (Gemma 3 uses q/k norms
        # instead), so the field has no effect there; applying it here would break parity.
        attn_logit_softcap=None,
        **common,
    )
