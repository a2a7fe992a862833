"""The RL learner: rollouts -> rewards -> advantages -> one jitted, sharded update, on a `Run`.

Per step (`cfg.steps` of them):

1. take `prompts_per_step / process_count` prompts from this process's shard of the grain loader;
2. sample G completions per prompt with the core's compiled sampler (`jaxsteer.generate`),
   under the current policy (`build_policy`): one call for the whole batch with
   `algorithm.dash`, else one call per group of micro-batches up to `sampling.call_rows` rows;
3. rewards in Python (text or token ids), group advantages (RLOO / GRPO / mean); PPO: the value
   head's estimates under the sampling policy and per-token GAE advantages (`rl.value`);
4. `epochs` passes over `updates_per_batch` minibatches, one optimizer update each (1 x 1 =
   on-policy), each one jitted step with the
   micro-batches accumulated inside by `lax.scan`, explicit shardings on a ("data", "fsdp") mesh;
5. metrics to the run's progress bar / JSONL / TensorBoard, checkpoints every `checkpoint.every`.

The loop, the data stream, held-out evaluation, checkpoints and the export are the gradient
learners' shared `gradient.train_loop` / `GradientLearner` (SFT runs on them too, `train.sft`);
`train_rl` is what `jaxsteer.train.train` calls for RL configs.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ...models.generate import pad_id_for
from ...models.params import Model
from ..build import Inputs
from ..config import RL_ALGORITHMS, ConfigError, TrainConfig
from ..distributed import gather_rows
from ..gradient import GradientLearner, describe_run, split_micro_batches, train_loop
from ..run import Run
from ..sharding import batch_sharding, global_batch, make_mesh, n_batch_shards, replicated
from ..state import init_train_state, start_trainable
from .dash import pack_kept, packs_dash
from .dynamic import fill_batch
from .losses import group_advantages, zero_std_fraction
from .rollout import RolloutBatch, collect
from .step import StepSpec, compile_step
from .value import make_value_fn, ppo_targets

BATCH_KEYS = ("tokens", "mask", "old_logp", "advantages", "rewards")
PPO_KEYS = ("returns", "old_values")  # PPO's extra per-token arrays (and its advantages are per token)


def batch_keys(cfg: TrainConfig) -> tuple[str, ...]:
    """The rollout-batch arrays the update step reads."""
    return BATCH_KEYS + (PPO_KEYS if cfg.algorithm == "ppo" else ())


@dataclasses.dataclass
class Setup:
    """Everything derived from (config, model, mesh) that training and evaluation share."""

    model: Model
    state: dict
    rng: jax.Array
    tx: Any
    schedule: Callable
    spec: StepSpec
    base_shardings: Any
    state_shardings: Any
    batch_shardings: dict
    value_fn: Callable | None = None  # PPO: the value head's estimates of a rollout batch (`rl.value.make_value_fn`)
    value_tx: Any = None  # PPO: the value head's optimizer


def step_spec(cfg: TrainConfig) -> StepSpec:
    """The static description of the RL update a config asks for (Dr. GRPO's `seq_sum_norm` constant
    `loss.max_len` defaults to `sampling.max_new_tokens`)."""
    if cfg.algorithm not in RL_ALGORITHMS:
        raise ConfigError(f"algorithm={cfg.algorithm} is not an RL algorithm ({', '.join(RL_ALGORITHMS)})")
    a = cfg.rl
    rows_per_micro = cfg.rollouts_per_step // a.updates_per_batch // cfg.optimizer.micro_batches
    loss = cfg.rl.loss
    if loss.aggregation == "seq_sum_norm" and loss.max_len is None:  # Dr. GRPO: a constant, not the batch width
        loss = dataclasses.replace(loss, max_len=cfg.sampling.max_new_tokens)
    if a.advantage == "rapid" and (
        rows_per_micro % cfg.group_size or loss.dash_tau > 0 or loss.clip_eps_low is not None
    ):
        raise ConfigError(
            "rl.advantage=rapid needs whole groups in every micro-batch and no rl.loss.dash_tau "
            f"or ratio clipping (a micro-batch has {rows_per_micro} rows, group_size={cfg.group_size})"
        )
    return StepSpec(
        trainable=cfg.trainable,
        loss=loss,
        algorithm=cfg.algorithm,
        ei_threshold=a.ei_threshold,
        temperature=cfg.sampling.temperature,
        on_policy=(
            cfg.updates_per_step == 1
            and cfg.rl.loss.clip_eps_low is None
            and cfg.rl.loss.importance_cap is None
            and cfg.algorithm != "ppo"
        ),
        need_ref=cfg.rl.loss.kl_coef > 0 or a.log_kl,
        shared_prompts=cfg.group_size
        if rows_per_micro % cfg.group_size == 0 and not packs_dash(cfg.algorithm, cfg.rl)
        else 1,
        rapid_group=cfg.group_size if a.advantage == "rapid" and cfg.algorithm == "grpo" else 0,
        remat=cfg.model.remat_arg,
    )


def setup_training(cfg: TrainConfig, model: Model, mesh, tokenizer: Any = None) -> Setup:
    """Place the base model on the mesh, build the optimizer, the initial train state (trainable in
    float32, created directly with its shardings; from `model.init_from`'s run when set) and the
    step spec."""
    ts = init_train_state(cfg, model, mesh, cfg.steps * cfg.updates_per_step, start_trainable(cfg, model, tokenizer))
    per_row = ("rewards",) if cfg.algorithm == "ppo" else ("advantages", "rewards")
    batch_shardings = {k: batch_sharding(mesh, 2 if k in per_row else 3) for k in batch_keys(cfg)}
    spec = step_spec(cfg)
    value_fn = None
    if cfg.algorithm == "ppo":
        value_fn = make_value_fn(spec, base_shardings=ts.base_shardings, state_shardings=ts.state_shardings, mesh=mesh)
    return Setup(
        ts.model,
        ts.state,
        ts.rng,
        ts.tx,
        ts.schedule,
        spec,
        ts.base_shardings,
        ts.state_shardings,
        batch_shardings,
        value_fn,
        ts.value_tx,
    )


def sampler_calls(cfg: TrainConfig) -> int:
    """Sampler calls per RL step: 1 with `algorithm.dash`; else the fewest calls, one per group of
    consecutive micro-batches (a divisor of `micro_batches`), whose rows stay within
    `sampling.call_rows` (or one micro-batch's rows, when that is more; 0 = one call per micro-batch).
    Counted over the whole mesh, so the rollout is the same on any number of devices or processes."""
    a = cfg.rl
    if a.dash:
        return 1
    rows, m = cfg.rollouts_per_step, cfg.optimizer.micro_batches
    limit = max(cfg.sampling.call_rows, rows // m) if cfg.sampling.call_rows else rows // m
    return min(c for c in range(1, m + 1) if m % c == 0 and rows // c <= limit)


def check_layout(cfg: TrainConfig, mesh) -> tuple[int, int]:
    """`(prompts per process, sampler calls per step)`; ConfigError when the batch does not split
    over processes, mesh batch shards or micro-batches."""
    a, nproc = cfg.rl, jax.process_count()
    if cfg.prompts_per_step % nproc:
        raise ConfigError(f"prompts_per_step={cfg.prompts_per_step} does not split over {nproc} processes")
    shards = n_batch_shards(mesh)
    rows_per_micro = cfg.rollouts_per_step // a.updates_per_batch // cfg.optimizer.micro_batches
    if rows_per_micro % shards:
        raise ConfigError(
            f"a micro-batch has {rows_per_micro} rollouts, not divisible by the {shards} batch shards of the mesh "
            f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    local_prompts, calls = cfg.prompts_per_step // nproc, sampler_calls(cfg)
    if local_prompts % calls:
        raise ConfigError(
            f"without dash, sampling runs in {calls} calls of whole micro-batches (sampling.call_rows="
            f"{cfg.sampling.call_rows}): prompts_per_step={cfg.prompts_per_step} must split into them"
        )
    return local_prompts, calls


def update(step_fn, setup: Setup, state: dict, batch: RolloutBatch, cfg: TrainConfig, mesh) -> tuple[dict, dict]:
    """`epochs` passes of one optimizer step on each of `updates_per_batch` consecutive minibatches
    of a rollout batch (the same order every pass); metrics averaged over them, plus
    `clip_fraction_after_first`: the clip fraction of the updates after the first (whose ratios are
    all 1, so only later ones can clip)."""
    a = cfg.rl
    per_update = len(batch.rewards) // a.updates_per_batch
    metrics = []
    for _, u in itertools.product(range(a.epochs), range(a.updates_per_batch)):
        sl = slice(u * per_update, (u + 1) * per_update)
        local = {k: getattr(batch, k)[sl] for k in batch_keys(cfg)}
        if packs_dash(cfg.algorithm, cfg.rl):  # DASH: filtered samples never reach the forward / backward pass
            local, kept = pack_kept(
                local, per_update // cfg.optimizer.micro_batches, cfg.rl.loss.dash_tau, batch.prompt_width
            )
        else:
            local = split_micro_batches(local, cfg.optimizer.micro_batches)
        state, m = step_fn(setup.model, state, {k: global_batch(v, mesh) for k, v in local.items()}, batch.prompt_width)
        m = {**m, "update_rows": local["tokens"].shape[0] * local["tokens"].shape[1]}
        if packs_dash(cfg.algorithm, cfg.rl):
            m["kept_fraction"] = kept / per_update
        metrics.append(m)
    metrics = jax.device_get(metrics)
    out = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[-1]}
    if len(metrics) > 1 and "clip_fraction" in out:
        out["clip_fraction_after_first"] = float(np.mean([m["clip_fraction"] for m in metrics[1:]]))
    return state, out


def step_record(cfg: TrainConfig, spec: StepSpec, batch: RolloutBatch, m: dict, lr: float, times: tuple) -> dict:
    """The logged metrics of one step (rewards and lengths over all processes)."""
    t_roll, t_upd, t_step = times
    G = cfg.group_size
    rewards, lengths = gather_rows(batch.rewards), gather_rows(batch.lengths.astype(np.float32))
    task = rewards if batch.task_rewards is None else gather_rows(batch.task_rewards)
    return {
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "accuracy": float((task > 0).mean()),
        "zero_std_fraction": float(zero_std_fraction(task, G)) if G > 1 else 1.0,
        "completion_length": float(lengths.mean()),
        "entropy": m.get("entropy"),
        "kl": m.get("kl") if spec.need_ref else None,
        "clip_fraction": m.get("clip_fraction"),
        "clip_fraction_after_first": m.get("clip_fraction_after_first"),  # updates_per_batch > 1
        "value_loss": m.get("value_loss"),  # PPO
        "explained_variance": m.get("explained_variance"),  # PPO
        "value_clip_fraction": m.get("value_clip_fraction"),  # PPO
        "kept_fraction": m.get("kept_fraction"),
        "update_rows": m.get("update_rows"),  # rows run forward and backward (fewer with DASH's filter)
        "grad_norm": m.get("grad_norm"),
        "update_norm": m.get("update_norm"),
        "loss": m.get("loss"),
        "lr": lr,
        "rollout_tokens_per_s": float(batch.lengths.sum()) / max(batch.sample_seconds, 1e-9),
        "rollout_s": t_roll,
        "update_s": t_upd,
        "rollout_share": t_roll / max(t_roll + t_upd, 1e-9),
        "step_s": t_step,
    }


class RLLearner(GradientLearner):
    """One RL run's compiled step, data stream and per-step logic (rollout, update, record)."""

    def __init__(self, cfg: TrainConfig, inputs: Inputs, mesh):
        local_prompts, self.calls = check_layout(cfg, mesh)
        setup = setup_training(cfg, inputs.model, mesh, inputs.tokenizer)
        # sampling call c gets the same prompts on any process count
        super().__init__(cfg, inputs, mesh, setup, local_prompts=local_prompts, chunks=self.calls)
        self.step_fn = compile_step(
            setup.spec,
            setup.tx,
            base_shardings=setup.base_shardings,
            state_shardings=setup.state_shardings,
            batch_shardings=setup.batch_shardings,
            metric_sharding=replicated(mesh),
            value_tx=setup.value_tx,
        )
        self.rollout_stats: dict = {}  # dynamic sampling's rounds / dropped / short groups of the last step

    def describe(self, n_trainable: int) -> str:
        """The run's one-line description (model, trainable, algorithm and advantages, mesh)."""
        cfg, a = self.cfg, self.cfg.rl
        advantage = f"gae(gamma={a.gamma:g}, lambda={a.gae_lambda:g})" if cfg.algorithm == "ppo" else a.advantage
        return describe_run(
            cfg,
            self.setup.model,
            n_trainable,
            self.mesh,
            self.inputs.load_seconds,
            f"{cfg.algorithm}/{advantage}, {cfg.prompts_per_step} prompts x G={cfg.group_size}",
        )

    def postfix(self, record: dict) -> dict:
        """The progress bar's postfix of a step's record."""
        return dict(
            reward=f"{record['reward_mean']:+.2f}",
            acc=f"{record['accuracy']:.2f}",
            len=f"{record['completion_length']:.1f}",
            gnorm=f"{record['grad_norm']:.2g}",
            roll=f"{record['rollout_s']:.1f}s",
            upd=f"{record['update_s']:.1f}s",
            refresh=False,
        )

    def rollout(self, state: dict, key: jax.Array) -> RolloutBatch:
        """Sample, score and compute advantages for the next batch of prompts."""
        cfg, inp = self.cfg, self.inputs
        a = cfg.rl
        G = cfg.group_size
        advantage_fn = (
            (lambda r: np.asarray(group_advantages(r, G, a.advantage))) if cfg.algorithm == "grpo" else (lambda r: r)
        )
        model, ivs = self.policy(state)
        # one key for the whole (multi-process) batch: the sampler runs on the mesh, each device its rows

        def sample(round_: int) -> RolloutBatch:  # round 0 = the step's batch, then DAPO's extra rounds
            examples = next(self.data_iter)
            return collect(
                model,
                ivs,
                examples,
                [inp.encode(e) for e in examples],
                group_size=G,
                calls=self.calls,
                tokenizer=inp.tokenizer,
                key=key if round_ == 0 else jax.random.fold_in(key, round_),
                reward_fn=inp.reward_fn,
                advantage_fn=advantage_fn,
                sampling=self.cfg.sampling,
                overlong_buffer=a.overlong_buffer,
                mesh=self.mesh,
            )

        if not a.dynamic_sampling:
            batch = sample(0)
        else:
            batch, self.rollout_stats = fill_batch(
                sample,
                cfg.prompts_per_step // jax.process_count(),
                G,
                a.dynamic_sampling_rounds,
                pad_id_for(model, inp.tokenizer),
            )
        if cfg.algorithm == "ppo":
            batch = ppo_targets(
                self.setup.value_fn,
                self.setup.model,
                state,
                batch,
                micro_batches=cfg.optimizer.micro_batches,
                gamma=a.gamma,
                lam=a.gae_lambda,
                mesh=self.mesh,
            )
        return batch

    def step(self, state: dict, rng: jax.Array, step: int) -> tuple[dict, jax.Array, dict]:
        """One training step: rollout, update(s), the logged record."""
        t0 = time.perf_counter()
        rng, k_step = jax.random.split(rng)  # raw uint32 keys (what the checkpoint stores)
        batch = self.rollout(state, k_step)
        t1 = time.perf_counter()
        state, m = update(self.step_fn, self.setup, state, batch, self.cfg, self.mesh)
        t2 = time.perf_counter()
        lr = float(self.setup.schedule((step + 1) * self.cfg.updates_per_step - 1))
        record = step_record(self.cfg, self.setup.spec, batch, m, lr, (t1 - t0, t2 - t1, t2 - t0))
        return state, rng, {**record, **self.rollout_stats}


def train_rl(cfg: TrainConfig, inputs: Inputs, run: Run, *, devices: Sequence | None = None) -> tuple[Any, list, dict]:
    """An RL run on `run` (see the module docstring; the loop is `gradient.train_loop`). Returns
    `(trainable, history, files)`."""
    return train_loop(cfg, inputs, run, RLLearner(cfg, inputs, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)))


__all__ = [
    "Setup",
    "step_spec",
    "setup_training",
    "sampler_calls",
    "check_layout",
    "update",
    "step_record",
    "RLLearner",
    "train_rl",
]
