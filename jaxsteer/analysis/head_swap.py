"""Where does a penultimate-layer steering vector act? Generation-time head swapping
(arXiv 2509.06608's path-patching study of `s_{L-2}`).

The vector `s` sits at the input of the final layer F (`resid_post` of layer F - 1). Three runs are
decoded side by side on the same tokens (`generate(..., runs=...)`, rows run-major):

- run 0, the *patched* run: `s` added after F's attention (`resid_mid` of F), so F's attention
  reads the unsteered `h` while its MLP and the unembedding see `h + s` ("skip attention");
- run 1, the *steered* run: `s` at F's input, so F's attention reads `h + s`;
- run 2 (routes "mlp" and "resid" only), an unpatched copy of run 0.

The selected heads of F's attention (`z`, or `q` / `k` / `v`) are copied from run 1 into run 0 at
every generated token, and the patched attention output is routed to both paths, to the MLP
input only (the residual keeps run 2's attention output) or to the residual stream only (the MLP
reads run 2's). Swapping no head is "skip attention"; swapping every head, routed to both, is the
steered model. Task accuracy of run 0's greedy generations scores each condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ..errors import InputError
from ..models.display import ResultDisplay
from ..models.generate import generate
from ..models.interventions import CrossRunPatch, OnRuns, Steer, site_n_heads
from ..models.params import Model
from ._common import new_figure, save_figure

HEAD_SWAP_ROUTES = ("both", "mlp", "resid")
HEAD_SWAP_SITES = ("z", "q", "k", "v")


def _final_layer(model: Model, layer: int | None) -> int:
    L = model.config.n_layers
    layer = L - 2 if layer is None else int(layer)
    if not 0 <= layer < L - 1:
        raise InputError(
            f"head swap: the vector's layer must be in [0, {L - 2}] (a later layer must read it), got {layer}"
        )
    return layer + 1


def _vector_at(model: Model, vector: Any, layer: int) -> jnp.ndarray:
    c = model.config
    v = jnp.asarray(vector)
    if v.shape == (c.n_layers, c.d_model):
        v = v[layer]
    if v.shape != (c.d_model,):
        raise InputError(f"head swap: vector must be [{c.d_model}] or [{c.n_layers}, {c.d_model}], got {v.shape}")
    return v


def _check_site(site: str) -> None:
    if site not in HEAD_SWAP_SITES:
        raise InputError(f"head swap: site must be one of {HEAD_SWAP_SITES}, got {site!r}")


def _placements(s: jnp.ndarray, final: int, scale: float) -> dict[str, Steer]:
    """The vector at the final layer's input ("steered"), after its attention ("skip attention")
    and at its output ("skip layer")."""
    return {
        "steered": Steer(s, scale=scale, site="resid_post", layers=(final - 1,)),
        "skip attention": Steer(s, scale=scale, site="resid_mid", layers=(final,)),
        "skip layer": Steer(s, scale=scale, site="resid_post", layers=(final,)),
    }


def head_swap_interventions(
    model: Model,
    vector: Any,
    head_mask: Any,
    *,
    layer: int | None = None,
    route: str = "both",
    site: str = "z",
    scale: float = 1.0,
) -> tuple[tuple, int]:
    """`(interventions, runs)` for one head-swap condition (see the module docstring): `vector` at
    `layer` (default the penultimate, L - 2), `head_mask` `[H]` weights of the heads of the next
    layer copied from the steered run into the patched one, `route` in `HEAD_SWAP_ROUTES`.

    Args:
        model: the model.
        vector: the steering vector (`[d]` or `[L, d]`).
        head_mask: `[H]` weights of the heads swapped.
        layer: the vector's layer (default L - 2).
        route: one of `HEAD_SWAP_ROUTES`.
        site: the per-head site swapped.
        scale: the steering scale.

    Returns:
        `(interventions, runs)`, for `generate(..., interventions=..., runs=...)`.
    """
    if route not in HEAD_SWAP_ROUTES:
        raise InputError(f"head swap: route must be one of {HEAD_SWAP_ROUTES}, got {route!r}")
    _check_site(site)
    final = _final_layer(model, layer)
    place = _placements(_vector_at(model, vector, final - 1), final, scale)
    runs = 2 if route == "both" else 3
    ivs = [
        OnRuns(place["skip attention"], runs=runs, selected=(0,) if runs == 2 else (0, 2)),
        OnRuns(place["steered"], runs=runs, selected=(1,)),
        CrossRunPatch(
            runs=runs, source=1, target=0, head_mask=jnp.asarray(head_mask, jnp.float32), site=site, layers=(final,)
        ),
    ]
    if route != "both":  # the path that keeps the unpatched attention output takes it from run 2
        keep = "attn_to_resid" if route == "mlp" else "attn_to_mlp"
        ivs.append(CrossRunPatch(runs=runs, source=2, target=0, site=keep, layers=(final,)))
    return tuple(ivs), runs


@dataclasses.dataclass(repr=False)
class HeadSwapResult(ResultDisplay):
    """Per-condition correctness of greedy generations in the head-swap study.

    Conditions: "unsteered", "steered", "skip attention" (vector after the final layer's
    attention), "skip layer" (vector at the final layer's output), and per route "all heads /
    {route}" and "head {h} / {route}".

    Attributes:
        layer: the final layer (the vector sits at `layer - 1`).
        site: the per-head site swapped.
        routes: the routes of the all-heads swaps.
        heads: the heads swapped one at a time.
        conditions: the condition names (C).
        correct: `[C, N]` bool.
        head_routes: the routes with single-head swaps (default: all of `routes`).
    """

    layer: int
    site: str
    routes: tuple[str, ...]
    heads: tuple[int, ...]
    conditions: list[str]
    correct: np.ndarray
    head_routes: tuple[str, ...] = ()  # routes with single-head swaps (default: all of `routes`)

    def __post_init__(self):
        self.head_routes = tuple(self.head_routes) or tuple(self.routes)

    def accuracy(self) -> dict[str, float]:
        """Mean correctness per condition."""
        return {c: float(row.mean()) for c, row in zip(self.conditions, self.correct, strict=True)}

    def per_head(self, route: str) -> np.ndarray:
        """Accuracy with head h alone swapped, minus skip-attention accuracy, per head."""
        if route not in self.head_routes:
            raise InputError(f"no single-head swaps were run for route {route!r} (ran: {self.head_routes})")
        acc = self.accuracy()
        return np.array([acc[f"head {h} / {route}"] - acc["skip attention"] for h in self.heads])

    def table(self) -> str:
        """The accuracy per condition as a text table."""
        acc, n = self.accuracy(), self.correct.shape[1]
        width = max(len(c) for c in self.conditions)
        return "\n".join(
            [f"{'condition':<{width}}  accuracy (n={n})"] + [f"{c:<{width}}  {acc[c]:.3f}" for c in self.conditions]
        )

    def draw(self, ax, title: str | None = None) -> None:
        """Bars of accuracy per swapped head and route, the reference conditions as lines."""
        acc = self.accuracy()
        routes = tuple(dict.fromkeys(self.head_routes + self.routes))
        width = 0.8 / len(routes)
        x = np.arange(len(self.heads) + 1)
        for i, route in enumerate(routes):
            vals = [acc.get(f"{h} / {route}", np.nan) for h in [f"head {h}" for h in self.heads] + ["all heads"]]
            ax.bar(x + (i - (len(routes) - 1) / 2) * width, vals, width, label=f"routed to {route}")
        for name, style in (("unsteered", ":"), ("steered", "-"), ("skip attention", "--"), ("skip layer", "-.")):
            ax.axhline(acc[name], color="black", ls=style, lw=0.9, label=name)
        ax.set_xticks(x, [str(h) for h in self.heads] + ["all"])
        ax.set_xlabel(f"head of layer {self.layer + 1} swapped in ({self.site})")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(
            title or f"penultimate-layer vector (layer {self.layer}): heads swapped from the steered run", fontsize=9
        )

    def plot(self, path: str, title: str | None = None) -> str:
        """`draw` into the PNG `path`; returns `path`."""
        fig = new_figure(1.5 + 0.35 * len(self.heads) * len(set(self.routes + self.head_routes)), 3.6)
        self.draw(fig.subplots(), title)
        return save_figure(fig, path)


def _correct(model, prompts, answers, score, ivs, runs, batch_size, gen_kw) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), batch_size):
        gen = generate(model, prompts[i : i + batch_size], interventions=ivs, runs=runs, greedy=True, **gen_kw)
        completions = (
            gen.texts
            if gen.texts is not None
            else [row[:n].tolist() for row, n in zip(gen.tokens, gen.lengths, strict=True)]
        )
        out += [bool(score(t, a)) for t, a in zip(completions, answers[i : i + batch_size], strict=True)]
    return np.array(out)


def head_swap_study(
    model: Model,
    vector: Any,
    prompts: Sequence,
    answers: Sequence,
    score: Callable[[Any, Any], Any],
    *,
    tokenizer: Any = None,
    layer: int | None = None,
    heads: Sequence[int] | None = None,
    routes: Sequence[str] = HEAD_SWAP_ROUTES,
    head_routes: Sequence[str] | None = None,
    site: str = "z",
    scale: float = 1.0,
    max_new_tokens: int = 16,
    batch_size: int = 64,
    chat: bool = True,
    progress: bool = True,
) -> HeadSwapResult:
    """Run every condition of the penultimate-layer study on `prompts` (strings or token-id
    lists) and score run 0's greedy completions with `score(completion, answer)` (truthy =
    correct; the completion is its text, or its token ids when `tokenizer` is None).

    Every head is swapped alone (`heads`, default all of `site`) for each route in `head_routes`
    (default `routes`), and all heads together for each route in `routes`. One compiled program
    per route serves all heads (the head choice is data).

    Args:
        model: the model.
        vector: the steering vector.
        prompts: strings or token-id lists.
        answers: one answer per prompt, passed to `score`.
        score: `score(completion, answer)`, truthy = correct.
        tokenizer: encodes and decodes (None: token ids).
        layer: the vector's layer (default L - 2).
        heads: the heads swapped alone (default all of `site`).
        routes: the routes of the all-heads swaps.
        head_routes: the routes of the single-head swaps (default `routes`).
        site: the per-head site swapped.
        scale: the steering scale.
        max_new_tokens: tokens generated per completion.
        batch_size: prompts per `generate` call.
        chat: wrap string prompts in the chat template.
        progress: show a progress bar.

    Returns:
        The `HeadSwapResult`.
    """
    if len(prompts) != len(answers) or not len(prompts):
        raise InputError(f"head swap: {len(prompts)} prompts and {len(answers)} answers; need as many, at least one")
    _check_site(site)
    final = _final_layer(model, layer)
    n_heads = site_n_heads(site, model.config)
    assert n_heads is not None  # every HEAD_SWAP_SITES entry has a head axis
    heads = tuple(range(n_heads)) if heads is None else tuple(int(h) for h in heads)
    if any(not 0 <= h < n_heads for h in heads):
        raise InputError(f"head swap: heads {heads} out of range for site {site!r} with {n_heads} heads")
    s = _vector_at(model, vector, final - 1)
    head_routes = tuple(routes if head_routes is None else head_routes)
    jobs = [("unsteered", (), 1)] + [(name, (steer,), 1) for name, steer in _placements(s, final, scale).items()]
    for route in dict.fromkeys((*head_routes, *routes)):
        swaps = [(f"head {h}", np.eye(n_heads)[h]) for h in heads] if route in head_routes else []
        for label, mask in swaps + ([("all heads", np.ones(n_heads))] if route in routes else []):
            ivs, runs = head_swap_interventions(model, s, mask, layer=final - 1, route=route, site=site, scale=scale)
            jobs.append((f"{label} / {route}", ivs, runs))
    gen_kw = dict(tokenizer=tokenizer, max_new_tokens=max_new_tokens, chat=chat)
    rows = [
        _correct(model, list(prompts), list(answers), score, ivs, runs, batch_size, gen_kw)
        for _, ivs, runs in tqdm(jobs, desc="head swap", disable=not progress)
    ]
    return HeadSwapResult(final - 1, site, tuple(routes), heads, [j[0] for j in jobs], np.stack(rows), head_routes)
