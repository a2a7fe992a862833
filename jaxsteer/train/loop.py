"""The RL training loop: rollouts -> rewards -> advantages -> one jitted, sharded update.

    from jaxsteer.train.config import load_config
    from jaxsteer.train.loop import train
    result = train(load_config("experiments/smollm2_arithmetic_steering.yaml", ["steps=20"]))

Per step (`cfg.steps` of them):

1. take `prompts_per_step / process_count` prompts from this process's shard of the grain loader;
2. sample G completions per prompt with the core's compiled sampler (`jaxsteer.generate`),
   under the current policy (`apply_trainable`): one call for the whole batch with
   `algorithm.dash`, else one call per micro-batch;
3. rewards in Python (text or token ids), group advantages (RLOO / GRPO / mean);
4. `updates_per_batch` optimizer updates (1 = on-policy), each one jitted step with the
   micro-batches accumulated inside by `lax.scan`, explicit shardings on a ("data", "fsdp") mesh;
5. metrics to tqdm / JSONL / TensorBoard, checkpoints every `checkpoint.every` steps.

Held-out accuracy is measured before (the base policy) and after training; at the end the
curves are plotted, steering vectors exported (`.npy` + HF safetensors patch) and their logit
lens printed. `resume=True` continues exactly from the latest checkpoint in `output_dir`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ..models.config import ModelConfig, RopeConfig
from ..models.generate import pad_id_for
from ..models.params import Model, init_params
from . import checkpoint as ckpt
from .config import ConfigError, TrainConfig, config_to_dict, save_config
from .evaluate import evaluate_policy, format_result
from .export import save_hf_patch, save_npy, steering_array
from .losses import group_advantages, zero_std_fraction
from .metrics import RunLogger, plot_curves
from .rollout import collect, encode_prompt
from .sharding import batch_sharding, global_batch, make_mesh, n_batch_shards, replicated, tree_shardings
from .step import StepSpec, _policy, compile_step, init_state, make_optimizer
from .trainable import count_params, init_trainable

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class TrainResult:
    """What `train` hands back."""

    config: TrainConfig
    model: Model
    tokenizer: Any
    trainable: Any
    history: list[dict]
    eval_before: dict | None
    eval_after: dict | None
    output_dir: str
    files: dict[str, str]


# --------------------------------------------------------------------------- building blocks


def build_model(spec) -> tuple[Model, Any]:
    """The model (and tokenizer) a `ModelSpec` names; "random" builds one from `spec.random`."""
    dtype = _DTYPES[spec.dtype]
    if spec.spec == "random":
        fields = dict(spec.random or {})
        fields.setdefault("architecture", "LlamaForCausalLM")
        fields.setdefault("norm_eps", 1e-5)
        fields.setdefault("eos_token_ids", (1,))
        fields.setdefault("pad_token_id", 0)
        fields["eos_token_ids"] = tuple(fields["eos_token_ids"])
        fields["rope_full"] = RopeConfig(theta=float(fields.pop("rope_theta", 10000.0)))
        if "head_dim" not in fields and "d_model" in fields and "n_heads" in fields:
            fields["head_dim"] = fields["d_model"] // fields["n_heads"]
        fields.setdefault("n_kv_heads", fields.get("n_heads"))
        try:
            config = ModelConfig(**fields)
        except TypeError as e:
            raise ConfigError(f"model.random: {e}") from None
        return init_params(config, jax.random.PRNGKey(spec.random_seed), dtype=dtype, scale=spec.random_scale), None
    from ..models.loading import load

    return load(spec.spec, dtype=dtype)


def load_examples(spec: str) -> list:
    """Examples from a dataset spec (`load_dataset`), or `"py:module:function"` (called with no args)."""
    if spec.startswith("py:"):
        module, _, fn = spec[3:].partition(":")
        return list(getattr(importlib.import_module(module), fn)())
    from .data import load_dataset

    return load_dataset(spec)


def _gather(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x)).reshape(-1)


class _Printer:
    def __init__(self, pbar_holder: list):
        self.holder = pbar_holder
        self.active = jax.process_index() == 0

    def __call__(self, *args):
        if not self.active:
            return
        msg = " ".join(str(a) for a in args)
        if self.holder and self.holder[0] is not None:
            self.holder[0].write(msg)
        else:
            print(msg, flush=True)


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


def setup_training(cfg: TrainConfig, model: Model, mesh) -> Setup:
    """Place the base model on the mesh, build the optimizer, the initial train state (trainable in
    float32, created directly with its shardings) and the step spec."""
    a = cfg.algorithm
    tcfg = cfg.trainable
    fsdp = mesh.shape["fsdp"] > 1
    rows_per_micro = cfg.rollouts_per_step // a.updates_per_batch // a.micro_batches
    base_shardings = tree_shardings(model, mesh, shard=fsdp)
    model = jax.device_put(model, base_shardings)
    init_key, rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    trainable0 = init_trainable(model, tcfg, init_key)
    tx, sched = make_optimizer(
        cfg.lr, cfg.steps * a.updates_per_batch, warmup_frac=cfg.warmup_frac, schedule=cfg.schedule,
        weight_decay=cfg.weight_decay, b1=cfg.b1, b2=cfg.b2, eps=cfg.adam_eps, grad_clip=cfg.grad_clip,
    )
    abstract = jax.eval_shape(lambda t: init_state(t, tx), trainable0)
    shard_state = tcfg.kind == "full" and fsdp
    state_shardings = {
        "step": replicated(mesh),
        "trainable": tree_shardings(abstract["trainable"], mesh, shard_state),
        "opt": tree_shardings(abstract["opt"], mesh, shard_state),
    }
    state = jax.jit(lambda t: init_state(t, tx), out_shardings=state_shardings)(trainable0)
    spec = StepSpec(
        trainable=tcfg,
        loss=cfg.loss,
        algorithm=a.name,
        ei_threshold=a.ei_threshold,
        temperature=cfg.sampling.temperature,
        on_policy=a.updates_per_batch == 1 and cfg.loss.clip_eps_low is None and cfg.loss.importance_cap is None,
        need_ref=cfg.loss.kl_coef > 0 or a.log_kl,
        shared_prompts=a.group_size if rows_per_micro % a.group_size == 0 else 1,
    )
    batch_shardings = {
        "tokens": batch_sharding(mesh, 3),
        "mask": batch_sharding(mesh, 3),
        "old_logp": batch_sharding(mesh, 3),
        "advantages": batch_sharding(mesh, 2),
        "rewards": batch_sharding(mesh, 2),
    }
    return Setup(model, state, rng, tx, sched, spec, base_shardings, state_shardings, batch_shardings)


# --------------------------------------------------------------------------- the loop


def train(
    cfg: TrainConfig,
    *,
    model: Model | None = None,
    tokenizer: Any = None,
    reward_fn: Callable | None = None,
    train_examples: Sequence | None = None,
    eval_examples: Sequence | None = None,
    resume: bool = False,
    devices: Sequence | None = None,
) -> TrainResult:
    """Run RL training as configured; see the module docstring. Arguments other than `cfg`
    override what the config would load (tests pass tiny models and token-id tasks).
    `algorithm.name` es | eggroll | essa runs evolution strategies instead (`jaxsteer.train.es.train_es`)."""
    from .data import make_loader
    from .rewards import get_reward_fn

    if cfg.is_es:
        from .es import train_es

        if devices is not None:
            raise ConfigError("train(devices=...) is not supported for ES runs; the population uses every device")
        return train_es(cfg, model=model, tokenizer=tokenizer, reward_fn=reward_fn, train_examples=train_examples,
                        eval_examples=eval_examples, resume=resume)

    pbar_holder: list = [None]
    say = _Printer(pbar_holder)
    out_dir = cfg.output_dir
    a, s = cfg.algorithm, cfg.sampling
    pid, nproc = jax.process_index(), jax.process_count()
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)

    # ---- model, data, reward
    t_load = time.perf_counter()
    if model is None:
        model, tokenizer = build_model(cfg.model)
    c = model.config
    reward_fn = get_reward_fn(reward_fn if reward_fn is not None else cfg.data.reward)
    if train_examples is None:
        train_examples = load_examples(cfg.data.train)
    if eval_examples is None and cfg.data.eval and (cfg.eval.before or cfg.eval.after or cfg.eval.every):
        eval_examples = load_examples(cfg.data.eval)
    eval_examples = list(eval_examples or [])[: cfg.eval.n]
    load_seconds = time.perf_counter() - t_load
    prompt_cache: dict[Any, list[int]] = {}

    def ids_of(ex):
        key = (ex.prompt, json.dumps((ex.meta or {}).get("prompt_ids")))
        if key not in prompt_cache:
            prompt_cache[key] = encode_prompt(ex, tokenizer, cfg.data.prompt_template, cfg.data.system)
        return prompt_cache[key]

    # ---- mesh, shardings, state, compiled step
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)
    shards = n_batch_shards(mesh)
    if a.prompts_per_step % nproc:
        raise ConfigError(f"algorithm.prompts_per_step={a.prompts_per_step} does not split over {nproc} processes")
    local_prompts = a.prompts_per_step // nproc
    rows_per_micro = cfg.rollouts_per_step // a.updates_per_batch // a.micro_batches
    if rows_per_micro % shards:
        raise ConfigError(
            f"a micro-batch has {rows_per_micro} rollouts, not divisible by the {shards} batch shards of the mesh "
            f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})"
        )
    calls = 1 if a.dash else a.micro_batches
    if local_prompts % calls:
        raise ConfigError(
            f"without dash, sampling runs once per micro-batch: prompts_per_step={a.prompts_per_step} must split "
            f"into micro_batches={a.micro_batches}"
        )
    tcfg = cfg.trainable
    setup = setup_training(cfg, model, mesh)
    model, state, tx, sched, spec = setup.model, setup.state, setup.tx, setup.schedule, setup.spec
    rng = setup.rng
    n_trainable = count_params(state["trainable"])
    step_fn = compile_step(
        spec, tx, base_shardings=setup.base_shardings, state_shardings=setup.state_shardings,
        batch_shardings=setup.batch_shardings, metric_sharding=replicated(mesh),
    )

    # ---- data loader, checkpoints, logging
    loader = make_loader(
        train_examples, batch_size=local_prompts, seed=cfg.seed, shard_index=pid, shard_count=nproc,
        shuffle=cfg.data.shuffle,
    )
    data_iter = iter(loader)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    if not resume:
        clear_checkpoints(ckpt_dir, say)
    checkpointer = ckpt.Checkpointer(ckpt_dir, keep=cfg.checkpoint.keep)
    identity = ckpt.model_identity(model, cfg.model.spec)
    tcfg_dict = config_to_dict(tcfg)
    start = 0
    eval_before = None
    if resume and checkpointer.latest_step() is not None:
        restored, meta = checkpointer.restore({"train": state, "rng": rng}, identity=identity, trainable_config=tcfg_dict)
        state, rng = restored["train"], restored["rng"]
        start = int(meta["step"])
        data_iter.set_state(ckpt.decode_data_state(meta["data_state"]))
        eval_before = meta.get("eval_before")
        say(f"resumed from {checkpointer.directory} at step {start}")
    elif resume:
        say(f"--resume: no checkpoint in {checkpointer.directory}; starting from scratch")
    logger = RunLogger(out_dir, tensorboard=cfg.tensorboard, resume_step=start if start else None)
    if jax.process_index() == 0:
        save_config(cfg, os.path.join(out_dir, "config.yaml"))

    say(
        f"model {cfg.model.spec}: {c.architecture}, {c.n_layers} layers, d={c.d_model} | trainable {tcfg.kind} "
        f"({n_trainable:,} parameters) | {a.name}/{a.advantage}, {a.prompts_per_step} prompts x G={a.group_size}, "
        f"{a.micro_batches} micro-batch(es), lr {cfg.lr:g} | mesh data={mesh.shape['data']} fsdp={mesh.shape['fsdp']} "
        f"on {len(mesh.devices.flat)} {jax.default_backend()} device(s), {nproc} process(es) | load {load_seconds:.1f} s"
    )

    eval_ids = [ids_of(e) for e in eval_examples]
    eval_kw = eval_settings(cfg, tokenizer, reward_fn)

    def run_eval(enabled: bool, label: str) -> dict:
        m, ivs = _policy(model, state["trainable"], spec) if enabled else (model, ())
        r = evaluate_policy(m, ivs, eval_examples, eval_ids, keep_texts=3, **eval_kw)
        say(format_result(label, r) + f"  [{r['seconds']:.0f} s]")
        return r

    if eval_examples and cfg.eval.before and eval_before is None:
        say(f"held-out evaluation on {len(eval_examples)} problems (before training: the base model)")
        eval_before = run_eval(False, "base")
        logger.log(0, {f"base_{k}": v for k, v in eval_before.items() if k != "examples"}, kind="eval")

    # ---- train
    history: list[dict] = []
    pad_id = pad_id_for(model, tokenizer)
    from tqdm.auto import tqdm

    pbar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and jax.process_index() == 0),
                dynamic_ncols=True, desc="train")
    pbar_holder[0] = pbar
    t_train = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            examples = next(data_iter)
            prompt_ids = [ids_of(e) for e in examples]
            rng, k_step = jax.random.split(rng)  # raw uint32 keys (what the checkpoint stores)
            k_sample = jax.random.fold_in(k_step, pid)
            policy_model, ivs = _policy(model, state["trainable"], spec)
            G = a.group_size
            batch = collect(
                policy_model, ivs, examples, prompt_ids, group_size=G, calls=calls, tokenizer=tokenizer,
                key=k_sample, reward_fn=reward_fn,
                advantage_fn=lambda r: np.asarray(group_advantages(r, G, a.advantage)) if a.name == "grpo" else r,
                max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                bucket=s.bucket, pad_id=pad_id,
            )
            t_roll = time.perf_counter() - t0
            t1 = time.perf_counter()
            rows = len(batch.rewards)
            per_update = rows // a.updates_per_batch
            step_metrics = []
            for u in range(a.updates_per_batch):
                sl = slice(u * per_update, (u + 1) * per_update)
                local = {
                    "tokens": batch.tokens[sl],
                    "mask": batch.mask[sl],
                    "old_logp": batch.old_logp[sl],
                    "advantages": batch.advantages[sl],
                    "rewards": batch.rewards[sl],
                }
                local = {k: v.reshape(a.micro_batches, -1, *v.shape[1:]) for k, v in local.items()}
                garr = {k: global_batch(v, mesh) for k, v in local.items()}
                state, m = step_fn(model, state, garr, batch.prompt_width)
                step_metrics.append(m)
            step_metrics = jax.device_get(step_metrics)
            t_upd = time.perf_counter() - t1
            rewards = _gather(batch.rewards)
            lengths = _gather(batch.lengths.astype(np.float32))
            m = {k: float(np.mean([sm[k] for sm in step_metrics])) for k in step_metrics[-1]}
            gen_tokens = float(batch.lengths.sum())
            record = {
                "reward_mean": float(rewards.mean()),
                "reward_std": float(rewards.std()),
                "accuracy": float((rewards > 0).mean()),
                "zero_std_fraction": float(zero_std_fraction(rewards, a.group_size)) if a.group_size > 1 else 1.0,
                "completion_length": float(lengths.mean()),
                "entropy": m.get("entropy"),
                "kl": m.get("kl") if spec.need_ref else None,
                "clip_fraction": m.get("clip_fraction"),
                "kept_fraction": m.get("kept_fraction"),
                "grad_norm": m.get("grad_norm"),
                "update_norm": m.get("update_norm"),
                "loss": m.get("loss"),
                "lr": float(sched((step + 1) * a.updates_per_batch - 1)),
                "rollout_tokens_per_s": gen_tokens / max(batch.sample_seconds, 1e-9),
                "rollout_s": t_roll,
                "update_s": t_upd,
                "rollout_share": t_roll / max(t_roll + t_upd, 1e-9),
                "step_s": time.perf_counter() - t0,
            }
            if (step + 1) % max(cfg.log_every, 1) == 0 or step + 1 == cfg.steps:
                logger.log(step + 1, record)
            history.append({"step": step + 1, **record})
            pbar.set_postfix(
                reward=f"{record['reward_mean']:+.2f}", acc=f"{record['accuracy']:.2f}",
                len=f"{record['completion_length']:.1f}", gnorm=f"{record['grad_norm']:.2g}",
                roll=f"{t_roll:.1f}s", upd=f"{t_upd:.1f}s", refresh=False,
            )
            pbar.update(1)
            done = step + 1
            if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.steps and eval_examples:
                r = run_eval(True, f"step {done}")
                logger.log(done, {k: v for k, v in r.items() if k != "examples"}, kind="eval")
            if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == cfg.steps:
                _save(checkpointer, done, state, rng, data_iter, identity, tcfg_dict, cfg, eval_before)
    finally:
        pbar.close()
        pbar_holder[0] = None
    train_seconds = time.perf_counter() - t_train

    # ---- after training
    eval_after = None
    if eval_examples and cfg.eval.after:
        say(f"held-out evaluation on {len(eval_examples)} problems (after {cfg.steps} steps)")
        if eval_before is not None:
            say(format_result("base", eval_before))
        eval_after = run_eval(True, "trained")
        logger.log(cfg.steps, {k: v for k, v in eval_after.items() if k != "examples"}, kind="eval")
    files: dict[str, str] = {"checkpoints": checkpointer.directory, "metrics": logger.path}
    trainable = jax.device_get(state["trainable"])
    finish_run(cfg, model, trainable if tcfg.kind == "steering" else None, logger.path, files, say, {
        "steps": cfg.steps,
        "algorithm": a.name,
        "trainable_kind": tcfg.kind,
        "trainable_params": n_trainable,
        "rollouts": cfg.steps * cfg.rollouts_per_step,
        "train_seconds": train_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "eval_before": eval_before,
        "eval_after": eval_after,
    })
    logger.close()
    checkpointer.close()
    return TrainResult(cfg, model, tokenizer, trainable, history, eval_before, eval_after, out_dir, files)



# --------------------------------------------------------------------------- shared with the ES loop


def eval_settings(cfg: TrainConfig, tokenizer, reward_fn) -> dict:
    """Keyword arguments of `evaluate_policy` for the run's held-out evaluation."""
    return dict(
        tokenizer=tokenizer, reward_fn=reward_fn, max_new_tokens=cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens,
        greedy=cfg.eval.greedy, samples=cfg.eval.samples, temperature=cfg.eval.temperature,
        batch_size=cfg.eval.batch_size, bucket=cfg.sampling.bucket, key=jax.random.PRNGKey(cfg.seed + 1),
    )


