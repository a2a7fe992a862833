"""Trainable parameterisations, kept apart from the frozen base and combined by a pure function.

    trainable = init_trainable(model, cfg, key)            # what optax sees
    run_model, interventions = apply_trainable(model, trainable, cfg)
    logits, _ = jaxsteer.forward(run_model, tokens, interventions=interventions)
    ref_model, ref_ivs = apply_trainable(model, trainable, cfg, enabled=False)   # reference policy

Kinds:

- "steering": one additive vector per selected layer at `cfg.site` (default "resid_post", after
  the MLP), at every position. Full: `{"vectors": [n, *feat]}` (zeros); low-rank (`cfg.rank`):
  `{"a": [n, r], "b": [r, *feat]}` with `S = a @ b`, `a` Kaiming-uniform and `b` zeros.
  `n` is the number of selected layers (`cfg.layers`, or all). Trainable arrays are float32 and
  cast to the activation dtype inside the forward.
- "lora": `{proj: {"a": [L, in, r], "b": [L, r, out]}}` for each target projection, `a`
  Kaiming-uniform, `b` zeros; applied unmerged through `params["layers"]["lora"]` with
  `lora_alpha / lora_rank` folded into `b`.
- "adaptive_steering": steering with a learned per-token gate (the steering paper's token-wise
  scaling; `jaxsteer.AdaptiveSteer`): at each selected layer
  `x_t + sigmoid(w . x_t + b) * v`, `{"vectors": [n, d], "w": [n, d], "b": [n]}`, all zeros at
  init (vectors 0: no effect; gate 0.5). Residual-width sites only.
- "lineas": a per-dimension affine map at each selected layer, `x -> (1 + scale) * x + shift`
  (LinEAS, `jaxsteer.steering.lineas`; `jaxsteer.Affine`), `{"scale": [n, d], "shift": [n, d]}`,
  zeros at init (the identity). Residual-width sites only.
- "full": the model's own parameter pytree.

PPO's critic, a linear value head on the last residual stream (`init_value_head`,
`value_estimates`), is trained beside any of these kinds (`rl.value`).

Every kind starts with zero effect: the initial policy equals the base model.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from ..errors import InputError
from ..models.decoder import PROJECTIONS, rms_norm
from ..models.interventions import AdaptiveSteer, Affine, Steer, check_site, site_feature_shape
from ..models.params import Model

KINDS = ("steering", "adaptive_steering", "lineas", "lora", "full")
STEERING_KINDS = ("steering", "adaptive_steering")  # vectors added to the residual stream (exported as such)
LAYERED_KINDS = STEERING_KINDS + ("lineas",)  # kinds that act at chosen layers of one site


@dataclasses.dataclass(frozen=True)
class TrainableConfig:
    """What is trained (static; hashable, so it can be a jit-static argument).

    Attributes:
        kind: "steering" | "adaptive_steering" | "lineas" | "lora" | "full".
        layers: steering kinds only; None = every layer, else a tuple of layer indices (e.g. `(10,)`).
        site: steering placement (any site but "pattern"; "resid_post" = after the MLP, "attn_out" =
            after attention, "resid_mid", "resid_pre", "mlp_out", ...).
        rank: steering only; None = one full vector per layer, r = low-rank `S = A @ B`.
        lora_rank: the LoRA rank r.
        lora_alpha: the LoRA alpha (scale `alpha / rank`).
        lora_targets: the projections that get adapters.
    """

    kind: str = "steering"
    layers: tuple[int, ...] | None = None
    site: str = "resid_post"
    rank: int | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = PROJECTIONS

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"unknown trainable kind {self.kind!r}; kinds: {KINDS}")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(l) for l in self.layers))
            if self.kind not in LAYERED_KINDS:
                raise InputError(f"layers is a steering option; kind={self.kind!r} trains every layer")
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise InputError(f"layers must be a non-empty tuple of distinct indices, got {self.layers}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.kind in ("adaptive_steering", "lineas") and self.rank is not None:
            raise InputError(f"rank (low-rank steering) is not a {self.kind} option")
        if self.kind in LAYERED_KINDS:
            check_site(self.site)
            if self.site == "pattern":
                raise InputError("cannot steer the attention pattern; choose another site")
            if self.rank is not None and self.rank < 1:
                raise InputError(f"rank must be positive, got {self.rank}")
        if self.kind == "lora":
            if self.lora_rank < 1:
                raise InputError(f"lora_rank must be positive, got {self.lora_rank}")
            unknown = [t for t in self.lora_targets if t not in PROJECTIONS]
            if unknown or not self.lora_targets:
                raise InputError(f"lora_targets {self.lora_targets} must be a non-empty subset of {PROJECTIONS}")

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank


def _steer_layers(cfg: TrainableConfig, n_layers: int) -> tuple[int, ...]:
    layers = tuple(range(n_layers)) if cfg.layers is None else cfg.layers
    for l in layers:
        if not 0 <= l < n_layers:
            raise InputError(f"steering layer {l} out of range for a model with {n_layers} layers")
    return layers


def _kaiming_uniform(key, shape, fan_in: int) -> jax.Array:
    """torch's default `kaiming_uniform_(a=sqrt(5))`: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


