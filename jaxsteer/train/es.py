"""Evolution strategies over a frozen model: population evaluation as one compiled program, and the
ES train loop (ES at scale / EGGROLL / ESSA; see docs/es.md).

    space = EggrollSpace(rank=1)                           # or SteeringSpace(), essa_space(model, lora, cfg), FullSpace()
    strategy = OpenES(population=32, sigma=1e-3, lr=1e-3)  # or CMAES / SepCMAES for dense spaces
    result = run_es(model, space, strategy, examples=examples, reward_fn="correctness",
                    tokenizer=tokenizer, generations=50, prompts_per_generation=8)

One generation: every member (its parameters regenerated from `fold_in(noise_key, m)` inside the
program) generates completions for the same prompts, the member axis vmapped (and split over
devices with `shard_map` when a mesh is given); rewards run in Python on the decoded texts; the
fitness (mean reward over prompts) is shaped and the strategy updates its state, a pytree
`{"theta", "opt", "key", "generation"}` that `jaxsteer.train.checkpoint` saves with Orbax.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ..models.decoder import PROJECTIONS
from ..models.generate import SamplingConfig, _generate, default_stop_tokens, left_pad, pad_id_for
from ..models.params import Model
from .es_optim import CMAES, STRATEGIES, OpenES, SepCMAES, fitness, sampling_key
from .es_spaces import EggrollSpace, ESSASpace, FullSpace, TrainableSpace, essa_space
from .trainable import TrainableConfig

# --------------------------------------------------------------------------- population evaluation


@dataclasses.dataclass
class PopulationOutput:
    """Completions of every member on the same prompts.

    tokens / logprobs `[M, B, N]`, lengths `[M, B]` (as `Generation`: pad after the stop token,
    log-prob 0 there); prompt_tokens / prompt_mask `[B, P]`; texts `[M][B]` when a tokenizer was
    given; seconds: wall time of the compiled call."""

    tokens: np.ndarray
    logprobs: np.ndarray
    lengths: np.ndarray
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray
    texts: list[list[str]] | None
    seconds: float


def member_mesh(devices: Sequence | None = None, axis: str = "members") -> Mesh:
    """A 1-D mesh over `devices` (default: all) whose axis carries the population."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices, dtype=object), (axis,))


def _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch):
    """ids `[m]` -> (tokens, logprobs, lengths) for those members (vmapped, or in chunks)."""
    skey = sampling_key(state)

    def one(m):
        member = strategy.member(space, state, m)
        run_model, interventions = space.apply(model, member)
        return _generate(run_model, prompt, mask, skey, stop_ids, pad_id, interventions, sampling)

    def many(ids):
        if member_batch and member_batch < ids.shape[0]:
            return jax.lax.map(one, ids, batch_size=member_batch)
        return jax.vmap(one)(ids)

    return many


@functools.partial(jax.jit, static_argnames=("sampling", "member_batch", "mesh", "axis"))
def _population(model, space, strategy, state, member_ids, prompt, mask, stop_ids, pad_id, *, sampling,
                member_batch, mesh, axis):
    if mesh is None:
        many = _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch)
        return many(member_ids)

    def local(ids, model, space, strategy, state, prompt, mask, stop_ids, pad_id):
        many = _members_fn(model, space, state, prompt, mask, stop_ids, pad_id, strategy, sampling, member_batch)
        return many(ids)

    sharded = jax.shard_map(
        local, mesh=mesh, in_specs=(P(axis),) + (P(),) * 8, out_specs=P(axis), check_vma=False
    )
    return sharded(member_ids, model, space, strategy, state, prompt, mask, stop_ids, pad_id)


