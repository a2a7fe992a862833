"""Studies of steering vectors (arXiv 2509.06608): first-token effect, persistence, combining
layers, transfer between models. Token-wise adaptive scaling (`AdaptiveSteer`) is an intervention
(`jaxsteer.models.interventions`), re-exported here."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.decoder import forward
from ..models.display import ResultDisplay
from ..models.generate import generate
from ..models.interventions import AdaptiveSteer, Steer, as_tuple  # noqa: F401  (AdaptiveSteer: re-exported)
from ..models.params import Model
from ._common import new_figure, save_figure, token_strs

# --------------------------------------------------------------------------- first-token effect


@dataclasses.dataclass(repr=False)
class FirstTokenEffect(ResultDisplay):
    """Per generated position: how the steered next-token distribution differs from the unsteered one.

    Arrays are `[B, N]` (NaN after a row stops), comparing `softmax(steered)` with `softmax(unsteered)`.

    Attributes:
        max_increase: the largest increase of any token's probability.
        max_decrease: the largest decrease.
        entropy_steered: the steered distribution's entropy (nats).
        entropy_unsteered: the unsteered one's.
        argmax_changed: whether the argmax changed.
        top_increase_token: the most increased token (decoded).
        texts: the generated texts.
    """

    max_increase: np.ndarray
    max_decrease: np.ndarray
    entropy_steered: np.ndarray
    entropy_unsteered: np.ndarray
    argmax_changed: np.ndarray
    top_increase_token: np.ndarray
    texts: list[str] | None

    def summary(self) -> dict[str, dict[str, float]]:
        """Means over the batch at the first generated position vs all later positions."""
        out = {}
        for name, part in (("first", slice(0, 1)), ("rest", slice(1, None))):
            row = {}
            for f in ("max_increase", "max_decrease", "entropy_steered", "entropy_unsteered", "argmax_changed"):
                a = np.asarray(getattr(self, f)[:, part], np.float64)
                row[f] = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
            out[name] = row
        return out

    def table(self) -> str:
        """`summary()` as a text table."""
        s = self.summary()
        keys = list(s["first"])
        lines = ["position  " + "  ".join(f"{k:>18}" for k in keys)]
        for name in ("first", "rest"):
            lines.append(f"{name:>8}  " + "  ".join(f"{s[name][k]:>18.4f}" for k in keys))
        return "\n".join(lines)


@jax.jit
def _prob_change(logits_s, logits_u):
    ps, pu = jax.nn.softmax(logits_s, -1), jax.nn.softmax(logits_u, -1)
    dp = ps - pu
    ent = lambda p, lg: -jnp.sum(p * jax.nn.log_softmax(lg, -1), -1)
    return (
        dp.max(-1),
        dp.min(-1),
        ent(ps, logits_s),
        ent(pu, logits_u),
        logits_s.argmax(-1) != logits_u.argmax(-1),
        dp.argmax(-1),
    )


def first_token_effect(
    model: Model,
    prompts: Any,
    interventions: Any,
    *,
    tokenizer: Any = None,
    max_new_tokens: int = 16,
    chat: bool = True,
    follow: str = "steered",
) -> FirstTokenEffect:
    """Where does a steering vector change the next-token distribution? Generate greedily (the
    steered model by default, `follow="unsteered"` for the base model), then score that one
    sequence with and without `interventions` and compare the two distributions at every
    generated position (the prediction of generated token n).

    Args:
        model: the model.
        prompts: strings (with `tokenizer`) or token-id lists.
        interventions: the steering.
        tokenizer: encodes the prompts and decodes the tokens.
        max_new_tokens: tokens generated.
        chat: wrap string prompts in the chat template.
        follow: "steered" or "unsteered": whose greedy sequence is scored.

    Returns:
        The `FirstTokenEffect`.
    """
    ivs = as_tuple(interventions)
    if follow not in ("steered", "unsteered"):
        raise InputError(f"follow must be 'steered' or 'unsteered', got {follow!r}")
    gen = generate(
        model,
        prompts,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        greedy=True,
        chat=chat,
        interventions=ivs if follow == "steered" else (),
    )
    seqs, mask = gen.sequences()
    P, N = gen.prompt_tokens.shape[1], gen.tokens.shape[1]
    ls, _ = forward(model, seqs, attention_mask=mask, interventions=ivs)
    lu, _ = forward(model, seqs, attention_mask=mask)
    sl = slice(P - 1, P - 1 + N)  # logits at P-1+n predict generated token n
    stats = [np.asarray(a) for a in _prob_change(ls[:, sl], lu[:, sl])]
    valid = np.arange(N)[None, :] < gen.lengths[:, None]
    masked = [np.where(valid, a.astype(np.float64), np.nan) for a in stats[:5]]
    top = token_strs(tokenizer, stats[5])
    top = np.where(valid, top, "")
    increase, decrease, entropy_steered, entropy_unsteered, argmax_changed = masked
    return FirstTokenEffect(increase, decrease, entropy_steered, entropy_unsteered, argmax_changed, top, gen.texts)


# --------------------------------------------------------------------------- persistence


@dataclasses.dataclass(repr=False)
class Persistence(ResultDisplay):
    """How a vector added at one layer persists in the residual stream of later layers.

    dh_j is the change of `resid_post` at layer j caused by adding `s` at layer `layer` only.

    Attributes:
        cos: `[L, B, T]` cos(dh_j, s) (NaN for j before the steered layer).
        norm_ratio: `[L, B, T]` |dh_j| / |s|.
        layer: the steered layer.
        attention_mask: `[B, T]` 0/1 of the tokens, when given.
    """

    cos: np.ndarray
    norm_ratio: np.ndarray
    layer: int
    attention_mask: np.ndarray | None = None

    def mean_over_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """`(cos [L], norm_ratio [L])` averaged over the batch and the real tokens."""
        w = np.ones(self.cos.shape[1:]) if self.attention_mask is None else np.asarray(self.attention_mask, float)
        m = lambda a: np.nansum(a * w[None], axis=(1, 2)) / w.sum()
        return m(self.cos), m(self.norm_ratio)

    def plot(self, path: str, title: str | None = None) -> str:
        """`mean_over_tokens` against layer into the PNG `path`; returns `path`."""
        cos, ratio = self.mean_over_tokens()
        layers = np.arange(len(cos))
        fig = new_figure(6, 3.5)
        ax = fig.subplots()
        ax.plot(layers, cos, marker="o", label="cos(dh_j, s)")
        ax.plot(layers, ratio, marker="s", label="|dh_j| / |s|")
        ax.axvline(self.layer, color="grey", ls=":", lw=0.8)
        ax.set_xlabel("layer j")
        ax.legend(fontsize=8)
        ax.set_title(title or f"persistence of a vector added at layer {self.layer} (mean over tokens)", fontsize=9)
        return save_figure(fig, path)


def persistence(
    model: Model,
    tokens: Any,
    vector: Any,
    layer: int,
    *,
    scale: float = 1.0,
    site: str = "resid_post",
    attention_mask: Any = None,
) -> Persistence:
    """Insert `scale * vector` at one layer (`Steer` at `site`) and compare `resid_post` with and
    without it at that layer and every later one: cos(dh_j, s) per token.

    Args:
        model: the model.
        tokens: ids `[B, T]`.
        vector: `[d_model]`.
        layer: the steered layer.
        scale: the steering scale.
        site: where the vector is added.
        attention_mask: `[B, T]` 0/1.

    Returns:
        The `Persistence`.
    """
    c = model.config
    vector = jnp.asarray(vector)
    if vector.shape != (c.d_model,):
        raise InputError(f"persistence: vector must be [d_model={c.d_model}], got {vector.shape}")
    if not 0 <= layer < c.n_layers:
        raise InputError(f"persistence: layer {layer} out of range for {c.n_layers} layers")
    steer = Steer(vector, scale=scale, site=site, layers=(int(layer),))
    _, base = forward(model, tokens, attention_mask=attention_mask, record=("resid_post",), return_logits=False)
    _, steered = forward(
        model, tokens, attention_mask=attention_mask, interventions=[steer], record=("resid_post",), return_logits=False
    )
    dh = np.asarray(steered.resid_post, np.float64) - np.asarray(base.resid_post, np.float64)  # [L, B, T, d]
    s = np.asarray(vector, np.float64) * scale
    dn = np.linalg.norm(dh, axis=-1)
    cos = (dh @ s) / np.maximum(dn * np.linalg.norm(s), 1e-30)
    ratio = dn / max(np.linalg.norm(s), 1e-30)
    cos[:layer] = np.nan
    ratio[:layer] = np.nan
    return Persistence(cos, ratio, int(layer), None if attention_mask is None else np.asarray(attention_mask))


# --------------------------------------------------------------------------- combining layers


@dataclasses.dataclass(repr=False)
class CombinationGains(ResultDisplay):
    """Normalised gains of using the vectors of two layers together.

    `gain[i, j] = (acc_ij - max(acc_i, acc_j)) / (acc_all - max(acc_i, acc_j))` (symmetric, NaN on
    the diagonal or where the denominator is 0).

    Attributes:
        layers: the layers (rows and columns of `gain`).
        gain: `[n, n]`.
        single: the accuracy of each layer alone.
        pairs: the accuracy of each pair.
        all_layers: the accuracy of the full set.
    """

    layers: list[int]
    gain: np.ndarray
    single: dict[int, float]
    pairs: dict[tuple[int, int], float]
    all_layers: float

    def plot(self, path: str, title: str | None = None) -> str:
        """The `gain` matrix as a heatmap into the PNG `path`; returns `path`."""
        n = len(self.layers)
        fig = new_figure(1.5 + 0.45 * n, 1.2 + 0.4 * n)
        ax = fig.subplots()
        im = ax.imshow(self.gain, cmap="RdBu", vmin=-1, vmax=1)
        ax.set_xticks(range(n), [str(l) for l in self.layers])
        ax.set_yticks(range(n), [str(l) for l in self.layers])
        fig.colorbar(im, ax=ax, label="normalised gain")
        ax.set_title(title or "combining single-layer vectors", fontsize=9)
        return save_figure(fig, path)


def combination_gains(
    accuracy: Callable[[tuple[int, ...]], float],
    layers: Sequence[int],
    *,
    all_layers: Sequence[int] | None = None,
) -> CombinationGains:
    """Evaluate `accuracy(layer_subset)` (e.g. the task accuracy with the vectors trained in
    isolation at those layers used together; see `combined_steer`) on each single layer, each
    pair and the full set (`all_layers`, default `layers`), and return the normalised gains.

    Args:
        accuracy: `accuracy(layer_subset) -> float`.
        layers: the single layers and pairs evaluated.
        all_layers: the full set (default `layers`).

    Returns:
        The `CombinationGains`.
    """
    layers = [int(l) for l in layers]
    all_set = tuple(sorted(all_layers if all_layers is not None else layers))
    cache: dict[tuple[int, ...], float] = {}

    def acc(subset):
        key = tuple(sorted(subset))
        if key not in cache:
            cache[key] = float(accuracy(key))
        return cache[key]

    single = {l: acc((l,)) for l in layers}
    a_all = acc(all_set)
    n = len(layers)
    gain = np.full((n, n), np.nan)
    pairs = {}
    for (i, li), (j, lj) in itertools.combinations(enumerate(layers), 2):
        a_ij = acc((li, lj))
        pairs[(li, lj)] = a_ij
        best = max(single[li], single[lj])
        denom = a_all - best
        gain[i, j] = gain[j, i] = (a_ij - best) / denom if denom != 0 else np.nan
    return CombinationGains(layers, gain, single, pairs, a_all)


def combined_steer(vectors: Any, layers: Sequence[int], *, scale: float = 1.0, site: str = "resid_post") -> Steer:
    """A `Steer` that uses the rows of `vectors [L, d]` at `layers` only (e.g. vectors trained in
    isolation per layer, stacked).

    Args:
        vectors: `[L, d]`.
        layers: the layers used.
        scale: the steering scale.
        site: where the vectors are added.

    Returns:
        The `Steer`.
    """
    v = jnp.asarray(vectors)
    if v.ndim != 2:
        raise InputError(f"combined_steer: vectors must be [L, d], got {v.shape}")
    return Steer(v, scale=scale, site=site, layers=tuple(sorted(int(l) for l in layers)))


# --------------------------------------------------------------------------- transfer


def transfer_steer(
    vectors: Any,
    source: Model | ModelConfig,
    target: Model | ModelConfig,
    *,
    scale: float = 1.0,
    site: str = "resid_post",
    layers: Sequence[int] | None = None,
) -> Steer:
    """Reuse steering vectors trained on `source` in `target` (e.g. base -> instruct of one
    family). The models must have equal width and depth; a clear `ValueError` otherwise. Returns
    the `Steer` to pass to `forward` / `generate` of the target.

    Args:
        vectors: `[d]` or `[L, d]`, trained on `source`.
        source: the source model (or its config).
        target: the target model (or its config).
        scale: the steering scale.
        site: where the vectors are added.
        layers: the layers used (default all).

    Returns:
        The `Steer` for the target.
    """
    sc = source.config if isinstance(source, Model) else source
    tc = target.config if isinstance(target, Model) else target
    problems = []
    if sc.d_model != tc.d_model:
        problems.append(f"d_model {sc.d_model} vs {tc.d_model}")
    if sc.n_layers != tc.n_layers:
        problems.append(f"n_layers {sc.n_layers} vs {tc.n_layers}")
    if problems:
        raise InputError(
            "cannot transfer steering vectors between models of different shape: "
            + ", ".join(problems)
            + " (source vs target); transfer needs equal width and depth"
        )
    v = jnp.asarray(vectors)
    if v.shape not in ((sc.d_model,), (sc.n_layers, sc.d_model)):
        raise InputError(f"vectors have shape {v.shape}; expected [{sc.d_model}] or [{sc.n_layers}, {sc.d_model}]")
    steer = Steer(v, scale=scale, site=site, layers=None if layers is None else tuple(int(l) for l in layers))
    steer.check(tc)
    return steer
