"""Compare attention patterns of two runs (e.g. steered vs unsteered), per layer and head."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models.decoder import forward
from ..models.display import ResultDisplay
from ..models.params import Model
from ._common import new_figure, save_figure


@dataclasses.dataclass(repr=False)
class AttentionComparison(ResultDisplay):
    """Per-layer, per-head distances between two runs' attention patterns.

    Attributes:
        js: `[L, H]` Jensen-Shannon divergence (base 2, in [0, 1]) between the two runs' attention
            distributions of each query, averaged over valid queries (and the batch).
        max_abs: `[L, H]` largest absolute probability difference over valid queries and keys.
        js_by_position: `[L, H, T]` the JS divergence per query position, averaged over the batch
            (NaN where no row of the batch has a real token there).
    """

    js: np.ndarray
    max_abs: np.ndarray
    js_by_position: np.ndarray

    def plot(self, path: str, title: str | None = None) -> str:
        """Heatmaps of `js` and `max_abs` (layers x heads) into the PNG `path`; returns `path`."""
        L, H = self.js.shape
        fig = new_figure(3 + 0.5 * H * 2, 1.5 + 0.22 * L)
        axes = fig.subplots(1, 2)
        for ax, arr, name in (
            (axes[0], self.js, "JS divergence (bits), mean over queries"),
            (axes[1], self.max_abs, "max |p_a - p_b|"),
        ):
            im = ax.imshow(arr, aspect="auto", cmap="magma", origin="lower", vmin=0)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            ax.set_xticks(range(H))
            ax.set_title(name, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.7)
        fig.suptitle(title or "attention pattern change between two runs", fontsize=10)
        return save_figure(fig, path)


@jax.jit
def _distances(pa: jax.Array, pb: jax.Array, valid: jax.Array):
    pa = pa.astype(jnp.float32)
    pb = pb.astype(jnp.float32)
    m = 0.5 * (pa + pb)

    def kl(p, q):  # sum_s p log2(p / q), with 0 log 0 = 0
        return jnp.sum(
            jnp.where(p > 0, p * (jnp.log2(jnp.maximum(p, 1e-30)) - jnp.log2(jnp.maximum(q, 1e-30))), 0.0), axis=-1
        )

    js = jnp.clip(0.5 * kl(pa, m) + 0.5 * kl(pb, m), 0.0, 1.0)  # [L, B, H, T]
    q_valid = valid[None, :, None, :]  # [1, B, 1, T]
    kv_valid = valid[None, :, None, None, :]
    n = jnp.maximum(q_valid.sum(axis=(1, 3)), 1)
    js_mean = jnp.where(q_valid, js, 0).sum(axis=(1, 3)) / n
    absdiff = jnp.where(q_valid[..., None] & kv_valid, jnp.abs(pa - pb), 0.0)
    max_abs = absdiff.max(axis=(1, 3, 4))
    n_pos = q_valid.sum(axis=1)  # [1, 1, T]
    js_pos = jnp.where(n_pos > 0, jnp.where(q_valid, js, 0).sum(axis=1) / jnp.maximum(n_pos, 1), jnp.nan)
    return js_mean, max_abs, js_pos


def compare_patterns(pattern_a: Any, pattern_b: Any, attention_mask: Any = None) -> AttentionComparison:
    """Distances between two recorded `pattern` traces `[L, B, H, T, S]` (S = T); padding rows and
    columns (attention_mask `[B, T]` = 0) are ignored.

    Args:
        pattern_a: run a's `trace["pattern"]`.
        pattern_b: run b's.
        attention_mask: `[B, T]` 0/1 (None: no padding).

    Returns:
        The `AttentionComparison`.
    """
    pa, pb = jnp.asarray(pattern_a), jnp.asarray(pattern_b)
    if pa.shape != pb.shape or pa.ndim != 5:
        raise InputError(f"patterns must both be [L, B, H, T, S] of one shape, got {pa.shape} and {pb.shape}")
    B, T = pa.shape[1], pa.shape[3]
    valid = jnp.ones((B, T), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
    js, mx, jp = _distances(pa, pb, valid)
    return AttentionComparison(np.asarray(js), np.asarray(mx), np.asarray(jp))


def attention_change(
    model: Model,
    tokens: Any,
    *,
    interventions_a: Any = (),
    interventions_b: Any = (),
    tokens_b: Any = None,
    attention_mask: Any = None,
) -> AttentionComparison:
    """Run the model twice (run a: `tokens` with `interventions_a`; run b: `tokens_b` or the same
    tokens with `interventions_b`, e.g. a steering vector) and compare attention per layer and head.

    Args:
        model: the model.
        tokens: ids `[B, T]` of run a.
        interventions_a: run a's interventions.
        interventions_b: run b's interventions.
        tokens_b: run b's ids (default `tokens`).
        attention_mask: `[B, T]` 0/1, shared by both runs.

    Returns:
        The `AttentionComparison`.
    """
    tokens = jnp.asarray(tokens)
    tokens_b = tokens if tokens_b is None else jnp.asarray(tokens_b)
    _, ta = forward(
        model,
        tokens,
        attention_mask=attention_mask,
        interventions=interventions_a,
        record=("pattern",),
        return_logits=False,
    )
    _, tb = forward(
        model,
        tokens_b,
        attention_mask=attention_mask,
        interventions=interventions_b,
        record=("pattern",),
        return_logits=False,
    )
    return compare_patterns(ta.pattern, tb.pattern, attention_mask)
