"""Interventions (Steer / Patch / Ablate): equivalences with edited Hugging Face models, known
answers, gradients, vmapped sweeps and input validation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny as H  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer import Ablate, Patch, Steer  # noqa: E402

T = 9
ATOL = 1e-5


@pytest.fixture(scope="module")
def llama():
    """(HF, jaxsteer) tiny GQA Llama: 3 layers, 4 query heads, 2 KV heads, head_dim 16."""
    hf = H.make_hf(H.llama_config(tie_word_embeddings=False))
    return hf, H.to_jax(hf)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.RandomState(0)
    return H.random_tokens(rng, 2, T), H.random_tokens(rng, 2, T)


def _fresh_hf(hf):
    """A copy of the HF model to edit (biases, zeroed columns) without touching the fixture."""
    import copy

    return copy.deepcopy(hf)


def _logits(model, toks, interventions=(), **kw):
    return np.asarray(jaxsteer.forward(model, toks, interventions=interventions, **kw)[0])


def _head_cols(model, h):
    hd = model.config.head_dim
    return slice(h * hd, (h + 1) * hd)


# --------------------------------------------------------------------------- equivalences with HF


def test_steer_equals_down_proj_bias(llama, tokens):
    hf, model = llama
    toks = tokens[0]
    L, d = model.config.n_layers, model.config.d_model
    vectors = np.random.RandomState(1).normal(0, 0.5, (L, d)).astype(np.float32)
    edited = _fresh_hf(hf)
    H.set_down_proj_bias(edited, vectors)
    ref = H.hf_logits(edited, toks)
    got = _logits(model, toks, Steer(jnp.asarray(vectors)))
    np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)
    assert np.abs(got - _logits(model, toks)).max() > 0.1  # the steering did something

    # with left padding too (positions from the mask in both)
    mask = H.left_padding_mask([T, 5], T)
    ref = H.hf_logits(edited, toks, mask)
    got = _logits(model, toks, Steer(jnp.asarray(vectors)), attention_mask=mask)
    np.testing.assert_allclose(got[mask > 0], ref[mask > 0], rtol=0, atol=ATOL)

    # a shared vector at selected layers = bias on those layers only
    shared = vectors[0]
    edited = _fresh_hf(hf)
    H.set_down_proj_bias(edited, [shared if l in (0, 2) else np.zeros(d) for l in range(L)])
    got = _logits(model, toks, Steer(jnp.asarray(shared), layers=(0, 2)))
    np.testing.assert_allclose(got, H.hf_logits(edited, toks), rtol=0, atol=ATOL)


def test_ablate_zero_head_equals_zeroed_o_proj_columns(llama, tokens):
    hf, model = llama
    toks = tokens[0]
    edited = _fresh_hf(hf)
    with torch.no_grad():
        edited.model.layers[1].self_attn.o_proj.weight[:, _head_cols(model, 2)] = 0
    got = _logits(model, toks, Ablate(site="z", layers=(1,), heads=(2,)))
    np.testing.assert_allclose(got, H.hf_logits(edited, toks), rtol=0, atol=ATOL)
    assert np.abs(got - _logits(model, toks)).max() > 1e-3

    # several heads at every layer
    edited = _fresh_hf(hf)
    with torch.no_grad():
        for layer in edited.model.layers:
            for h in (0, 3):
                layer.self_attn.o_proj.weight[:, _head_cols(model, h)] = 0
    got = _logits(model, toks, Ablate(site="z", heads=(0, 3)))
    np.testing.assert_allclose(got, H.hf_logits(edited, toks), rtol=0, atol=ATOL)

    # the same through a data mask [L, T, H]
    m = np.zeros((model.config.n_layers, T, model.config.n_heads), np.float32)
    m[:, :, [0, 3]] = 1
    np.testing.assert_allclose(_logits(model, toks, Ablate(site="z", mask=jnp.asarray(m))), got, rtol=0, atol=ATOL)


def _o_proj_constant_head(hf, model, layers, head, values):
    """HF model whose o_proj sees `values[l]` instead of head `head`'s z at the given layers."""
    edited = _fresh_hf(hf)
    cols = _head_cols(model, head)
    with torch.no_grad():
        for l in layers:
            proj = edited.model.layers[l].self_attn.o_proj
            bias = proj.weight[:, cols] @ torch.as_tensor(np.asarray(values[l], np.float32))
            proj.weight[:, cols] = 0
            proj.bias = torch.nn.Parameter(bias)
    return edited


