"""GGUF without torch: config and tokenizer from the file's metadata, checked against Hugging Face.

- the config read from a GGUF equals the config of the equivalent HF directory (SmolLM2 and tiny
  random llama / qwen2 / gemma3 models written to GGUF here), and the loaded model reproduces
  the HF model's logits;
- the tokenizer rebuilt from `tokenizer.ggml.*` gives the same ids as transformers' own GGUF
  tokenizer on a varied corpus (byte-level BPE: SmolLM2; SentencePiece-style: tiny vocabularies
  trained here), decodes back to the text, and applies the chat template identically;
- damaged files, unknown architectures / tokenizer models and missing keys are clear errors.
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

import hf_tiny as H  # noqa: E402
from gguf_tiny import write_gguf, write_tokenizer_metadata  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer.models.config import UnsupportedConfigError, from_hf_config  # noqa: E402
from jaxsteer.models.gguf_file import GGUFError, GGUFFile, gguf_config, gguf_tokenizer  # noqa: E402
from jaxsteer.models.loading import default_model_path, load, load_gguf  # noqa: E402

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b  # sum\n\nclass X:\n\tpass\n",
    "12 + 34 = 46",
    "What is 123456789 * 987 - 3.14159e-10 / 2,000,000?",
    "    four leading spaces, trailing   ",
    "\n\n\nnewlines\r\n\r\nand\ttabs\t\t",
    "café naïve Ångström façade São Paulo Œuvre",
    "日本語のテキストと中文和한국어",
    "emoji 🙂👍🏽🇫🇷 and ZWJ 👩‍👩‍👧",
    "<|im_start|>user\nhi<|im_end|>",
    "",
    " ",
    "x" * 40,
]

# SmolLM2-135M-Instruct's config.json on the Hugging Face Hub (fields that set the architecture).
SMOLLM2_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}


@pytest.fixture(scope="module")
def smollm2():
    path = default_model_path()
    f = GGUFFile(path)
    ref = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return f, gguf_tokenizer(f), ref


# --------------------------------------------------------------------------- config


def test_smollm2_config_equals_hf_directory(smollm2, tmp_path):
    f, _, _ = smollm2
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_HF_CONFIG))
    expected = from_hf_config(transformers.AutoConfig.from_pretrained(tmp_path))
    assert gguf_config(f) == expected
    assert gguf_config(f).norm_eps == 1e-05  # float32 metadata read back as the decimal it was written from


def _tiny_tokenizer_meta(vocab_size: int, cfg) -> dict:
    tokens = [f"<t{i}>" for i in range(vocab_size)]
    return dict(
        model="gpt2",
        tokens=tokens,
        token_types=[1] * vocab_size,
        merges=[],
        bos=cfg.bos_token_id,
        eos=cfg.eos_token_id,
        pad=cfg.pad_token_id,
    )


GGUF_CASES = {
    "llama-untied": ("llama", lambda: H.llama_config(tie_word_embeddings=False, max_position_embeddings=256)),
    "llama-linear-rope-tied": (
        "llama",
        lambda: H.llama_config(
            tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 3.0}
        ),
    ),
    "qwen2-tied": ("qwen2", lambda: H.qwen2_config(tie_word_embeddings=True)),
    "qwen2-untied": ("qwen2", lambda: H.qwen2_config(tie_word_embeddings=False)),
    # llama.cpp's converter requires query_pre_attn_scalar == head_dim for Gemma 3
    "gemma3": ("gemma3", lambda: H.gemma3_config(query_pre_attn_scalar=16)),
}


@pytest.mark.parametrize("case", sorted(GGUF_CASES))
def test_tiny_gguf_config_and_logits_match_hf(case, tmp_path):
    arch, make = GGUF_CASES[case]
    hf = H.randomize_(transformers.AutoModelForCausalLM.from_config(make()).eval())
    path = write_gguf(
        tmp_path / f"{case}.gguf", arch, hf, tokenizer=_tiny_tokenizer_meta(H.VOCAB, hf.config), q_f16=False
    )
    config = gguf_config(GGUFFile(path))
    assert config == from_hf_config(hf.config)
    model = load_gguf(path)
    tokens = np.random.RandomState(0).randint(0, H.VOCAB, size=(2, 9))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    logits, _ = jaxsteer.forward(model, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=2e-5, rtol=1e-4)


def test_missing_key_and_unknown_architecture_are_named(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "a.gguf"), "llama")
    w.add_block_count(2)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_vocab_size(4)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(GGUFError, match="'llama.feed_forward_length' is missing"):
        load(str(tmp_path / "a.gguf"), tokenizer=False)
    w = gguf.GGUFWriter(str(tmp_path / "b.gguf"), "falcon")
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(UnsupportedConfigError, match="'falcon' is not supported"):
        load(str(tmp_path / "b.gguf"))


# --------------------------------------------------------------------------- damaged files


@pytest.fixture
def tiny_gguf(tmp_path):
    hf = H.randomize_(transformers.AutoModelForCausalLM.from_config(H.llama_config()))
    return write_gguf(tmp_path / "tiny.gguf", "llama", hf, tokenizer=_tiny_tokenizer_meta(H.VOCAB, hf.config))


@pytest.mark.parametrize("keep", [0, 3, 40, 0.5, 0.999])
def test_truncated_gguf_is_one_clear_error(tiny_gguf, keep):
    data = tiny_gguf.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    tiny_gguf.write_bytes(data[:n])
    with pytest.raises(GGUFError, match="tiny.gguf"):
        load(str(tiny_gguf), tokenizer=False)


def test_non_finite_weights_are_refused(tiny_gguf):
    f = GGUFFile(tiny_gguf)
    info = f.tensors["blk.1.ffn_up.weight"]
    del f
    data = bytearray(tiny_gguf.read_bytes())
    data[info.offset : info.offset + 8] = np.array([np.nan, np.inf], np.float32).tobytes()
    tiny_gguf.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match=r"blk\.1\.ffn_up\.weight has 2 non-finite"):
        load(str(tiny_gguf), tokenizer=False)


@pytest.mark.parametrize(
    "config, needle",
    [
        (dict(rms_norm_eps=float("nan")), r"layer_norm_rms_epsilon=nan must be a finite number > 0"),
        (dict(rms_norm_eps=-1.0), r"layer_norm_rms_epsilon=-1.0 must be a finite number > 0"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 0.0}), r"llama.rope.freq_base=0.0 must be"),
        (dict(max_position_embeddings=0), r"llama.context_length=0 must be"),
        (dict(bos_token_id=H.VOCAB + 7), rf"tokenizer.ggml.bos_token_id={H.VOCAB + 7} is outside the vocabulary"),
    ],
)
def test_damaged_metadata_is_refused_by_name(tmp_path, config, needle):
    """Metadata that would load and then give NaN (or wrong) logits from every forward."""
    hf = H.randomize_(transformers.AutoModelForCausalLM.from_config(H.llama_config(**config)))
    path = write_gguf(tmp_path / "bad.gguf", "llama", hf, tokenizer=_tiny_tokenizer_meta(H.VOCAB, hf.config))
    with pytest.raises(GGUFError, match=needle):
        load(str(path), tokenizer=False)


def _set_tensor_type(path, name: str, ggml_type: int) -> None:
    """Overwrite tensor `name`'s ggml type in the header (a relabelled tensor, data unchanged)."""
    data = bytearray(path.read_bytes())
    key = len(name).to_bytes(8, "little") + name.encode()
    at = data.index(key) + len(key)
    n_dims = int.from_bytes(data[at : at + 4], "little")
    at += 4 + 8 * n_dims
    data[at : at + 4] = ggml_type.to_bytes(4, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "name, ggml_type, needle",
    [
        ("output_norm.weight", 1, r"output_norm.weight \(F16.*unused bytes.*recorded type or shape is wrong"),
        ("blk.0.ffn_norm.weight", 1, r"blk.0.ffn_norm.weight \(F16.*unused bytes"),
        ("blk.0.attn_q.weight", 0, r"blk.0.attn_q.weight \(F32.*overlaps the next tensor"),
        ("output_norm.weight", 8, r"output_norm.weight \(Q8_0.*norm weight must be F32, F16 or BF16"),
    ],
)
def test_relabelled_tensor_types_are_refused(tiny_gguf, name, ggml_type, needle):
    """An F32 norm relabelled F16 used to load with logits off by up to 22."""
    _set_tensor_type(tiny_gguf, name, ggml_type)
    with pytest.raises(GGUFError, match=needle):
        load(str(tiny_gguf), tokenizer=False)