def population_generate(
    model: Model,
    space,
    strategy,
    state: dict,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_tokens: Sequence[int] | None = None,
    tokenizer: Any = None,
    bucket: int = 8,
    member_ids: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] = "members",
    member_batch: int | None = None,
) -> PopulationOutput:
    """Generate with every member of `strategy`'s population (or `member_ids`) on the same prompts,
    in one compiled call.

    Member m's parameters are `strategy.member(space, state, m)`, regenerated inside the program.
    Sampled decoding (`greedy=False`) uses one key for all members (common random numbers).
    mesh: split the member axis over `axis` of this mesh (`shard_map`; the model and prompts are
    replicated); the number of members must divide evenly. member_batch: evaluate this many
    members at a time (`lax.map`), bounding memory for large spaces such as `FullSpace`."""
    if not prompt_ids:
        raise ValueError("no prompts")
    ids = np.arange(strategy.population) if member_ids is None else np.asarray(member_ids)
    width = -(-max(len(p) for p in prompt_ids) // bucket) * bucket
    if width + max_new_tokens > model.config.max_position_embeddings:
        raise ValueError(f"prompt ({width} padded) + max_new_tokens ({max_new_tokens}) exceeds max_position_embeddings")
    pad_id = pad_id_for(model, tokenizer)
    toks, mask = left_pad([list(map(int, p)) for p in prompt_ids], pad_id, width)
    if stop_tokens is None:
        stop_tokens = default_stop_tokens(model, tokenizer)
    stop_ids = jnp.asarray(list(stop_tokens) or [-1], jnp.int32)
    sampling = SamplingConfig(int(max_new_tokens), float(temperature), int(top_k), float(top_p), bool(greedy))
    member_ids_arr = jnp.asarray(ids, jnp.int32)
    args = (model, space, strategy, state)
    if mesh is not None:
        n = int(np.prod([mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,))]))
        if len(ids) % n:
            raise ValueError(f"{len(ids)} members do not split over {n} devices of mesh axis {axis!r}")
        args = jax.device_put(args, NamedSharding(mesh, P()))
        member_ids_arr = jax.device_put(member_ids_arr, NamedSharding(mesh, P(axis)))
    t0 = time.perf_counter()
    out = _population(
        *args, member_ids_arr, jnp.asarray(toks), jnp.asarray(mask), stop_ids, pad_id,
        sampling=sampling, member_batch=member_batch or None, mesh=mesh, axis=axis,
    )
    tokens, logprobs, lengths = (np.asarray(x) for x in jax.block_until_ready(out))
    seconds = time.perf_counter() - t0
    texts = None
    if tokenizer is not None:
        texts = [[tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(tm, lm)] for tm, lm in zip(tokens, lengths)]
    return PopulationOutput(tokens, logprobs, lengths, toks, mask, texts, seconds)


def score_population(reward_fn: Callable, examples: Sequence, prompt_ids: Sequence[Sequence[int]], out: PopulationOutput) -> np.ndarray:
    """Rewards `[M, B]` in Python: `reward_fn(prompt, text, answer)`, or with token ids when the
    function has `uses_tokens = True` (`jaxsteer.train.rollout.token_reward`)."""
    from .rollout import score

    rows = []
    for m in range(out.tokens.shape[0]):
        gen = types.SimpleNamespace(tokens=out.tokens[m], lengths=out.lengths[m], texts=None if out.texts is None else out.texts[m])
        rows.append(score(reward_fn, examples, prompt_ids, gen))
    return np.stack(rows).astype(np.float32)


# --------------------------------------------------------------------------- one generation


@jax.jit
def _update(space, strategy, state, rewards):
    return strategy.update(space, state, rewards)


def center_member(space, theta):
    """The unperturbed member (theta itself, as `space.apply` takes it)."""
    return space.perturb(theta, jax.random.PRNGKey(0), 0.0)


