"""Write tiny GGUF files from Hugging Face models, as llama.cpp's convert_hf_to_gguf does (shared by the tests).

Metadata follows llama.cpp's keys; Q/K rows of llama are permuted for its rotary layout; Gemma's
RMSNorm weights are stored as `1 + w`; the tokenizer is written as `tokenizer.ggml.*` metadata.
"""

from __future__ import annotations

import gguf
import numpy as np

# llama.cpp tensor suffix (after "blk.{i}.") -> HF name suffix (after "model.layers.{i}.")
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GEMMA3_LAYER_NAMES = dict(
    LAYER_NAMES,
    **{
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
        "attn_q_norm.weight": "self_attn.q_norm.weight",
        "attn_k_norm.weight": "self_attn.k_norm.weight",
    },
)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf row permutation of Q/K."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def state_dict(hf) -> dict[str, np.ndarray]:
    """float32 numpy copy of a torch model's state dict."""
    return {k: v.detach().float().numpy().copy() for k, v in hf.state_dict().items()}


def _write_model_metadata(w: gguf.GGUFWriter, arch: str, cfg) -> None:
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    rope = cfg.rope_parameters
    if arch == "gemma3":
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_sliding_window(cfg.sliding_window)
        w.add_sliding_window_pattern([t == "sliding_attention" for t in cfg.layer_types])
        rope = rope["full_attention"]
    else:
        w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])


def write_tokenizer_metadata(w: gguf.GGUFWriter, tok: dict) -> None:
    """`tok`: model ('gpt2' | 'llama' | ...), tokens, token_types, and optional merges, scores,
    pre, bos/eos/unk/pad ids, add_bos, add_space_prefix, chat_template."""
    w.add_tokenizer_model(tok["model"])
    if "pre" in tok:
        w.add_tokenizer_pre(tok["pre"])
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["token_types"])
    if "scores" in tok:
        w.add_token_scores(tok["scores"])
    if "merges" in tok:
        w.add_token_merges(tok["merges"])
    for key, add in (
        ("bos", w.add_bos_token_id),
        ("eos", w.add_eos_token_id),
        ("unk", w.add_unk_token_id),
        ("pad", w.add_pad_token_id),
    ):
        if tok.get(key) is not None:
            add(tok[key])
    if "add_bos" in tok:
        w.add_add_bos_token(tok["add_bos"])
    if "add_space_prefix" in tok:
        w.add_add_space_prefix(tok["add_space_prefix"])
    if "chat_template" in tok:
        w.add_chat_template(tok["chat_template"])


def write_gguf(path, arch: str, hf, *, tokenizer: dict | None = None, extra: dict | None = None, q_f16: bool = True):
    """A tiny GGUF of `hf` as convert_hf_to_gguf would write it (F32; Q projections F16 when `q_f16`)."""
    cfg = hf.config
    state = state_dict(hf)
    w = gguf.GGUFWriter(str(path), arch)
    _write_model_metadata(w, arch, cfg)
    if tokenizer is not None:
        write_tokenizer_metadata(w, tokenizer)
    w.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    shift = 1.0 if arch == "gemma3" else 0.0  # Gemma: llama.cpp stores 1 + w for every RMSNorm
    w.add_tensor("output_norm.weight", state["model.norm.weight"] + shift)
    if not cfg.tie_word_embeddings:
        w.add_tensor("output.weight", state["lm_head.weight"])
    names = dict(GEMMA3_LAYER_NAMES if arch == "gemma3" else LAYER_NAMES)
    if arch == "qwen2":
        names.update({f"attn_{x}.bias": f"self_attn.{x}_proj.bias" for x in "qkv"})
    for i in range(cfg.num_hidden_layers):
        for g, h in names.items():
            value = state[f"model.layers.{i}.{h}"]
            if arch == "llama" and g == "attn_q.weight":
                value = permute(value, cfg.num_attention_heads)
            if arch == "llama" and g == "attn_k.weight":
                value = permute(value, cfg.num_key_value_heads)
            if g.endswith("norm.weight"):
                value = value + shift
            if g == "attn_q.weight" and q_f16:
                value = value.astype(np.float16)
            w.add_tensor(f"blk.{i}.{g}", value)
    for name, value in (extra or {}).items():
        w.add_tensor(name, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
