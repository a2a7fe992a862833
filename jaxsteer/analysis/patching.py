"""Activation patching, path patching and attribution patching.

Vocabulary: the *clean* and *corrupted* runs differ in their input tokens (or in the clean run's
interventions, e.g. a steering vector). A *metric* maps logits to a scalar; results are reported
normalised so that 0 = the corrupted run's metric and 1 = the clean run's.

- `activation_patching`: for every (layer, position) [or (layer, head), (layer, position, head),
  (layer)] entry, run the *base* run (corrupted for `direction="denoise"`, clean for `"noise"`)
  with the site's activation replaced by the other run's value at that entry only. The whole
  sweep is one compiled call: a `jax.lax.map` over chunks of a `jax.vmap` over one-hot `Patch`
  masks, sharing the source trace. The default fast path also reuses the base run: an entry at
  layer l and position t cannot change layers < l or positions < t, so each chunk resumes from
  the base run's residual at its first layer (`run_layers(start_layer=...)`) and recomputes only
  positions from its bucket's first position on, reading earlier positions' keys and values from
  the base run's KV cache. Results equal plain full forward passes (`fast=False`) to float noise.
- `path_patching`: the sender's change reaches the output only through chosen receivers.
- `attribution_patching`: the first-order estimate of every entry of every site's sweep from
  one forward and one backward pass.
- `relevance_patching` (RelP): attribution patching with the gradient replaced by LRP propagation
  coefficients (the same forward, a backward under `models.relevance.RULES`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from ..errors import InputError
from ..models.decoder import default_positions, embed, forward, run_layers, unembed
from ..models.display import ResultDisplay
from ..models.generate import kv_cache
from ..models.interventions import (
    SITE_LAYOUT,
    SITES,
    Patch,
    Steer,
    as_tuple,
    check_site,
    site_feature_shape,
    site_n_heads,
)
from ..models.params import Model
from ..models.relevance import RULES, check_rules
from ..models.sites import canonical_site
from ._common import new_figure, save_figure, single_token_ids, token_strs

AXES = ("layer", "position", "head")
READER_SITES = ("q", "k", "v", "mlp_in")  # where a component reads the residual stream


# --------------------------------------------------------------------------- metrics


def _logit_diff(answers: jax.Array, logits: jax.Array) -> jax.Array:
    last = logits[:, -1]  # [B, V]
    ans = jnp.broadcast_to(answers, (last.shape[0], 2))
    good = jnp.take_along_axis(last, ans[:, :1], axis=-1)[:, 0]
    bad = jnp.take_along_axis(last, ans[:, 1:], axis=-1)[:, 0]
    return jnp.mean(good - bad)


def logit_diff_metric(answers: Any) -> Partial:
    """Metric: logit of the correct answer minus the wrong one at the last position, averaged over
    the batch. `answers` is `[2]` (correct, wrong) or per example `[B, 2]` token ids. The result is
    a `jax.tree_util.Partial`, so sweeps with the same metric function reuse their compilation.

    Args:
        answers: `[2]` or `[B, 2]` token ids.

    Returns:
        The metric, `metric(logits [B, P, V]) -> scalar`.
    """
    a = jnp.asarray(answers, jnp.int32)
    if a.shape[-1] != 2 or a.ndim not in (1, 2):
        raise InputError(f"answers must be [2] or [B, 2] token ids (correct, wrong), got shape {a.shape}")
    return Partial(_logit_diff, a)


def _as_metric(metric: Any, answers: Any, tokenizer: Any) -> Partial:
    if metric is None:
        if answers is None:
            raise InputError("give a metric or answers=(correct, wrong)")
        ans = np.asarray(answers)
        if ans.dtype.kind in "US" or (ans.dtype == object):
            ans = np.asarray(single_token_ids(tokenizer, list(ans.reshape(-1)))).reshape(ans.shape)
        return logit_diff_metric(ans)
    return metric if isinstance(metric, Partial) else Partial(metric)


def normalise(value: Any, clean: float, corrupt: float) -> np.ndarray:
    """`(value - corrupt) / (clean - corrupt)`: 0 = corrupted run, 1 = clean run (NaN if they tie).

    Args:
        value: metric values.
        clean: the clean run's metric.
        corrupt: the corrupted run's metric.

    Returns:
        The normalised values, shaped as `value`.
    """
    denom = clean - corrupt
    if denom == 0 or not np.isfinite(denom):
        warnings.warn("the metric is the same on the clean and corrupted runs; normalised values are NaN", stacklevel=2)
        return np.full(np.shape(value), np.nan)
    return (np.asarray(value) - corrupt) / denom


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(repr=False)
class PatchingResult(ResultDisplay):
    """A labelled patching sweep.

    Attributes:
        values: the metric normalised (0 = corrupted run, 1 = clean run), shaped by `axes`.
        raw: the metric values, shaped by `axes`.
        axes: a subset of ("layer", "position", "head"), in that order.
        layers: the layer of each entry along "layer".
        positions: the position labels (or group names), when swept or grouped.
        heads: the heads, when swept.
        site: the patched site.
        method: "activation", "attribution" or "relevance".
        direction: "denoise" or "noise".
        clean_metric: the metric on the clean run.
        corrupt_metric: the metric on the corrupted run.
        clean_tokens: the clean prompt's tokens as strings (for labels).
        corrupt_tokens: the corrupted prompt's.
    """

    values: np.ndarray
    raw: np.ndarray
    axes: tuple[str, ...]
    layers: list[int]
    positions: list[str] | None
    heads: list[int] | None
    site: str
    method: str
    direction: str
    clean_metric: float
    corrupt_metric: float
    clean_tokens: list[str] | None = None
    corrupt_tokens: list[str] | None = None

    def labels(self, axis: str) -> list[str]:
        """Tick labels of an axis; positions show their tokens (clean/corrupted where they differ)."""
        if axis == "layer":
            return [str(l) for l in self.layers]
        if axis == "head":
            return [str(h) for h in self.heads or []]
        out = []
        for p in self.positions or []:
            if p.isdigit() and self.clean_tokens and int(p) < len(self.clean_tokens):
                a, b = self.clean_tokens[int(p)], (self.corrupt_tokens or self.clean_tokens)[int(p)]
                p = f"{p} {a!r}" if a == b else f"{p} {a!r}/{b!r}"
            out.append(p)
        return out

    def html_table_body(self) -> str:
        """The normalised values as an HTML table (layers x the second axis; one table for 1-D)."""
        from ..models.display import frame_html

        v = np.asarray(self.values)
        title = f"{self.method} patching at {self.site} (0 = corrupted, 1 = clean)"
        if v.ndim == 1:
            return frame_html(v[:, None], self.labels("layer"), ["value"], title=title, fmt="{:.2f}")
        if v.ndim == 2:
            return frame_html(v, self.labels("layer"), self.labels(self.axes[1]), title=title, fmt="{:.2f}")
        return ""

    def to_dict(self) -> dict:
        """The result as JSON-ready data (lists, floats)."""
        return {
            "site": self.site,
            "method": self.method,
            "direction": self.direction,
            "axes": list(self.axes),
            "layers": self.layers,
            "positions": self.positions,
            "heads": self.heads,
            "clean_metric": self.clean_metric,
            "corrupt_metric": self.corrupt_metric,
            "clean_tokens": self.clean_tokens,
            "corrupt_tokens": self.corrupt_tokens,
            "values": np.asarray(self.values).tolist(),
            "raw": np.asarray(self.raw).tolist(),
        }

    def save_json(self, path: str) -> str:
        """Write `to_dict()` as JSON to `path`; returns `path`."""
        pathlib.Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=True))
        return str(path)

    def plot(self, path: str, title: str | None = None) -> str:
        """Heatmap PNG (layers on the vertical axis); a 3-axis sweep gets one panel per head."""
        v = np.asarray(self.values, np.float64)
        lim = max(1.0, float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0)
        title = title or f"{self.method} patching, {self.site} ({self.direction}; 0 = corrupted, 1 = clean)"
        if v.ndim == 1:
            fig = new_figure(6, 3)
            ax = fig.subplots()
            ax.plot(self.layers, v, marker="o")
            ax.set_xlabel("layer")
            ax.set_ylabel("normalised metric")
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(title, fontsize=9)
            return save_figure(fig, path)
        panels = [(v, None)] if v.ndim == 2 else [(v[:, :, i], f"head {h}") for i, h in enumerate(self.labels("head"))]
        ncol = min(len(panels), 3)
        nrow = math.ceil(len(panels) / ncol)
        xlab = self.labels(self.axes[1])
        fig = new_figure(1.5 + ncol * (1.5 + 0.45 * len(xlab)), 1.0 + nrow * (0.8 + 0.18 * len(self.layers)))
        axs = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).reshape(-1)
        im = None
        for ax, (arr, name) in zip(axs, panels, strict=False):
            im = ax.imshow(arr, aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
            ax.set_xticks(range(len(xlab)), [s[:24] for s in xlab], rotation=60, ha="right", fontsize=7)
            ax.set_yticks(range(len(self.layers)), self.labels("layer"), fontsize=6)
            ax.set_xlabel(self.axes[1])
            ax.set_ylabel("layer")
            if name:
                ax.set_title(name, fontsize=8)
        for ax in axs[len(panels) :]:
            ax.set_visible(False)
        assert im is not None  # there is at least one panel
        fig.colorbar(im, ax=list(axs[: len(panels)]), label="normalised metric", shrink=0.7)
        fig.suptitle(title, fontsize=9)
        return save_figure(fig, path)


# --------------------------------------------------------------------------- selection helpers


def _resolve_positions(positions: Any, T: int) -> tuple[list[str], np.ndarray]:
    """Position rows `[P, T]` (one-hot for single positions, multi-hot for named groups)."""
    if positions is None:
        positions = list(range(T))
    if isinstance(positions, Mapping):
        names, rows = [], []
        for name, pos in positions.items():
            row = np.zeros(T, np.float32)
            idx = np.atleast_1d(np.asarray(pos, np.int64))
            if idx.size == 0 or (idx >= T).any() or (idx < -T).any():
                raise InputError(f"position group {name!r}: positions {idx.tolist()} out of range for {T} tokens")
            row[idx] = 1
            names.append(str(name))
            rows.append(row)
        return names, np.stack(rows)
    idx = [int(p) for p in positions]
    for p in idx:
        if not -T <= p < T:
            raise InputError(f"position {p} out of range for {T} tokens")
    rows = np.zeros((len(idx), T), np.float32)
    rows[np.arange(len(idx)), idx] = 1
    return [str(p % T) for p in idx], rows


def _check_over(over: Sequence[str], site: str) -> tuple[str, ...]:
    over = tuple(over)
    if not over or over[0] != "layer" or any(a not in AXES for a in over) or list(over) != sorted(over, key=AXES.index):
        raise InputError(f"over must start with 'layer' and follow the order {AXES}, got {over}")
    if "head" in over and SITE_LAYOUT[site][2] is None:
        raise InputError(
            f"site {site!r} has no heads; head sites are {tuple(s for s in SITES if SITE_LAYOUT[s][2] is not None)}"
        )
    return over


def _default_over(site: str) -> tuple[str, ...]:
    return ("layer", "head") if SITE_LAYOUT[site][2] is not None else ("layer", "position")


def _slice_tokens(values: jax.Array, site: str, start: int) -> jax.Array:
    """Drop the first `start` tokens (query tokens for `pattern`) of a site trace `[L, B, ...]`."""
    ax = SITE_LAYOUT[site][1] + 1
    return jax.lax.slice_in_dim(values, start, values.shape[ax], axis=ax)


def _entry_mask(L: int, prow: jax.Array, n_heads: int | None, layer: jax.Array, head: jax.Array) -> jax.Array:
    """One-hot `[L, T]` or `[L, T, H]` Patch mask for one sweep entry."""
    m = jax.nn.one_hot(layer, L, dtype=jnp.float32)[:, None] * prow[None, :]
    if n_heads is not None:
        m = m[:, :, None] * jax.nn.one_hot(head, n_heads, dtype=jnp.float32)[None, None, :]
    return m


# --------------------------------------------------------------------------- base run (cached)


@functools.partial(jax.jit, static_argnames=("record",))
def _base_run(model: Model, tokens, attention_mask, interventions, record):
    """Full forward that also returns the KV cache and the final residual (for resuming)."""
    B, T = tokens.shape
    positions = default_positions(tokens, attention_mask)
    k_pos = positions if attention_mask is None else jnp.where(attention_mask.astype(bool), positions, -1)
    cache = kv_cache(model, B, T)
    h, trace, cache = run_layers(
        model, embed(model, tokens), positions, k_pos, interventions, frozenset(record) | {"resid_pre"}, cache, 0
    )
    return {"h": h, "resid_pre": trace["resid_pre"], "cache": cache, "q_pos": positions, "k_pos": k_pos}, trace


# --------------------------------------------------------------------------- sweep kernels


@functools.partial(jax.jit, static_argnames=("site", "n_heads", "plan", "metric_positions"))
def _sweep_fast(model, base, values, prows, groups, metric, base_ivs, *, site, n_heads, plan, metric_positions):
    """plan: static tuple of (p0, n_chunks, chunk) per position bucket; groups: per bucket
    (start [n_chunks], layer / prow / head indices [n_chunks, chunk])."""
    L = model.config.n_layers
    outs = []
    for (p0, _, _), (starts, ls, ps, hs) in zip(plan, groups, strict=True):
        vals = _slice_tokens(values, site, p0)
        h0_all = base["resid_pre"][:, :, p0:]
        q_pos = base["q_pos"][:, p0:]

        def chunk(args, p0=p0, vals=vals, h0_all=h0_all, q_pos=q_pos):
            start, l_c, p_c, h_c = args

            def one(l, pi, hi):
                mask = _entry_mask(L, prows[pi, p0:], n_heads, l, hi)
                ivs = base_ivs + (Patch(vals, site=site, mask=mask),)
                h, _, _ = run_layers(
                    model, h0_all[start], q_pos, base["k_pos"], ivs, frozenset(), base["cache"], p0, start_layer=start
                )
                full = jnp.concatenate([base["h"][:, :p0], h], axis=1)
                return metric(unembed(model, full[:, list(metric_positions)]))

            return jax.vmap(one)(l_c, p_c, h_c)

        outs.append(jax.lax.map(chunk, (starts, ls, ps, hs)).reshape(-1))
    return outs


@functools.partial(jax.jit, static_argnames=("site", "n_heads", "metric_positions", "batch_size"))
def _sweep_full(
    model,
    tokens,
    attention_mask,
    values,
    prows,
    entries,
    metric,
    base_ivs,
    *,
    site,
    n_heads,
    metric_positions,
    batch_size,
):
    L = model.config.n_layers
    ls, ps, hs = entries

    def one(args):
        l, pi, hi = args
        mask = _entry_mask(L, prows[pi], n_heads, l, hi)
        logits, _ = forward(
            model,
            tokens,
            attention_mask=attention_mask,
            interventions=base_ivs + (Patch(values, site=site, mask=mask),),
        )
        return metric(logits[:, list(metric_positions)])

    return jax.lax.map(one, (ls, ps, hs), batch_size=batch_size)


def _plan_buckets(first_pos: np.ndarray, entries: np.ndarray, n_buckets: int, chunk: int):
    """Group entries (rows of [layer, prow, head]) by the first position their mask touches into
    at most `n_buckets` buckets, sort each by layer and cut it into equal chunks of at most
    `chunk` entries (the last one padded by repetition). Returns the static plan, the index arrays and, per
    bucket, the entry order."""
    order_pos = np.unique(first_pos)
    n_buckets = max(1, min(n_buckets, len(order_pos)))
    cuts = [order_pos[int(round(i * len(order_pos) / n_buckets))] for i in range(n_buckets)]
    bucket_of = np.searchsorted(cuts, first_pos, side="right") - 1
    plan, groups, orders = [], [], []
    for b, p0 in enumerate(cuts):
        idx = np.nonzero(bucket_of == b)[0]
        if idx.size == 0:
            continue
        idx = idx[np.argsort(entries[idx, 0], kind="stable")]
        n_chunks = -(-idx.size // chunk)
        c = -(-idx.size // n_chunks)  # equal chunks of at most `chunk` entries: little padding
        padded = np.concatenate([idx, np.repeat(idx[-1:], n_chunks * c - idx.size)])
        e = entries[padded].reshape(n_chunks, c, 3)
        starts = e[:, :, 0].min(axis=1)
        plan.append((int(p0), n_chunks, c))
        groups.append(tuple(jnp.asarray(a, jnp.int32) for a in (starts, e[:, :, 0], e[:, :, 1], e[:, :, 2])))
        orders.append(idx)
    return tuple(plan), tuple(groups), orders


# --------------------------------------------------------------------------- activation patching


def _prepare(
    model,
    clean_tokens,
    corrupt_tokens,
    site_list,
    metric,
    attention_mask,
    clean_interventions,
    direction,
    metric_positions,
):
    """Run the clean and corrupted inputs once: metric positions, (source trace, base trace, clean
    metric, corrupted metric, base tokens, base interventions) for the chosen direction."""
    if direction not in ("denoise", "noise"):
        raise InputError(f"direction must be 'denoise' (patch clean into corrupted) or 'noise', got {direction!r}")
    clean_tokens = jnp.asarray(clean_tokens, jnp.int32)
    corrupt_tokens = jnp.asarray(corrupt_tokens, jnp.int32)
    if clean_tokens.ndim != 2 or clean_tokens.shape != corrupt_tokens.shape:
        raise InputError(
            f"clean and corrupted tokens must be [B, T] arrays of the same shape, got {clean_tokens.shape} and "
            f"{corrupt_tokens.shape} (prompts must tokenize to the same length)"
        )
    T = clean_tokens.shape[1]
    mp = tuple(int(p) % T for p in metric_positions) if metric_positions is not None else tuple(range(T))
    clean_ivs = as_tuple(clean_interventions)
    rec = tuple(sorted(set(site_list)))
    c_logits, c_trace = forward(model, clean_tokens, attention_mask=attention_mask, interventions=clean_ivs, record=rec)
    x_logits, x_trace = forward(model, corrupt_tokens, attention_mask=attention_mask, record=rec)
    m_clean = float(metric(c_logits[:, list(mp)]))
    m_corrupt = float(metric(x_logits[:, list(mp)]))
    if direction == "denoise":
        return mp, c_trace, x_trace, m_clean, m_corrupt, corrupt_tokens, ()
    return mp, x_trace, c_trace, m_clean, m_corrupt, clean_tokens, clean_ivs


def activation_patching(
    model: Model,
    clean_tokens: Any,
    corrupt_tokens: Any,
    *,
    site: str = "resid_pre",
    answers: Any = None,
    metric: Callable | None = None,
    over: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    heads: Sequence[int] | None = None,
    direction: str = "denoise",
    attention_mask: Any = None,
    clean_interventions: Any = (),
    metric_positions: Sequence[int] | None = (-1,),
    batch_size: int = 32,
    position_buckets: int | None = None,
    fast: bool = True,
    tokenizer: Any = None,
) -> PatchingResult:
    """Patch `site` entry by entry and measure the metric, in one compiled call.

    Args:
        model: the model.
        clean_tokens: ids `[B, T]`.
        corrupt_tokens: ids `[B, T]`, the same shape.
        site: the patched site.
        answers: `(correct, wrong)` ids or single-token strings: the metric is then their logit difference.
        metric: `metric(logits)` with logits `[B, P, V]` at `metric_positions`, a scalar.
        over: the sweep axes, `("layer", "position")` (default for residual-width sites),
            `("layer", "head")` (default for q, k, v, z, pattern: a head at all positions),
            `("layer", "position", "head")` or `("layer",)` (all positions at once).
        layers: the layers swept (default all).
        positions: restricts the sweep to some positions, or, as a dict `name -> positions`,
            patches each group jointly.
        heads: the heads swept (default all).
        direction: "denoise" runs the corrupted input and patches in clean values; "noise" runs
            the clean input and patches in corrupted values.
        attention_mask: `[B, T]` 0/1, shared by both runs.
        clean_interventions: applied to the clean run (e.g. a steering vector, with clean =
            corrupted tokens).
        metric_positions: where the metric reads the logits (default the last position; None = all).
        batch_size: patched runs per vmapped chunk.
        position_buckets: the fast path groups entries by their first patched position into at most
            this many buckets, each resuming the base run from there (default: up to 4).
        fast: resume the cached base run at each layer; False runs full forward passes (the same
            numbers; needed when the base run has position-dependent interventions).
        tokenizer: decodes position labels and encodes string answers.

    Returns:
        The `PatchingResult` (method "activation").
    """
    site = canonical_site(site)
    check_site(site)
    over = _check_over(over or _default_over(site), site)
    c = model.config
    metric = _as_metric(metric, answers, tokenizer)
    mp, src_trace, base_trace, m_clean, m_corrupt, base_tokens, base_ivs = _prepare(
        model,
        clean_tokens,
        corrupt_tokens,
        [site],
        metric,
        attention_mask,
        clean_interventions,
        direction,
        metric_positions,
    )
    T = base_tokens.shape[1]
    values = src_trace[site]

    layer_list = list(range(c.n_layers)) if layers is None else [int(l) for l in layers]
    for l in layer_list:
        if not 0 <= l < c.n_layers:
            raise InputError(f"layer {l} out of range for {c.n_layers} layers")
    n_site_heads = site_n_heads(site, c)
    if "position" in over:
        pos_labels, prows = _resolve_positions(positions, T)
    else:
        if positions is not None and not isinstance(positions, Mapping):
            pos_labels, prows = ["selected"], _resolve_positions(positions, T)[1].max(axis=0, keepdims=True)
        else:
            pos_labels, prows = ["all"], np.ones((1, T), np.float32)
    head_list = None
    if "head" in over:
        assert n_site_heads is not None  # _check_over: sweeping heads needs a head site
        head_list = list(range(n_site_heads)) if heads is None else [int(h) for h in heads]
        for h in head_list:
            if not 0 <= h < n_site_heads:
                raise InputError(f"head {h} out of range for site {site!r} with {n_site_heads} heads")
    mask_heads = n_site_heads if "head" in over else None

    grid = np.stack(
        np.meshgrid(
            np.arange(len(layer_list)),
            np.arange(len(pos_labels)),
            np.arange(len(head_list) if head_list else 1),
            indexing="ij",
        ),
        -1,
    ).reshape(-1, 3)
    entries = np.stack(
        [
            np.asarray(layer_list)[grid[:, 0]],
            grid[:, 1],
            np.asarray(head_list)[grid[:, 2]] if head_list else np.zeros(len(grid), int),
        ],
        -1,
    )
    prows_j = jnp.asarray(prows)
    ivs_fast = all(getattr(iv, "generation_safe", lambda: False)() for iv in base_ivs)
    if fast and ivs_fast:
        first_pos = np.argmax(prows > 0, axis=1)[entries[:, 1]]
        n_b = position_buckets if position_buckets is not None else max(1, min(4, T // 5))
        plan, groups, orders = _plan_buckets(first_pos, entries, n_b, batch_size)
        base, _ = _base_run(model, base_tokens, attention_mask, base_ivs, ())
        outs = _sweep_fast(
            model,
            base,
            values,
            prows_j,
            groups,
            metric,
            base_ivs,
            site=site,
            n_heads=mask_heads,
            plan=plan,
            metric_positions=mp,
        )
        flat = np.empty(len(entries), np.float64)
        for order, out in zip(orders, outs, strict=True):
            flat[order] = np.asarray(out)[: len(order)]
    else:
        e = tuple(jnp.asarray(entries[:, i], jnp.int32) for i in range(3))
        flat = np.asarray(
            _sweep_full(
                model,
                base_tokens,
                attention_mask,
                values,
                prows_j,
                e,
                metric,
                base_ivs,
                site=site,
                n_heads=mask_heads,
                metric_positions=mp,
                batch_size=batch_size,
            ),
            np.float64,
        )
    shape = tuple(
        n for n, a in zip((len(layer_list), len(pos_labels), len(head_list or [0])), AXES, strict=True) if a in over
    )
    raw = flat.reshape(len(layer_list), len(pos_labels), len(head_list or [0]))
    raw = raw.reshape(shape)
    return PatchingResult(
        values=normalise(raw, m_clean, m_corrupt),
        raw=raw,
        axes=over,
        layers=layer_list,
        positions=pos_labels if "position" in over else None,
        heads=head_list,
        site=site,
        method="activation",
        direction=direction,
        clean_metric=m_clean,
        corrupt_metric=m_corrupt,
        **_token_labels(tokenizer, clean_tokens, corrupt_tokens),
    )


def _token_labels(tokenizer, clean_tokens, corrupt_tokens) -> dict:
    if tokenizer is None:
        return {}
    return {
        "clean_tokens": [str(s) for s in token_strs(tokenizer, np.asarray(clean_tokens)[0])],
        "corrupt_tokens": [str(s) for s in token_strs(tokenizer, np.asarray(corrupt_tokens)[0])],
    }


# --------------------------------------------------------------------------- path patching


@dataclasses.dataclass(frozen=True)
class Node:
    """A place in the model: a site at one layer, optionally some heads and token positions.

    Attributes:
        site: a site name (TransformerLens names work too).
        layer: the layer.
        heads: the heads (per-head sites; None: all).
        positions: the token positions (None: all; negative counts from the end).
    """

    site: str
    layer: int
    heads: tuple[int, ...] | None = None
    positions: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "site", canonical_site(self.site))
        check_site(self.site)
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(int(h) for h in np.atleast_1d(self.heads)))
        if self.positions is not None:
            object.__setattr__(self, "positions", tuple(int(p) for p in np.atleast_1d(self.positions)))

    def order(self) -> tuple[int, int]:
        return (self.layer, SITES.index(self.site))

    def mask(self, config, T: int, with_heads: bool | None = None) -> np.ndarray:
        """`[L, T]` (or `[L, T, H]` for head sites when heads are given or `with_heads`) 0/1 mask."""
        L = config.n_layers
        if not 0 <= self.layer < L:
            raise InputError(f"{self}: layer out of range for {L} layers")
        n_heads = site_n_heads(self.site, config)
        if self.heads is not None and n_heads is None:
            raise InputError(f"{self}: site {self.site!r} has no heads")
        pos = list(range(T)) if self.positions is None else [p % T for p in self.positions]
        if with_heads or (with_heads is None and self.heads is not None):
            if n_heads is None:
                raise InputError(f"{self}: site {self.site!r} has no heads (with_heads=True)")
            m = np.zeros((L, T, n_heads), np.float32)
            for h in self.heads if self.heads is not None else range(n_heads):
                if not 0 <= h < n_heads:
                    raise InputError(f"{self}: head {h} out of range ({n_heads} heads)")
                m[self.layer, pos, h] = 1
            return m
        m = np.zeros((L, T), np.float32)
        m[self.layer, pos] = 1
        return m


def all_receivers(config, sender: Node) -> list[Node]:
    """Every reader site (q, k, v, mlp_in) downstream of `sender`, plus the final residual
    (`resid_post` of the last layer, which the unembedding reads). With these as receivers,
    path patching equals ordinary activation patching of the sender.

    Args:
        config: the model's config.
        sender: the sender node.

    Returns:
        The receiver nodes.
    """
    out = []
    for layer in range(sender.layer, config.n_layers):
        for s in READER_SITES:
            node = Node(s, layer)
            if node.order() > sender.order():
                out.append(node)
    out.append(Node("resid_post", config.n_layers - 1))
    return out


_RECEIVER_SITES = READER_SITES + ("attn_in", "resid_pre", "resid_mid", "resid_post")


def path_patching(
    model: Model,
    base_tokens: Any,
    source_tokens: Any = None,
    *,
    sender: Node,
    receivers: Sequence[Node],
    attention_mask: Any = None,
    base_interventions: Any = (),
    source_interventions: Any = (),
) -> jax.Array:
    """Logits of the base run in which the sender's change reaches the output only through `receivers`.

    Run 1 (base input): patch the sender with the source value and freeze every reader site after
    it (q, k, v of every head and mlp_in, at later layers or later in the same layer) at the base
    run's values, except the receivers; record the receivers' values. So a receiver sees the
    sender's change through the residual stream directly, plus (if several receivers are chained)
    through earlier receivers. Run 2 (base input): patch only the receivers with their run-1
    values; everything downstream of them computes freely.

    Args:
        model: the model.
        base_tokens: ids `[B, T]`.
        source_tokens: ids `[B, T]` of the source run (default `base_tokens`: the runs then differ by
            `source_interventions`).
        sender: the `Node` whose value comes from the source run.
        receivers: reader sites (`q`, `k`, `v` with optional heads, `attn_in` = all of a layer's
            q/k/v, `mlp_in`) or residual sites (`resid_pre`, `resid_mid`, `resid_post`;
            `Node("resid_post", L-1)` is the direct path to the logits). `all_receivers(config,
            sender)` reproduces activation patching; no receivers reproduce the base run.
        attention_mask: `[B, T]` 0/1, shared by the runs.
        base_interventions: applied to the base runs.
        source_interventions: applied to the source run.

    Returns:
        Logits `[B, T, V]`.
    """
    c = model.config
    base_tokens = jnp.asarray(base_tokens, jnp.int32)
    source_tokens = base_tokens if source_tokens is None else jnp.asarray(source_tokens, jnp.int32)
    if source_tokens.shape != base_tokens.shape:
        raise InputError(f"base and source tokens differ in shape: {base_tokens.shape} vs {source_tokens.shape}")
    T = base_tokens.shape[1]
    base_ivs, src_ivs = as_tuple(base_interventions), as_tuple(source_interventions)
    receivers = list(receivers)
    for r in receivers:
        if r.site not in _RECEIVER_SITES:
            raise InputError(
                f"receiver {r}: site {r.site!r} cannot be a receiver (use reader sites q, k, v, attn_in, mlp_in or "
                "residual sites resid_pre, resid_mid, resid_post; a component's output only changes through its inputs)"
            )
        if r.order() <= sender.order():
            raise InputError(f"receiver {r} is not downstream of the sender {sender}")

    # Freeze masks: reader sites after the sender, minus the receivers.
    freeze = {}
    for s in READER_SITES:
        n_h = site_n_heads(s, c)
        m = np.zeros((c.n_layers, T, n_h) if n_h else (c.n_layers, T), np.float32)
        for layer in range(sender.layer, c.n_layers):
            if Node(s, layer).order() > sender.order():
                m[layer] = 1
        for r in receivers:
            if r.site == s:
                m -= r.mask(c, T, with_heads=n_h is not None)
            elif r.site == "attn_in" and s in ("q", "k", "v"):
                m -= Node(s, r.layer, positions=r.positions).mask(c, T, with_heads=True)
        freeze[s] = np.clip(m, 0, 1)
    if not receivers:
        logits, _ = forward(model, base_tokens, attention_mask=attention_mask, interventions=base_ivs)
        return logits
    recv_sites = sorted({r.site for r in receivers})
    recv_masks = {
        s: np.clip(sum(r.mask(c, T, with_heads=site_n_heads(s, c) is not None) for r in receivers if r.site == s), 0, 1)
        for s in recv_sites
    }

    frozen = tuple(s for s in READER_SITES if freeze[s].any())
    _, src = forward(model, source_tokens, attention_mask=attention_mask, interventions=src_ivs, record=(sender.site,))
    _, base = forward(model, base_tokens, attention_mask=attention_mask, interventions=base_ivs, record=frozen)
    ivs1 = (
        base_ivs
        + (Patch(src[sender.site], site=sender.site, mask=sender.mask(c, T)),)
        + tuple(Patch(base[s], site=s, mask=freeze[s]) for s in frozen)
    )
    _, run1 = forward(
        model,
        base_tokens,
        attention_mask=attention_mask,
        interventions=ivs1,
        record=tuple(recv_sites),
        return_logits=False,
    )
    ivs2 = base_ivs + tuple(Patch(run1[s], site=s, mask=recv_masks[s]) for s in recv_sites)
    logits, _ = forward(model, base_tokens, attention_mask=attention_mask, interventions=ivs2)
    return logits


# --------------------------------------------------------------------------- attribution patching


@functools.partial(jax.jit, static_argnames=("sites", "metric_positions", "lrp_rules"))
def _attr_grads(model, tokens, attention_mask, base_ivs, metric, pattern_base, *, sites, metric_positions, lrp_rules):
    c = model.config
    B, T = tokens.shape
    zeros = {}
    for s in sites:
        feat = site_feature_shape(s, c)  # None only for "pattern", whose last axis is the key length
        zeros[s] = jnp.zeros(
            (c.n_layers, B, c.n_heads, T, T) if feat is None else (c.n_layers, B, T) + feat, jnp.float32
        )

    def f(deltas):
        ivs = base_ivs + tuple(
            Patch(pattern_base + deltas[s], site=s) if s == "pattern" else Steer(deltas[s], site=s) for s in sites
        )
        logits, trace = forward(
            model, tokens, attention_mask=attention_mask, interventions=ivs, record=sites, lrp_rules=lrp_rules
        )
        return metric(logits[:, list(metric_positions)]), trace

    (m, trace), grads = jax.value_and_grad(f, has_aux=True)(zeros)
    return m, trace, grads


def attribution_patching(
    model: Model,
    clean_tokens: Any,
    corrupt_tokens: Any,
    *,
    sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
    answers: Any = None,
    metric: Callable | None = None,
    over: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
    positions: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
    direction: str = "denoise",
    attention_mask: Any = None,
    clean_interventions: Any = (),
    metric_positions: Sequence[int] | None = (-1,),
    tokenizer: Any = None,
    lrp_rules: Iterable[str] = (),
) -> dict[str, PatchingResult]:
    """First-order estimate of `activation_patching` for every entry of every site at once.

    `metric(base) + (a_source - a_base) . d metric / d a`, with the gradient taken at the base run
    (the corrupted one for `direction="denoise"`) w.r.t. a zero per-token `Steer` delta
    `[L, B, T, *feat]` at each site (`pattern`: a `Patch` of base + delta). Cost: the two plain
    runs plus one forward and one backward pass. Entries over several positions (groups) or all
    positions sum the per-position terms.

    Args:
        model: the model.
        clean_tokens: ids `[B, T]`.
        corrupt_tokens: ids `[B, T]`.
        sites: the sites estimated.
        answers: as for `activation_patching`.
        metric: as for `activation_patching`.
        over: the sweep axes, one for all sites or a dict `site -> axes`.
        positions: as for `activation_patching`.
        direction: "denoise" or "noise".
        attention_mask: `[B, T]` 0/1.
        clean_interventions: applied to the clean run.
        metric_positions: as for `activation_patching`.
        tokenizer: as for `activation_patching`.
        lrp_rules: replace the gradient by LRP coefficients (method "relevance"; see `relevance_patching`).

    Returns:
        `{site: PatchingResult}` (method "attribution"), normalised as `activation_patching`.
    """
    c = model.config
    lrp_rules = check_rules(lrp_rules)
    sites = tuple(canonical_site(s) for s in sites)
    for s in sites:
        check_site(s)
    metric = _as_metric(metric, answers, tokenizer)
    mp, src_trace, _, m_clean, m_corrupt, base_tokens, base_ivs = _prepare(
        model,
        clean_tokens,
        corrupt_tokens,
        sites,
        metric,
        attention_mask,
        clean_interventions,
        direction,
        metric_positions,
    )
    T = base_tokens.shape[1]
    pattern_base = jnp.zeros(())
    if "pattern" in sites:
        _, pt = forward(model, base_tokens, attention_mask=attention_mask, interventions=base_ivs, record=("pattern",))
        pattern_base = pt["pattern"].astype(jnp.float32)
    m_base, base_trace, grads = _attr_grads(
        model,
        base_tokens,
        attention_mask,
        base_ivs,
        metric,
        pattern_base,
        sites=tuple(sorted(sites)),
        metric_positions=mp,
        lrp_rules=lrp_rules,
    )
    m_base = float(m_base)
    out = {}
    for s in sites:
        site_over = _check_over((over.get(s) if isinstance(over, Mapping) else over) or _default_over(s), s)
        diff = (src_trace[s].astype(jnp.float32) - base_trace[s].astype(jnp.float32)) * grads[s]
        if s == "pattern":  # [L, B, H, T, S] -> [L, T, H]
            per = np.asarray(diff.sum(axis=(1, 4))).transpose(0, 2, 1)
        elif SITE_LAYOUT[s][2] is not None:  # [L, B, T, H, hd] -> [L, T, H]
            per = np.asarray(diff.sum(axis=(1, 4)))
        else:  # [L, B, T, d] -> [L, T, 1]
            per = np.asarray(diff.sum(axis=(1, 3)))[..., None]
        if "position" in site_over:
            pos_labels, prows = _resolve_positions(positions, T)
        else:
            pos_labels, prows = ["all"], np.ones((1, T), np.float32)
        grouped = np.einsum("pt,lth->lph", prows, per)  # [L, P, H]
        heads = None
        if "head" in site_over:
            heads = list(range(per.shape[2]))
        else:
            grouped = grouped.sum(axis=2, keepdims=True)
        shape = [c.n_layers] + ([len(pos_labels)] if "position" in site_over else []) + ([len(heads)] if heads else [])
        raw = m_base + grouped.reshape(shape)
        out[s] = PatchingResult(
            values=normalise(raw, m_clean, m_corrupt),
            raw=raw,
            axes=site_over,
            layers=list(range(c.n_layers)),
            positions=pos_labels if "position" in site_over else None,
            heads=heads,
            site=s,
            method="relevance" if lrp_rules else "attribution",
            direction=direction,
            clean_metric=m_clean,
            corrupt_metric=m_corrupt,
            **_token_labels(tokenizer, clean_tokens, corrupt_tokens),
        )
    return out


def relevance_patching(
    model: Model, clean_tokens: Any, corrupt_tokens: Any, *, rules: Sequence[str] = RULES, **kwargs
) -> dict[str, PatchingResult]:
    """RelP (relevance patching, arXiv 2508.21258): `attribution_patching` with the local gradient
    replaced by LRP propagation coefficients, `metric(base) + (a_source - a_base) . R`, where `R`
    is the backward pass of the base run under the LRP `rules` (default all of
    `models.relevance.RULES`: LN-rule, Identity-rule, Half-rule, AH-rule). The same cost (two
    plain runs, one forward and one backward) and arguments as `attribution_patching`; results
    carry method "relevance". `rules=()` is exactly attribution patching.

    Args:
        model: the model.
        clean_tokens: ids `[B, T]`.
        corrupt_tokens: ids `[B, T]`.
        rules: LRP rules (names of `RULES`).
        **kwargs: as for `attribution_patching`.

    Returns:
        `{site: PatchingResult}`.
    """
    return attribution_patching(model, clean_tokens, corrupt_tokens, lrp_rules=rules, **kwargs)


def compare_attribution(estimate: PatchingResult, actual: PatchingResult) -> dict[str, float]:
    """How well attribution patching tracks real patching on the same sweep: Pearson correlation
    of the normalised values, max abs difference, and the number of entries.

    Args:
        estimate: the attribution (or relevance) result.
        actual: the activation-patching result on the same sweep.

    Returns:
        `{"pearson", "max_abs_diff", "n"}`.
    """
    a, b = np.asarray(estimate.values, np.float64).ravel(), np.asarray(actual.values, np.float64).ravel()
    if a.shape != b.shape:
        raise InputError(f"results have different shapes: {np.shape(estimate.values)} vs {np.shape(actual.values)}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    r = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else float("nan")
    return {"pearson": r, "max_abs_diff": float(np.abs(a - b).max()) if a.size else float("nan"), "n": int(a.size)}