@functools.partial(jax.jit, static_argnames=("shapes", "rank"))
def _init_lora(key, shapes, rank):
    """LoRA factors for `((name, (L, in, out)), ...)`: a Kaiming-uniform (fan_in = in), b zeros.

    One uniform draw is cut into the `a` factors (a single PRNG kernel compiles much faster than
    one per shape)."""
    sizes = [L * d_in * rank for _, (L, d_in, _) in shapes]
    flat = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    out, start = {}, 0
    for (name, (L, d_in, d_out)), size in zip(shapes, sizes, strict=True):
        a = flat[start : start + size].reshape(L, d_in, rank) / math.sqrt(d_in)
        out[name] = {"a": a, "b": jnp.zeros((L, rank, d_out), jnp.float32)}
        start += size
    return out


def init_trainable(model: Model, cfg: TrainableConfig, key: jax.Array) -> dict:
    """Initial trainable pytree for `model`; zero effect on the model's outputs.

    Args:
        model: the base model.
        cfg: what is trained.
        key: the random key of the non-zero factors (low-rank steering's and LoRA's `a`).

    Returns:
        The trainable pytree (float32).
    """
    c = model.config
    if cfg.kind == "steering":
        feat = site_feature_shape(cfg.site, c)
        assert feat is not None  # TrainableConfig refuses the one site without a feature shape, "pattern"
        n = len(_steer_layers(cfg, c.n_layers))
        if cfg.rank is None:
            return {"vectors": jnp.zeros((n, *feat), jnp.float32)}
        # A: [n, r] as a torch tensor of that shape, whose fan_in is r.
        return {
            "a": _kaiming_uniform(key, (n, cfg.rank), fan_in=cfg.rank),
            "b": jnp.zeros((cfg.rank, *feat), jnp.float32),
        }
    if cfg.kind in ("adaptive_steering", "lineas"):
        feat = site_feature_shape(cfg.site, c)
        assert feat is not None  # TrainableConfig refuses the one site without a feature shape, "pattern"
        if feat != (c.d_model,):
            raise InputError(f"{cfg.kind} needs a residual-width site; {cfg.site!r} has features {feat}")
        n = len(_steer_layers(cfg, c.n_layers))
        zeros = jnp.zeros((n, c.d_model), jnp.float32)
        if cfg.kind == "lineas":
            return {"scale": zeros, "shift": zeros}
        return {"vectors": zeros, "w": zeros, "b": jnp.zeros((n,), jnp.float32)}
    if cfg.kind == "lora":
        layers = model.params["layers"]
        existing = layers.get("lora", {})
        for name in cfg.lora_targets:
            if name in existing:
                raise InputError(f"the base model already has a LoRA adapter on {name}")
        shapes = tuple((name, tuple(layers[name].shape)) for name in cfg.lora_targets)
        return _init_lora(key, shapes, cfg.lora_rank)
    return model.params  # "full"


def steering_vectors(trainable: dict, cfg: TrainableConfig, n_layers: int) -> jax.Array:
    """Dense steering vectors `[L, *feat]` (`[L, d]` at residual sites), zero on untrained layers.

    Args:
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        n_layers: the model's layers L.

    Returns:
        The vectors.
    """
    if cfg.kind not in STEERING_KINDS:
        raise InputError(f"steering_vectors needs a steering kind, got {cfg.kind!r}")
    return _dense(_vectors(trainable, cfg), cfg, n_layers)


def _dense(x: jax.Array, cfg: TrainableConfig, n_layers: int) -> jax.Array:
    """Per selected layer values `[n, ...]` -> `[L, ...]`, zeros on the other layers."""
    if cfg.layers is None:
        return x
    return jnp.zeros((n_layers, *x.shape[1:]), x.dtype).at[jnp.asarray(_steer_layers(cfg, n_layers))].set(x)


def adaptive_gate(trainable: dict, cfg: TrainableConfig, n_layers: int) -> dict:
    """An adaptive_steering trainable as dense `{"vectors": [L, d], "w": [L, d], "b": [L]}`."""
    return {k: _dense(trainable[k], cfg, n_layers) for k in ("vectors", "w", "b")}


def affine_map(trainable: dict, cfg: TrainableConfig, n_layers: int) -> dict:
    """A lineas trainable as the dense map `{"scale": [L, d], "shift": [L, d]}` of `jaxsteer.Affine`
    (scale 1 and shift 0, the identity, on layers that were not trained)."""
    if cfg.kind != "lineas":
        raise InputError(f"affine_map needs kind='lineas', got {cfg.kind!r}")
    return {
        "scale": 1.0 + _dense(trainable["scale"], cfg, n_layers),
        "shift": _dense(trainable["shift"], cfg, n_layers),
    }


def _vectors(trainable: dict, cfg: TrainableConfig) -> jax.Array:
    """Per selected layer vectors `[n, *feat]`."""
    if cfg.rank is None:
        return trainable["vectors"]
    return jnp.tensordot(trainable["a"], trainable["b"], axes=1)