def es_generation(
    model: Model,
    space,
    strategy,
    state: dict,
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    reward_fn: Callable,
    **generate_kwargs,
) -> tuple[dict, dict, PopulationOutput, np.ndarray]:
    """One generation: evaluate the population (one compiled call), rewards `[M, B]` in Python,
    shape + update (one jitted call). Returns (new state, metrics, outputs, rewards)."""
    out = population_generate(model, space, strategy, state, prompt_ids, **generate_kwargs)
    t0 = time.perf_counter()
    rewards = score_population(reward_fn, examples, prompt_ids, out)
    t_reward = time.perf_counter() - t0
    t0 = time.perf_counter()
    new_state, metrics = _update(space, strategy, state, jnp.asarray(rewards))
    metrics = {k: np.asarray(v).item() for k, v in jax.device_get(metrics).items()}
    t_update = time.perf_counter() - t0
    generated = int(out.lengths.sum())
    metrics.update(
        generation=int(state["generation"]),
        population=int(out.tokens.shape[0]),
        prompts=len(prompt_ids),
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std()),
        accuracy=float((rewards > 0).mean()),
        completion_length=float(out.lengths.mean()),
        eval_seconds=out.seconds,
        reward_seconds=t_reward,
        update_seconds=t_update,
        generated_tokens_per_s=generated / max(out.seconds, 1e-9),
    )
    return new_state, metrics, out, rewards


# --------------------------------------------------------------------------- config and loop


ES_ALGORITHMS = ("es", "eggroll", "essa")


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """The `es:` section of a training config (used when `algorithm.name` is es | eggroll | essa).

    The algorithm picks the defaults: "es" = dense ES over `space` (default the run's `trainable`,
    e.g. steering vectors), "eggroll" = low-rank perturbations of the projection matrices, "essa" =
    the singular values of LoRA adapters.
    space: "trainable" | "full" | "eggroll" | "essa" (None: from the algorithm).
    strategy: "openai" | "cma" | "sep_cma" (None: "cma" for essa, else "openai").
    sigma: noise scale (OpenES) or initial step size (CMA). lr, optimizer, shaping, antithetic,
    divide_by_sigma: OpenES settings (see `OpenES`). rank: EGGROLL noise rank. targets:
    projections for eggroll / fresh essa. top_p, essa_rank: ESSA (rank only for a fresh start).
    warm_start: ESSA's LoRA warm start, the output directory of a LoRA training run (its latest
    checkpoint; None = fresh adapters with s = 0). member_batch: members evaluated at once (0 = all).
    greedy: greedy evaluation (else sampled with the run's sampling settings, one key shared by all
    members).
    """

    space: str | None = None
    strategy: str | None = None
    population: int = 32
    sigma: float = 0.02
    lr: float = 0.01
    optimizer: str = "sgd"
    shaping: str = "centered_rank"
    antithetic: bool = True
    divide_by_sigma: bool = True
    rank: int = 1
    targets: tuple[str, ...] = PROJECTIONS
    top_p: float = 1.0
    essa_rank: int = 8
    warm_start: str | None = None
    member_batch: int = 0
    greedy: bool = True

    def __post_init__(self):
        if self.space not in (None, "trainable", "full", "eggroll", "essa"):
            raise ValueError(f"es.space must be trainable, full, eggroll or essa, got {self.space!r}")
        if self.strategy not in (None, *STRATEGIES):
            raise ValueError(f"es.strategy must be one of {sorted(STRATEGIES)}, got {self.strategy!r}")
        if self.population < 2:
            raise ValueError(f"es.population must be >= 2, got {self.population}")
        bad = [t for t in self.targets if t not in PROJECTIONS]
        if bad:
            raise ValueError(f"es.targets: unknown projections {bad}; choose from {list(PROJECTIONS)}")
        object.__setattr__(self, "targets", tuple(self.targets))

    def space_for(self, algorithm: str) -> str:
        _check_algorithm(algorithm)
        return self.space or {"es": "trainable", "eggroll": "eggroll", "essa": "essa"}[algorithm]

    def strategy_for(self, algorithm: str) -> str:
        _check_algorithm(algorithm)
        return self.strategy or ("cma" if algorithm == "essa" else "openai")


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ES_ALGORITHMS:
        raise ValueError(f"ES algorithm must be one of {ES_ALGORITHMS}, got {algorithm!r}")


