"""Training losses: reconstruction (sparse decode), HierarchicalTopK, Matryoshka, AuxK, BatchTopK
threshold, JumpReLU's straight-through threshold gradient and L0 penalty.

Training never builds the dense `[B, d_sae]` latent matrix for the decoder: the TopK family
keeps `(values, indices)` and decodes by gathering `k` decoder rows per example, so the decoder
and its gradient cost `O(B k d)` instead of `O(B d_sae d)` (the encoder matmul is the only dense
one; for KronSAE not even that).

Normalisation: every reconstruction term is divided by the batch's total variance
`sum ||x - mean(x)||^2` (held constant), so `mse` is the fraction of variance unexplained and the
learning rate does not depend on the activation scale.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .arch import BATCH_KINDS, SAE, b_dec, decode, pre_acts
from .sparse import topk_encode_sparse_grad


def gather_decode(sae: SAE, vals: jax.Array, idx: jax.Array, *, bias: bool = True) -> jax.Array:
    """`sum_i vals[..., i] * W_dec[idx[..., i]] (+ b_dec)`: decode from a sparse code.

    Args:
        sae: the SAE.
        vals: code values `[..., k]`.
        idx: their latent indices `[..., k]`.
        bias: add `b_dec`.

    Returns:
        The reconstruction `[..., d_in]`.
    """
    w = sae.params["W_dec"]
    out = jnp.einsum("...k,...kd->...d", vals.astype(w.dtype), w[idx])
    return out + b_dec(sae) if bias else out


def sparse_topk(pre: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """Top `k` (ReLU'd values, indices) along the last axis, sorted by value (descending).

    Args:
        pre: pre-activations `[..., d_sae]`.
        k: how many.

    Returns:
        `(values [..., k], indices [..., k])`.
    """
    vals, idx = jax.lax.top_k(pre, k)
    return jax.nn.relu(vals), idx


def total_variance(x: jax.Array) -> jax.Array:
    """`sum ||x - mean(x)||^2` over the batch `x [B, d]` (float32, at least 1e-12): the FVU's denominator."""
    x = x.astype(jnp.float32)
    return jnp.maximum(jnp.sum((x - jnp.mean(x, axis=0)) ** 2), 1e-12)


def _sq_err(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    return jnp.sum((x.astype(jnp.float32) - x_hat.astype(jnp.float32)) ** 2)


def htopk_errors(sae: SAE, x: jax.Array, vals: jax.Array, idx: jax.Array) -> jax.Array:
    """Squared error summed over the batch of the top-j reconstruction, for every j = 1..K: `[K]`.

    `x_hat_j = b_dec + sum_{i<=j} v_i W_dec[idx_i]` (values sorted descending) as one cumulative
    sum over the gathered decoder rows `[B, K, d]`; no loop over j.

    Args:
        sae: an `htopk` SAE.
        x: activations `[B, d_in]`.
        vals: the top-K latent values `[B, K]`, sorted descending (`sparse_topk`).
        idx: their latent indices `[B, K]`.

    Returns:
        `[K]` float32.
    """
    rows = sae.params["W_dec"][idx].astype(jnp.float32)  # [B, K, d]
    partial = jnp.cumsum(vals.astype(jnp.float32)[..., None] * rows, axis=-2) + b_dec(sae, jnp.float32)
    diff = x.astype(jnp.float32)[..., None, :] - partial
    return jnp.sum(diff * diff, axis=(0, 2))


def htopk_loss(sae: SAE, x: jax.Array, levels: tuple[int, ...] | None = None) -> jax.Array:
    """HierarchicalTopK loss (arXiv 2505.24473): mean over budgets j (all of 1..K, or `levels`)
    of the top-j reconstruction error, normalised by the batch variance.

    Args:
        sae: an `htopk` SAE.
        x: activations `[B, d_in]`.
        levels: the budgets averaged over (default all of 1..K).

    Returns:
        The scalar loss.
    """
    vals, idx = sparse_topk(pre_acts(sae, x), sae.config.k)
    return _level_mean(htopk_errors(sae, x, vals, idx), levels) / jax.lax.stop_gradient(total_variance(x))


def _level_mean(errs: jax.Array, levels: tuple[int, ...] | None) -> jax.Array:
    return jnp.mean(errs[jnp.asarray(levels) - 1] if levels else errs)


def auxk_loss(
    sae: SAE, x: jax.Array, residual: jax.Array, dead: jax.Array, k_aux: int, pre: jax.Array | None = None
) -> jax.Array:
    """AuxK (Gao et al. 2024): the top `k_aux` dead latents reconstruct the main residual
    `x - x_hat` (held constant); scaled by `min(n_dead / k_aux, 1)` as in SAELens; 0 if none dead.

    Computed under `lax.cond`, so batches without dead latents pay nothing (pre-activations are
    recomputed inside when not given); the `k_aux` code is decoded densely (a `[B, k_aux, d]`
    gather costs more than the matmul on CPU).

    Args:
        sae: the SAE.
        x: activations `[B, d_in]`.
        residual: the main reconstruction's error `x - x_hat` `[B, d_in]`.
        dead: `[d_sae]` bool.
        k_aux: the auxiliary budget.
        pre: the pre-activations, when already computed.

    Returns:
        The scalar loss (normalised by the residual's variance).
    """
    k_aux = min(k_aux, sae.config.d_sae)
    n_dead = jnp.sum(dead)

    def aux(_):
        p = pre_acts(sae, x) if pre is None else pre
        vals, idx = jax.lax.top_k(jnp.where(dead, p, -jnp.inf), k_aux)
        vals = jnp.where(jnp.isfinite(vals), jax.nn.relu(vals), 0)
        z = jnp.zeros_like(p).at[jnp.arange(p.shape[0])[:, None], idx].set(vals)
        e_hat = z.astype(sae.dtype) @ sae.params["W_dec"]
        err = _sq_err(jax.lax.stop_gradient(residual), e_hat) / jax.lax.stop_gradient(total_variance(residual))
        return jnp.minimum(n_dead / k_aux, 1.0) * err

    return jax.lax.cond(n_dead > 0, aux, lambda _: jnp.zeros((), jnp.float32), None)


def train_topk(sae: SAE, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Top-k `(values, indices)` for training: through `sparse.topk_encode_sparse_grad` (sparse
    weight gradient) for plain TopK encoders, through autodiff otherwise (KronSAE, rescaled)."""
    c, p = sae.config, sae.params
    if c.kind in ("topk", "htopk") and not c.rescale_acts_by_decoder_norm:
        bd = b_dec(sae) if c.apply_b_dec_to_input else jnp.zeros((c.d_in,), sae.dtype)
        bias = p["b_dec"] if c.apply_b_dec_to_input and "b_dec" in p else jax.lax.stop_gradient(bd)
        return topk_encode_sparse_grad(x.astype(sae.dtype), p["W_enc"], p["b_enc"], bias, jnp.zeros((c.k,)))
    return sparse_topk(pre_acts(sae, x), c.k)


def rectangle(u: jax.Array) -> jax.Array:
    """The rectangle kernel `1{|u| < 1/2}` of the JumpReLU pseudo-derivatives."""
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jumprelu_ste(pre: jax.Array, theta: jax.Array, eps: jax.Array) -> jax.Array:
    """JumpReLU `pre * (pre > theta)` with Rajamanoharan et al.'s (arXiv 2407.14435) straight-through
    pseudo-derivative for the threshold: `d/dtheta = -(theta / eps) K((pre - theta) / eps)` with the
    rectangle kernel K and bandwidth `eps`; `d/dpre = 1{pre > theta}` (no kernel term)."""
    return pre * (pre > theta).astype(pre.dtype)


def _jumprelu_fwd(pre, theta, eps):
    return jumprelu_ste(pre, theta, eps), (pre, theta, eps)


def _jumprelu_bwd(saved, g):
    pre, theta, eps = saved
    k = rectangle((pre - theta) / eps) / eps
    g_theta = -jnp.sum(theta * k * g, axis=tuple(range(pre.ndim - 1)))
    return (pre > theta).astype(g.dtype) * g, g_theta.astype(theta.dtype), jnp.zeros_like(eps)


jumprelu_ste.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step_ste(pre: jax.Array, theta: jax.Array, eps: jax.Array) -> jax.Array:
    """Heaviside `1{pre > theta}` (the L0 count) with the pseudo-derivative
    `d/dtheta = -(1 / eps) K((pre - theta) / eps)` and no gradient to `pre` (Gemma Scope's L0 penalty)."""
    return (pre > theta).astype(pre.dtype)


def _step_fwd(pre, theta, eps):
    return step_ste(pre, theta, eps), (pre, theta, eps)


def _step_bwd(saved, g):
    pre, theta, eps = saved
    g_theta = -jnp.sum(rectangle((pre - theta) / eps) / eps * g, axis=tuple(range(pre.ndim - 1)))
    return jnp.zeros_like(pre), g_theta.astype(theta.dtype), jnp.zeros_like(eps)


step_ste.defvjp(_step_fwd, _step_bwd)


def rms(x: jax.Array) -> jax.Array:
    """Root mean square of the activations (the unit of JumpReLU's bandwidth and initial threshold)."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


def jumprelu_forward(
    sae: SAE, x: jax.Array, bandwidth: float, unit: jax.Array | float | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(pre, z, l0)` of a JumpReLU SAE in training: codes through `jumprelu_ste`, and the per-row L0
    through `step_ste`, with bandwidth `eps = bandwidth * unit` (Gemma Scope's eps = 0.001 is in
    units of inputs normalised to E||x||^2 = d, i.e. RMS 1).

    `unit` should be a constant of the run (the training step passes its `act_scale`, the RMS of
    the first batch): residual streams hold rare massive-activation tokens (in SmolLM2's layer 15,
    8 tokens in 25k carry 55% of the sum of squares), so the RMS of each batch jumps several-fold
    whenever one is drawn, and a per-batch unit would widen every row's window with it.

    Args:
        sae: a `jumprelu` SAE.
        x: activations `[B, d_in]`.
        bandwidth: the STE bandwidth in units of `unit`.
        unit: the activation scale (None: `rms(x)` of this batch).

    Returns:
        `(pre, z, l0)`.
    """
    pre = pre_acts(sae, x)
    theta = sae.params["threshold"].astype(pre.dtype)
    scale = rms(x) if unit is None else jnp.asarray(unit, jnp.float32)
    eps = jax.lax.stop_gradient(bandwidth * scale).astype(pre.dtype)
    z = jumprelu_ste(pre, theta, eps)
    return pre, z, jnp.sum(step_ste(pre, theta, eps), axis=-1)


def batch_topk_codes(sae: SAE, pre: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BatchTopK training selection: the top `k * B` relu'd pre-activations of the batch as flat
    `(values, rows, cols)`.

    Args:
        sae: a BatchTopK-family SAE.
        pre: pre-activations `[B, d_sae]`.

    Returns:
        `(values, rows, cols)`, each `[k * B]`.
    """
    c = sae.config
    vals, flat_idx = jax.lax.top_k(jax.nn.relu(pre).reshape(-1), c.k * pre.shape[0])
    return vals, flat_idx // c.d_sae, flat_idx % c.d_sae


def matryoshka_errors(sae: SAE, x: jax.Array, vals: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """Squared error summed over the batch of every nested prefix's reconstruction `[n_levels]`:
    level i decodes only latents `< matryoshka_widths[i]`. One segment sum over (row, level of the
    latent) and a cumulative sum over levels; the last level is the whole SAE.

    Args:
        sae: a `matryoshka` SAE.
        x: activations `[B, d_in]`.
        vals: the kept values, flat (`batch_topk_codes`).
        rows: their batch rows.
        cols: their latents.

    Returns:
        `[n_levels]`.
    """
    widths = jnp.asarray(sae.config.matryoshka_widths)
    n_levels, b = len(sae.config.matryoshka_widths), x.shape[0]
    level = jnp.searchsorted(widths, cols, side="right")  # first prefix holding the latent
    contrib = vals[:, None].astype(jnp.float32) * sae.params["W_dec"][cols].astype(jnp.float32)
    per_level = jax.ops.segment_sum(contrib, rows * n_levels + level, num_segments=b * n_levels)
    partial = jnp.cumsum(per_level.reshape(b, n_levels, -1), axis=1) + b_dec(sae, jnp.float32)
    diff = x.astype(jnp.float32)[:, None, :] - partial
    return jnp.sum(diff * diff, axis=(0, 2))


def _codes_and_reconstruction(sae: SAE, x: jax.Array, bandwidth: float, unit=None) -> dict[str, Any]:
    """Per-kind training codes: `x_hat`, `vals` (the non-zero candidates), `fired` `[d_sae]`, `pre`
    (when computed densely) and kind-specific terms (`level_errors`, `l0_ste`, `min_active`)."""
    c = sae.config
    out: dict[str, Any] = {"pre": None, "min_active": jnp.zeros((), jnp.float32)}
    fired = jnp.zeros((c.d_sae,), bool)
    if c.kind in BATCH_KINDS:
        out["pre"] = pre = pre_acts(sae, x)
        vals, rows, cols = batch_topk_codes(sae, pre)
        contrib = vals[:, None].astype(sae.dtype) * sae.params["W_dec"][cols]
        out["x_hat"] = jax.ops.segment_sum(contrib, rows, num_segments=x.shape[0]) + b_dec(sae)
        out["fired"] = fired.at[cols].max(vals > 0)
        out["min_active"] = jnp.min(jnp.where(vals > 0, vals, jnp.inf)).astype(jnp.float32)
        if c.kind == "matryoshka":
            out["level_errors"] = matryoshka_errors(sae, x, vals, rows, cols)
    elif c.kind in ("topk", "htopk", "kron"):
        vals, idx = train_topk(sae, x)
        out["x_hat"] = gather_decode(sae, vals, idx)
        out["fired"] = fired.at[idx.reshape(-1)].max((vals > 0).reshape(-1))
        if c.kind == "htopk":
            out["level_errors"] = htopk_errors(sae, x, vals, idx)
    elif c.kind == "jumprelu":
        out["pre"], vals, out["l0_ste"] = jumprelu_forward(sae, x, bandwidth, unit)
        out["x_hat"], out["fired"] = decode(sae, vals), jnp.any(vals > 0, axis=0)
    else:  # relu: dense, no sparsity penalty (train another kind for sparse codes)
        out["pre"] = pre_acts(sae, x)
        vals = jax.nn.relu(out["pre"])
        out["x_hat"], out["fired"] = decode(sae, vals), jnp.any(vals > 0, axis=0)
    out["vals"] = vals
    return out


def train_forward(
    sae: SAE,
    x: jax.Array,
    dead: jax.Array | None,
    *,
    k_aux: int = 0,
    aux_coef: float = 0.0,
    htopk_levels: tuple[int, ...] | None = None,
    l0_coef: jax.Array | float = 0.0,
    bandwidth: float = 0.001,
    unit: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Loss and diagnostics of one training batch `x [B, d_in]`.

    The loss is the FVU (HierarchicalTopK: the mean over its budgets; Matryoshka: the mean over its
    nested prefixes) plus `aux_coef` x AuxK (TopK family) plus, for JumpReLU, `l0_coef` x the mean
    L0 through the straight-through step (Gemma Scope's sparsity penalty). Returns `(loss, info)`
    with info: `fvu`, `aux`, `l0`, `fired` (`[d_sae]` bool: latent active somewhere in the batch),
    `min_active` (BatchTopK / Matryoshka: smallest kept activation).

    Args:
        sae: the SAE.
        x: activations `[B, d_in]`.
        dead: `[d_sae]` bool, the latents AuxK revives (None: no AuxK).
        k_aux: AuxK's budget.
        aux_coef: AuxK's weight.
        htopk_levels: HierarchicalTopK's budgets (default all).
        l0_coef: JumpReLU's L0 weight.
        bandwidth: the straight-through estimator's bandwidth (JumpReLU), in units of `unit`.
        unit: the run's activation scale (None: this batch's RMS; see `jumprelu_forward`).

    Returns:
        `(loss, info)`.
    """
    c = sae.config
    r = _codes_and_reconstruction(sae, x, bandwidth, unit)
    var = jax.lax.stop_gradient(total_variance(x))
    fvu = _sq_err(x, r["x_hat"]) / var
    loss = _level_mean(r["level_errors"], htopk_levels) / var if "level_errors" in r else fvu
    if c.kind == "jumprelu":
        loss = loss + l0_coef * jnp.mean(r["l0_ste"])
    aux = jnp.zeros((), jnp.float32)
    if dead is not None and k_aux > 0 and aux_coef > 0 and c.kind not in ("relu", "jumprelu"):
        residual = x.astype(jnp.float32) - r["x_hat"].astype(jnp.float32)
        aux = auxk_loss(sae, x, residual, dead, k_aux, r["pre"])
        loss = loss + aux_coef * aux
    info = {
        "fvu": fvu,
        "aux": aux,
        "l0": jnp.sum(r["vals"] > 0) / x.shape[0],
        "fired": r["fired"],
        "min_active": r["min_active"],
    }
    return loss, info


def update_threshold(theta: jax.Array, min_active: jax.Array, lr: float) -> jax.Array:
    """BatchTopK inference threshold: EMA of the smallest activation the batch selection kept
    (arXiv 2412.06410 averages it over batches; the EMA with rate 0.01 is SAELens' choice).

    Args:
        theta: the current threshold.
        min_active: this batch's smallest kept activation.
        lr: the EMA rate.

    Returns:
        The new threshold.
    """
    ok = jnp.isfinite(min_active) & (min_active > 0)
    new = (1 - lr) * theta.astype(jnp.float32) + lr * min_active
    return jnp.where(ok, new, theta.astype(jnp.float32)).astype(theta.dtype)


__all__ = [
    "gather_decode",
    "sparse_topk",
    "total_variance",
    "htopk_errors",
    "htopk_loss",
    "auxk_loss",
    "train_topk",
    "rectangle",
    "jumprelu_ste",
    "step_ste",
    "rms",
    "jumprelu_forward",
    "batch_topk_codes",
    "matryoshka_errors",
    "train_forward",
    "update_threshold",
]
