"""The SAE training step: optax update, unit-norm decoder rows, dead-latent bookkeeping, AuxK.

State is a plain pytree `{"sae": params, "opt": optax state, "step", "since_fired": [d_sae]
int32 (batches since each latent last fired)}`, so it checkpoints with Orbax as is. Frozen
latents are never trained: a residual SAE's base is a separate SAE passed to the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ...errors import InputError
from ...sae.arch import BATCH_KINDS, SAE, SAEConfig, init_sae, reconstruct
from ...sae.losses import rms, train_forward, update_threshold


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Hyper-parameters of one update.

    lr, b1, b2, warmup_steps, decay_start (fraction of `total_steps` after which the LR decays
    linearly to 0; 1.0 = constant), grad_clip; k_aux (0 = off; Gao et al. use d_in/2) and
    aux_coef (1/32 in Gao et al.); dead_batches: a latent is dead after this many batches
    without firing; threshold_lr: BatchTopK's inference-threshold EMA rate; htopk_levels: the
    budgets j averaged by the HierarchicalTopK loss (empty = every j in 1..K). JumpReLU: l0_coef
    (the L0 penalty's weight, in units of the FVU: one latent firing per token costs `l0_coef`),
    reached linearly over l0_warmup_steps; jumprelu_bandwidth: the pseudo-derivative's bandwidth
    in units of the run's `act_scale` (the RMS of the first batch; Gemma Scope: 0.001 on inputs
    with RMS 1), fixed for the whole run."""

    lr: float = 2e-4
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0
    decay_start: float = 1.0
    total_steps: int = 1000
    grad_clip: float = 0.0
    k_aux: int = 0
    aux_coef: float = 1.0 / 32
    dead_batches: int = 1000
    threshold_lr: float = 0.01
    htopk_levels: tuple[int, ...] = ()
    l0_coef: float = 0.0
    l0_warmup_steps: int = 0
    jumprelu_bandwidth: float = 0.001


def make_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
    """Adam with linear warmup, a constant phase and an optional linear decay to 0."""
    decay_at = int(cfg.decay_start * cfg.total_steps)
    parts = [optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)] if cfg.warmup_steps else []
    parts.append(optax.constant_schedule(cfg.lr))
    bounds = [cfg.warmup_steps] if cfg.warmup_steps else []
    if decay_at < cfg.total_steps:
        parts.append(optax.linear_schedule(cfg.lr, 0.0, max(cfg.total_steps - decay_at, 1)))
        bounds.append(decay_at)
    schedule = optax.join_schedules(parts, bounds) if bounds else parts[0]
    chain = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip else []
    return optax.chain(*chain, optax.adam(schedule, b1=cfg.b1, b2=cfg.b2))


def trainable_params(params: dict, kind: str) -> dict:
    """The parameters the optimizer updates: all but BatchTopK's threshold (an EMA, not a gradient)."""
    return {k: v for k, v in params.items() if not (k == "threshold" and kind in BATCH_KINDS)}


def init_state(sae: SAE, tx: optax.GradientTransformation, act_scale: float = 1.0) -> dict:
    """A fresh training state. act_scale: the activations' RMS (`losses.rms` of a first batch),
    the unit in which a JumpReLU SAE's thresholds are optimised (see `make_step`)."""
    trainable = trainable_params(sae.params, sae.config.kind)
    return {
        "sae": dict(sae.params),
        "opt": tx.init(trainable),
        "step": jnp.zeros((), jnp.int32),
        "since_fired": jnp.zeros((sae.config.d_sae,), jnp.int32),
        "act_scale": jnp.asarray(act_scale, jnp.float32),
    }


def _project_decoder_grad(grads: dict, w_dec: jax.Array) -> dict:
    """Remove the gradient component along each (unit) decoder row, as Gao et al. do."""
    g = grads["W_dec"]
    par = jnp.sum(g * w_dec, axis=-1, keepdims=True) * w_dec
    return dict(grads, W_dec=g - par)


