"""Exported steering vectors: the safetensors down_proj-bias patch, loaded into a Hugging Face
model, reproduces jaxsteer's steered logits; the .npy holds the dense [L, d] vectors."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny as H  # noqa: E402
import jax  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer.train.export import save_hf_patch, save_npy  # noqa: E402
from jaxsteer.train.trainable import TrainableConfig, apply_trainable, init_trainable  # noqa: E402


def _add_down_proj_biases(hf):
    for layer in hf.model.layers:
        d = layer.mlp.down_proj.out_features
        layer.mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(d))


@pytest.mark.parametrize("layers", [None, (0, 2)])
def test_safetensors_patch_reproduces_steered_logits(tmp_path, layers):
    hf = H.make_hf(H.llama_config(tie_word_embeddings=False), seed=3)
    model = H.to_jax(hf)
    cfg = TrainableConfig(kind="steering", layers=layers)
    trainable = init_trainable(model, cfg, jax.random.PRNGKey(0))
    trainable = jax.tree_util.tree_map(lambda x: 0.5 * jax.random.normal(jax.random.PRNGKey(1), x.shape), trainable)

    path = save_hf_patch(str(tmp_path / "patch.safetensors"), trainable, cfg, model)
    npy = save_npy(str(tmp_path / "v.npy"), trainable, cfg, model.config.n_layers)
    vectors = np.load(npy)
    assert vectors.shape == (model.config.n_layers, model.config.d_model)
    if layers is not None:
        assert not vectors[1].any()

    _add_down_proj_biases(hf)
    patch = load_file(path)
    assert sorted(patch) == sorted(f"model.layers.{l}.mlp.down_proj.bias" for l in range(model.config.n_layers))
    missing, unexpected = hf.load_state_dict(patch, strict=False)
    assert not unexpected

    tokens = H.random_tokens(np.random.RandomState(0), 2, 9)
    want = H.hf_logits(hf, tokens)
    run_model, ivs = apply_trainable(model, trainable, cfg)
    got, _ = jaxsteer.forward(run_model, tokens, interventions=ivs)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
    base, _ = jaxsteer.forward(model, tokens)
    assert np.abs(np.asarray(base) - want).max() > 1e-2  # the patch does something


def test_patch_refuses_other_sites_and_kinds(tmp_path):
    hf = H.make_hf(H.llama_config(), seed=0)
    model = H.to_jax(hf)
    cfg = TrainableConfig(kind="steering", site="attn_out")
    with pytest.raises(ValueError, match="resid_post"):
        save_hf_patch(str(tmp_path / "p.safetensors"), init_trainable(model, cfg, jax.random.PRNGKey(0)), cfg, model)
    cfg = TrainableConfig(kind="lora")
    with pytest.raises(ValueError, match="steering"):
        save_hf_patch(str(tmp_path / "p.safetensors"), init_trainable(model, cfg, jax.random.PRNGKey(0)), cfg, model)
    gemma = H.to_jax(H.make_hf(H.gemma3_config(), seed=0))
    cfg = TrainableConfig(kind="steering")
    with pytest.raises(ValueError, match="down_proj"):
        save_hf_patch(str(tmp_path / "p.safetensors"), init_trainable(gemma, cfg, jax.random.PRNGKey(0)), cfg, gemma)
