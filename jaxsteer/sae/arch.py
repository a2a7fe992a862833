"""Sparse autoencoder architectures as pure functions on a parameter pytree.

One `SAE` value (flax struct: `params` leaves + static `SAEConfig`) covers every kind:

- `relu` (SAELens "standard"): `z = relu(W_enc^T (x - b_dec) + b_enc)`.
- `topk` (Gao et al. 2024): `z = TopK_k(relu(pre))`, `x_hat = W_dec^T z + b_dec`.
- `batchtopk` (Bussmann et al., arXiv 2412.06410): in training the top `k * B` of the relu'd
  pre-activations over the whole batch are kept; at inference a single global threshold
  `theta` is used (`z = pre * (pre > theta)`, a JumpReLU with one shared threshold). The paper
  estimates theta as the mean, over training batches, of the smallest activation the batch
  selection kept; like SAELens we track it as an exponential moving average of that minimum
  (rate `threshold_lr`, default 0.01), see `losses.update_threshold`.
- `jumprelu` (Rajamanoharan et al. 2024, Gemma Scope): `z = relu(pre) * (pre > threshold)`,
  per-latent threshold, trained with straight-through pseudo-derivatives and an L0 penalty
  (`losses.jumprelu_ste`, `losses.step_ste`).
- `matryoshka` (Matryoshka BatchTopK, Bussmann et al. 2025, arXiv 2503.17547): BatchTopK whose
  latents are nested prefixes `matryoshka_widths` (the last = `d_sae`); the loss averages the
  reconstruction error of every prefix, so the first latents must reconstruct on their own.
  Inference as BatchTopK (one global threshold).
- `htopk` (HierarchicalTopK, arXiv 2505.24473): the encoder is TopK with `k = K` (the largest
  budget); the loss (`losses.htopk_loss`) averages the reconstruction error of the top-j
  latents over j, so one SAE serves every `k <= K` (`encode(..., k=j)`).
- `kron` (KronSAE, arXiv 2505.22255): `h` heads; head g projects `x - b_dec` to `p_g` (m values)
  and `q_g` (n values); its `m * n` pre-latents are `mAND(p_gi, q_gj)`, flattened head-major
  (latent index `g*m*n + i*n + j`), then TopK. Encoder cost `O(h (m + n) d)`.
  mAND: `sqrt(p * q)` where both `p > 0` and `q > 0`, else 0 (a smooth AND of two
  ReLU gates: zero unless both fire; the geometric mean keeps the scale of its inputs).
  The stored copies of the paper we could reach gave only its abstract, so this formula and the
  init below are our reading, documented rather than copied; `kron_full_matrices` gives the
  same encoder with materialised `[d, F]` matrices as an independent check.

Residual SAEs (SAE Boost, arXiv 2507.12990) are ordinary SAEs with `decoder_bias=False` trained
on `x - x_hat_base`; `residual_reconstruct` adds the two.

Shapes follow SAELens: `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, `b_enc [d_sae]`,
`b_dec [d_in]`, `threshold [d_sae]` (jumprelu) or `[]` (batchtopk). All functions accept any
leading batch axes `[..., d_in]`; compute happens in the parameter dtype (float32 or bfloat16).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from ..errors import InputError

KINDS = ("relu", "topk", "batchtopk", "jumprelu", "htopk", "kron", "matryoshka")
BATCH_KINDS = ("batchtopk", "matryoshka")  # batch-level top-k in training, one global threshold at inference


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Static description of an SAE.

    Attributes:
        kind: one of `KINDS`.
        d_in: the width of the activations it reads.
        d_sae: the number of latents.
        k: latents kept (TopK family; for `htopk` the largest budget K).
        kron_heads: KronSAE's number of heads (`d_sae = heads * m * n`).
        kron_m: KronSAE's P-side width per head.
        kron_n: KronSAE's Q-side width per head.
        matryoshka_widths: the nested prefix sizes of a `matryoshka` SAE (increasing, last = d_sae).
        decoder_bias: False for a residual SAE (no `b_dec`).
        apply_b_dec_to_input: subtract `b_dec` before encoding (SAELens default True).
        rescale_acts_by_decoder_norm: SAELens' option that ranks latents by `pre * ||W_dec row||`
            (loaded SAEs only).
        dtype: the parameter dtype, "float32" or "bfloat16".
        site: the site the SAE reads (used by `Splice` defaults and the SAELens `hook_name`).
        layer: the layer it reads.
        model: the model it was trained on (metadata).
    """

    kind: str
    d_in: int
    d_sae: int
    k: int = 0
    kron_heads: int = 0
    kron_m: int = 0
    kron_n: int = 0
    matryoshka_widths: tuple[int, ...] = ()
    decoder_bias: bool = True
    apply_b_dec_to_input: bool = True
    rescale_acts_by_decoder_norm: bool = False
    dtype: str = "float32"
    site: str = "resid_post"
    layer: int = 0
    model: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown SAE kind {self.kind!r}; kinds are {KINDS}")
        object.__setattr__(self, "matryoshka_widths", tuple(int(w) for w in self.matryoshka_widths))
        if self.kind in ("topk", "batchtopk", "htopk", "kron", "matryoshka") and not 0 < self.k <= self.d_sae:
            raise InputError(f"{self.kind} SAE needs 0 < k <= d_sae={self.d_sae}, got k={self.k}")
        if self.kind == "kron" and self.kron_heads * self.kron_m * self.kron_n != self.d_sae:
            raise InputError(
                f"kron SAE: heads*m*n = {self.kron_heads}*{self.kron_m}*{self.kron_n} must equal d_sae={self.d_sae}"
            )
        w = self.matryoshka_widths
        if self.kind == "matryoshka" and (
            not w or w[-1] != self.d_sae or any(b <= a for a, b in itertools.pairwise((0,) + w))
        ):
            raise InputError(
                f"matryoshka SAE: matryoshka_widths {list(w)} must increase from > 0 to d_sae={self.d_sae}"
            )
        if self.kind == "kron" and self.rescale_acts_by_decoder_norm:
            raise InputError(
                "kron SAE: rescale_acts_by_decoder_norm is not supported (its encoder has no W_enc to fold into)"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise InputError(f"SAE dtype must be float32 or bfloat16, got {self.dtype!r}")

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        """The config from `to_dict()` output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@struct.dataclass
class SAE:
    """An SAE as data: `params` (dict of arrays) are pytree leaves, `config` is static.

    Attributes:
        params: `W_enc [d_in, d_sae]`, `b_enc`, `W_dec [d_sae, d_in]`, `b_dec` (no `b_dec` for a
            residual SAE; JumpReLU adds `threshold`; KronSAE has `W_p`, `W_q`, `b_p`, `b_q` instead
            of `W_enc`, `b_enc`).
        config: the static `SAEConfig`.
    """

    params: dict[str, Any]
    config: SAEConfig = struct.field(pytree_node=False)

    @property
    def dtype(self):
        """The parameter dtype."""
        return self.params["W_dec"].dtype


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def init_sae(config: SAEConfig, key: jax.Array) -> SAE:
    """Random init: decoder rows uniform on the unit sphere, `W_enc = W_dec^T` (Gao et al. 2024),
    zero biases. KronSAE: P and Q columns are random unit vectors and each decoder row starts as
    the normalised sum of the two encoder directions that gate it (our choice, see module doc).

    Args:
        config: the SAE's config.
        key: a `jax.random` key.

    Returns:
        The `SAE`.
    """
    c = config
    dt = _dtype(c.dtype)
    k_dec, k_p, k_q = jax.random.split(key, 3)
    params: dict[str, Any] = {"b_enc": jnp.zeros((c.d_sae,), jnp.float32)}
    if c.kind == "kron":
        h, m, n = c.kron_heads, c.kron_m, c.kron_n
        wp = _unit_rows(jax.random.normal(k_p, (h * m, c.d_in))).T  # [d, h*m]
        wq = _unit_rows(jax.random.normal(k_q, (h * n, c.d_in))).T  # [d, h*n]
        p = wp.T.reshape(h, m, 1, c.d_in)
        q = wq.T.reshape(h, 1, n, c.d_in)
        w_dec = _unit_rows((p + q).reshape(c.d_sae, c.d_in))
        params.update(W_p=wp, W_q=wq, b_p=jnp.zeros((h * m,)), b_q=jnp.zeros((h * n,)))
        del params["b_enc"]
    else:
        w_dec = _unit_rows(jax.random.normal(k_dec, (c.d_sae, c.d_in)))
        params["W_enc"] = w_dec.T
    params["W_dec"] = w_dec
    if c.decoder_bias:
        params["b_dec"] = jnp.zeros((c.d_in,), jnp.float32)
    if c.kind == "jumprelu":
        params["threshold"] = jnp.zeros((c.d_sae,), jnp.float32)
    if c.kind in BATCH_KINDS:
        params["threshold"] = jnp.zeros((), jnp.float32)
    return SAE({k: v.astype(dt) for k, v in params.items()}, c)


def _unit_rows(w: jax.Array) -> jax.Array:
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def b_dec(sae: SAE, dtype=None) -> jax.Array:
    """The decoder bias (zeros for a residual SAE)."""
    dt = dtype or sae.dtype
    if "b_dec" in sae.params:
        return sae.params["b_dec"].astype(dt)
    return jnp.zeros((sae.config.d_in,), dt)


def mand(p: jax.Array, q: jax.Array) -> jax.Array:
    """KronSAE's mAND: `sqrt(p * q)` where `p > 0` and `q > 0`, else 0 (NaN-free gradient)."""
    prod = jax.nn.relu(p) * jax.nn.relu(q)
    pos = prod > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, prod, 1)), 0).astype(p.dtype)