# --------------------------------------------------------------------------- tokenizers


def test_smollm2_tokenizer_matches_transformers(smollm2):
    _, tok, ref = smollm2
    for text in CORPUS:
        ids = tok(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert tok.decode(ids) == text
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<|im_end|>",
    )
    assert tok.all_special_tokens == ref.all_special_tokens and len(tok) == len(ref) == 49152


def test_smollm2_chat_template_matches_transformers(smollm2):
    _, tok, ref = smollm2
    chats = [
        [{"role": "system", "content": "You add numbers. Be terse."}, {"role": "user", "content": "What is 12 + 34?"}],
        [
            {"role": "user", "content": "héllo 🙂"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "code:\n  x = 1"},
        ],
    ]
    for chat in chats:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert text == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
        assert tok.decode(tok(text)["input_ids"]) == text


def _sentencepiece_vocab() -> tuple[list[str], list[int]]:
    """A small SentencePiece-style BPE vocabulary (U+2581 for spaces, byte fallback) trained here."""
    from tokenizers import Tokenizer, models, normalizers, trainers

    special = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trained = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    trained.normalizer = normalizers.Replace(" ", "\u2581")
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=special + byte_tokens, show_progress=False)
    trained.train_from_iterator([t for t in CORPUS if t] * 10 + ["hello world, hello there  two  spaces"] * 10, trainer)
    tokens = [t for t, _ in sorted(trained.get_vocab().items(), key=lambda kv: kv[1])]
    types = [3 if t in special else 6 if t in byte_tokens else 1 for t in tokens]
    return tokens, types


