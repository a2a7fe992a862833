"""Tiny random Hugging Face reference models and their jaxsteer twins (shared by the tests).

Every parameter of the HF model is redrawn with `torch.manual_seed(seed)` (HF init zeroes
biases and sets norms to their identity value, which would hide mapping mistakes), the model
runs the eager attention path in float32, and `to_jax` converts it through the library's own
`model_from_state_dict`.
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

from jaxsteer.models.config import from_hf_config
from jaxsteer.models.loading import model_from_state_dict

VOCAB = 97
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_attention_heads=4)


def llama_config(**kw) -> transformers.LlamaConfig:
    base = dict(SMALL, num_hidden_layers=3, num_key_value_heads=2, bos_token_id=1, eos_token_id=5, pad_token_id=0)
    base.update(kw)
    return transformers.LlamaConfig(**base)


def qwen2_config(**kw) -> transformers.Qwen2Config:
    base = dict(SMALL, num_hidden_layers=3, num_key_value_heads=2, bos_token_id=1, eos_token_id=5, pad_token_id=0)
    base.update(kw)
    return transformers.Qwen2Config(**base)


def gemma3_config(**kw) -> transformers.Gemma3TextConfig:
    base = dict(
        SMALL,
        num_hidden_layers=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=24,  # != head_dim
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {"rope_type": "linear", "rope_theta": 1_000_000.0, "factor": 2.0},
        },
        bos_token_id=1,
        eos_token_id=5,
        pad_token_id=0,
    )
    base.update(kw)
    return transformers.Gemma3TextConfig(**base)


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,  # small, so all three frequency bands occur for hd=16
}

# name -> HF config factory; the parity tests run each of them.
CASES = {
    "llama-gqa-untied-llama3rope": lambda: llama_config(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=False),
    "llama-mha-tied": lambda: llama_config(num_key_value_heads=4, tie_word_embeddings=True),
    "llama-linear-rope": lambda: llama_config(
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 3.0}
    ),
    "qwen2-qkv-bias": lambda: qwen2_config(tie_word_embeddings=False),
    "qwen2-sliding": lambda: qwen2_config(
        num_hidden_layers=4, use_sliding_window=True, sliding_window=3, max_window_layers=2, tie_word_embeddings=True
    ),
    "gemma3-sliding": lambda: gemma3_config(),
    "gemma3-softcap": lambda: gemma3_config(final_logit_softcapping=2.0, attn_logit_softcapping=3.0),
}


def randomize_(hf: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Redraw every parameter: norms around their identity value, everything else N(0, std)."""
    gemma = hf.config.model_type.startswith("gemma")
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.data.normal_(0.0 if gemma else 1.0, 0.2)
            elif "embed_tokens" in name:
                p.data.normal_(0.0, 0.1)
            else:
                p.data.normal_(0.0, std)
    return hf


def make_hf(hf_config, seed: int = 0) -> torch.nn.Module:
    """Eager float32 HF causal LM with every parameter random."""
    hf_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).float().eval()
    hf.config._attn_implementation = "eager"
    return randomize_(hf, seed)


def to_jax(hf: torch.nn.Module, dtype=None):
    """The jaxsteer Model with the HF model's weights (via `model_from_state_dict`)."""
    import jax.numpy as jnp

    return model_from_state_dict(hf.state_dict(), from_hf_config(hf.config), dtype or jnp.float32)


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """HF's generate-style position ids for a padding mask: cumsum - 1, pads clamped to 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def hf_forward(hf, tokens: np.ndarray, mask: np.ndarray | None = None, **kw):
    """HF forward on numpy tokens (positions from the mask, as jaxsteer's default)."""
    tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    args = {}
    if mask is not None:
        args["attention_mask"] = torch.as_tensor(np.asarray(mask), dtype=torch.long)
        args["position_ids"] = torch.as_tensor(hf_positions(np.asarray(mask)), dtype=torch.long)
    with torch.no_grad():
        return hf(tokens, **args, **kw)


def hf_logits(hf, tokens: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    return hf_forward(hf, tokens, mask).logits.float().numpy()


def hf_greedy(hf, prompt: list[int], max_new_tokens: int, eos_token_id=None) -> list[int]:
    """HF greedy continuation of one unpadded prompt (tokens after the prompt, EOS included)."""
    eos = hf.config.eos_token_id if eos_token_id is None else eos_token_id
    pad = hf.config.pad_token_id if hf.config.pad_token_id is not None else 0
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=pad,
        )
    gen = out[0, len(prompt) :].tolist()
    if eos is not None:  # HF pads a finished row of a batch; with one row it just stops
        eos_set = {eos} if isinstance(eos, int) else set(eos)
        for i, t in enumerate(gen):
            if t in eos_set:
                return gen[: i + 1]
    return gen


def random_tokens(rng: np.random.RandomState, batch: int, length: int, low: int = 6) -> np.ndarray:
    """Token ids avoiding the special ids 0..5 (pad, bos, eos live there)."""
    return rng.randint(low, VOCAB, size=(batch, length)).astype(np.int32)


def left_padding_mask(lengths: list[int], total: int) -> np.ndarray:
    mask = np.zeros((len(lengths), total), np.int32)
    for i, n in enumerate(lengths):
        mask[i, total - n :] = 1
    return mask


def set_down_proj_bias(hf, vectors: np.ndarray) -> None:
    """Give layer l's MLP down projection the bias `vectors[l]` (= adding it to resid_post when
    there are no post-MLP norms)."""
    for layer, vec in zip(hf.model.layers, vectors, strict=True):
        layer.mlp.down_proj.bias = torch.nn.Parameter(torch.as_tensor(np.asarray(vec, np.float32)))