def pre_acts(sae: SAE, x: jax.Array) -> jax.Array:
    """Pre-activations `[..., d_sae]` (for `kron`, the mAND outputs before TopK).

    Args:
        sae: the SAE.
        x: activations `[..., d_in]`.

    Returns:
        `[..., d_sae]` float32.
    """
    c, p = sae.config, sae.params
    dt = sae.dtype
    x = x.astype(dt)
    if c.apply_b_dec_to_input:
        x = x - b_dec(sae, dt)
    if c.kind == "kron":
        h, m, n = c.kron_heads, c.kron_m, c.kron_n
        pp = (x @ p["W_p"] + p["b_p"]).reshape(*x.shape[:-1], h, m, 1)
        qq = (x @ p["W_q"] + p["b_q"]).reshape(*x.shape[:-1], h, 1, n)
        return mand(pp, qq).reshape(*x.shape[:-1], c.d_sae)
    pre = x @ p["W_enc"] + p["b_enc"]
    if c.rescale_acts_by_decoder_norm:
        pre = pre * jnp.linalg.norm(p["W_dec"], axis=-1)
    return pre


def topk_mask(values: jax.Array, k: int) -> jax.Array:
    """Keep the top `k` entries along the last axis (ReLU'd), zero elsewhere."""
    vals, idx = jax.lax.top_k(values, k)
    out = jnp.zeros_like(values)
    flat = out.reshape(-1, values.shape[-1])
    rows = jnp.arange(flat.shape[0])[:, None]
    flat = flat.at[rows, idx.reshape(flat.shape[0], k)].set(jax.nn.relu(vals).reshape(flat.shape[0], k))
    return flat.reshape(values.shape)