def normalize_decoder(params: Mapping) -> dict:
    """Decoder rows rescaled to unit norm."""
    w = params["W_dec"]
    norm = jnp.linalg.norm(w.astype(jnp.float32), axis=-1, keepdims=True)
    return dict(params, W_dec=(w / jnp.maximum(norm, 1e-8).astype(w.dtype)))


def make_step(
    config: SAEConfig, cfg: StepConfig, tx: optax.GradientTransformation, base: SAE | None = None
) -> Callable:
    """A jitted `step(state, x) -> (state, metrics)` for activations `x [B, d_in]`.

    base: a frozen SAE; when given the trained SAE is a residual SAE fitted to
    `x - reconstruct(base, x)` (SAE Boost).

    JumpReLU thresholds are optimised directly (as SAELens; DeepMind trains log theta) in units of
    `state["act_scale"]`: Adam moves a parameter by about lr per step whatever its scale, and
    Gemma Scope's recipe assumes inputs normalised to RMS 1, so the optimizer sees
    `threshold / act_scale` while the SAE keeps activation units. Thresholds stay >= 0."""
    unit_threshold = config.kind == "jumprelu"

    def loss_fn(trainable, frozen, scale, x, dead, l0_coef):
        params = dict(frozen, **trainable)
        if unit_threshold:
            params["threshold"] = params["threshold"] * scale
        return train_forward(
            SAE(params, config),
            x,
            dead,
            k_aux=cfg.k_aux,
            aux_coef=cfg.aux_coef,
            htopk_levels=cfg.htopk_levels or None,
            l0_coef=l0_coef,
            bandwidth=cfg.jumprelu_bandwidth,
            unit=scale,
        )

    def step(state, x):
        if base is not None:
            x = x.astype(jnp.float32) - reconstruct(base, x).astype(jnp.float32)
        params, scale = state["sae"], state["act_scale"]
        trainable = trainable_params(params, config.kind)
        frozen = {k: v for k, v in params.items() if k not in trainable}
        if unit_threshold:
            trainable["threshold"] = trainable["threshold"] / scale.astype(trainable["threshold"].dtype)
        dead = state["since_fired"] >= cfg.dead_batches
        warm = jnp.minimum((state["step"] + 1) / max(cfg.l0_warmup_steps, 1), 1.0)
        (loss, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, frozen, scale, x, dead, cfg.l0_coef * warm
        )
        grads = _project_decoder_grad(grads, trainable["W_dec"])
        updates, opt = tx.update(grads, state["opt"], trainable)
        new = normalize_decoder(cast(dict, optax.apply_updates(trainable, updates)))  # optax types it as any pytree
        if config.kind in BATCH_KINDS:
            new["threshold"] = update_threshold(frozen["threshold"], info["min_active"], cfg.threshold_lr)
        if unit_threshold:
            new["threshold"] = (jnp.maximum(new["threshold"], 0) * scale).astype(params["threshold"].dtype)
        since = jnp.where(info["fired"], 0, state["since_fired"] + 1)
        metrics = {
            "loss": loss,
            "fvu": info["fvu"],
            "explained_variance": 1 - info["fvu"],
            "aux_loss": info["aux"],
            "l0": info["l0"],
            "dead_fraction": jnp.mean(since >= cfg.dead_batches),
        }
        return {"sae": new, "opt": opt, "step": state["step"] + 1, "since_fired": since, "act_scale": scale}, metrics

    return jax.jit(step, donate_argnums=(0,))