@pytest.mark.parametrize("arch,prefix", [("gemma3", False), ("llama", True)])
def test_sentencepiece_tokenizer_matches_transformers(tmp_path, arch, prefix):
    tokens, types = _sentencepiece_vocab()
    path = tmp_path / f"{arch}.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    write_tokenizer_metadata(
        w,
        dict(
            model="llama",
            tokens=tokens,
            token_types=types,
            scores=[-float(i) for i in range(len(tokens))],
            bos=2,
            eos=1,
            unk=3,
            pad=0,
            add_bos=True,
            add_space_prefix=prefix,
        ),
    )
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    tok = gguf_tokenizer(GGUFFile(path))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in CORPUS + ["<bos>hello<eos>", " leading space"]:
        ids = tok(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ids[0] == 2  # add_bos
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert tok.decode(tok("café 🙂 日本")["input_ids"], skip_special_tokens=True) == "café 🙂 日本"


def test_unknown_tokenizer_model_says_how_to_pass_one(tiny_gguf, tmp_path):
    hf = H.randomize_(transformers.AutoModelForCausalLM.from_config(H.llama_config()))
    meta = _tiny_tokenizer_meta(H.VOCAB, hf.config)
    meta["model"] = "rwkv"
    path = write_gguf(tmp_path / "rwkv.gguf", "llama", hf, tokenizer=meta)
    with pytest.raises(UnsupportedConfigError, match=r"tokenizer model 'rwkv'.*jaxsteer\.load\(spec, tokenizer="):
        load(str(path))
    # the way out the message names: an explicit tokenizer (object or path)
    own = gguf_tokenizer(GGUFFile(tiny_gguf))
    model, tok = load(str(path), tokenizer=own)
    assert tok is own and model.config.vocab_size == H.VOCAB
    _, tok2 = load(str(path), tokenizer=str(tiny_gguf))
    assert tok2.get_vocab() == own.get_vocab()
    _, none = load(str(path), tokenizer=False)
    assert none is None
