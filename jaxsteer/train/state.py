"""Gradient-trained state shared by the gradient learners (RL and SFT): the optimizer, the
train state placed on a mesh, and restoring a run's trained part from its checkpoints.

A checkpoint of a gradient run holds `{"train": {"step", "trainable", "opt"}, "rng": key}`; a PPO
run's "train" also holds its value head and that head's optimizer state ("value", "value_opt").
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..models.params import Model
from . import checkpoint as ckpt
from .build import build_model
from .config import ConfigError, TrainConfig, config_to_dict, load_config
from .sharding import make_mesh, replicate, replicated, tree_shardings
from .trainable import init_trainable, init_value_head


def make_optimizer(
    lr: float,
    total_updates: int,
    *,
    warmup_frac: float = 0.03,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip: float = 2.0,
) -> tuple[optax.GradientTransformation, Callable]:
    """Global-norm clipping + AdamW with linear warmup over `ceil(warmup_frac * total_updates)`
    updates (update i gets `lr * (i + 1) / (warmup + 1)`, so no update is wasted at lr 0), then
    constant (or cosine decay to 0). Returns `(tx, schedule)`."""
    warmup = int(math.ceil(warmup_frac * total_updates)) if warmup_frac > 0 else 0

    def sched(count):
        count = jnp.asarray(count, jnp.float32)
        ramp = jnp.minimum(1.0, (count + 1.0) / (warmup + 1.0)) if warmup else 1.0
        if schedule == "cosine":
            frac = jnp.clip((count - warmup) / max(total_updates - warmup, 1), 0.0, 1.0)
            return lr * ramp * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
        return lr * ramp

    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    parts.append(optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts), sched


def init_state(
    trainable: Any,
    tx: optax.GradientTransformation,
    value_head: dict | None = None,
    value_tx: optax.GradientTransformation | None = None,
) -> dict:
    """Train state: `{"step": int32, "trainable": ..., "opt": optax state}` (trainable in float32),
    plus `"value"` / `"value_opt"` when a value head (PPO's critic) is given (its optimizer:
    `value_tx`, default `tx`)."""
    trainable = jax.tree_util.tree_map(lambda x: jnp.array(x, jnp.float32), trainable)  # a fresh copy
    state = {"step": jnp.zeros((), jnp.int32), "trainable": trainable, "opt": tx.init(trainable)}
    if value_head is not None:
        state["value"] = jax.tree_util.tree_map(lambda x: jnp.array(x, jnp.float32), value_head)
        state["value_opt"] = (value_tx or tx).init(state["value"])
    return state


@dataclasses.dataclass
class TrainState:
    """The base model placed on the mesh, the initial train state (with its shardings), the RNG
    key and the optimizer of a gradient run."""

    model: Model
    state: dict
    rng: jax.Array
    tx: Any
    schedule: Callable
    base_shardings: Any
    state_shardings: Any
    value_tx: Any = None  # PPO: the value head's optimizer (`value_lr`)

    def checkpoint_tree(self, state: dict | None = None, rng: jax.Array | None = None) -> dict:
        """What a checkpoint holds: `{"train": state, "rng": rng}` (defaults: the initial ones)."""
        return {"train": self.state if state is None else state, "rng": self.rng if rng is None else rng}


def init_train_state(cfg: TrainConfig, model: Model, mesh, total_updates: int, trainable0: Any = None) -> TrainState:
    """Place the base model on `mesh` (FSDP-sharded when the mesh's "fsdp" axis > 1), build the
    optimizer for `total_updates` and the initial train state (created directly with its
    shardings; "full" trainables are sharded like the base). trainable0: the starting trainable
    (default: `init_trainable`'s zero-effect init; see `start_trainable`)."""
    fsdp = mesh.shape["fsdp"] > 1
    base_shardings = tree_shardings(model, mesh, shard=fsdp)
    model = jax.device_put(model, base_shardings)
    init_key, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    if trainable0 is None:
        trainable0 = init_trainable(model, cfg.trainable, init_key)
    optimizer = functools.partial(
        make_optimizer,
        total_updates=total_updates,
        warmup_frac=cfg.optimizer.warmup_frac,
        schedule=cfg.optimizer.schedule,
        weight_decay=cfg.optimizer.weight_decay,
        b1=cfg.optimizer.b1,
        b2=cfg.optimizer.b2,
        eps=cfg.optimizer.eps,
        grad_clip=cfg.optimizer.grad_clip,
    )
    tx, sched = optimizer(cfg.optimizer.lr)
    head, value_tx = None, None
    if cfg.algorithm == "ppo":
        head = init_value_head(model.config.d_model)
        value_tx = optimizer(cfg.optimizer.lr if cfg.optimizer.value_lr is None else cfg.optimizer.value_lr)[0]
    abstract = jax.eval_shape(lambda t, v: init_state(t, tx, v, value_tx), trainable0, head)
    shard_state = cfg.trainable.kind == "full" and fsdp
    state_shardings = {
        "step": replicated(mesh),
        "trainable": tree_shardings(abstract["trainable"], mesh, shard_state),
        "opt": tree_shardings(abstract["opt"], mesh, shard_state),
    }
    for name in ("value", "value_opt"):  # PPO's value head: small, replicated
        if name in abstract:
            state_shardings[name] = tree_shardings(abstract[name], mesh, False)
    state = jax.jit(lambda t, v: init_state(t, tx, v, value_tx), out_shardings=state_shardings)(trainable0, head)
    rng = replicate(rng, mesh)  # one global key: every process saves and samples with the same one
    return TrainState(model, state, rng, tx, sched, base_shardings, state_shardings, value_tx)


def load_trainable(
    cfg: TrainConfig,
    *,
    step: int | None = None,
    model: Model | None = None,
    tokenizer: Any = None,
    devices: Sequence | None = None,
) -> tuple[Model, Any, Any, dict]:
    """`(model, tokenizer, trainable, meta)` from a gradient run's latest (or `step`) checkpoint
    in `cfg.output_dir`, validated like a resume."""
    if model is None:
        model, tokenizer = build_model(cfg.model)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)
    ts = init_train_state(cfg, model, mesh, cfg.steps * cfg.updates_per_step)
    checkpointer = ckpt.Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), read_only=True)
    try:
        restored, meta = checkpointer.restore(
            ts.checkpoint_tree(),
            identity=ckpt.model_identity(ts.model, cfg.model.spec),
            trainable_config=config_to_dict(cfg.trainable),
            step=step,
        )
    finally:
        checkpointer.close()
    return ts.model, tokenizer, restored["train"]["trainable"], meta


