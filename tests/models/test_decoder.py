"""Numerical parity of the jaxsteer decoder with Hugging Face PyTorch (eager attention, float32).

Tiny random Llama / Qwen2 / Gemma3 configs cover: grouped-query and multi-head attention, tied
and untied embeddings, default / linear / llama3 RoPE, QKV biases, sliding-window layers
(Qwen2's max_window_layers and Gemma3's interleaved layer_types with a window shorter than
the sequence), Gemma3's distinct local/global RoPE, query_pre_attn_scalar != head_dim,
sandwich norms, embedding scale and final-logit softcapping.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hf_tiny as H  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jaxsteer  # noqa: E402
from jaxsteer.models.decoder import rms_norm  # noqa: E402

ATOL = 1e-5
T = 11  # longer than every sliding window used in hf_tiny


@pytest.fixture(scope="module", params=list(H.CASES), ids=list(H.CASES))
def pair(request):
    """(name, HF model, jaxsteer model) for every tiny config."""
    hf = H.make_hf(H.CASES[request.param]())
    return request.param, hf, H.to_jax(hf)


def _check_config(name, hf, model):
    c = model.config
    assert c.layer_types == tuple(getattr(hf.config, "layer_types", None) or ("full_attention",) * c.n_layers)
    if "sliding" in name:
        assert c.has_sliding_layers and c.sliding_window < T
    if "gemma3" in name:
        assert c.rope_sliding.theta != c.rope_full.theta
        assert c.softmax_scale != c.head_dim**-0.5
    if "softcap" in name:
        assert c.final_logit_softcap == 2.0
        # transformers' Gemma3 attention ignores attn_logit_softcapping; so does the port
        assert hf.config.attn_logit_softcapping == 3.0 and c.attn_logit_softcap is None
    if "qkv-bias" in name:
        assert c.qkv_bias and float(jnp.abs(model.params["layers"]["q_bias"]).min()) > 0
    if "llama3" in name:
        assert c.rope_full.rope_type == "llama3"


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_logits_and_residual_stream_match_hf(pair, padded):
    """Logits and every layer's residual stream; row 0 of the padded batch has no padding."""
    name, hf, model = pair
    _check_config(name, hf, model)
    rng = np.random.RandomState(1)
    tokens = H.random_tokens(rng, 3, T)
    mask = H.left_padding_mask([T, 7, 4], T) if padded else None
    if padded:
        tokens = np.where(mask > 0, tokens, 0)

    out = H.hf_forward(hf, tokens, mask, output_hidden_states=True)
    logits, trace = jaxsteer.forward(
        model, tokens, attention_mask=None if mask is None else jnp.asarray(mask), record=("resid_pre", "resid_post")
    )
    valid = np.ones(tokens.shape, bool) if mask is None else mask.astype(bool)
    L = model.config.n_layers
    assert logits.shape == (3, T, model.config.vocab_size) and logits.dtype == jnp.float32
    assert trace.resid_post.shape == (L, 3, T, model.config.d_model)

    ref_logits = out.logits.numpy()
    np.testing.assert_allclose(np.asarray(logits)[valid], ref_logits[valid], rtol=0, atol=ATOL)
    # hidden_states[0] is the (scaled) embedding = layer 0's resid_pre
    np.testing.assert_allclose(
        np.asarray(trace.resid_pre[0])[valid], out.hidden_states[0].numpy()[valid], rtol=0, atol=ATOL
    )
    for layer in range(L - 1):
        np.testing.assert_allclose(
            np.asarray(trace.resid_post[layer])[valid],
            out.hidden_states[layer + 1].numpy()[valid],
            rtol=0,
            atol=ATOL,
            err_msg=f"resid_post layer {layer}",
        )
        np.testing.assert_array_equal(np.asarray(trace.resid_pre[layer + 1]), np.asarray(trace.resid_post[layer]))
    # HF's last hidden state has the final norm applied
    c = model.config
    final = rms_norm(trace.resid_post[L - 1], model.params["final_norm"], c.norm_eps, c.norm_offset)
    np.testing.assert_allclose(np.asarray(final)[valid], out.hidden_states[L].numpy()[valid], rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["llama-gqa-untied-llama3rope", "gemma3-sliding"])
