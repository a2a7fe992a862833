"""Logit lens: read residual-stream vectors through the unembedding.

    res = vector_lens(model, vectors, tokenizer=tok)            # steering vectors [L, d], raw W_U s_l
    print(res.table())
    res = accumulated_lens(model, tokens, tokenizer=tok)       # what each layer's residual predicts
    res.plot("lens.png")

`logit_lens` works on any `[..., d]` array (a vector, per-layer vectors `[L, d]`, a trace
`[L, B, T, d]`); only the top-k and bottom-k tokens per vector come back, computed in chunks
under `jit`, so a full `[L, B, T, V]` logit tensor never exists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models.decoder import Trace, forward, unembed
from ..models.display import ResultDisplay
from ..models.params import Model
from ._common import new_figure, save_figure, token_strs


@dataclasses.dataclass(repr=False)
class LensResult(ResultDisplay):
    """Top-k / bottom-k tokens of each vector's unembedding.

    Arrays have the lead shape of the input (`[R]` for vectors, `[R, B, T]` for traces) plus `k`.

    Attributes:
        top_ids: the top-k token ids.
        top_logits: their logits.
        top_logprobs: their log-softmax values over the same logits (meaningful with the final norm).
        bottom_ids: the bottom-k token ids.
        bottom_logits: their logits.
        top_tokens: the top-k tokens decoded (or `#id` without a tokenizer).
        bottom_tokens: the bottom-k tokens decoded.
        labels: names of the first lead axis (e.g. layers).
        final_norm: whether the vectors went through the final norm.
        position_labels: names of the token axis, when there is one.
    """

    top_ids: np.ndarray
    top_logits: np.ndarray
    top_logprobs: np.ndarray
    bottom_ids: np.ndarray
    bottom_logits: np.ndarray
    top_tokens: np.ndarray
    bottom_tokens: np.ndarray
    labels: list[str]
    final_norm: bool
    position_labels: list[str] | None = None

    @property
    def k(self) -> int:
        """Tokens kept at each end."""
        return self.top_ids.shape[-1]

    def select(self, batch: int = 0, position: int = -1) -> LensResult:
        """For a `[R, B, T]` result: the `[R]` result at one batch row and position."""
        if self.top_ids.ndim != 4:
            raise InputError(f"select needs a [R, B, T, k] result, this one is {self.top_ids.shape}")
        pick = lambda a: a[:, batch, position]
        return dataclasses.replace(
            self,
            **{
                f.name: pick(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if f.name.startswith(("top_", "bottom_"))
            },
            position_labels=None,
        )

    def probabilities(self) -> tuple[np.ndarray, np.ndarray]:
        """`(top, bottom)` softmax probabilities of the listed tokens (the same logits' softmax;
        meaningful with the final norm)."""
        log_norm = self.top_logits[..., :1] - self.top_logprobs[..., :1]  # logsumexp of each row's logits
        return np.exp(self.top_logprobs), np.exp(self.bottom_logits - log_norm)

    def _rows(self, k: int | None, batch: int, position: int, probs: bool):
        r = self.select(batch, position) if self.top_ids.ndim == 4 else self
        if r.top_ids.ndim != 2:
            raise InputError(f"table needs a [R, k] or [R, B, T, k] result, this one is {self.top_ids.shape}")
        top, bottom = r.probabilities() if probs else (r.top_logits, r.bottom_logits)
        return r, min(k or r.k, r.k), top, bottom

    def table(self, k: int | None = None, batch: int = 0, position: int = -1, probs: bool = False) -> str:
        """Plain-text table: one row per label with its top-k and bottom-k tokens and their logits
        (`probs=True`: probabilities)."""
        r, k, top_v, bottom_v = self._rows(k, batch, position, probs)
        width = max(len(s) for s in r.labels)
        norm = "with final norm" if self.final_norm else "raw (no final norm)"
        lines = [f"logit lens, {norm}: top-{k} | bottom-{k} tokens ({'probability' if probs else 'logit'})"]
        fmt = "{:.3f}" if probs else "{:.2f}"
        for i, label in enumerate(r.labels):
            top = "  ".join(f"{r.top_tokens[i, j]!r} {fmt.format(top_v[i, j])}" for j in range(k))
            bottom = "  ".join(f"{r.bottom_tokens[i, j]!r} {fmt.format(bottom_v[i, j])}" for j in range(k))
            lines.append(f"{label:>{width}} | {top} | {bottom}")
        return "\n".join(lines)

    def html_table_body(self, k: int = 5, probs: bool | None = None) -> str:
        """HTML table of the top-k tokens per row (probabilities with the final norm, else logits)."""
        from ..models.display import frame_html

        probs = self.final_norm if probs is None else probs
        try:
            r, k, top_v, _ = self._rows(k, 0, -1, probs)
        except ValueError:
            return ""
        cells = np.array(
            [[f"{r.top_tokens[i, j]!r} {top_v[i, j]:.3f}" for j in range(k)] for i in range(len(r.labels))],
            dtype=object,
        )
        what = "probability" if probs else "logit"
        return frame_html(
            cells, r.labels, [f"top {j + 1}" for j in range(k)], title=f"logit lens: top-{k} tokens ({what})"
        )

    def plot(self, path: str, k: int | None = None, batch: int = 0, title: str | None = None) -> str:
        """Write a PNG. `[R]` results: rows x ranks, cells show the top-k (left) and bottom-k (right)
        tokens coloured by logit. `[R, B, T]` results: rows x positions, cells show the top-1 token
        coloured by its probability (the classic logit-lens picture)."""
        if self.top_ids.ndim == 4:
            return self._plot_positions(path, batch, title)
        if self.top_ids.ndim != 2:
            raise InputError(f"plot needs a [R, k] or [R, B, T, k] result, this one is {self.top_ids.shape}")
        k = min(k or self.k, self.k, 10)
        R = len(self.labels)
        fig = new_figure(2.0 + 1.3 * 2 * k, 1.0 + 0.28 * R)
        axes = fig.subplots(1, 2)
        for ax, ids_tok, vals, name, cmap in (
            (axes[0], self.top_tokens, self.top_logits, f"top-{k}", "Reds"),
            (axes[1], self.bottom_tokens, self.bottom_logits, f"bottom-{k}", "Blues_r"),
        ):
            v = vals[:, :k]
            im = ax.imshow(v, aspect="auto", cmap=cmap)
            for i in range(R):
                for j in range(k):
                    ax.text(j, i, ids_tok[i, j][:10], ha="center", va="center", fontsize=6)
            ax.set_yticks(range(R), self.labels, fontsize=7)
            ax.set_xticks(range(k), [str(j + 1) for j in range(k)], fontsize=7)
            ax.set_xlabel("rank")
            ax.set_title(name)
            fig.colorbar(im, ax=ax, label="logit", shrink=0.6)
        norm = "with final norm" if self.final_norm else "raw W_U x, no final norm"
        fig.suptitle(title or f"logit lens ({norm})")
        return save_figure(fig, path)

    def _plot_positions(self, path: str, batch: int, title: str | None) -> str:
        R, T = self.top_ids.shape[0], self.top_ids.shape[2]
        probs = np.exp(self.top_logprobs[:, batch, :, 0])
        fig = new_figure(2.0 + 0.9 * T, 1.0 + 0.3 * R)
        ax = fig.subplots()
        im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        for i in range(R):
            for t in range(T):
                ax.text(
                    t,
                    i,
                    self.top_tokens[i, batch, t, 0][:8],
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if probs[i, t] < 0.5 else "black",
                )
        ax.set_yticks(range(R), self.labels, fontsize=7)
        xl = self.position_labels or [str(t) for t in range(T)]
        ax.set_xticks(range(T), [s[:10] for s in xl], rotation=60, fontsize=7)
        ax.set_xlabel("position (input token)")
        fig.colorbar(im, ax=ax, label="top-1 probability")
        ax.set_title(
            title or f"logit lens, top-1 token per layer and position{' (final norm)' if self.final_norm else ''}"
        )
        return save_figure(fig, path)


@functools.partial(jax.jit, static_argnames=("k", "final_norm", "chunk"))
def _topk(model: Model, rows: jax.Array, k: int, final_norm: bool, chunk: int):
    def one(x):
        logits = unembed(model, x, final_norm=final_norm)
        top_v, top_i = jax.lax.top_k(logits, k)
        bot_v, bot_i = jax.lax.top_k(-logits, k)
        lse = jax.nn.logsumexp(logits)
        return top_i, top_v, top_v - lse, bot_i, -bot_v

    return jax.lax.map(one, rows, batch_size=chunk)


def logit_lens(
    model: Model,
    x: Any,
    *,
    final_norm: bool = True,
    k: int = 10,
    tokenizer: Any = None,
    labels: Sequence[str] | None = None,
    position_labels: Sequence[str] | None = None,
    chunk: int = 64,
) -> LensResult:
    """Keep the top-k and bottom-k tokens of each residual vector's unembedding.

    Args:
        model: the model.
        x: residual vectors `[..., d]`.
        final_norm: go through the model's final norm first.
        k: tokens kept at each end.
        tokenizer: decodes the tokens.
        labels: names of the first lead axis (default `layer i` for `[L, ...]` inputs with
            L = n_layers, else the index).
        position_labels: names of the token axis.
        chunk: vectors per unembedding call.

    Returns:
        The `LensResult`.
    """
    x = jnp.asarray(x)
    d = model.config.d_model
    if x.ndim == 1:
        x = x[None]
    if x.shape[-1] != d:
        raise InputError(f"logit_lens: last axis has size {x.shape[-1]}, the model's d_model is {d}")
    lead = x.shape[:-1]
    rows = x.reshape(-1, d).astype(model.dtype)
    top_i, top_v, top_lp, bot_i, bot_v = (
        np.asarray(a).reshape(lead + (k,)) for a in _topk(model, rows, k, final_norm, chunk)
    )
    if labels is None:
        prefix = "layer " if lead[0] == model.config.n_layers else ""
        labels = [f"{prefix}{i}" for i in range(lead[0])]
    if len(labels) != lead[0]:
        raise InputError(f"logit_lens: {len(labels)} labels for a leading axis of {lead[0]}")
    return LensResult(
        top_ids=top_i,
        top_logits=top_v,
        top_logprobs=top_lp,
        bottom_ids=bot_i,
        bottom_logits=bot_v,
        top_tokens=token_strs(tokenizer, top_i),
        bottom_tokens=token_strs(tokenizer, bot_i),
        labels=list(labels),
        final_norm=final_norm,
        position_labels=list(position_labels) if position_labels is not None else None,
    )


def vector_lens(
    model: Model, vectors: Any, *, final_norm: bool = False, k: int = 10, tokenizer: Any = None
) -> LensResult:
    """Logit lens of steering vectors (`[d]` or per layer `[L, d]`): `W_U s_l` per layer, raw by
    default (as in the public code of arXiv 2509.06608), through the final norm with `final_norm`.

    Args:
        model: the model.
        vectors: `[d]` or `[L, d]`.
        final_norm: go through the model's final norm first.
        k: tokens kept at each end.
        tokenizer: decodes the tokens.

    Returns:
        The `LensResult`.
    """
    return logit_lens(model, vectors, final_norm=final_norm, k=k, tokenizer=tokenizer)


def accumulated_resid(trace: Trace, *, incl_mid: bool = False) -> tuple[jax.Array, list[str]]:
    """The residual stream at the start of every layer plus the final one: `[L + 1, B, T, d]`
    (`[2L + 1, ...]` with the mid-layer residuals when `incl_mid`), and its labels. Needs a trace
    recorded with `resid_pre` and `resid_post` (and `resid_mid`).

    Args:
        trace: a `Trace` with `resid_pre` and `resid_post` (and `resid_mid` for `incl_mid`).
        incl_mid: interleave the mid-layer residuals.

    Returns:
        `(residuals, labels)`.
    """
    for site in ("resid_pre", "resid_post") + (("resid_mid",) if incl_mid else ()):
        if site not in trace:
            raise InputError(f"accumulated_resid needs {site!r} in the trace (recorded: {sorted(trace)})")
    pre = trace["resid_pre"]
    L = pre.shape[0]
    if incl_mid:
        mid = trace["resid_mid"]
        parts = jnp.stack([pre, mid], axis=1).reshape((2 * L,) + pre.shape[1:])
        labels = [f"{l}_{s}" for l in range(L) for s in ("pre", "mid")]
    else:
        parts = pre
        labels = [f"{l}_pre" for l in range(L)]
    stacked = jnp.concatenate([parts, trace["resid_post"][-1:]], axis=0)
    return stacked, labels + ["final"]


def accumulated_lens(
    model: Model,
    tokens: Any,
    *,
    attention_mask: Any = None,
    interventions: Any = (),
    final_norm: bool = True,
    incl_mid: bool = False,
    k: int = 5,
    tokenizer: Any = None,
) -> LensResult:
    """What each layer's residual would predict (TransformerLens `accumulated_resid` style).

    The lens of the residual entering every layer and of the final residual, at every position.
    With `final_norm`, the last row equals the model's own logits.

    Args:
        model: the model.
        tokens: ids `[B, T]`.
        attention_mask: `[B, T]` 0/1 (None: no padding).
        interventions: applied to the run.
        final_norm: go through the model's final norm.
        incl_mid: also the mid-layer residuals (after attention).
        k: tokens kept at each end.
        tokenizer: decodes the tokens.

    Returns:
        The `LensResult`, lead shape `[L+1, B, T]` (`[2L+1, B, T]` with `incl_mid`).
    """
    tokens = jnp.asarray(tokens)
    record = ("resid_pre", "resid_post") + (("resid_mid",) if incl_mid else ())
    _, trace = forward(
        model, tokens, attention_mask=attention_mask, interventions=interventions, record=record, return_logits=False
    )
    stacked, labels = accumulated_resid(trace, incl_mid=incl_mid)
    pos_labels = None
    if tokenizer is not None:
        pos_labels = [str(s) for s in token_strs(tokenizer, np.asarray(tokens[0]))]
    return logit_lens(
        model, stacked, final_norm=final_norm, k=k, tokenizer=tokenizer, labels=labels, position_labels=pos_labels
    )


def token_rank(model: Model, x: Any, token_ids: Any, *, final_norm: bool = True) -> np.ndarray:
    """Rank (0 = top) of given token(s) in the lens of each vector: `x [..., d]` and `token_ids`
    broadcastable to `x.shape[:-1]`.

    Args:
        model: the model.
        x: residual vectors `[..., d]`.
        token_ids: the tokens ranked, broadcastable to `x.shape[:-1]`.
        final_norm: go through the model's final norm first.

    Returns:
        Ranks, shaped `x.shape[:-1]`.
    """
    x = jnp.asarray(x)
    logits = unembed(model, x.astype(model.dtype), final_norm=final_norm)
    tid = jnp.broadcast_to(jnp.asarray(token_ids), x.shape[:-1])
    own = jnp.take_along_axis(logits, tid[..., None], axis=-1)
    return np.asarray((logits > own).sum(-1))
