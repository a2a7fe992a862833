"""Application controls for steering: which tokens and which rows an intervention acts on.

- `OnTokens(iv, select=, first=, triggers=)`: restrict `iv` to prompt or generated tokens, to
  the first k generated tokens, and/or to the positions whose input token is a trigger id.
- `RowSteer(vectors, index=, scale=)`: a different vector and scale per row of the batch
  (`[B, d]`, `[B, L, d]`, or a bank `[K, (L,) d]` indexed by `index [B]`), so requests with
  different vectors share one compiled call.
- `Conditional(iv, condition, layer, threshold)`: CAST-style conditional steering. Each row's
  prompt is read once by the unsteered model at `layer`; the cosine between its mean activation
  and `condition` is the row's `score`, and `iv` acts on the rows where the score passes
  `threshold` (`decision`, returned for inspection: `prepare_controls`, `Generation.decisions`).
- `compose(vectors, weights)`: one vector from several, weighted (the weights may be traced).

Controls need to know, at each call of the layers, which tokens are fed and which of them are
generated: `forward` (with `prompt_length=`) and `generate` build a `TokenContext` and `bind`
the controls to it inside the compiled call; `prepare` reads the prompt for `Conditional`.
Wrap in this order when combining: `Conditional(OnTokens(Steer(...)))` (controls outside, the
intervention that acts innermost). Everything is a pytree (jit / vmap / grad work); the
selections are exact (`where`), so unselected positions keep their activation bitwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..errors import InputError
from .config import ModelConfig
from .interventions import SITE_LAYOUT, check_site, resolve_site, site_feature_shape, to_layout
from .validation import check_finite, check_token_ids, is_concrete

SELECT = ("all", "prompt", "generated")


@struct.dataclass
class TokenContext:
    """What one call of the layers reads: `tokens [B, T]` (input ids) and `generated [B, T]`
    (int32: the index of the generated token at each position, 0 for the first token the sampler
    produced; -1 at prompt positions).

    Attributes:
        tokens: `[B, T]` input ids.
        generated: `[B, T]` int32 index of the generated token at each position (-1 at prompt positions).
    """

    tokens: jax.Array
    generated: jax.Array


def prompt_context(tokens: jax.Array, prompt_length: Any = None) -> TokenContext:
    """The context of a forward pass over `tokens [B, T]` whose columns `>= prompt_length` (an int
    or `[B]`) are generated tokens (None: every token is prompt).

    Args:
        tokens: ids `[B, T]`.
        prompt_length: an int or `[B]` (None: every token is prompt).

    Returns:
        The `TokenContext`.
    """
    B, T = tokens.shape
    if prompt_length is None:
        return TokenContext(tokens, jnp.full((B, T), -1, jnp.int32))
    start = jnp.broadcast_to(jnp.asarray(prompt_length, jnp.int32).reshape(-1, 1), (B, 1))
    col = jnp.arange(T, dtype=jnp.int32)[None]
    return TokenContext(tokens, jnp.where(col >= start, col - start, -1).astype(jnp.int32))


def _row_where(keep: jax.Array, new: jax.Array, x: jax.Array, site: str) -> jax.Array:
    """`new` where the row/position weight `keep` (`[B]` or `[B, T]`, bool) is set, else `x`."""
    if keep.ndim == 2:
        keep = to_layout(keep, site, "positions")
    else:
        keep = keep.reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(keep, new, x)


def _has_positions(iv: Any) -> bool:
    return hasattr(iv, "positions") and hasattr(iv, "replace")


# --------------------------------------------------------------------------- token selection


@struct.dataclass
class OnTokens:
    """Apply `intervention` only at selected token positions.

    The conditions combine with AND. In `forward`, "generated" needs `prompt_length=` (columns
    from there on count as generated).

    Attributes:
        intervention: the intervention to apply.
        triggers: token ids; only positions whose input token is one of them (None: any token).
        weights: `[B, T]` bool, set by `bind` (leave None).
        select: "all", "prompt" (prompt positions only) or "generated" (positions of tokens the
            sampler produced: steering there shapes the tokens after them).
        first: only the first k generated tokens (implies "generated").
    """

    intervention: Any
    triggers: Any = None
    weights: Any = None  # [B, T] bool, set by `bind`
    select: str = struct.field(pytree_node=False, default="all")
    first: int | None = struct.field(pytree_node=False, default=None)

    @property
    def site(self) -> str:
        return self.intervention.site

    @property
    def reads_generated(self) -> bool:
        return self.select == "generated" or self.first is not None

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        if self.select not in SELECT:
            raise InputError(f"OnTokens: select must be one of {SELECT}, got {self.select!r}")
        if self.first is not None and (int(self.first) < 1 or self.select == "prompt"):
            raise InputError(f"OnTokens: first={self.first} must be >= 1 and cannot combine with select='prompt'")
        if self.triggers is not None:
            if jnp.ndim(self.triggers) != 1 or jnp.size(self.triggers) == 0:
                raise InputError(
                    f"OnTokens: triggers must be a non-empty list of token ids, got shape {jnp.shape(self.triggers)}"
                )
            check_token_ids(self.triggers, config.vocab_size, "OnTokens triggers")
        self.intervention.check(config, n_tokens)

    def generation_safe(self) -> bool:
        return self.intervention.generation_safe()

    def prepare(self, read: Callable[[str, int], jax.Array], prompt_mask: jax.Array) -> OnTokens:
        return dataclasses.replace(self, intervention=prepare_controls_with(self.intervention, read, prompt_mask))

    def bind(self, ctx: TokenContext) -> OnTokens:
        keep = jnp.ones(ctx.tokens.shape, bool)
        if self.select == "prompt":
            keep = ctx.generated < 0
        elif self.reads_generated:
            keep = ctx.generated >= 0
        if self.first is not None:
            keep = keep & (ctx.generated < int(self.first))
        if self.triggers is not None:
            keep = keep & jnp.isin(ctx.tokens, jnp.asarray(self.triggers, jnp.int32))
        return dataclasses.replace(self, intervention=bind_controls((self.intervention,), ctx)[0], weights=keep)

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        if self.weights is None:
            raise InputError(
                "OnTokens needs the token context that forward / generate bind; "
                "call it through them (or bind_controls) rather than run_layers"
            )
        return _row_where(self.weights, self.intervention.apply(x, layer), x, self.site)


# --------------------------------------------------------------------------- per-row vectors


@struct.dataclass
class RowSteer:
    """Add a different vector (and scale) to each row of the batch at `site`, `layers`.

    In `generate` B is the number of prompts (times `runs`); with `samples_per_prompt` the rows
    of a prompt share its vector.

    Attributes:
        vectors: `[B, *feat]` or `[B, L, *feat]` (one per row, optionally per layer; feat as for
            `Steer`), or, with `index`, a bank `[K, *feat]` / `[K, L, *feat]`.
        index: `[B]` ints: row b uses bank entry `index[b]` (None: one vector per row).
        scale: a scalar or `[B]`.
        site: where it acts (default `resid_post`).
        layers: the layers it acts at (default all).
    """

    vectors: jax.Array
    index: Any = None
    scale: Any = 1.0
    site: str = struct.field(pytree_node=False, default="resid_post")
    layers: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        site, layers = resolve_site(self.site, self.layers, "RowSteer")
        object.__setattr__(self, "site", site)
        object.__setattr__(self, "layers", layers)

    def _per_layer(self, config: ModelConfig) -> bool:
        return jnp.ndim(self.vectors) == len(site_feature_shape(self.site, config) or ()) + 2

    @property
    def rows(self) -> int:
        return int(jnp.shape(self.index if self.index is not None else self.vectors)[0])

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        check_site(self.site)
        feat = site_feature_shape(self.site, config)
        if feat is None:
            raise InputError("RowSteer: cannot add a vector to the attention pattern")
        v = tuple(jnp.shape(self.vectors))
        lead = "K" if self.index is not None else "B"
        if not (v[1:] == feat or (len(v) == len(feat) + 2 and v[1] == config.n_layers and v[2:] == feat)):
            raise InputError(
                f"RowSteer: vectors have shape {v}; site {self.site!r} of this model expects "
                f"[{lead}, *{feat}] or [{lead}, L={config.n_layers}, *{feat}]"
            )
        if self.index is not None:
            idx = self.index
            if jnp.ndim(idx) != 1 or not jnp.issubdtype(jnp.asarray(idx).dtype, jnp.integer):
                raise InputError(f"RowSteer: index must be [B] integers, got shape {jnp.shape(idx)}")
            if is_concrete(idx):
                a = np.asarray(idx)
                bad = (a < 0) | (a >= v[0])
                if bad.any():
                    i = int(np.argmax(bad))
                    raise InputError(
                        f"RowSteer: index {int(a[i])} (row {i}) is out of range for a bank of {v[0]} vectors"
                    )
        if jnp.ndim(self.scale) not in (0, 1) or (jnp.ndim(self.scale) == 1 and jnp.shape(self.scale)[0] != self.rows):
            raise InputError(f"RowSteer: scale has shape {jnp.shape(self.scale)}; expected a scalar or [B={self.rows}]")
        for l in self.layers or ():
            if not 0 <= int(l) < config.n_layers:
                raise InputError(f"RowSteer: layer {l} out of range for a model with {config.n_layers} layers")
        check_finite(self.vectors, "RowSteer: vectors")
        check_finite(self.scale, "RowSteer: scale")

    def generation_safe(self) -> bool:
        return True

    def repeat_rows(self, n: int) -> RowSteer:
        """Each row repeated `n` times (the rows of `samples_per_prompt` samples)."""
        rep = lambda a: None if a is None else jnp.repeat(jnp.asarray(a), n, axis=0)
        scale = self.scale if jnp.ndim(self.scale) == 0 else rep(self.scale)
        if self.index is not None:
            return dataclasses.replace(self, index=rep(self.index), scale=scale)
        return dataclasses.replace(self, vectors=rep(self.vectors), scale=scale)

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        nf = SITE_LAYOUT[self.site][3]
        v = jnp.asarray(self.vectors)
        if self.index is not None:
            v = v[jnp.asarray(self.index)]
        if v.ndim == nf + 2:
            v = v[:, layer]
        v = v[:, None].astype(x.dtype)  # [B, 1, *feat]
        scale = jnp.asarray(self.scale, x.dtype)
        if scale.ndim == 1:
            scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))
        y = x + scale * v
        if self.layers is None:
            return y
        return jnp.where(jnp.isin(layer, jnp.asarray(self.layers, jnp.int32)), y, x)


# --------------------------------------------------------------------------- conditional steering


@struct.dataclass
class Conditional:
    """Apply `intervention` to the rows whose prompt passes a condition (CAST, arXiv 2409.05907).

    score[b] = cos(mean over row b's prompt tokens of the unsteered activation at
    `condition_site`, `layer`; `condition`); decision[b] = score > threshold (`compare="greater"`)
    or score < threshold ("less"). The decision is made once per prompt and holds for every
    generated token.

    Attributes:
        intervention: the intervention to apply where the condition holds.
        condition: the condition direction `[d]`.
        threshold: the cosine threshold.
        score: `[B]`, filled by `prepare_controls` (leave None).
        decision: `[B]` bool, filled by `prepare_controls`; one given by hand is used as is.
        layer: the layer whose activation is read.
        condition_site: the site read (default `resid_post`).
        compare: "greater" or "less".
    """

    intervention: Any
    condition: jax.Array
    threshold: Any = 0.0
    score: Any = None
    decision: Any = None
    layer: int = struct.field(pytree_node=False, default=0)
    condition_site: str = struct.field(pytree_node=False, default="resid_post")
    compare: str = struct.field(pytree_node=False, default="greater")

    @property
    def site(self) -> str:
        return self.intervention.site

    @property
    def rows(self) -> int | None:
        return None if self.decision is None else int(jnp.shape(self.decision)[0])

    def check(self, config: ModelConfig, n_tokens: int | None = None) -> None:
        check_site(self.condition_site)
        if SITE_LAYOUT[self.condition_site][0] != 3:
            raise InputError(f"Conditional: condition_site must be a residual-width site, got {self.condition_site!r}")
        if jnp.shape(self.condition) != (config.d_model,):
            raise InputError(
                f"Conditional: condition vector has shape {jnp.shape(self.condition)}; "
                f"this model needs [{config.d_model}]"
            )
        if not 0 <= int(self.layer) < config.n_layers:
            raise InputError(f"Conditional: layer {self.layer} out of range for a model with {config.n_layers} layers")
        if self.compare not in ("greater", "less"):
            raise InputError(f"Conditional: compare must be 'greater' or 'less', got {self.compare!r}")
        if jnp.ndim(self.threshold) != 0:
            raise InputError(f"Conditional: threshold must be a scalar, got shape {jnp.shape(self.threshold)}")
        if self.decision is not None and jnp.ndim(self.decision) != 1:
            raise InputError(f"Conditional: decision must be [B], got shape {jnp.shape(self.decision)}")
        check_finite(self.condition, "Conditional: condition")
        self.intervention.check(config, n_tokens)

    def generation_safe(self) -> bool:
        return self.intervention.generation_safe()

    def prepare(self, read: Callable[[str, int], jax.Array], prompt_mask: jax.Array) -> Conditional:
        """Fill `score` and `decision` from `read(site, layer) -> [B, T, d]` over the prompt."""
        inner = prepare_controls_with(self.intervention, read, prompt_mask)
        if self.decision is not None:
            return dataclasses.replace(self, intervention=inner)
        acts = read(self.condition_site, int(self.layer)).astype(jnp.float32)
        w = prompt_mask.astype(jnp.float32)[..., None]
        mean = (acts * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        c = jnp.asarray(self.condition, jnp.float32)
        score = mean @ c / jnp.maximum(jnp.linalg.norm(mean, axis=-1) * jnp.linalg.norm(c), 1e-12)
        thr = jnp.asarray(self.threshold, jnp.float32)
        decision = score > thr if self.compare == "greater" else score < thr
        return dataclasses.replace(self, intervention=inner, score=score, decision=decision)

    def bind(self, ctx: TokenContext) -> Conditional:
        return dataclasses.replace(self, intervention=bind_controls((self.intervention,), ctx)[0])

    def repeat_rows(self, n: int) -> Conditional:
        rep = lambda a: None if a is None else jnp.repeat(jnp.asarray(a), n, axis=0)
        return dataclasses.replace(
            self,
            intervention=repeat_rows((self.intervention,), n)[0],
            score=rep(self.score),
            decision=rep(self.decision),
        )

    def apply(self, x: jax.Array, layer: jax.Array) -> jax.Array:
        if self.decision is None:
            raise InputError(
                "Conditional has no decision: forward / generate prepare it from the prompt (or call prepare_controls)"
            )
        return _row_where(jnp.asarray(self.decision, bool), self.intervention.apply(x, layer), x, self.site)


def compose(vectors: Sequence[Any], weights: Sequence[float] | jax.Array) -> jax.Array:
    """`sum_k weights[k] * vectors[k]`: several steering vectors as one.

    E.g. `Steer(compose([happy, formal], [1.0, 0.5]))`. Traceable in `weights`.

    Args:
        vectors: K vectors, each `[d]` or `[L, d]`, all one shape (or one stacked array).
        weights: K weights.

    Returns:
        The weighted sum (float32), shaped as one vector.
    """
    v = (
        jnp.stack([jnp.asarray(x, jnp.float32) for x in vectors])
        if not hasattr(vectors, "shape")
        else jnp.asarray(vectors)
    )
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (v.shape[0],):
        raise InputError(f"compose: {v.shape[0]} vectors but weights have shape {w.shape}")
    return jnp.tensordot(w, v, axes=1)


# --------------------------------------------------------------------------- binding


def _through_wrapper(iv: Any, method: str, fn: Callable[[Any], Any]) -> Any:
    """`iv.<method>` applied by `fn` when `iv` has it; else, for a wrapper (anything with an
    `intervention` field, e.g. `OnRuns`), the wrapper around `fn` of what it wraps; else `iv`."""
    if hasattr(iv, method):
        return fn(iv)
    inner = getattr(iv, "intervention", None)
    if inner is None:
        return iv
    return dataclasses.replace(iv, intervention=_through_wrapper(inner, method, fn))


def bind_controls(interventions: tuple, ctx: TokenContext) -> tuple:
    """Interventions with their token controls bound to `ctx`, also inside wrappers such as
    `OnRuns(OnTokens(...))` (others unchanged)."""
    return tuple(_through_wrapper(iv, "bind", lambda c: c.bind(ctx)) for iv in interventions)


def prepare_controls_with(iv: Any, read: Callable, prompt_mask: jax.Array) -> Any:
    """`iv` with its conditions decided from `read(site, layer)` over the prompt (inside wrappers too)."""
    return _through_wrapper(iv, "prepare", lambda c: c.prepare(read, prompt_mask))


def needs_prompt_read(interventions: Sequence) -> bool:
    """True when some `Conditional` (at any depth) still has to read its prompt."""
    return any(c.decision is None for c in conditions(interventions))


def acts_from(iv: Any) -> int:
    """The lowest layer at which `iv` may change an activation: a control's is what it wraps; an
    intervention without `layers` (or with None) acts from layer 0."""
    inner = getattr(iv, "intervention", None)
    if inner is not None:
        return acts_from(inner)
    layers = getattr(iv, "layers", None)
    return min(int(l) for l in layers) if layers else 0


def prefill_split(interventions: Sequence) -> int | None:
    """The layer c after which one prefill can decide every pending `Conditional` from its own
    activations: the highest pending condition layer, when every intervention acts only above it
    (layers <= c then run unsteered, so their activations are exactly what the conditions read).
    None when no condition is pending, or when something acts at or below c: the conditions then
    need their own unsteered read of the prompt (`read_site`), an extra (c + 1) / L of a prefill."""
    pending = [c for c in conditions(interventions) if c.decision is None]
    if not pending:
        return None
    split = max(int(c.layer) for c in pending)
    return split if all(acts_from(iv) > split for iv in interventions) else None


def repeat_rows(interventions: tuple, n: int) -> tuple:
    """Per-row controls with each row repeated `n` times (after a prompt's prefill, for its samples)."""
    if n == 1:
        return interventions
    return tuple(_through_wrapper(iv, "repeat_rows", lambda c: c.repeat_rows(n)) for iv in interventions)


def check_rows(interventions: Sequence, batch: int) -> None:
    """Per-row controls must have one row per batch row."""
    for iv in interventions:
        inner = getattr(iv, "intervention", None)
        if inner is not None:
            check_rows((inner,), batch)
        rows = getattr(iv, "rows", None)
        if rows is not None and rows != batch:
            raise InputError(f"{type(iv).__name__} has {rows} rows but the batch has {batch}")


def reads_generated(interventions: Sequence) -> bool:
    """True when some `OnTokens` selects generated tokens (forward then needs `prompt_length`)."""
    for iv in interventions:
        if isinstance(iv, OnTokens) and iv.reads_generated:
            return True
        inner = getattr(iv, "intervention", None)
        if inner is not None and reads_generated((inner,)):
            return True
    return False


def conditions(interventions: Sequence) -> list[Conditional]:
    """The `Conditional`s among `interventions` (outermost first), in order."""
    out = []
    for iv in interventions:
        if isinstance(iv, Conditional):
            out.append(iv)
        inner = getattr(iv, "intervention", None)
        if inner is not None:
            out += conditions((inner,))
    return out


__all__ = [
    "OnTokens",
    "RowSteer",
    "Conditional",
    "TokenContext",
    "compose",
    "prompt_context",
    "bind_controls",
    "repeat_rows",
    "check_rows",
    "reads_generated",
    "needs_prompt_read",
    "conditions",
    "acts_from",
    "prefill_split",
    "SELECT",
]