def test_ablate_mean_with_values_equals_constant_head(llama, tokens):
    hf, model = llama
    toks = tokens[0]
    c = model.config
    mu = np.random.RandomState(2).normal(0, 0.5, (c.n_layers, c.n_heads, c.head_dim)).astype(np.float32)
    edited = _o_proj_constant_head(hf, model, (0, 2), 1, mu[:, 1])
    got = _logits(model, toks, Ablate(site="z", mode="mean", values=jnp.asarray(mu), layers=(0, 2), heads=(1,)))
    np.testing.assert_allclose(got, H.hf_logits(edited, toks), rtol=0, atol=ATOL)


def test_steer_z_head_equals_o_proj_bias(llama, tokens):
    hf, model = llama
    toks = tokens[0]
    c = model.config
    vec = np.random.RandomState(3).normal(0, 0.5, (c.n_heads, c.head_dim)).astype(np.float32)
    # z_h + vec_h at layers 0 and 2: o_proj gains the bias W_h @ vec_h (other heads untouched)
    edited = _fresh_hf(hf)
    cols = _head_cols(model, 3)
    with torch.no_grad():
        for l in (0, 2):
            proj = edited.model.layers[l].self_attn.o_proj
            proj.bias = torch.nn.Parameter(proj.weight[:, cols] @ torch.as_tensor(vec[3]))
    got = _logits(model, toks, Steer(jnp.asarray(vec), site="z", layers=(0, 2), heads=(3,)))
    np.testing.assert_allclose(got, H.hf_logits(edited, toks), rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- known answers


def test_patch_known_answers(llama, tokens):
    _, model = llama
    a, b = tokens
    L = model.config.n_layers
    logits_a, tr_a = jaxsteer.forward(model, a, record=("resid_pre", "resid_post"))
    logits_b, tr_b = jaxsteer.forward(model, b, record=("resid_pre", "resid_post"))
    logits_a, logits_b = np.asarray(logits_a), np.asarray(logits_b)
    assert np.abs(logits_a - logits_b).max() > 0.1

    # a run's own values change nothing, at every site and layer
    for site in ("resid_pre", "resid_post"):
        np.testing.assert_allclose(_logits(model, a, Patch(tr_a[site], site=site)), logits_a, rtol=0, atol=1e-6)
    # the other run's last-layer resid_post at all positions gives the other run's logits
    got = _logits(model, a, Patch(tr_b.resid_post, layers=(L - 1,)))
    np.testing.assert_allclose(got, logits_b, rtol=0, atol=1e-6)
    # ... and so does its layer-0 resid_pre (= its embeddings), and any middle layer
    np.testing.assert_allclose(
        _logits(model, a, Patch(tr_b.resid_pre, site="resid_pre", layers=(0,))), logits_b, atol=1e-5
    )
    np.testing.assert_allclose(
        _logits(model, a, Patch(tr_b.resid_pre, site="resid_pre", layers=(1,))), logits_b, atol=1e-5
    )
    # values without a layer axis: one [B, T, d] array used at the selected layer
    np.testing.assert_allclose(_logits(model, a, Patch(tr_b.resid_post[1], layers=(1,))), logits_b, atol=1e-5)
    # a soft (0.5) patch of the last layer is the midpoint of the two residual streams
    half = _logits(model, a, Patch(tr_b.resid_post, mask=jnp.asarray([0.0] * (L - 1) + [0.5])))
    mid = jaxsteer.models.unembed(model, 0.5 * (tr_a.resid_post[-1] + tr_b.resid_post[-1]))
    np.testing.assert_allclose(half, np.asarray(mid), atol=1e-5)

    # causality: patching positions >= 4 (all layers) leaves earlier logits untouched
    pos = jnp.asarray(np.arange(T) >= 4)
    got = _logits(model, a, Patch(tr_b.resid_pre, site="resid_pre", positions=pos))
    np.testing.assert_allclose(got[:, :4], logits_a[:, :4], rtol=0, atol=1e-6)
    assert np.abs(got[:, 4:] - logits_a[:, 4:]).max() > 1e-2


def test_ablate_mean_of_batch_and_recording_sees_the_intervention(llama, tokens):
    _, model = llama
    a = tokens[0]
    _, clean = jaxsteer.forward(model, a, record="mlp_out")
    _, tr = jaxsteer.forward(model, a, record="mlp_out", interventions=Ablate(site="mlp_out", mode="mean", layers=(0,)))
    mean0 = np.asarray(clean.mlp_out[0]).mean(axis=(0, 1))
    np.testing.assert_allclose(np.asarray(tr.mlp_out[0]), np.broadcast_to(mean0, tr.mlp_out[0].shape), atol=1e-6)
    assert np.abs(np.asarray(tr.mlp_out[1]) - np.asarray(clean.mlp_out[1])).max() > 1e-4  # downstream changed
    # zero-ablating a site records zeros there
    _, tr = jaxsteer.forward(model, a, record="attn_out", interventions=Ablate(site="attn_out", layers=(2,)))
    assert np.all(np.asarray(tr.attn_out[2]) == 0) and np.abs(np.asarray(tr.attn_out[1])).max() > 0


def test_steer_positions_and_per_token_scale(llama, tokens):
    _, model = llama
    a = tokens[0]
    c = model.config
    L, B, d = c.n_layers, a.shape[0], c.d_model
    rng = np.random.RandomState(4)
    vec = jnp.asarray(rng.normal(0, 0.5, (L, d)).astype(np.float32))
    clean = _logits(model, a)

    # one position [T]: earlier positions untouched; same as a per-token vector [L, B, T, d]
    onehot = np.zeros(T, np.float32)
    onehot[5] = 1
    got = _logits(model, a, Steer(vec, positions=jnp.asarray(onehot)))
    np.testing.assert_array_equal(got[:, :5], clean[:, :5])
    assert np.abs(got[:, 5:] - clean[:, 5:]).max() > 1e-2
    per_token = np.asarray(vec)[:, None, None, :] * onehot[None, None, :, None] * np.ones((1, B, 1, 1), np.float32)
    np.testing.assert_allclose(_logits(model, a, Steer(jnp.asarray(per_token))), got, atol=ATOL)

    # a per-row positions mask [B, T] equals a per-token scale [B, T] with the same values
    rows = (rng.rand(B, T) > 0.5).astype(np.float32)
    by_pos = _logits(model, a, Steer(vec, positions=jnp.asarray(rows)))
    by_scale = _logits(model, a, Steer(vec, scale=jnp.asarray(rows)))
    np.testing.assert_allclose(by_pos, by_scale, atol=ATOL)

    # a general per-token scale equals the per-token vector scale[b, t] * vec[l]
    scale = rng.normal(0, 1, (B, T)).astype(np.float32)
    got = _logits(model, a, Steer(vec, scale=jnp.asarray(scale)))
    per_token = np.asarray(vec)[:, None, None, :] * scale[None, :, :, None]
    np.testing.assert_allclose(got, _logits(model, a, Steer(jnp.asarray(per_token))), atol=ATOL)
    # a scalar scale multiplies the vector; scale 0 is the clean run
    np.testing.assert_allclose(_logits(model, a, Steer(vec, scale=2.0)), _logits(model, a, Steer(2 * vec)), atol=ATOL)
    np.testing.assert_array_equal(_logits(model, a, Steer(vec, scale=0.0)), clean)


def test_interventions_compose_in_order(llama, tokens):
    _, model = llama
    a, b = tokens
    _, tr_b = jaxsteer.forward(model, b, record="resid_post")
    vec = jnp.ones((model.config.d_model,))
    # Patch after Steer overrides the steering; Steer after Patch adds to the patched values
    patched = _logits(model, a, Patch(tr_b.resid_post, layers=(2,)))
    np.testing.assert_allclose(
        _logits(model, a, [Steer(vec, layers=(2,)), Patch(tr_b.resid_post, layers=(2,))]), patched, atol=1e-6
    )
    after = _logits(model, a, [Patch(tr_b.resid_post, layers=(2,)), Steer(vec, layers=(2,))])
    expect = jaxsteer.models.unembed(model, tr_b.resid_post[2] + vec)
    np.testing.assert_allclose(after, np.asarray(expect), atol=1e-5)


# --------------------------------------------------------------------------- gradients and vmap


def test_grad_wrt_steering_vectors_matches_finite_differences(llama, tokens):
    """Directional derivatives of jax.grad against central differences, in float32.

    (float64 would not help: RMSNorm and the unembedding compute in float32 by design.)
    """
    _, model = llama
    a = tokens[0]
    L, d = model.config.n_layers, model.config.d_model

    def loss(vectors):
        logits, _ = jaxsteer.forward(model, a, interventions=Steer(vectors))
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.mean(logp[:, :, 7]) + 0.01 * jnp.mean(logits**2)

    rng = np.random.RandomState(5)
    v0 = jnp.asarray(rng.normal(0, 0.3, (L, d)).astype(np.float32))
    grad = jax.grad(loss)(v0)
    assert grad.shape == (L, d) and grad.dtype == jnp.float32
    assert np.all(np.abs(np.asarray(grad)).max(axis=1) > 0), "every layer's vector gets a gradient"
    gnorm = float(jnp.linalg.norm(grad))
    eps = 0.05
    for _ in range(4):
        u = rng.normal(size=(L, d))
        u = jnp.asarray(u / np.linalg.norm(u), jnp.float32)
        analytic = float(jnp.sum(grad * u))
        numeric = float((loss(v0 + eps * u) - loss(v0 - eps * u)) / (2 * eps))
        assert abs(analytic - numeric) <= 2e-3 * gnorm + 1e-5, (analytic, numeric, gnorm)
    # the gradient along one coordinate, too (largest component)
    i = np.unravel_index(int(np.abs(np.asarray(grad)).argmax()), (L, d))
    e = jnp.zeros((L, d)).at[i].set(1.0)
    numeric = float((loss(v0 + eps * e) - loss(v0 - eps * e)) / (2 * eps))
    assert abs(float(grad[i]) - numeric) <= 2e-3 * gnorm + 1e-5


def test_vmap_over_patch_masks_equals_loop(llama, tokens):
    _, model = llama
    a, b = tokens
    L = model.config.n_layers
    _, tr_b = jaxsteer.forward(model, b, record="resid_pre")
    masks = (np.random.RandomState(6).rand(5, L, T) > 0.6).astype(np.float32)
    masks[0] = 0  # the clean run
    masks[1] = 0
    masks[1, 0] = 1  # everything at layer 0: the other run

    def run(mask):
        return jaxsteer.forward(model, a, interventions=Patch(tr_b.resid_pre, site="resid_pre", mask=mask))[0]

    batched = np.asarray(jax.vmap(run)(jnp.asarray(masks)))
    assert batched.shape == (5, 2, T, model.config.vocab_size)
    looped = np.stack([np.asarray(run(jnp.asarray(m))) for m in masks])
    np.testing.assert_allclose(batched, looped, rtol=0, atol=ATOL)
    np.testing.assert_allclose(batched[0], _logits(model, a), atol=ATOL)
    np.testing.assert_allclose(batched[1], _logits(model, b), atol=ATOL)
    assert len({round(float(x), 4) for x in batched[:, 0, -1, 0]}) > 2  # the masks give different results


def test_vmap_over_steering_vectors_equals_loop(llama, tokens):
    _, model = llama
    a = tokens[0]
    L, d = model.config.n_layers, model.config.d_model
    vecs = jnp.asarray(np.random.RandomState(7).normal(0, 0.5, (4, L, d)).astype(np.float32))

    def run(v):
        return jaxsteer.forward(model, a, interventions=Steer(v))[0]

    batched = np.asarray(jax.vmap(run)(vecs))
    looped = np.stack([np.asarray(run(v)) for v in vecs])
    np.testing.assert_allclose(batched, looped, rtol=0, atol=ATOL)
    assert np.abs(batched[0] - batched[1]).max() > 1e-2
    # and a vmapped scale sweep: scale 0 is the clean run
    scales = jnp.asarray([0.0, 1.0, 2.0])
    swept = np.asarray(jax.vmap(lambda s: jaxsteer.forward(model, a, interventions=Steer(vecs[0], scale=s))[0])(scales))
    np.testing.assert_allclose(swept[0], _logits(model, a), atol=ATOL)
    np.testing.assert_allclose(swept[2], _logits(model, a, Steer(2 * vecs[0])), atol=ATOL)


# --------------------------------------------------------------------------- validation


def test_bad_interventions_raise_clear_errors(llama, tokens):
    _, model = llama
    a = tokens[0]
    c = model.config
    L, d = c.n_layers, c.d_model
    fwd = lambda iv: jaxsteer.forward(model, a, interventions=iv)  # noqa: E731
    with pytest.raises(ValueError, match=r"Steer: vector has shape \(65,\)"):
        fwd(Steer(jnp.zeros(d + 1)))
    with pytest.raises(ValueError, match=r"Steer: vector has shape \(2, 64\)"):
        fwd(Steer(jnp.zeros((L - 1, d))))
    with pytest.raises(ValueError, match="layer 3 out of range for a model with 3 layers"):
        fwd(Steer(jnp.zeros(d), layers=(3,)))
    with pytest.raises(ValueError, match="layer -1 out of range"):
        fwd(Ablate(layers=(-1,)))
    with pytest.raises(ValueError, match="head 4 out of range for site 'z' with 4 heads"):
        fwd(Ablate(site="z", heads=(4,)))
    with pytest.raises(ValueError, match="head 2 out of range for site 'k' with 2 heads"):
        fwd(Ablate(site="k", heads=(2,)))
    with pytest.raises(ValueError, match="heads given but site 'resid_post' has no head axis"):
        fwd(Ablate(site="resid_post", heads=(0,)))
    with pytest.raises(ValueError, match="unknown site 'resid'"):
        fwd(Steer(jnp.zeros(d), site="resid"))
    with pytest.raises(ValueError, match="unknown site 'logits'"):
        jaxsteer.forward(model, a, record=("resid_post", "logits"))
    with pytest.raises(ValueError, match=r"mask has shape \(2,\); expected \[L\]"):
        fwd(Ablate(mask=jnp.ones(2)))
    with pytest.raises(ValueError, match="its token axis should be 9"):
        fwd(Ablate(mask=jnp.ones((L, T + 1))))
    with pytest.raises(ValueError, match="positions mask has shape"):
        fwd(Steer(jnp.zeros(d), positions=jnp.ones(T - 1)))
    with pytest.raises(ValueError, match=r"Steer: scale has shape \(2, 8\)"):
        fwd(Steer(jnp.zeros(d), scale=jnp.ones((2, T - 1))))
    with pytest.raises(ValueError, match="cannot add a vector to the attention pattern"):
        fwd(Steer(jnp.zeros(d), site="pattern"))
    with pytest.raises(ValueError, match="values have 5 tokens, the input has 9"):
        fwd(Patch(jnp.zeros((L, 2, 5, d))))
    with pytest.raises(ValueError, match="trailing axes should be"):
        fwd(Patch(jnp.zeros((L, 2, T, d + 1))))
    with pytest.raises(ValueError, match="mode must be 'zero' or 'mean'"):
        fwd(Ablate(mode="median"))
    with pytest.raises(ValueError, match="values are only used with mode='mean'"):
        fwd(Ablate(values=jnp.zeros(d)))
    with pytest.raises(TypeError, match="not an intervention"):
        fwd(["steer"])


def test_bad_forward_inputs_raise_clear_errors(llama, tokens):
    _, model = llama
    a = tokens[0]
    with pytest.raises(ValueError, match=r"tokens must be \[batch, seq\] integers, got shape \(9,\)"):
        jaxsteer.forward(model, a[0])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 8\), tokens have \(2, 9\)"):
        jaxsteer.forward(model, a, attention_mask=np.ones((2, T - 1), np.int32))
    with pytest.raises(ValueError, match="positions has shape"):
        jaxsteer.forward(model, a, positions=np.ones((1, T), np.int32))
    with pytest.raises(TypeError, match="expected a jaxsteer Model"):
        jaxsteer.forward(model.params, a)