def _steer(trainable: dict, cfg: TrainableConfig, model: Model) -> Steer:
    c = model.config
    feat = site_feature_shape(cfg.site, c)
    assert feat is not None  # TrainableConfig refuses the one site without a feature shape, "pattern"
    vecs = _vectors(trainable, cfg)
    if cfg.layers is None:
        return Steer(vecs, site=cfg.site)
    if len(cfg.layers) == 1:
        return Steer(vecs[0], site=cfg.site, layers=cfg.layers)
    dense = jnp.zeros((c.n_layers, *feat), vecs.dtype).at[jnp.asarray(cfg.layers)].set(vecs)
    return Steer(dense, site=cfg.site, layers=cfg.layers)


def apply_trainable(
    model: Model, trainable: dict, cfg: TrainableConfig, *, enabled: bool = True
) -> tuple[Model, tuple]:
    """`(model to run, interventions)` for the policy.

    Pure; no parameter array is copied (LoRA only rebuilds the small `params` / `params["layers"]`
    dicts).

    Args:
        model: the base model (for "full", the frozen base; the trainable copy is ignored when disabled).
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.
        enabled: False gives the reference policy: the base `model` unchanged and no interventions.

    Returns:
        The model to run and the interventions to pass it.
    """
    if not enabled:
        return model, ()
    if cfg.kind == "steering":
        return model, (_steer(trainable, cfg, model),)
    if cfg.kind == "adaptive_steering":
        d = adaptive_gate(trainable, cfg, model.config.n_layers)
        return model, (AdaptiveSteer(d["vectors"], d["w"], d["b"], site=cfg.site, layers=cfg.layers),)
    if cfg.kind == "lineas":
        m = affine_map(trainable, cfg, model.config.n_layers)
        return model, (Affine(m["scale"], m["shift"], site=cfg.site, layers=cfg.layers),)
    if cfg.kind == "lora":
        layers = dict(model.params["layers"])
        lora = dict(layers.get("lora", {}))
        for name in cfg.lora_targets:
            ab = trainable[name]
            lora[name] = {"a": ab["a"], "b": ab["b"] * jnp.asarray(cfg.lora_scale, ab["b"].dtype)}
        layers["lora"] = lora
        return dataclasses.replace(model, params={**model.params, "layers": layers}), ()
    return dataclasses.replace(model, params=trainable), ()


def build_policy(base: Model, trainable: dict, cfg: TrainableConfig) -> tuple[Model, tuple]:
    """`apply_trainable` for a trained state: the policy every learner samples, scores and exports.

    Args:
        base: the base model.
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.

    Returns:
        The model to run and its interventions ("full" trainables, float32 master weights, are cast to
        the base dtype for the forward).
    """
    if cfg.kind == "full":
        trainable = jax.tree_util.tree_map(lambda t, b: t.astype(b.dtype), trainable, base.params)
    return apply_trainable(base, trainable, cfg)


def merge_lora(model: Model, trainable: dict, cfg: TrainableConfig) -> Model:
    """The base model with `W + (alpha / r) * a @ b` merged into each target weight (for export).

    Args:
        model: the base model.
        trainable: the trainable pytree.
        cfg: its `TrainableConfig`.

    Returns:
        The merged model.
    """
    if cfg.kind != "lora":
        raise InputError(f"merge_lora needs kind='lora', got {cfg.kind!r}")
    layers = dict(model.params["layers"])
    for name in cfg.lora_targets:
        w = layers[name]
        delta = jnp.einsum("lir,lro->lio", trainable[name]["a"], trainable[name]["b"]) * cfg.lora_scale
        layers[name] = (w.astype(jnp.float32) + delta).astype(w.dtype)
    return dataclasses.replace(model, params={**model.params, "layers": layers})


def init_value_head(d_model: int) -> dict:
    """A value head `{"w": zeros [d], "b": 0.0}` (float32): V = 0 everywhere at the start."""
    return {"w": jnp.zeros((d_model,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def value_estimates(model: Model, head: dict, h: jax.Array) -> jax.Array:
    """Per-position values from residual vectors (before the final norm): `rms_norm(h) . w + b`.

    Args:
        model: the model (its final norm).
        head: the value head `{"w": [d], "b": []}`.
        h: residual vectors `[..., d]`.

    Returns:
        The values `[...]` (float32).
    """
    c = model.config
    x = rms_norm(h, model.params["final_norm"], c.norm_eps, c.norm_offset).astype(jnp.float32)
    return x @ head["w"] + head["b"]


def count_params(trainable) -> int:
    """Number of trainable scalars."""
    return int(sum(math.prod(jnp.shape(x)) for x in jax.tree_util.tree_leaves(trainable)))


__all__ = [
    "TrainableConfig",
    "init_trainable",
    "apply_trainable",
    "build_policy",
    "steering_vectors",
    "adaptive_gate",
    "affine_map",
    "STEERING_KINDS",
    "LAYERED_KINDS",
    "merge_lora",
    "count_params",
    "init_value_head",
    "value_estimates",
]