def load_run_trainable(run_dir: str, *, model: Model, tokenizer: Any = None) -> tuple[Any, Any]:
    """`(trainable, trainable_config)` of the trained gradient run in `run_dir` (its saved
    config.yaml and latest checkpoint, validated against `model` like a resume): the warm start of
    `model.init_from` (RL / SFT, and ESSA's LoRA)."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise ConfigError(f"{run_dir!r} is not a run directory (no config.yaml)")
    source = load_config(path, [f"output_dir={run_dir}"], warn=False)
    if source.is_es:
        raise ConfigError(
            f"{run_dir!r} is an evolution-strategies run ({source.algorithm}); a warm start needs a gradient run"
        )
    _, _, trainable, _ = load_trainable(source, model=model, tokenizer=tokenizer)
    return jax.device_get(trainable), source.trainable


def start_trainable(cfg: TrainConfig, model: Model, tokenizer: Any = None) -> Any:
    """The trainable a gradient run starts from: None (the zero-effect init) or, with
    `model.init_from`, that run's trained trainable, checked against `cfg.trainable`."""
    if not cfg.model.init_from:
        return None
    trainable, source = load_run_trainable(cfg.model.init_from, model=model, tokenizer=tokenizer)
    if config_to_dict(source) != config_to_dict(cfg.trainable):
        raise ConfigError(
            f"model.init_from={cfg.model.init_from!r} trained trainable {config_to_dict(source)}; this run's "
            f"trainable section is {config_to_dict(cfg.trainable)}: they must agree"
        )
    return trainable


__all__ = [
    "make_optimizer",
    "init_state",
    "TrainState",
    "init_train_state",
    "load_trainable",
    "load_run_trainable",
    "start_trainable",
]