def clear_checkpoints(ckpt_dir: str, say: Callable = print) -> None:
    """A fresh (not resumed) run removes old checkpoints in its directory (process 0; all processes wait)."""
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        if jax.process_index() == 0:
            say(f"starting a fresh run: removing the old checkpoints in {ckpt_dir} (pass resume=True / --resume to continue)")
            shutil.rmtree(ckpt_dir)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("jaxsteer-fresh-run")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (`ru_maxrss`)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def finish_run(cfg: TrainConfig, model: Model, steering: Any, metrics_path: str, files: dict, say: Callable,
               summary: dict, what: str | None = None) -> None:
    """End of a run, on process 0: export steering vectors (`steering`: a steering trainable of
    `cfg.trainable`, or None) as `.npy` + HF safetensors patch, plot the curves (titled with
    `what` trained, default the trainable kind), write summary.json."""
    if jax.process_index() != 0:
        return
    out_dir = cfg.output_dir
    if steering is not None:
        tcfg = cfg.trainable
        files["vectors_npy"] = save_npy(os.path.join(out_dir, "steering_vectors.npy"), steering, tcfg, model.config.n_layers)
        try:
            files["vectors_safetensors"] = save_hf_patch(
                os.path.join(out_dir, "steering_vectors.safetensors"), steering, tcfg, model,
                extra_metadata={"model": cfg.model.spec, "steps": cfg.steps},
            )
        except ValueError as e:
            say(f"(no safetensors patch: {e})")
    if cfg.plot:
        png = plot_curves(metrics_path, os.path.join(out_dir, "curves.png"),
                          title=f"{cfg.model.spec} / {cfg.algorithm.name} / {what or cfg.trainable.kind}")
        if png:
            files["plot"] = png
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({**summary, "files": files}, f, indent=2, default=str)