def batch_topk(pre: jax.Array, k: int) -> jax.Array:
    """BatchTopK training activation: the top `k * n_rows` relu'd values over the whole batch."""
    acts = jax.nn.relu(pre)
    flat = acts.reshape(-1)
    n = int(k * math.prod(pre.shape[:-1]))
    vals, idx = jax.lax.top_k(flat, n)
    return jnp.zeros_like(flat).at[idx].set(vals).reshape(pre.shape)


def activate(sae: SAE, pre: jax.Array, *, k: int | None = None, train: bool = False) -> jax.Array:
    """Apply the SAE's sparsifying activation to pre-activations (see `encode`).

    Args:
        sae: the SAE.
        pre: pre-activations `[..., d_sae]`.
        k: override the TopK budget.
        train: BatchTopK's batch-level selection.

    Returns:
        The latents `[..., d_sae]`.
    """
    c, p = sae.config, sae.params
    if c.kind == "relu":
        return jax.nn.relu(pre)
    if c.kind == "jumprelu":
        return jax.nn.relu(pre) * (pre > p["threshold"].astype(pre.dtype)).astype(pre.dtype)
    if c.kind in BATCH_KINDS:
        if train:
            return batch_topk(pre, k or c.k)
        return jax.nn.relu(pre) * (pre > p["threshold"].astype(pre.dtype)).astype(pre.dtype)
    return topk_mask(pre, k or c.k)


