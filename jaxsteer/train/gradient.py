"""What the gradient learners (RL and SFT) share: batches of prompt + completion rows, the
micro-batched jitted update, and the training loop on a `Run`.

- `trim_completions`: a batch's completion columns cut to the used width (a multiple of 8), so
  the update compiles for few widths.
- `split_micro_batches`: a batch's arrays as `[M, b, ...]` micro-batches;
  `accumulate_gradients`: the micro-batches' gradients summed by a `lax.scan` inside the jit;
  `apply_gradients`: one optax update of the trainable; `compile_update`: the update jitted with
  explicit shardings, once per prompt width, the train state donated.
- `GradientLearner`: the data stream, the policy and the checkpoint metadata of a learner whose
  state comes from `state.init_train_state`; a learner adds `step`, `describe` and `postfix`.
- `train_loop`: restore, held-out evaluation before / during / after, steps with metrics and
  checkpoints, steering export, summary; what `rl.learner.train_rl` and `sft.learner.train_sft` run.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ..models.params import Model
from . import checkpoint as ckpt
from .build import Inputs
from .config import TrainConfig, config_to_dict
from .data import make_loader
from .distributed import process_max, to_host
from .evaluate import HeldOut
from .export import export_steering
from .run import Run, peak_rss_mb
from .trainable import LAYERED_KINDS, build_policy, count_params


def trim_completions(tokens, mask, old_logp, prompt_width: int, multiple: int = 8):
    """Drop trailing completion columns that are padding in every row (of every process), keeping
    the width a multiple of `multiple` (so the update step compiles for only a few widths)."""
    n = old_logp.shape[1]
    used = process_max(int(mask[:, prompt_width:].sum(axis=1).max()) if len(mask) else n)
    width = min(n, max(multiple, -(-used // multiple) * multiple))
    return tokens[:, : prompt_width + width], mask[:, : prompt_width + width], old_logp[:, :width]


def split_micro_batches(local: dict, n: int) -> dict:
    """Each array `[B, ...]` of a batch as `n` micro-batches `[n, B/n, ...]` (the update's layout)."""
    return {k: v.reshape(n, -1, *v.shape[1:]) for k, v in local.items()}


def accumulate_gradients(grad_fn: Callable, params: Any, batch: dict) -> tuple[Any, dict]:
    """`(summed gradients, per-micro-batch metrics [M])` of `grad_fn(params, mb) -> (grads,
    metrics)` over the micro-batches `mb` of `batch` (arrays `[M, b, ...]`), summed by a `lax.scan`."""

    def body(acc, mb):
        g, metrics = grad_fn(params, mb)
        return jax.tree_util.tree_map(jnp.add, acc, g), metrics

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return jax.lax.scan(body, zeros, batch)


def apply_gradients(state: dict, grads: Any, tx) -> tuple[dict, dict]:
    """One optax update of `state["trainable"]` (optimizer state `state["opt"]`, step counter
    `state["step"]`) from `grads`; metrics `grad_norm` (before clipping) and `update_norm`."""
    metrics = {"grad_norm": optax.global_norm(grads)}
    updates, opt = tx.update(grads, state["opt"], state["trainable"])
    metrics["update_norm"] = optax.global_norm(updates)
    new_state = {
        **state,
        "step": state["step"] + 1,
        "trainable": optax.apply_updates(state["trainable"], updates),
        "opt": opt,
    }
    return new_state, metrics


def compile_update(
    fn: Callable,
    *,
    base_shardings=None,
    state_shardings=None,
    batch_shardings=None,
    metric_sharding=None,
    donate: bool = True,
) -> Callable:
    """`step(base, state, batch, prompt_width) -> (state, metrics)` from `fn(base, state, batch, *,
    prompt_width)`, jitted once per prompt width with explicit shardings (None = let JAX choose)
    and the train state donated."""
    cache: dict[int, Any] = {}

    def step(base, state, batch, prompt_width: int):
        if prompt_width not in cache:
            kw = {}
            if state_shardings is not None:
                kw["in_shardings"] = (base_shardings, state_shardings, batch_shardings)
                kw["out_shardings"] = (state_shardings, metric_sharding)
            cache[prompt_width] = jax.jit(
                functools.partial(fn, prompt_width=prompt_width), donate_argnums=(1,) if donate else (), **kw
            )
        return cache[prompt_width](base, state, batch)

    return step


class GradientLearner:
    """A gradient learner's shared parts: `setup` (the base model, initial state and RNG key, the
    optimizer and its schedule: `state.TrainState` or RL's `Setup`), this process's data stream
    (`local_prompts` examples per step, cut into `chunks` parts), the model identity and trainable
    config checkpoints are checked against. Subclasses define `step(state, rng, step) -> (state,
    rng, record)`, `describe(n_trainable) -> str` and `postfix(record) -> dict`."""

    def __init__(self, cfg: TrainConfig, inputs: Inputs, mesh, setup: Any, *, local_prompts: int, chunks: int = 1):
        self.cfg, self.inputs, self.mesh, self.setup = cfg, inputs, mesh, setup
        loader = make_loader(
            inputs.train_examples,
            batch_size=local_prompts,
            seed=cfg.seed,
            shard_index=jax.process_index(),
            shard_count=jax.process_count(),
            chunks=chunks,
            shuffle=cfg.data.shuffle,
        )
        self.data_iter = iter(loader)
        self.identity = ckpt.model_identity(setup.model, cfg.model.spec)
        self.trainable_config = config_to_dict(cfg.trainable)

    def policy(self, state: dict) -> tuple[Model, tuple]:
        """The current policy `(model, interventions)`."""
        return build_policy(self.setup.model, state["trainable"], self.cfg.trainable)

    def checkpoint_meta(self) -> dict:
        """What each checkpoint records besides the state (the Run adds the evaluations)."""
        return {
            "model": self.identity,
            "trainable": self.trainable_config,
            "data_state": ckpt.encode_data_state(self.data_iter.get_state()),
            "process_count": jax.process_count(),
            "config": config_to_dict(self.cfg),
        }

    def step(self, state: dict, rng: jax.Array, step: int) -> tuple[dict, jax.Array, dict]:
        raise NotImplementedError

    def describe(self, n_trainable: int) -> str:
        raise NotImplementedError

    def postfix(self, record: dict) -> dict:
        raise NotImplementedError


def train_loop(cfg: TrainConfig, inputs: Inputs, run: Run, learner: GradientLearner) -> tuple[Any, list, dict]:
    """Run `learner` on `run` from its latest checkpoint (or the start): held-out evaluation
    before / during / after, metrics every `log_every` steps, checkpoints every `checkpoint.every`,
    the steering export and the summary. Returns `(trainable, history, files)`."""
    restored, meta = run.restore(
        {"train": learner.setup.state, "rng": learner.setup.rng},
        identity=learner.identity,
        trainable_config=learner.trainable_config,
    )
    state, rng = restored["train"], restored["rng"]
    if meta is not None:
        learner.data_iter.set_state(ckpt.decode_data_state(meta["data_state"]))
    n_trainable = count_params(state["trainable"])
    run.say(learner.describe(n_trainable))
    held_out = HeldOut.from_config(
        cfg, inputs.eval_examples, inputs.encode, inputs.tokenizer, inputs.reward_fn, mesh=learner.mesh
    )
    held_out.before(run, learner.setup.model)
    history: list[dict] = []
    t_train = time.perf_counter()
    with run.progress(cfg.steps, "train") as bar:
        for step in range(run.start_step, cfg.steps):
            state, rng, record = learner.step(state, rng, step)
            done = step + 1
            run.check_finite(
                done, {"loss": record["loss"], "grad_norm": record["grad_norm"], "trainable": state["trainable"]}
            )
            if done % max(cfg.log_every, 1) == 0 or done == cfg.steps:
                run.log(done, record)
            history.append({"step": done, **record})
            bar.set_postfix(**learner.postfix(record))
            bar.update(1)
            held_out.during(run, done, lambda state=state: learner.policy(state))
            if run.due(done, cfg.checkpoint.every, cfg.steps):
                run.save(done, {"train": state, "rng": rng}, learner.checkpoint_meta())
    train_seconds = time.perf_counter() - t_train
    held_out.after(run, lambda: learner.policy(state))
    trainable = to_host(state["trainable"])
    if cfg.trainable.kind in LAYERED_KINDS:
        run.files.update(export_steering(run.directory, cfg, learner.setup.model, trainable, run.say))
    files = run.finish(
        {
            "steps": cfg.steps,
            "algorithm": cfg.algorithm,
            "trainable_kind": cfg.trainable.kind,
            "trainable_params": n_trainable,
            "rollouts": cfg.steps * cfg.rollouts_per_step,
            "train_seconds": train_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "eval_before": run.evals.get("before"),
            "eval_after": run.evals.get("after"),
        },
        title=f"{cfg.model.spec} / {cfg.algorithm} / {cfg.trainable.kind}",
    )
    return trainable, history, files


def describe_run(cfg: TrainConfig, model: Model, n_trainable: int, mesh, load_seconds: float, learner: str) -> str:
    """The one-line description a gradient run prints at its start (`learner`: what it trains on)."""
    c = model.config
    return (
        f"model {cfg.model.spec}: {c.architecture}, {c.n_layers} layers, d={c.d_model} | "
        f"trainable {cfg.trainable.kind} "
        f"({n_trainable:,} parameters) | {learner}, "
        f"{cfg.optimizer.micro_batches} micro-batch(es), lr {cfg.optimizer.lr:g} | mesh data={mesh.shape['data']} "
        f"fsdp={mesh.shape['fsdp']} on {len(mesh.devices.flat)} {jax.default_backend()} device(s), "
        f"{jax.process_count()} process(es) | load {load_seconds:.1f} s"
    )


__all__ = [
    "trim_completions",
    "split_micro_batches",
    "accumulate_gradients",
    "apply_gradients",
    "compile_update",
    "GradientLearner",
    "train_loop",
    "describe_run",
]