def _save(checkpointer, step, state, rng, data_iter, identity, tcfg_dict, cfg, eval_before) -> None:
    meta = {
        "model": identity,
        "trainable": tcfg_dict,
        "data_state": ckpt.encode_data_state(data_iter.get_state()),
        "process_count": jax.process_count(),
        "config": config_to_dict(cfg),
        "eval_before": {k: v for k, v in (eval_before or {}).items() if k != "examples"} or None,
    }
    checkpointer.save(step, {"train": state, "rng": rng}, meta)


def load_trained(cfg: TrainConfig, *, step: int | None = None, model: Model | None = None, tokenizer: Any = None,
                 devices: Sequence | None = None):
    """`(model, tokenizer, trainable, spec, meta)` from the run's latest (or `step`) checkpoint in
    `cfg.output_dir`, validated like a resume."""
    if model is None:
        model, tokenizer = build_model(cfg.model)
    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices)
    setup = setup_training(cfg, model, mesh)
    checkpointer = ckpt.Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), read_only=True)
    restored, meta = checkpointer.restore(
        {"train": setup.state, "rng": setup.rng}, identity=ckpt.model_identity(setup.model, cfg.model.spec),
        trainable_config=config_to_dict(cfg.trainable), step=step,
    )
    checkpointer.close()
    return setup.model, tokenizer, restored["train"]["trainable"], setup.spec, meta


