"""A TopK encoder whose backward pass is sparse.

`pre = (x - b_dec) @ W_enc + b_enc` must be computed densely to select the top k, but only the
k selected entries per row receive gradient. Autodiff would still take the weight gradient as a
dense `[d, B] @ [B, d_sae]` matmul of a mostly-zero matrix (2 B d d_sae FLOPs); here the
backward is a scatter-add of `B k` rows instead (`O(B k d)`), and the biases' gradients come
from per-latent sums. No gradient flows to `x` (it is data in SAE training; zeros are returned).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def topk_encode_sparse_grad(x: jax.Array, w_enc: jax.Array, b_enc: jax.Array, b_dec: jax.Array, k_like: jax.Array):
    """`(values, indices)` of the top-k ReLU'd pre-activations, sorted; `k_like` is any array of
    shape `[k]` (it carries the static k through `custom_vjp`)."""
    return _forward(x, w_enc, b_enc, b_dec, k_like.shape[0])[0]


def _forward(x, w_enc, b_enc, b_dec, k):
    xc = x - b_dec
    vals, idx = jax.lax.top_k(xc @ w_enc + b_enc, k)
    vals = jax.nn.relu(vals)
    return (vals, idx), (xc, w_enc, vals, idx)


def _fwd(x, w_enc, b_enc, b_dec, k_like):
    out, res = _forward(x, w_enc, b_enc, b_dec, k_like.shape[0])
    return out, (res, jnp.zeros_like(x), jnp.zeros_like(k_like))


def _bwd(saved, cot):
    (xc, w_enc, vals, idx), zero_x, zero_k = saved
    g = cot[0] * (vals > 0).astype(cot[0].dtype)  # [B, k]
    d, f = w_enc.shape
    flat = idx.reshape(-1)
    contrib = (g[..., None] * xc[:, None, :]).reshape(-1, d)
    g_w = jax.ops.segment_sum(contrib, flat, num_segments=f).T.astype(w_enc.dtype)
    g_b = jax.ops.segment_sum(g.reshape(-1), flat, num_segments=f).astype(w_enc.dtype)
    g_bdec = -(w_enc @ g_b)
    return zero_x, g_w, g_b, g_bdec, zero_k


topk_encode_sparse_grad.defvjp(_fwd, _bwd)

__all__ = ["topk_encode_sparse_grad"]