def encode(sae: SAE, x: jax.Array, *, k: int | None = None, train: bool = False) -> jax.Array:
    """Latent activations `[..., d_sae]` of activations `x [..., d_in]`.

    Args:
        sae: the SAE.
        x: activations `[..., d_in]`.
        k: override the TopK budget (any `k <= K` for HierarchicalTopK).
        train: BatchTopK's batch-level selection (otherwise its inference threshold).

    Returns:
        The latents `[..., d_sae]`.
    """
    return activate(sae, pre_acts(sae, x), k=k, train=train)


def decode(sae: SAE, z: jax.Array) -> jax.Array:
    """Reconstruction `z @ W_dec + b_dec` (`[..., d_in]`, parameter dtype).

    Args:
        sae: the SAE.
        z: latents `[..., d_sae]`.

    Returns:
        The reconstruction `[..., d_in]`.
    """
    p = sae.params
    z = z.astype(sae.dtype)
    if sae.config.rescale_acts_by_decoder_norm:
        z = z / jnp.linalg.norm(p["W_dec"], axis=-1)
    return z @ p["W_dec"] + b_dec(sae)


def reconstruct(sae: SAE, x: jax.Array, *, k: int | None = None) -> jax.Array:
    """`decode(encode(x))` at inference.

    Args:
        sae: the SAE.
        x: activations `[..., d_in]`.
        k: override the TopK budget, as for `encode`.

    Returns:
        The reconstruction `[..., d_in]`.
    """
    return decode(sae, encode(sae, x, k=k))


def residual_reconstruct(base: SAE, residual: SAE, x: jax.Array) -> jax.Array:
    """SAE Boost: `x_hat_base + x_hat_res`, the residual SAE reading `x - x_hat_base`.

    Args:
        base: the base SAE.
        residual: the residual SAE.
        x: activations `[..., d_in]`.

    Returns:
        The combined reconstruction `[..., d_in]`.
    """
    xb = reconstruct(base, x)
    return xb + reconstruct(residual, x.astype(xb.dtype) - xb)