def test_left_padding_is_invisible(case):
    """A left-padded row gives the same logits as the same tokens without padding."""
    model = H.to_jax(H.make_hf(H.CASES[case]()))
    tokens = H.random_tokens(np.random.RandomState(2), 1, 6)
    padded = np.concatenate([np.zeros((1, 5), np.int32), tokens], axis=1)
    mask = np.concatenate([np.zeros((1, 5), np.int32), np.ones((1, 6), np.int32)], axis=1)
    alone, _ = jaxsteer.forward(model, tokens)
    with_pad, _ = jaxsteer.forward(model, padded, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(with_pad)[:, 5:], np.asarray(alone), rtol=0, atol=ATOL)


@pytest.mark.parametrize("case", ["llama-gqa-untied-llama3rope", "gemma3-sliding"])
def test_bfloat16_smoke(case):
    hf = H.make_hf(H.CASES[case]())
    model32 = H.to_jax(hf)
    model16 = H.to_jax(hf, jnp.bfloat16)
    assert model16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        np.asarray(model16.params["embed"]), np.asarray(model32.astype(jnp.bfloat16).params["embed"])
    )
    tokens = H.random_tokens(np.random.RandomState(3), 2, T)
    mask = H.left_padding_mask([T, 6], T)
    l32, _ = jaxsteer.forward(model32, tokens, attention_mask=mask)
    l16, trace = jaxsteer.forward(model16, tokens, attention_mask=mask, record="resid_post")
    assert l16.dtype == jnp.float32  # logits always come back in float32
    assert trace.resid_post.dtype == jnp.bfloat16
    l16, l32 = np.asarray(l16), np.asarray(l32)
    valid = mask.astype(bool)
    assert np.isfinite(l16).all()
    scale = np.abs(l32[valid]).max()
    assert np.abs(l16 - l32)[valid].max() <= 0.1 * scale, "bfloat16 logits far from float32"
    # the top prediction mostly agrees
    agree = (l16.argmax(-1) == l32.argmax(-1))[valid].mean()
    assert agree >= 0.8