def build_es(
    model: Model, cfg: ESConfig, algorithm: str = "es", trainable: TrainableConfig | None = None,
    lora: dict | None = None, seed: int = 0,
):
    """`(space, strategy)` for an `ESConfig` and algorithm (es | eggroll | essa). trainable: the
    parameterisation for space "trainable" (default steering on every layer); lora + trainable
    (kind "lora"): ESSA's warm start."""
    name = cfg.space_for(algorithm)
    if name == "trainable":
        space = TrainableSpace(trainable or TrainableConfig())
    elif name == "full":
        space = FullSpace()
    elif name == "eggroll":
        space = EggrollSpace(targets=cfg.targets, rank=cfg.rank)
    else:
        space = essa_space(model, lora, trainable if lora is not None else None, top_p=cfg.top_p,
                           rank=cfg.essa_rank, targets=cfg.targets, seed=seed)
    strategy_name = cfg.strategy_for(algorithm)
    if strategy_name == "openai":
        strategy = OpenES(population=cfg.population, sigma=cfg.sigma, lr=cfg.lr, antithetic=cfg.antithetic,
                          shaping=cfg.shaping, divide_by_sigma=cfg.divide_by_sigma, optimizer=cfg.optimizer)
    else:
        strategy = STRATEGIES[strategy_name](population=cfg.population, sigma=cfg.sigma)
    return space, strategy


@dataclasses.dataclass
class ESResult:
    state: dict
    history: list[dict]
    space: Any
    strategy: Any
    files: dict[str, str]


def _describe(space, strategy) -> dict:
    """JSON-able identity of (space, strategy), checked against a checkpoint on resume."""
    d = {"space": type(space).__name__, "strategy": type(strategy).__name__}
    for f in dataclasses.fields(strategy):
        d[f.name] = getattr(strategy, f.name)
    for field in ("cfg", "paths", "targets", "rank", "n_active"):
        if hasattr(space, field):
            v = getattr(space, field)
            d[f"space_{field}"] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    plain = lambda x: np.asarray(x).tolist() if isinstance(x, (np.ndarray, np.generic, jax.Array)) else str(x)
    return json.loads(json.dumps(d, default=plain))


