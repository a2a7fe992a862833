"""Cross-layer feature flow: follow SAE features from one layer's SAE to the next.

Given SAEs on consecutive layers (any sites, in order), each feature of level `i` is matched to
features of level `i + 1` by three scores:

- `decoder_cosine`: cosine between the two features' decoder rows (the same direction written),
  the matching of Balagansky et al. (arXiv 2410.07656, "Mechanistic Permutability");
- `encoder_cosine`: cosine between level i's decoder row and level i+1's encoder column (what
  the first writes is what the second reads);
- `correlation`: Pearson correlation of the two features' activations over the same tokens of a
  corpus (0 where a feature never varies).

`flow_graph` works on given activations, `feature_flow` harvests them from a model (one forward
pass per batch, stopping at the last SAE's layer). Both return a `FeatureGraph` (nodes, edges
with all three scores and the chosen weight), which `FeatureGraph.plot` draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from .arch import SAE, encode

SCORES = ("correlation", "decoder_cosine", "encoder_cosine")


@dataclasses.dataclass
class FeatureGraph:
    """Features of SAEs at consecutive levels and the edges between them (`flow_graph`).

    Attributes:
        layers: the layer of each level's SAE.
        sites: the site of each level's SAE.
        nodes: `(level, feature)` pairs.
        edges: from level i to level i+1: dicts with `src`, `dst` (nodes), `weight` (the score
            chosen by `by`) and every score of `SCORES`.
        by: the score the edges were chosen by.
    """

    layers: list[int]
    sites: list[str]
    nodes: list[tuple[int, int]]
    edges: list[dict]
    by: str

    def successors(self, node: tuple[int, int]) -> list[tuple[tuple[int, int], float]]:
        """`[(node, weight)]` of the edges leaving `node`, strongest first."""
        out = [(e["dst"], e["weight"]) for e in self.edges if e["src"] == tuple(node)]
        return sorted(out, key=lambda t: -t[1])

    def plot(
        self, path: str | None = None, *, title: str = "", labels: dict | None = None, node_colors: dict | None = None
    ):
        """Draw the graph (levels left to right, edge width and shade by weight); returns the
        matplotlib figure and writes it to `path` when given. `labels`: `{node: text}`;
        `node_colors`: `{node: matplotlib colour}` (default white)."""
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        levels = sorted({lv for lv, _ in self.nodes})
        pos = {}
        for lv in levels:
            column = sorted(f for l2, f in self.nodes if l2 == lv)
            for row, f in enumerate(column):
                pos[(lv, f)] = (lv, -row)
        height = max(sum(1 for n in self.nodes if n[0] == lv) for lv in levels) if levels else 1
        fig = Figure(figsize=(2.2 * max(len(levels), 2), 0.45 * height + 1.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        wmax = max([abs(e["weight"]) for e in self.edges] + [1e-9])
        for e in self.edges:
            (x0, y0), (x1, y1) = pos[e["src"]], pos[e["dst"]]
            w = abs(e["weight"]) / wmax
            ax.plot([x0, x1], [y0, y1], color=colormaps["viridis"](1 - w), lw=0.5 + 3 * w, alpha=0.8, zorder=1)
        for node, (x, y) in pos.items():
            face = (node_colors or {}).get(node, "white")
            ax.scatter([x], [y], s=120, color=face, edgecolor="black", zorder=2)
            text = (labels or {}).get(node, str(node[1]))
            ax.annotate(text, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=7)
        ax.set_xticks(levels, [f"{self.sites[lv]} L{self.layers[lv]}" for lv in levels])
        ax.set_yticks([])
        ax.set_title(title or f"feature flow (edge weight: {self.by})")
        for side in ("left", "right", "top"):
            ax.spines[side].set_visible(False)
        if path:
            fig.savefig(path, dpi=150)
        return fig


def _unit_rows(w: np.ndarray) -> np.ndarray:
    return w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


def decoder_cosine(a: SAE, b: SAE) -> np.ndarray:
    """`[F_a, F_b]` cosines between `a`'s and `b`'s decoder rows."""
    return (
        _unit_rows(np.asarray(a.params["W_dec"], np.float32)) @ _unit_rows(np.asarray(b.params["W_dec"], np.float32)).T
    )


def encoder_cosine(a: SAE, b: SAE) -> np.ndarray:
    """`[F_a, F_b]` cosines between `a`'s decoder rows and `b`'s encoder columns (needs `W_enc`)."""
    if "W_enc" not in b.params:
        raise InputError(f"encoder_cosine: the {b.config.kind} SAE has no W_enc")
    return (
        _unit_rows(np.asarray(a.params["W_dec"], np.float32))
        @ _unit_rows(np.asarray(b.params["W_enc"], np.float32).T).T
    )


def activation_correlation(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """`[F_a, F_b]` Pearson correlations between the columns of codes `za [N, F_a]` and
    `zb [N, F_b]` over the same N tokens (0 for a feature that is constant on them)."""
    za, zb = np.asarray(za, np.float64), np.asarray(zb, np.float64)
    if za.shape[0] != zb.shape[0]:
        raise InputError(f"activation_correlation: {za.shape[0]} vs {zb.shape[0]} tokens; they must be the same tokens")
    da, db = za - za.mean(0), zb - zb.mean(0)
    sa, sb = np.sqrt((da * da).sum(0)), np.sqrt((db * db).sum(0))
    cov = da.T @ db
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov / np.outer(sa, sb)
    return np.nan_to_num(corr, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def flow_graph(
    saes: Sequence[SAE],
    acts: Sequence[np.ndarray],
    *,
    features: Sequence[int] | None = None,
    top: int = 3,
    by: str = "correlation",
    min_weight: float = 0.0,
) -> FeatureGraph:
    """Follow features from the first SAE through the rest.

    At each level every current feature links to its `top` best matches in the next SAE by score
    `by` when that score is at least `min_weight`; the matches are the next level's features.

    Args:
        saes: SAEs at consecutive levels.
        acts: each SAE's input activations on the same tokens (`[N, d_in]` each, row n the same
            token everywhere).
        features: the first level's features to start from (default: every feature that fires on `acts`).
        top: matches kept per feature.
        by: one of `SCORES`.
        min_weight: the smallest score kept.

    Returns:
        The `FeatureGraph`.
    """
    if by not in SCORES:
        raise InputError(f"flow_graph: by={by!r}; scores are {SCORES}")
    if len(saes) < 2 or len(saes) != len(acts):
        raise InputError(
            f"flow_graph: need >= 2 SAEs and one activation array per SAE, got {len(saes)} and {len(acts)}"
        )
    codes = [
        np.asarray(encode(s, jnp.asarray(a).reshape(-1, s.config.d_in)), np.float32)
        for s, a in zip(saes, acts, strict=True)
    ]
    current = sorted(int(f) for f in (features if features is not None else np.flatnonzero((codes[0] > 0).any(0))))
    nodes = [(0, f) for f in current]
    edges = []
    for lv in range(len(saes) - 1):
        a, b = saes[lv], saes[lv + 1]
        scores = {
            "correlation": activation_correlation(codes[lv][:, current], codes[lv + 1]),
            "decoder_cosine": decoder_cosine(a, b)[current],
            "encoder_cosine": encoder_cosine(a, b)[current] if "W_enc" in b.params else None,
        }
        nxt = set()
        for row, f in enumerate(current):
            w = scores[by][row]
            for g in np.argsort(-w)[:top]:
                if w[g] < min_weight:
                    continue
                edge = {"src": (lv, f), "dst": (lv + 1, int(g)), "weight": float(w[g])}
                edge.update({k: (float(v[row, g]) if v is not None else None) for k, v in scores.items()})
                edges.append(edge)
                nxt.add(int(g))
        current = sorted(nxt)
        nodes += [(lv + 1, g) for g in current]
    return FeatureGraph(
        layers=[s.config.layer for s in saes], sites=[s.config.site for s in saes], nodes=nodes, edges=edges, by=by
    )


def feature_flow(model, saes: Sequence[SAE], tokens, *, attention_mask=None, batch: int = 8, **kw) -> FeatureGraph:
    """`flow_graph` on activations harvested from `model` on `tokens [N, T]` at each SAE's site
    and layer: one forward pass per batch of rows, stopping after the deepest SAE's layer (padding
    excluded when `attention_mask` is given; a z SAE reads the heads flattened). `kw` go to `flow_graph`.

    Args:
        model: the model.
        saes: SAEs at consecutive levels.
        tokens: ids `[N, T]`.
        attention_mask: `[N, T]` 0/1 (None: every token counts).
        batch: rows per forward pass.
        **kw: passed to `flow_graph`.

    Returns:
        The `FeatureGraph`.
    """
    from ..models.decoder import forward
    from ..models.params import truncate

    tokens = np.asarray(tokens)
    small = truncate(model, max(s.config.layer for s in saes) + 1)
    sites = tuple(sorted({s.config.site for s in saes}))
    per_sae: list[list[np.ndarray]] = [[] for _ in saes]
    for i in range(0, len(tokens), batch):
        am = None if attention_mask is None else np.asarray(attention_mask)[i : i + batch]
        _, trace = forward(
            small,
            jnp.asarray(tokens[i : i + batch]),
            attention_mask=None if am is None else jnp.asarray(am),
            record=sites,
            return_logits=False,
        )
        for j, s in enumerate(saes):
            x = np.asarray(trace[s.config.site][s.config.layer], np.float32).reshape(-1, s.config.d_in)
            per_sae[j].append(x if am is None else x[am.reshape(-1).astype(bool)])
    return flow_graph(saes, [np.concatenate(p) for p in per_sae], **kw)


__all__ = [
    "SCORES",
    "FeatureGraph",
    "decoder_cosine",
    "encoder_cosine",
    "activation_correlation",
    "flow_graph",
    "feature_flow",
]