def test_generate_rejects_position_dependent_interventions_and_bad_sampling(llama):
    _, model = llama
    d, L = model.config.d_model, model.config.n_layers
    prompts = [[7, 8, 9], [10, 11]]
    gen = lambda **kw: jaxsteer.generate(model, prompts, max_new_tokens=2, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="Patch at 'resid_post' depends on token positions"):
        gen(interventions=Patch(jnp.zeros((2, 3, d))))
    with pytest.raises(ValueError, match="Steer at 'resid_post' depends on token positions"):
        gen(interventions=Steer(jnp.zeros(d), positions=jnp.ones(3)))
    with pytest.raises(ValueError, match="Steer at 'resid_post' depends on token positions"):
        gen(interventions=Steer(jnp.zeros(d), scale=jnp.ones((2, 3))))
    with pytest.raises(ValueError, match="Ablate at 'mlp_out' depends on token positions"):
        gen(interventions=Ablate(site="mlp_out", mode="mean"))  # a mean over the current batch
    with pytest.raises(ValueError, match="layer 7 out of range"):
        gen(interventions=Steer(jnp.zeros((L, d)), layers=(7,)))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gen(temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        gen(temperature=-1.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        gen(top_p=0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        gen(top_p=1.5)
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        gen(top_k=-1)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        jaxsteer.generate(model, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="empty prompt"):
        jaxsteer.generate(model, [[7], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="string prompts need a tokenizer"):
        jaxsteer.generate(model, ["hello"], max_new_tokens=2)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: H.llama_config(hidden_act="gelu"), "hidden_act='gelu'"),
        (
            lambda: H.llama_config(
                rope_parameters={
                    "rope_type": "yarn",
                    "rope_theta": 10000.0,
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            ),
            "rope_type='yarn' is not supported",
        ),
        (lambda: H.llama_config(attention_bias=True), "attention_bias=True"),
        (lambda: H.llama_config(mlp_bias=True), "mlp_bias=True"),
        (lambda: transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4), "model_type='gpt2'"),
    ],
    ids=["gelu", "yarn", "attention-bias", "mlp-bias", "gpt2"],
)
def test_unsupported_configs_are_refused(make, match):
    with pytest.raises(jaxsteer.UnsupportedConfigError, match=match):
        jaxsteer.from_hf_config(make())