def run_es(
    model: Model,
    space,
    strategy,
    *,
    examples: Sequence,
    reward_fn: Callable | str = "correctness",
    tokenizer: Any = None,
    generations: int = 100,
    prompts_per_generation: int = 8,
    seed: int = 0,
    state: dict | None = None,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_tokens: Sequence[int] | None = None,
    bucket: int = 8,
    prompt_template: str = "chat",
    system: str | None = None,
    shuffle: bool = True,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] = "members",
    member_batch: int | None = None,
    output_dir: str | None = None,
    checkpoint_every: int = 0,
    keep: int = 2,
    resume: bool = False,
    log: Callable[[str], None] | None = print,
    log_every: int = 1,
    progress: bool = False,
    tensorboard: bool = False,
) -> ESResult:
    """Run `generations` ES generations (see the module docstring).

    Prompts: `prompts_per_generation` per generation from a resumable grain loader over `examples`
    (`jaxsteer.train.data.make_loader`, seeded by `seed`), encoded as the RL loop does
    (`prompt_template`, or `meta["prompt_ids"]`). With `output_dir`: metrics.jsonl and Orbax
    checkpoints of the state (+ the data-iterator position) every `checkpoint_every` generations
    and at the end; `resume=True` continues exactly from the latest one. progress: a tqdm bar with
    the fitness in its postfix (instead of a log line per generation); tensorboard: mirror metrics to `output_dir/tb`."""
    from . import checkpoint as ckpt
    from .data import make_loader
    from .metrics import RunLogger
    from .rewards import get_reward_fn
    from .rollout import encode_prompt

    reward_fn = get_reward_fn(reward_fn)
    if mesh is not None:  # replicate once, not per generation
        model, space, strategy = jax.device_put((model, space, strategy), NamedSharding(mesh, P()))
    if state is None:
        state = strategy.init(space.init(model), jax.random.PRNGKey(seed))
    loader = make_loader(examples, batch_size=prompts_per_generation, seed=seed, shuffle=shuffle)
    data_iter = iter(loader)
    cache: dict = {}

    def ids_of(ex):
        k = (ex.prompt, str((ex.meta or {}).get("prompt_ids")))
        if k not in cache:
            cache[k] = encode_prompt(ex, tokenizer, prompt_template, system)
        return cache[k]

    files: dict[str, str] = {}
    checkpointer = logger = None
    identity = ckpt.model_identity(model)
    desc = _describe(space, strategy)
    if output_dir is not None:
        checkpointer = ckpt.Checkpointer(os.path.join(output_dir, "checkpoints"), keep=keep)
        files["checkpoints"] = checkpointer.directory
        if resume and checkpointer.latest_step() is not None:
            state, meta = checkpointer.restore(state, identity=identity, trainable_config=desc)
            data_iter.set_state(ckpt.decode_data_state(meta["data_state"]))
            if log:
                log(f"resumed from {checkpointer.directory} at generation {int(state['generation'])}")
        logger = RunLogger(output_dir, tensorboard=tensorboard, resume_step=int(state["generation"]) or None)
        files["metrics"] = logger.path
    gen_kw = dict(max_new_tokens=max_new_tokens, greedy=greedy, temperature=temperature, top_p=top_p, top_k=top_k,
                  stop_tokens=stop_tokens, tokenizer=tokenizer, bucket=bucket, mesh=mesh, axis=axis,
                  member_batch=member_batch)
    if stop_tokens is None:
        gen_kw["stop_tokens"] = default_stop_tokens(model, tokenizer)

    def save():
        meta = {"model": identity, "trainable": desc, "data_state": ckpt.encode_data_state(data_iter.get_state())}
        checkpointer.save(int(state["generation"]), state, meta)

    from tqdm.auto import tqdm

    pbar = tqdm(total=generations, initial=int(state["generation"]), desc="es", dynamic_ncols=True,
                disable=not (progress and jax.process_index() == 0))
    history: list[dict] = []
    try:
        while int(state["generation"]) < generations:
            batch = next(data_iter)
            prompt_ids = [ids_of(e) for e in batch]
            state, metrics, _, _ = es_generation(model, space, strategy, state, batch, prompt_ids, reward_fn, **gen_kw)
            history.append(metrics)
            g = int(state["generation"])
            if logger is not None:
                logger.log(g, metrics)
            if log and not progress and (g % max(log_every, 1) == 0 or g == generations):
                log(
                    f"gen {g:4d} fitness mean {metrics['fitness_mean']:+.4f} max {metrics['fitness_max']:+.4f} "
                    f"min {metrics['fitness_min']:+.4f} | update {metrics['update_norm']:.3g} | "
                    f"{metrics['generated_tokens_per_s']:.0f} tok/s"
                )
            pbar.set_postfix(fit=f"{metrics['fitness_mean']:+.3f}", best=f"{metrics['fitness_max']:+.3f}",
                             acc=f"{metrics['accuracy']:.2f}", tok_s=f"{metrics['generated_tokens_per_s']:.0f}", refresh=False)
            pbar.update(1)
            if checkpointer is not None and ((checkpoint_every and g % checkpoint_every == 0) or g == generations):
                save()
    finally:
        pbar.close()
        if logger is not None:
            logger.close()
        if checkpointer is not None:
            checkpointer.close()
    return ESResult(state, history, space, strategy, files)


def _es_space(cfg, model: Model, tokenizer: Any, lora: dict | None):
    """`(space, strategy)` of an ES run config; ESSA's LoRA warm start from `es.warm_start`."""
    es, trainable = cfg.es, cfg.trainable
    if cfg.algorithm.name == "essa" and lora is None and es.warm_start:
        from .config import load_config
        from .loop import load_trained

        warm_cfg = load_config(os.path.join(es.warm_start, "config.yaml"), [f"output_dir={es.warm_start}"])
        if warm_cfg.trainable.kind != "lora" or warm_cfg.is_es:
            raise ValueError(f"es.warm_start={es.warm_start!r} is a {warm_cfg.trainable.kind} run; ESSA needs a LoRA run")
        _, _, lora, _, _ = load_trained(warm_cfg, model=model, tokenizer=tokenizer)
        lora, trainable = jax.device_get(lora), warm_cfg.trainable
    elif lora is not None:
        trainable = trainable if trainable.kind == "lora" else None
    return build_es(model, es, cfg.algorithm.name, trainable, lora, seed=cfg.seed)