def shard_state(state: dict, mesh: jax.sharding.Mesh, axis: str, d_sae: int) -> dict:
    """Place a training state on `mesh` with the latent axis (the axis of size `d_sae` of every
    leaf: `W_enc` columns, `W_dec` rows, `b_enc`, Adam moments, dead counters) split over mesh
    axis `axis` and everything else replicated, so an SAE wider than one device's memory trains
    with the same `make_step` (XLA partitions the jitted step from these placements)."""
    from jax.sharding import NamedSharding, PartitionSpec

    def place(leaf):
        shape = jnp.shape(leaf)
        spec: list[str | None] = [None] * len(shape)
        for i, n in enumerate(shape):
            if n == d_sae:
                spec[i] = axis
                break
        return jax.device_put(leaf, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map(place, state)


def geometric_median(x: np.ndarray, iters: int = 50, eps: float = 1e-6) -> np.ndarray:
    """Weiszfeld's algorithm: the point minimising the summed distance to the rows of `x`."""
    x = np.asarray(x, np.float64)
    y = x.mean(axis=0)
    for _ in range(iters):
        w = 1.0 / np.maximum(np.linalg.norm(x - y, axis=1), eps)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if np.linalg.norm(y_new - y) < eps * max(1.0, np.linalg.norm(y)):
            return y_new
        y = y_new
    return y


def init_jumprelu_threshold(sae: SAE, sample: np.ndarray, value: float = 0.001) -> SAE:
    """A JumpReLU SAE's thresholds set to `value` x the RMS activation of `sample` (Gemma Scope
    starts at 0.001 on inputs with RMS 1); other kinds unchanged."""
    if sae.config.kind != "jumprelu":
        return sae
    theta = jnp.full((sae.config.d_sae,), value * float(rms(jnp.asarray(sample))), sae.dtype)
    return SAE(dict(sae.params, threshold=theta), sae.config)


def init_b_dec(sae: SAE, sample: np.ndarray, method: str) -> SAE:
    """Set `b_dec` from a sample of activations: `geometric_median`, `mean` or `zero`."""
    if "b_dec" not in sae.params or method == "zero":
        return sae
    if method == "geometric_median":
        v = geometric_median(sample)
    elif method == "mean":
        v = np.asarray(sample, np.float64).mean(axis=0)
    else:
        raise InputError(f"b_dec_init must be geometric_median, mean or zero, got {method!r}")
    return SAE(dict(sae.params, b_dec=jnp.asarray(v, sae.dtype)), sae.config)


def fit(
    config: SAEConfig,
    batches: Iterable[np.ndarray],
    cfg: StepConfig,
    *,
    seed: int = 0,
    b_dec_init: str = "geometric_median",
    base: SAE | None = None,
    jumprelu_init_threshold: float = 0.001,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[SAE, list[dict]]:
    """Train an SAE in memory on an iterable of `[B, d_in]` batches (`cfg.total_steps` of them).
    Returns the SAE and the per-step metrics. mesh: split the latent axis over the mesh's first
    axis (`shard_state`). For runs with checkpoints use `jaxsteer sae train`."""
    it = iter(batches)
    first = np.asarray(next(it))
    sae = init_sae(config, jax.random.PRNGKey(seed))
    target = first if base is None else first - np.asarray(reconstruct(base, jnp.asarray(first)), np.float32)
    sae = init_jumprelu_threshold(init_b_dec(sae, target, b_dec_init), target, jumprelu_init_threshold)
    tx = make_optimizer(cfg)
    step = make_step(config, cfg, tx, base)
    state = init_state(sae, tx, act_scale=float(rms(jnp.asarray(target))))
    if mesh is not None:
        state = shard_state(state, mesh, mesh.axis_names[0], config.d_sae)
    history = []
    x = first
    for i in range(cfg.total_steps):
        state, m = step(state, jnp.asarray(x))
        history.append(m)
        if i + 1 < cfg.total_steps:
            x = np.asarray(next(it))
    history = [{k: float(v) for k, v in m.items()} for m in jax.device_get(history)]
    return SAE(state["sae"], config), history


__all__ = [
    "StepConfig",
    "make_optimizer",
    "trainable_params",
    "init_state",
    "init_jumprelu_threshold",
    "normalize_decoder",
    "make_step",
    "shard_state",
    "geometric_median",
    "init_b_dec",
    "fit",
]