def evaluate_run(cfg: TrainConfig, *, step: int | None = None, base: bool = True, model: Model | None = None,
                 tokenizer: Any = None, eval_examples: Sequence | None = None, reward_fn: Callable | None = None) -> dict:
    """Held-out accuracy of a trained run (RL or ES) with and without its trained part (`jaxsteer eval`)."""
    from .rewards import get_reward_fn

    if cfg.is_es:
        from .es import load_es_policy

        model, tokenizer, (policy, ivs), meta = load_es_policy(cfg, step=step, model=model, tokenizer=tokenizer)
    else:
        model, tokenizer, trainable, spec, meta = load_trained(cfg, step=step, model=model, tokenizer=tokenizer)
        policy, ivs = _policy(model, trainable, spec)
    reward_fn = get_reward_fn(reward_fn if reward_fn is not None else cfg.data.reward)
    examples = list(eval_examples if eval_examples is not None else load_examples(cfg.data.eval))[: cfg.eval.n]
    ids = [encode_prompt(e, tokenizer, cfg.data.prompt_template, cfg.data.system) for e in examples]
    kw = eval_settings(cfg, tokenizer, reward_fn)
    out = {"step": int(meta["step"]), "n": len(examples)}
    if base:
        out["base"] = evaluate_policy(model, (), examples, ids, **kw)
    out["trained"] = evaluate_policy(policy, ivs, examples, ids, **kw)
    return out


def print_logit_lens(model: Model, tokenizer, vectors: np.ndarray, k: int = 5) -> None:
    """Top-k / bottom-k tokens of `W_U @ s_l` per layer (raw vector, no final norm), with the
    per-layer vector norms (`jaxsteer.analysis.lens.vector_lens`)."""
    from ..analysis.lens import vector_lens

    res = vector_lens(model, vectors, final_norm=False, k=k, tokenizer=tokenizer)
    norms = np.linalg.norm(np.asarray(vectors), axis=-1)
    print("vector norms per layer: " + " ".join(f"{n:.2f}" for n in norms))
    print(res.table())


__all__ = ["train", "TrainResult", "setup_training", "build_model", "load_examples", "load_trained", "evaluate_run",
           "print_logit_lens", "eval_settings", "clear_checkpoints", "peak_rss_mb", "finish_run"]