def train_es(
    cfg,
    *,
    model: Model | None = None,
    tokenizer: Any = None,
    reward_fn: Callable | None = None,
    train_examples: Sequence | None = None,
    eval_examples: Sequence | None = None,
    lora: dict | None = None,
    resume: bool = False,
):
    """An ES run from a `TrainConfig` with `algorithm.name` es | eggroll | essa (what `jaxsteer
    train` calls for them): the `es` section picks space, strategy and their settings; `steps` =
    generations; `algorithm.prompts_per_step` = prompts per generation; model, trainable (the
    space of `es`), data, sampling, eval, checkpoint, seed, output_dir as in the RL loop. Held-out
    accuracy before (base) and after (the final centre), curves, steering-vector export and
    summary.json as `jaxsteer.train.loop.train` does; returns its `TrainResult` (trainable = the
    final centre `theta`). Keyword arguments override what the config would load; `lora`: ESSA's
    warm start given directly (a LoRA trainable of `cfg.trainable`)."""
    from .config import save_config
    from .evaluate import evaluate_policy, format_result
    from .loop import (TrainResult, _Printer, build_model, clear_checkpoints, eval_settings, finish_run,
                       load_examples, peak_rss_mb)
    from .metrics import RunLogger
    from .rewards import get_reward_fn
    from .rollout import encode_prompt

    if not cfg.is_es:
        raise ValueError(f"train_es needs algorithm.name in {ES_ALGORITHMS}, got {cfg.algorithm.name!r}")
    say = _Printer([None])
    es, s = cfg.es, cfg.sampling
    if jax.process_index() == 0:
        os.makedirs(cfg.output_dir, exist_ok=True)
    if model is None:
        model, tokenizer = build_model(cfg.model)
    reward_fn = get_reward_fn(reward_fn if reward_fn is not None else cfg.data.reward)
    if train_examples is None:
        train_examples = load_examples(cfg.data.train)
    if eval_examples is None and cfg.data.eval and (cfg.eval.before or cfg.eval.after):
        eval_examples = load_examples(cfg.data.eval)
    eval_examples = list(eval_examples or [])[: cfg.eval.n]
    space, strategy = _es_space(cfg, model, tokenizer, lora)
    dims = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(jax.eval_shape(space.init, model)))
    if not resume:
        clear_checkpoints(os.path.join(cfg.output_dir, "checkpoints"), say)
    if jax.process_index() == 0:
        save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    say(f"model {cfg.model.spec}: {model.config.n_layers} layers, d={model.config.d_model} | {cfg.algorithm.name}: "
        f"{type(space).__name__} ({dims:,} dims), {type(strategy).__name__}, population {es.population}, "
        f"sigma {es.sigma:g} | {cfg.algorithm.prompts_per_step} prompts per generation, {cfg.steps} generations")

    eval_kw = eval_settings(cfg, tokenizer, reward_fn)
    eval_ids = [encode_prompt(e, tokenizer, cfg.data.prompt_template, cfg.data.system) for e in eval_examples]

    def run_eval(m, ivs, label):
        r = evaluate_policy(m, ivs, eval_examples, eval_ids, keep_texts=3, **eval_kw)
        say(format_result(label, r) + f"  [{r['seconds']:.0f} s]")
        return r

    eval_before = eval_after = None
    if eval_examples and cfg.eval.before and not resume:
        say(f"held-out evaluation on {len(eval_examples)} problems (before training: the base model)")
        eval_before = run_eval(model, (), "base")
    mesh = member_mesh() if jax.device_count() > 1 and es.population % jax.device_count() == 0 else None
    t0 = time.perf_counter()
    result = run_es(
        model, space, strategy, examples=train_examples, reward_fn=reward_fn, tokenizer=tokenizer,
        generations=cfg.steps, prompts_per_generation=cfg.algorithm.prompts_per_step, seed=cfg.seed,
        max_new_tokens=s.max_new_tokens, greedy=es.greedy, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
        bucket=s.bucket, prompt_template=cfg.data.prompt_template, system=cfg.data.system, shuffle=cfg.data.shuffle,
        mesh=mesh, member_batch=es.member_batch or None, output_dir=cfg.output_dir,
        checkpoint_every=cfg.checkpoint.every, keep=cfg.checkpoint.keep, resume=resume, log=say,
        log_every=cfg.log_every, progress=cfg.progress, tensorboard=cfg.tensorboard,
    )
    train_seconds = time.perf_counter() - t0
    theta = jax.device_get(result.state["theta"])
    if eval_examples and cfg.eval.after:
        say(f"held-out evaluation on {len(eval_examples)} problems (after {cfg.steps} generations: the centre)")
        if eval_before is not None:
            say(format_result("base", eval_before))
        eval_after = run_eval(*space.apply(model, center_member(space, result.state["theta"])), "trained")
    logger_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    if eval_after is not None and jax.process_index() == 0:
        logger = RunLogger(cfg.output_dir, tensorboard=False, resume_step=cfg.steps)  # appends
        if eval_before is not None:
            logger.log(0, {f"base_{k}": v for k, v in eval_before.items() if k != "examples"}, kind="eval")
        logger.log(cfg.steps, {k: v for k, v in eval_after.items() if k != "examples"}, kind="eval")
        logger.close()
    steering = theta if isinstance(space, TrainableSpace) and cfg.trainable.kind == "steering" else None
    files = dict(result.files)
    finish_run(cfg, model, steering, logger_path, files, say, {
        "steps": cfg.steps,
        "algorithm": cfg.algorithm.name,
        "space": type(space).__name__,
        "strategy": type(strategy).__name__,
        "search_dims": dims,
        "population": es.population,
        "trainable_kind": cfg.trainable.kind if isinstance(space, TrainableSpace) else None,
        "rollouts": cfg.steps * es.population * cfg.algorithm.prompts_per_step,
        "train_seconds": train_seconds,
        "peak_rss_mb": peak_rss_mb(),
        "eval_before": eval_before,
        "eval_after": eval_after,
    }, what=cfg.trainable.kind if isinstance(space, TrainableSpace) else type(space).__name__)
    return TrainResult(cfg, model, tokenizer, theta, result.history, eval_before, eval_after, cfg.output_dir, files)