def test_trace_shapes_and_consistency():
    """Every site records with its documented shape, and the sites are consistent with each other."""
    hf = H.make_hf(H.CASES["gemma3-sliding"]())
    model = H.to_jax(hf)
    c = model.config
    L, B, d, H_, KV, hd = c.n_layers, 2, c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    tokens = H.random_tokens(np.random.RandomState(4), B, T)
    mask = H.left_padding_mask([T, 8], T)
    logits, trace = jaxsteer.forward(model, tokens, attention_mask=mask, record=jaxsteer.SITES)
    expected = {
        "resid_pre": (L, B, T, d),
        "attn_in": (L, B, T, d),
        "q": (L, B, T, H_, hd),
        "k": (L, B, T, KV, hd),
        "v": (L, B, T, KV, hd),
        "pattern": (L, B, H_, T, T),
        "z": (L, B, T, H_, hd),
        "attn_out": (L, B, T, d),
        "attn_to_resid": (L, B, T, d),
        "attn_to_mlp": (L, B, T, d),
        "resid_mid": (L, B, T, d),
        "mlp_in": (L, B, T, d),
        "mlp_out": (L, B, T, d),
        "resid_post": (L, B, T, d),
    }
    assert set(expected) == set(jaxsteer.SITES) == set(trace)
    for site, shape in expected.items():
        assert trace[site].shape == shape, site
        assert getattr(trace, site) is trace[site]
    with pytest.raises(AttributeError, match="not recorded"):
        _ = jaxsteer.forward(model, tokens, record="q")[1].z

    # recording does not change the output (recording `pattern` takes the einsum attention path,
    # which equals dot_product_attention up to float32 rounding)
    plain, _ = jaxsteer.forward(model, tokens, attention_mask=mask)
    no_pattern, _ = jaxsteer.forward(
        model, tokens, attention_mask=mask, record=[s for s in jaxsteer.SITES if s != "pattern"]
    )
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(no_pattern))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(logits), rtol=0, atol=ATOL)

    tr = {k: np.asarray(v, np.float64) for k, v in trace.items()}
    # both routes of the attention output are attn_out itself when nothing routes them apart
    np.testing.assert_array_equal(tr["attn_to_resid"], tr["attn_out"])
    np.testing.assert_array_equal(tr["attn_to_mlp"], tr["attn_out"])
    # the residual stream adds up
    np.testing.assert_allclose(tr["resid_mid"], tr["resid_pre"] + tr["attn_out"], atol=1e-5)
    np.testing.assert_allclose(tr["resid_post"], tr["resid_mid"] + tr["mlp_out"], atol=1e-5)
    np.testing.assert_allclose(tr["resid_pre"][1:], tr["resid_post"][:-1], atol=0)
    # attention rows are distributions over allowed keys: causal, no padding, inside the window
    pat = tr["pattern"]
    valid = mask.astype(bool)
    np.testing.assert_allclose(pat.sum(-1)[:, valid.nonzero()[0], :, valid.nonzero()[1]], 1.0, atol=1e-5)
    qi, ki = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    for layer, kind in enumerate(c.layer_types):
        window = c.sliding_window if kind == "sliding_attention" else T
        allowed = (ki <= qi) & (qi - ki < window)
        allowed = allowed[None, None] & valid[:, None, None, :]
        allowed |= ~valid[:, None, :, None]  # rows of padding queries are unconstrained
        assert np.all(pat[layer][~np.broadcast_to(allowed, pat[layer].shape)] == 0), layer
    # z is the pattern applied to v (v has no RoPE), heads grouped over KV heads
    v_rep = np.repeat(tr["v"], H_ // KV, axis=3)  # [L, B, S, H, hd]
    z = np.einsum("lbhts,lbshd->lbthd", pat, v_rep)
    np.testing.assert_allclose(
        tr["z"][:, valid.nonzero()[0], valid.nonzero()[1]], z[:, valid.nonzero()[0], valid.nonzero()[1]], atol=1e-5
    )
    # attn_in / mlp_in are the pre-norms of the residual stream
    for l in range(L):
        p = model.params["layers"]
        np.testing.assert_allclose(
            tr["attn_in"][l],
            np.asarray(rms_norm(trace.resid_pre[l], p["attn_norm"][l], c.norm_eps, c.norm_offset)),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            tr["mlp_in"][l],
            np.asarray(rms_norm(trace.resid_mid[l], p["mlp_norm"][l], c.norm_eps, c.norm_offset)),
            atol=1e-5,
        )


def test_attn_logit_softcap_bounds_attention_scores():
    """The decoder's attention-logit softcap (no HF architecture here uses it): a huge cap is a
    no-op, and a cap c squeezes scores into (-c, c), so attention weights differ by < exp(2c)."""
    model = H.to_jax(H.make_hf(H.CASES["llama-mha-tied"]()))
    with_cap = lambda cap: model.replace(config=dataclasses.replace(model.config, attn_logit_softcap=cap))  # noqa: E731
    tokens = H.random_tokens(np.random.RandomState(5), 2, T)
    plain, clean = jaxsteer.forward(model, tokens, record="pattern")
    huge, _ = jaxsteer.forward(with_cap(1e4), tokens)
    np.testing.assert_allclose(np.asarray(huge), np.asarray(plain), rtol=0, atol=ATOL)
    cap = 0.1
    capped, trace = jaxsteer.forward(with_cap(cap), tokens, record="pattern")
    assert np.abs(np.asarray(capped) - np.asarray(plain)).max() > 1e-3
    pat = np.asarray(trace.pattern)  # [L, B, H, T, S]
    for t in range(1, T):
        row = pat[..., t, : t + 1]
        ratio = row.max(-1) / row.min(-1)
        assert np.all(ratio <= np.exp(2 * cap) * (1 + 1e-5))
        assert np.all(pat[..., t, t + 1 :] == 0)
    clean_rows = np.asarray(clean.pattern)[..., T - 1, :]
    assert (clean_rows.max(-1) / clean_rows.min(-1)).max() > np.exp(2 * cap)  # the cap did bind