def fold_decoder_norm(sae: SAE) -> SAE:
    """The same SAE with unit-norm decoder rows, the norms folded into the encoder (SAELens'
    `fold_W_dec_norm`): `W_enc *= n`, `b_enc *= n`, `W_dec /= n` (and a JumpReLU threshold `*= n`).

    With `rescale_acts_by_decoder_norm` the codes and reconstructions are unchanged and the flag
    is cleared (how SAELens saves such SAEs for inference). Without it, ReLU / JumpReLU codes are
    multiplied by `n` (reconstructions unchanged); the TopK family and BatchTopK's one global
    threshold cannot absorb the norms without changing which latents fire, so they are refused.

    Args:
        sae: the SAE.

    Returns:
        The folded `SAE`.
    """
    c, p = sae.config, sae.params
    if c.kind == "kron":
        raise InputError("fold_decoder_norm: a kron SAE has no W_enc to fold the decoder norms into")
    if not c.rescale_acts_by_decoder_norm and c.kind not in ("relu", "jumprelu"):
        raise InputError(
            f"fold_decoder_norm: folding would change which latents a {c.kind} SAE selects "
            "(only exact with rescale_acts_by_decoder_norm, or for relu / jumprelu)"
        )
    n = jnp.maximum(jnp.linalg.norm(p["W_dec"].astype(jnp.float32), axis=-1), 1e-8)
    new = dict(
        p,
        W_enc=(p["W_enc"] * n).astype(p["W_enc"].dtype),
        b_enc=(p["b_enc"] * n).astype(p["b_enc"].dtype),
        W_dec=(p["W_dec"] / n[:, None]).astype(p["W_dec"].dtype),
    )
    if c.kind == "jumprelu" and not c.rescale_acts_by_decoder_norm:
        new["threshold"] = (p["threshold"] * n).astype(p["threshold"].dtype)
    return SAE(new, dataclasses.replace(c, rescale_acts_by_decoder_norm=False))


def kron_full_matrices(sae: SAE) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """KronSAE encoder as materialised `[d, d_sae]` matrices `(P, Q, b_P, b_Q)`: latent
    `(g, i, j)` reads column `g*m+i` of `W_p` and `g*n+j` of `W_q`. For checks and export.

    Args:
        sae: a `kron` SAE.

    Returns:
        `(P, Q, b_P, b_Q)`, the matrices `[d, d_sae]` and biases `[d_sae]`.
    """
    c, p = sae.config, sae.params
    h, m, n = c.kron_heads, c.kron_m, c.kron_n
    wp = jnp.broadcast_to(p["W_p"].reshape(c.d_in, h, m, 1), (c.d_in, h, m, n)).reshape(c.d_in, -1)
    wq = jnp.broadcast_to(p["W_q"].reshape(c.d_in, h, 1, n), (c.d_in, h, m, n)).reshape(c.d_in, -1)
    bp = jnp.broadcast_to(p["b_p"].reshape(h, m, 1), (h, m, n)).reshape(-1)
    bq = jnp.broadcast_to(p["b_q"].reshape(h, 1, n), (h, m, n)).reshape(-1)
    return wp, wq, bp, bq


def encoder_flops(config: SAEConfig) -> int:
    """Multiply-adds x 2 of the encoder matmul(s) per activation vector.

    Args:
        config: the SAE's config.

    Returns:
        FLOPs per activation vector.
    """
    c = config
    if c.kind == "kron":
        return 2 * c.d_in * c.kron_heads * (c.kron_m + c.kron_n)
    return 2 * c.d_in * c.d_sae


def astype(sae: SAE, dtype: str) -> SAE:
    """The same SAE with parameters (and config dtype) cast to float32 / bfloat16.

    Args:
        sae: the SAE.
        dtype: "float32" or "bfloat16".

    Returns:
        The cast `SAE`.
    """
    cfg = dataclasses.replace(sae.config, dtype=dtype)
    return SAE({k: v.astype(_dtype(dtype)) for k, v in sae.params.items()}, cfg)


__all__ = [
    "KINDS",
    "BATCH_KINDS",
    "SAEConfig",
    "SAE",
    "init_sae",
    "b_dec",
    "mand",
    "pre_acts",
    "topk_mask",
    "batch_topk",
    "activate",
    "encode",
    "decode",
    "reconstruct",
    "residual_reconstruct",
    "kron_full_matrices",
    "encoder_flops",
    "astype",
    "fold_decoder_norm",
]
