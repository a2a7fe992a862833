"""llama.cpp control vectors (jaxsteer.steering.llamacpp): GGUF round trips read back with the
`gguf` package, import of a file written as repeng writes it, the unquantised model GGUF, and
(when llama-cpp-python is installed) llama.cpp's own steered greedy decoding against jaxsteer's."""

from __future__ import annotations

import importlib.util

import gguf
import jax
import numpy as np
import pytest

from jaxsteer.steering.llamacpp import (
    control_vector_data,
    load_control_vector,
    save_control_vector,
    write_unquantized_gguf,
)


def test_export_round_trip_and_layout(tmp_path):
    v = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    v[0] = 0
    v[3] = 0
    path = save_control_vector(str(tmp_path / "cv.gguf"), v, model_hint="qwen2", scale=2.0)
    reader = gguf.GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "qwen2"
    assert reader.fields["controlvector.layer_count"].contents() == 3
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2", "direction.4"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [8]
    back, meta = load_control_vector(path, n_layers=5)
    np.testing.assert_array_equal(back, 2 * v)
    assert meta["controlvector.model_hint"] == "qwen2"
    data = control_vector_data(back)
    np.testing.assert_array_equal(data.reshape(4, 8), back[1:])  # layer l at offset (l - 1) * d


def test_import_of_a_repeng_style_file(tmp_path):
    """A control vector written with the gguf package the way repeng's `export_gguf` does."""
    path = str(tmp_path / "repeng.gguf")
    rng = np.random.default_rng(1)
    dirs = {l: rng.normal(size=6).astype(np.float32) for l in (2, 5, 6)}
    w = gguf.GGUFWriter(path, "controlvector")
    w.add_string("controlvector.model_hint", "mistral")
    w.add_uint32("controlvector.layer_count", len(dirs))
    for l, d in dirs.items():
        w.add_tensor(f"direction.{l}", d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    v, meta = load_control_vector(path)
    assert v.shape == (7, 6) and meta["controlvector.layer_count"] == 3
    for l in range(7):
        np.testing.assert_array_equal(v[l], dirs.get(l, np.zeros(6)))
    with pytest.raises(ValueError, match="direction.6 does not exist in a model with 4 layers"):
        load_control_vector(path, n_layers=4)


def test_bad_exports_and_files_are_clear_errors(tmp_path):
    v = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="cannot steer layer 0"):
        save_control_vector(str(tmp_path / "a.gguf"), v)
    with pytest.raises(ValueError, match="after each block's MLP"):
        save_control_vector(str(tmp_path / "a.gguf"), v, layers=[1], site="attn_out")
    with pytest.raises(ValueError, match="every vector is zero"):
        save_control_vector(str(tmp_path / "a.gguf"), np.zeros((3, 4)))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.ones((2, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="not a control vector"):
        load_control_vector(str(tmp_path / "m.gguf"))
    w = gguf.GGUFWriter(str(tmp_path / "h.gguf"), "controlvector")
    w.add_tensor("direction.1", np.ones(4, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match="1-D float32"):
        load_control_vector(str(tmp_path / "h.gguf"))


def test_unquantized_gguf_keeps_the_weights_jaxsteer_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import hf_tiny as H
    from gguf_tiny import write_gguf

    import jaxsteer

    hf = H.randomize_(transformers.AutoModelForCausalLM.from_config(H.llama_config()))
    src = write_gguf(tmp_path / "tiny.gguf", "llama", hf, q_f16=True)  # Q projections stored as F16
    dst = write_unquantized_gguf(str(src), str(tmp_path / "tiny-f32.gguf"))
    assert {t.tensor_type for t in gguf.GGUFReader(dst).tensors} == {gguf.GGMLQuantizationType.F32}
    a = jaxsteer.load(str(src), tokenizer=False)
    b = jaxsteer.load(dst, tokenizer=False)
    a, b = (m[0] if isinstance(m, tuple) else m for m in (a, b))
    assert a.config == b.config
    for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed (pip install llama-cpp-python; it builds llama.cpp from source)",
)
def test_llama_cpp_steers_as_jaxsteer_does(real_model, tmp_path):
    """llama.cpp on an f32 copy of the default model, steered by an exported control vector,
    decodes greedily the same tokens as jaxsteer (benchmarks/llamacpp_steering.py: 24 prompts)."""
    from benchmarks.llamacpp_steering import compare, sentiment_vector

    model, tok = real_model
    vectors = sentiment_vector(model, tok, layer=8, scale=4.0)
    result = compare(
        model,
        tok,
        vectors,
        prompts=["Describe your morning.", "How was the film?", "Tell me about your cat."],
        max_new_tokens=12,
        workdir=str(tmp_path),
    )
    assert result["steered_changed"] > 0  # the vector changes llama.cpp's output: the comparison is not vacuous
    assert result["exact_match"] >= 2, result


def test_cli_export_and_import_round_trip(tmp_path):
    from jaxsteer.cli import main

    v = np.zeros((4, 6), np.float32)
    v[2] = np.arange(6)
    np.save(tmp_path / "v.npy", v)
    main(["steer", "export", "--vectors", str(tmp_path / "v.npy"), "--scale", "0.5", "--out", str(tmp_path / "v.gguf")])
    main(["steer", "import", str(tmp_path / "v.gguf"), "--n-layers", "4", "--out", str(tmp_path / "back.npy")])
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), 0.5 * v)