def load_es_policy(cfg, *, step: int | None = None, model: Model | None = None, tokenizer: Any = None):
    """`(model, tokenizer, (policy_model, interventions), meta)`: the centre of an ES run's latest
    (or `step`) checkpoint in `cfg.output_dir`, validated like a resume (`jaxsteer eval`)."""
    from . import checkpoint as ckpt
    from .loop import build_model

    if model is None:
        model, tokenizer = build_model(cfg.model)
    space, strategy = _es_space(cfg, model, tokenizer, None)
    template = strategy.init(space.init(model), jax.random.PRNGKey(cfg.seed))
    checkpointer = ckpt.Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), read_only=True)
    try:
        state, meta = checkpointer.restore(template, identity=ckpt.model_identity(model),
                                           trainable_config=_describe(space, strategy), step=step)
    finally:
        checkpointer.close()
    return model, tokenizer, space.apply(model, center_member(space, state["theta"])), meta


__all__ = [
    "train_es",
    "load_es_policy",
    "ES_ALGORITHMS",
    "PopulationOutput",
    "member_mesh",
    "population_generate",
    "score_population",
    "center_member",
    "es_generation",
    "ESConfig",
    "build_es",
    "ESResult",
    "run_es",
    "OpenES",
    "CMAES",
    "SepCMAES",
    "TrainableSpace",
    "FullSpace",
    "EggrollSpace",
    "ESSASpace",
    "essa_space",
    "fitness",
]
