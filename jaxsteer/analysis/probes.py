"""Linear probes per layer (and per position group), trained together in one jitted loop, and the
"decodability vs causality" report (probe score and patching effect per layer, side by side).

    acts = harvest(model, tokens, attention_mask=mask, groups={"last": -1, "operand": op_positions})
    probes = train_probes(acts.values, labels, groups=acts.groups)      # [G, L] held-out scores
    report = decodability_vs_causality(probes, patching_result)         # patching over the same groups
    print(report.table()); report.plot("decodability.png")
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import InputError
from ..models.decoder import forward
from ..models.display import ResultDisplay, array_summary, frame_html, summary_html, summary_repr
from ..models.interventions import SITE_LAYOUT, check_site
from ..models.params import Model
from ..models.sites import canonical_site
from ._common import new_figure, save_figure
from .patching import PatchingResult


@dataclasses.dataclass
class Activations:
    """Harvested activations per position group and layer.

    Attributes:
        values: `[G, L, N, d]` float32.
        groups: the position group names (G).
        site: the site read.
        layers: the true model layer index of each L entry (`select` keeps them when slicing;
            default `0..L-1`).
    """

    values: np.ndarray
    groups: list[str]
    site: str
    layers: list[int] | None = None

    def __post_init__(self):
        if self.layers is None:
            self.layers = list(range(self.values.shape[1]))

    def select(self, *, layers: Sequence[int] | None = None, groups: Sequence[str] | None = None) -> Activations:
        """The activations of some layers (model layer indices) and / or groups, labels kept."""
        assert self.layers is not None  # filled by __post_init__
        li = list(range(len(self.layers))) if layers is None else [self._index(self.layers, l, "layer") for l in layers]
        gi = list(range(len(self.groups))) if groups is None else [self._index(self.groups, g, "group") for g in groups]
        return Activations(
            self.values[np.ix_(gi, li)], [self.groups[i] for i in gi], self.site, [self.layers[i] for i in li]
        )

    @staticmethod
    def _index(labels: list, label: Any, what: str) -> int:
        if label not in labels:
            raise InputError(f"{what} {label!r} was not harvested (have {labels})")
        return labels.index(label)

    def __repr__(self) -> str:
        return summary_repr(self)

    def _repr_html_(self) -> str:
        return summary_html(self)


@functools.partial(jax.jit, static_argnames=("site",))
def _harvest_batch(model, tokens, attention_mask, weights, *, site):
    _, trace = forward(model, tokens, attention_mask=attention_mask, record=(site,), return_logits=False)
    acts = trace[site].astype(jnp.float32)  # [L, B, T, d]
    w = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1e-9)  # [G, B, T]
    return jnp.einsum("gbt,lbtd->glbd", w, acts)


def _group_weights(groups: Mapping[str, Any], N: int, T: int) -> np.ndarray:
    """Weights `[G, N, T]` from group specs: an int position (negative from the end), per-example
    positions `[N]`, or a 0/1 (or soft) selection `[N, T]` whose selected activations are averaged."""
    out = []
    for name, spec in groups.items():
        a = np.asarray(spec)
        w = np.zeros((N, T), np.float32)
        if a.ndim == 0:
            w[:, int(a) % T] = 1
        elif a.shape == (N,):
            w[np.arange(N), a.astype(int) % T] = 1
        elif a.shape == (N, T):
            w = a.astype(np.float32)
            if (w.sum(-1) <= 0).any():
                raise InputError(f"group {name!r}: some examples select no position")
        else:
            raise InputError(
                f"group {name!r}: expected an int, per-example positions [N={N}] or a mask [N, T={T}], "
                f"got shape {a.shape}"
            )
        out.append(w)
    return np.stack(out)


def harvest(
    model: Model,
    tokens: Any,
    *,
    attention_mask: Any = None,
    site: str = "resid_post",
    groups: Mapping[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    batch_size: int = 16,
) -> Activations:
    """Record `site` for a dataset and keep, per position group, one position's activation or a mean.

    Args:
        model: the model.
        tokens: ids `[N, T]` (left padding with `attention_mask` is fine).
        attention_mask: `[N, T]` 0/1.
        site: the site read.
        groups: `name -> spec`: an int position (negative from the end), per-example positions
            `[N]`, or a 0/1 (or soft) selection `[N, T]` whose activations are averaged;
            default `{"last": -1}`.
        layers: keep only these model layers (their labels follow into `train_probes`).
        batch_size: rows per forward pass.

    Returns:
        The `Activations`, values `[G, L, N, d]`.
    """
    site = canonical_site(site)
    check_site(site)
    if SITE_LAYOUT[site][0] != 3:
        raise InputError(f"harvest needs a residual-width site [B, T, d], got {site!r}")
    tokens = np.asarray(tokens, np.int32)
    N, T = tokens.shape
    groups = dict(groups or {"last": -1})
    weights = _group_weights(groups, N, T)
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int32)
    pad = (-N) % batch_size if N > batch_size else 0
    bs = min(batch_size, N)
    if pad:  # pad the last batch by repeating rows so every batch has one shape (one compilation)
        tokens = np.concatenate([tokens, tokens[:pad]])
        weights = np.concatenate([weights, weights[:, :pad]], axis=1)
        mask = None if mask is None else np.concatenate([mask, mask[:pad]])
    parts = []
    for i in range(0, len(tokens), bs):
        m = None if mask is None else jnp.asarray(mask[i : i + bs])
        parts.append(
            np.asarray(
                _harvest_batch(
                    model, jnp.asarray(tokens[i : i + bs]), m, jnp.asarray(weights[:, i : i + bs]), site=site
                )
            )
        )
    acts = Activations(np.concatenate(parts, axis=2)[:, :, :N], list(groups), site)
    return acts if layers is None else acts.select(layers=[int(l) for l in layers])


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class ProbeResult:
    """Held-out scores of linear probes.

    Attributes:
        scores: held-out scores, shaped as the lead axes of the activations (e.g. `[G, L]`).
        train_scores: the same on the training split.
        metric: "accuracy" (classification) or "r2" (regression).
        chance: the held-out majority-class rate (classification) or 0 (R^2).
        groups: the position group names, when probed from `Activations`.
        layers: the true model layer indices.
        weights: `[..., d, out]` fitted probes in the raw activation space (standardisation folded
            in): `acts @ weights + bias` are the logits (or the standardised regression prediction).
        bias: `[..., out]`.
        test_fraction: the held-out fraction of the split.
        seed: the split's seed.
    """

    scores: np.ndarray
    train_scores: np.ndarray
    metric: str
    chance: float
    groups: list[str] | None = None
    layers: list[int] | None = None
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    test_fraction: float | None = None
    seed: int | None = None

    @property
    def directions(self) -> np.ndarray:
        """Unit directions in activation space: `[..., d]` for a binary probe (class 1 minus
        class 0) or a regression (toward larger targets), `[..., C, d]` for C > 2 classes (each
        class's weight minus the classes' mean). `directions[g, l]` steers toward the positive
        class at layer `layers[l]` (`Steer(v * scale, layers=(layer,))`)."""
        w = np.asarray(self.weights)
        if w.shape[-1] == 1:
            v = w[..., 0]
        elif w.shape[-1] == 2:
            v = w[..., 1] - w[..., 0]
        else:
            v = np.moveaxis(w - w.mean(-1, keepdims=True), -1, -2)
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    def at(self, layer: int, group: str | int = 0) -> ProbeResult:
        """The probe of one model layer (and group): scalar scores, labels kept."""
        s = np.atleast_2d(self.scores)
        layers = self.layers or list(range(s.shape[-1]))
        if layer not in layers:
            raise InputError(f"layer {layer} was not probed (layers: {layers})")
        j = layers.index(layer)
        groups = self.groups or [f"group {i}" for i in range(s.shape[0])]
        i = group if isinstance(group, int) else groups.index(group)
        two_d = np.ndim(self.scores) == 2

        def pick(a):
            a = np.asarray(a)
            return a[i, j] if two_d else a[j]

        return dataclasses.replace(
            self,
            scores=pick(self.scores),
            train_scores=pick(self.train_scores),
            groups=[groups[i]],
            layers=[layer],
            weights=None if self.weights is None else pick(self.weights),
            bias=None if self.bias is None else pick(self.bias),
        )

    def __repr__(self) -> str:
        s = np.atleast_1d(self.scores)
        best = int(np.unravel_index(np.argmax(s), s.shape)[-1])
        layers = self.layers or list(range(s.shape[-1]))
        return (
            f"ProbeResult({self.metric} {array_summary(self.scores)}, best {float(s.max()):.3f} at layer "
            f"{layers[best]}, chance {self.chance:.3f}, weights={array_summary(self.weights)})"
        )

    def _repr_html_(self) -> str:
        s = np.atleast_2d(self.scores)
        groups = self.groups or [f"group {i}" for i in range(s.shape[0])]
        layers = self.layers or list(range(s.shape[1]))
        return frame_html(
            s.T, layers, groups, title=f"held-out probe {self.metric} by layer (chance {self.chance:.3f})"
        )

    def table(self) -> str:
        """Held-out scores per layer (rows) and group (columns) as a text table."""
        s = np.atleast_2d(self.scores)
        groups = self.groups or [f"group {i}" for i in range(s.shape[0])]
        layers = self.layers or list(range(s.shape[1]))
        lines = [
            f"probe {self.metric} (held out; chance {self.chance:.3f})",
            "layer  " + "  ".join(f"{g:>10}" for g in groups),
        ]
        for j, l in enumerate(layers):
            lines.append(f"{l:>5}  " + "  ".join(f"{s[i, j]:>10.3f}" for i in range(len(groups))))
        return "\n".join(lines)

    def plot(self, path: str, title: str | None = None) -> str:
        """Held-out score against layer, one line per group, into the PNG `path`; returns `path`."""
        s = np.atleast_2d(self.scores)
        groups = self.groups or [f"group {i}" for i in range(s.shape[0])]
        layers = self.layers or list(range(s.shape[1]))
        fig = new_figure(6, 3.5)
        ax = fig.subplots()
        for i, g in enumerate(groups):
            ax.plot(layers, s[i], marker="o", label=g)
        ax.axhline(self.chance, color="grey", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"held-out {self.metric}")
        ax.legend(fontsize=7)
        ax.set_title(title or "linear probes per layer", fontsize=10)
        return save_figure(fig, path)


@functools.partial(jax.jit, static_argnames=("n_classes", "steps", "learning_rate", "weight_decay"))
def _fit(x_tr, y_tr, *, n_classes, steps, learning_rate, weight_decay):
    """Train P probes at once: x_tr [P, n, d] (standardised), y_tr [n] (int classes or float
    standardised targets). n_classes = 0 means regression."""
    P, _, d = x_tr.shape
    out = max(n_classes, 1)
    params = {"w": jnp.zeros((P, d, out)), "b": jnp.zeros((P, out))}
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_one(p, x):
        pred = x @ p["w"] + p["b"]  # [n, out]
        if n_classes:
            return optax.softmax_cross_entropy_with_integer_labels(pred, y_tr).mean()
        return jnp.mean((pred[:, 0] - y_tr) ** 2)

    def loss(params):  # independent probes: the sum's gradient is each probe's own gradient
        return jax.vmap(loss_one)(params, x_tr).sum()

    def step(state, _):
        params, opt_state = state
        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    return params


def _score(params, x, y, n_classes):
    pred = np.einsum("pnd,pdo->pno", x, np.asarray(params["w"])) + np.asarray(params["b"])[:, None, :]
    if n_classes:
        return (pred.argmax(-1) == y[None]).mean(-1)
    resid = ((pred[..., 0] - y[None]) ** 2).sum(-1)
    total = ((y - y.mean()) ** 2).sum()
    return 1.0 - resid / max(total, 1e-12)


def train_probes(
    acts: Any,
    targets: Any,
    *,
    task: str = "auto",
    test_fraction: float = 0.25,
    steps: int = 300,
    learning_rate: float = 0.05,
    weight_decay: float = 1e-3,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
) -> ProbeResult:
    """Train one linear probe per leading index of `acts`, all in one vmapped, jitted optax loop.

    AdamW, full batch. One random train / held-out split shared by all probes; features are
    standardised with the training split's statistics per probe (regression targets too).

    Args:
        acts: `[..., N, d]` (e.g. `[G, L, N, d]` or `[L, N, d]`), or `Activations` from `harvest`,
            whose groups and true layer indices label the result.
        targets: `[N]` integer class labels (softmax regression, accuracy) or floats (least
            squares, R^2).
        task: "classification", "regression" or "auto" (by the targets' dtype).
        test_fraction: the held-out fraction.
        steps: optimizer steps.
        learning_rate: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        seed: the split's seed.
        groups: labels of the first lead axis (when `acts` is an array).
        layers: true layer indices of the layer axis (when `acts` is an array).

    Returns:
        The `ProbeResult`.
    """
    if isinstance(acts, Activations):
        groups = acts.groups if groups is None else groups
        layers = acts.layers if layers is None else layers
        acts = acts.values
    if not 0 < test_fraction < 1:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x = np.asarray(acts, np.float32)
    y = np.asarray(targets)
    if x.ndim < 2 or x.shape[-2] != y.shape[0]:
        raise InputError(f"acts must be [..., N, d] with N = len(targets) = {y.shape[0]}, got {x.shape}")
    if task == "auto":
        task = "classification" if y.dtype.kind in "iub" else "regression"
    if task not in ("classification", "regression"):
        raise InputError(f"task must be 'classification', 'regression' or 'auto', got {task!r}")
    lead, (N, d) = x.shape[:-2], x.shape[-2:]
    x = x.reshape((-1, N, d))
    perm = np.random.default_rng(seed).permutation(N)
    n_test = max(1, int(round(N * test_fraction)))
    te, tr = perm[:n_test], perm[n_test:]
    if len(tr) < 2:
        raise InputError(f"too few examples ({N}) for a train / held-out split")
    mu, sd = x[:, tr].mean(1, keepdims=True), x[:, tr].std(1, keepdims=True) + 1e-6
    xs = (x - mu) / sd
    if task == "classification":
        classes, y_idx = np.unique(y, return_inverse=True)
        n_classes = max(len(classes), 2)
        y_fit = y_idx.astype(np.int32)
        chance = float(np.bincount(y_idx[te], minlength=n_classes).max() / len(te))
        metric = "accuracy"
    else:
        y_f = y.astype(np.float64)
        y_fit = ((y_f - y_f[tr].mean()) / (y_f[tr].std() + 1e-12)).astype(np.float32)
        n_classes, chance, metric = 0, 0.0, "r2"
    params = _fit(
        jnp.asarray(xs[:, tr]),
        jnp.asarray(y_fit[tr]),
        n_classes=n_classes,
        steps=int(steps),
        learning_rate=float(learning_rate),
        weight_decay=float(weight_decay),
    )
    test = _score(params, xs[:, te], y_fit[te], n_classes).reshape(lead)
    train = _score(params, xs[:, tr], y_fit[tr], n_classes).reshape(lead)
    if layers is None and len(lead) >= 1:
        layers = list(range(lead[-1]))
    w_std, b_std = np.asarray(params["w"]), np.asarray(params["b"])  # on (x - mu) / sd
    weights = w_std / sd[:, 0, :, None]
    bias = b_std - np.einsum("pd,pdo->po", mu[:, 0], weights)
    return ProbeResult(
        np.asarray(test),
        np.asarray(train),
        metric,
        chance,
        list(groups) if groups else None,
        list(layers) if layers is not None else None,
        weights.reshape(*lead, d, -1),
        bias.reshape(*lead, -1),
        float(test_fraction),
        int(seed),
    )


def probe_layers(
    model: Model,
    tokens: Any,
    targets: Any,
    *,
    attention_mask: Any = None,
    site: str = "resid_post",
    groups: Mapping[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    **train_kwargs,
) -> ProbeResult:
    """`harvest` then `train_probes`: held-out probe scores `[G, L]` for a labelled dataset
    (`layers`: only these model layers; `test_fraction` of the examples held out, split by `seed`).

    Args:
        model: the model.
        tokens: ids `[N, T]`.
        targets: `[N]` labels or values.
        attention_mask: `[N, T]` 0/1.
        site: the site read.
        groups: position groups, as for `harvest`.
        layers: only these model layers.
        test_fraction: the held-out fraction.
        seed: the split's seed.
        **train_kwargs: passed to `train_probes`.

    Returns:
        The `ProbeResult`.
    """
    acts = harvest(model, tokens, attention_mask=attention_mask, site=site, groups=groups, layers=layers)
    return train_probes(acts, targets, test_fraction=test_fraction, seed=seed, **train_kwargs)


# --------------------------------------------------------------------------- decodability vs causality


@dataclasses.dataclass(repr=False)
class DecodabilityCausality(ResultDisplay):
    """Probe score and patching effect per position group and layer (arXiv 2510.09794).

    Attributes:
        groups: the position group names.
        layers: the layers.
        probe: `[G, L]` probe scores.
        patching: `[G, L]` normalised patching effects (0 = corrupted, 1 = clean).
        probe_metric: "accuracy" or "r2".
        chance: the probes' chance level.
    """

    groups: list[str]
    layers: list[int]
    probe: np.ndarray
    patching: np.ndarray
    probe_metric: str
    chance: float

    def table(self) -> str:
        """Probe score and patching effect per layer and group as a text table."""
        head = "layer  " + "  ".join(f"{g[:12]:>12} probe {g[:12]:>12} patch" for g in self.groups)
        lines = [
            f"decodability ({self.probe_metric}, held out; chance {self.chance:.2f}) vs causality "
            "(activation patching, 0 = corrupted, 1 = clean)",
            head,
        ]
        for j, l in enumerate(self.layers):
            cells = "  ".join(
                f"{self.probe[i, j]:>18.3f} {self.patching[i, j]:>18.3f}" for i in range(len(self.groups))
            )
            lines.append(f"{l:>5}  {cells}")
        return "\n".join(lines)

    def plot(self, path: str, title: str | None = None) -> str:
        """Probe score and patching effect against layer, one panel per group, into the PNG `path`; returns `path`."""
        G = len(self.groups)
        fig = new_figure(4.5 * G, 3.5)
        axes = np.atleast_1d(fig.subplots(1, G, squeeze=False)).reshape(-1)
        for i, ax in enumerate(axes[:G]):
            ax.plot(self.layers, self.probe[i], marker="o", label=f"probe {self.probe_metric}")
            ax.plot(self.layers, self.patching[i], marker="s", label="patching effect")
            ax.axhline(self.chance, color="grey", ls="--", lw=0.8, label="probe chance")
            ax.set_xlabel("layer")
            ax.set_title(self.groups[i], fontsize=9)
            ax.legend(fontsize=7)
        fig.suptitle(title or "decodability vs causality", fontsize=10)
        return save_figure(fig, path)


def decodability_vs_causality(
    probes: ProbeResult,
    patching: PatchingResult,
    *,
    group_positions: Mapping[str, Sequence[str]] | None = None,
    reduce: str = "max",
) -> DecodabilityCausality:
    """Line up probe scores `[G, L]` with a `("layer", "position")` patching result. Each probe
    group takes the patching column of the same name (run `activation_patching` with
    `positions={group: [...]}` to patch a group jointly), or the columns listed in
    `group_positions[group]` reduced by `reduce` ("max" or "mean").

    Args:
        probes: probe scores `[G, L]` (`train_probes` on `harvest` groups).
        patching: the patching result.
        group_positions: `group -> position labels` of the patching result.
        reduce: "max" or "mean" over a group's columns.

    Returns:
        The `DecodabilityCausality`.
    """
    if patching.axes != ("layer", "position"):
        raise InputError(f"need a ('layer', 'position') patching result, got axes {patching.axes}")
    scores = np.atleast_2d(probes.scores)
    groups = probes.groups or [f"group {i}" for i in range(scores.shape[0])]
    if scores.shape[1] != len(patching.layers):
        raise InputError(f"probes cover {scores.shape[1]} layers, the patching result {len(patching.layers)}")
    cols = patching.positions or []
    effects = []
    for g in groups:
        names = list((group_positions or {}).get(g, [g]))
        missing = [n for n in names if n not in cols]
        if missing:
            raise InputError(f"probe group {g!r}: patching has no position column(s) {missing}; columns are {cols}")
        v = np.asarray(patching.values)[:, [cols.index(n) for n in names]]
        effects.append(v.max(axis=1) if reduce == "max" else v.mean(axis=1))
    return DecodabilityCausality(
        list(groups), list(patching.layers), scores, np.stack(effects), probes.metric, probes.chance
    )
