"""The ES learner: ES at scale / EGGROLL / ESSA generations on a `Run` (see docs/es.md).

    space, strategy = build_es(model, ESConfig(population=32, sigma=1e-3), "eggroll")
    result = run_es(model, space, strategy, examples, "correctness",
                    ESLoopSpec(generations=50, prompts_per_generation=8), tokenizer=tokenizer)

`train_es` is what `jaxsteer.train.train` calls for configs with `algorithm` es | eggroll |
essa: the `es` section picks space, strategy and their settings; `steps` = generations;
`algorithm.prompts_per_step` = prompts per generation; the shared sections (model, trainable,
sampling, data, eval, checkpoint, seed, output_dir) mean what they mean for RL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from ...models.params import Model
from .. import checkpoint as ckpt
from ..build import Inputs, PromptEncoder, build_model
from ..config import ConfigError, ESConfig, TrainConfig
from ..data import make_loader
from ..distributed import to_host
from ..evaluate import HeldOut
from ..export import export_steering
from ..rewards import get_reward_fn
from ..run import Run, peak_rss_mb
from ..sharding import make_mesh, replicate
from ..state import load_run_trainable
from ..trainable import LAYERED_KINDS, TrainableConfig
from .population import center_member, es_generation, member_mesh
from .spaces import EggrollSpace, FullSpace, TrainableSpace, essa_product_space, essa_space
from .strategies import STRATEGIES, OpenES


def build_es(
    model: Model,
    cfg: ESConfig,
    algorithm: str = "es",
    trainable: TrainableConfig | None = None,
    lora: dict | None = None,
    seed: int = 0,
):
    """`(space, strategy)` for an `ESConfig` and algorithm.

    Args:
        model: the base decoder.
        cfg: the `es` section.
        algorithm: es | eggroll | essa (picks the defaults of `cfg.space` / `cfg.strategy`).
        trainable: the parameterisation of space "trainable" (default: steering on every layer); with
            `lora` (kind "lora"): ESSA's warm start.
        lora: a trained LoRA trainable (ESSA's warm start).
        seed: the random subspace's seed.

    Returns:
        The search space and the strategy.

    Raises:
        ConfigError: an ESSA space without a LoRA, or targets / alpha the LoRA cannot take.
    """
    name = cfg.space_for(algorithm)
    targets = cfg.targets_for(name)
    if name == "trainable":
        space = TrainableSpace(trainable or TrainableConfig())
    elif name == "full":
        space = FullSpace()
    elif name == "eggroll":
        assert targets is not None  # targets_for gives every space but essa / essa_product its projections
        space = EggrollSpace(targets=targets, rank=cfg.rank)
    elif name == "random_subspace":  # random orthonormal U, V with s = 0: not ESSA, which starts from trained adapters
        space = essa_product_space(model, None, None, alpha=cfg.alpha, rank=cfg.essa_rank, targets=targets, seed=seed)
    elif lora is None:
        raise ConfigError(
            f"es.space={name} evolves the singular values of trained LoRA adapters (the paper: an SFT "
            "run): set model.init_from to a LoRA run's directory, or es.space=random_subspace for random "
            "orthonormal adapters with s = 0"
        )
    elif name == "essa_product":
        space = essa_product_space(
            model, lora if targets is None else {p: lora[p] for p in targets if p in lora}, trainable, alpha=cfg.alpha
        )
    else:
        try:
            space = essa_space(model, lora, trainable, alpha=cfg.alpha, targets=targets)
        except ValueError as e:
            raise ConfigError(f"es.targets / es.alpha: {e}") from e
    strategy_name = cfg.strategy_for(algorithm)
    if strategy_name == "openai":
        strategy = OpenES(
            population=cfg.population,
            sigma=cfg.sigma,
            lr=cfg.lr,
            antithetic=cfg.antithetic,
            shaping=cfg.shaping,
            divide_by_sigma=cfg.divide_by_sigma,
            optimizer=cfg.optimizer,
        )
    else:
        strategy = STRATEGIES[strategy_name](population=cfg.population, sigma=cfg.sigma)
    return space, strategy


def es_space_for_run(cfg: TrainConfig, model: Model, tokenizer: Any = None, lora: dict | None = None):
    """`(space, strategy)` of an ES run config.

    Args:
        cfg: the run config.
        model: the base model.
        tokenizer: its tokenizer (to load ESSA's warm start).
        lora: ESSA's warm start given directly (a LoRA trainable of `cfg.trainable`); else read from
            `model.init_from` (the directory of a LoRA run).

    Returns:
        The search space and the strategy.

    Raises:
        ConfigError: `model.init_from` with a space that does not read it, or a warm start that is not a LoRA run.
    """
    es, trainable, init_from = cfg.es, cfg.trainable, cfg.model.init_from
    space = es.space_for(cfg.algorithm)
    if init_from and space not in ("essa", "essa_product"):
        raise ConfigError(
            f"model.init_from: es.space={space} does not start from a trained run (only ESSA's "
            "essa / essa_product spaces read it); remove it"
        )
    if space in ("essa", "essa_product") and lora is None and init_from:
        lora, trainable = load_run_trainable(init_from, model=model, tokenizer=tokenizer)
        if trainable.kind != "lora":
            raise ConfigError(f"model.init_from={init_from!r} is a {trainable.kind} run; ESSA needs a LoRA run")
    elif lora is not None:
        trainable = trainable if trainable.kind == "lora" else None
    return build_es(model, es, cfg.algorithm, trainable, lora, seed=cfg.seed)


def describe(space, strategy) -> dict:
    """JSON-able identity of (space, strategy), checked against a checkpoint on resume."""
    d: dict[str, Any] = {"space": type(space).__name__, "strategy": type(strategy).__name__}
    for f in dataclasses.fields(strategy):
        d[f.name] = getattr(strategy, f.name)
    for field in ("cfg", "paths", "targets", "rank", "n_active", "n_a", "n_b", "scale"):
        if hasattr(space, field):
            v = getattr(space, field)
            d[f"space_{field}"] = (
                dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
            )
    plain = lambda x: np.asarray(x).tolist() if isinstance(x, (np.ndarray, np.generic, jax.Array)) else str(x)
    return json.loads(json.dumps(d, default=plain))


@dataclasses.dataclass(frozen=True)
class ESLoopSpec:
    """How `run_es` runs.

    Attributes:
        generations: generations to run.
        prompts_per_generation: prompts every member is scored on per generation.
        seed: the strategy's and the resumable grain loader's seed.
        shuffle: reshuffle the prompts every epoch.
        max_new_tokens: tokens per completion.
        greedy: greedy completions (else sampled with the settings below).
        temperature: the sampling temperature.
        top_p: nucleus filtering mass (1.0: off).
        top_k: keep the k most likely tokens (0: off).
        stop_tokens: ids that end a completion (None: the model's and tokenizer's EOS).
        bucket: prompt lengths are padded to a multiple of this.
        member_batch: members evaluated at once (None: all).
        checkpoint_every: save every N generations (and at the end); 0 = only at the end.
        log_every: a log line every N generations (without a `Run`).
    """

    generations: int = 100
    prompts_per_generation: int = 8
    seed: int = 0
    shuffle: bool = True
    max_new_tokens: int = 32
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_tokens: tuple[int, ...] | None = None
    bucket: int = 8
    member_batch: int | None = None
    checkpoint_every: int = 0
    log_every: int = 1

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ESLoopSpec:
        """The loop of an ES run config."""
        s = cfg.sampling
        return cls(
            cfg.steps,
            cfg.prompts_per_step,
            cfg.seed,
            cfg.data.shuffle,
            s.max_new_tokens,
            cfg.es.greedy,
            s.temperature,
            s.top_p,
            s.top_k,
            None,
            s.bucket,
            cfg.es.member_batch or None,
            cfg.checkpoint.every,
            cfg.log_every,
        )

    def sampler_kwargs(self) -> dict:
        """Keyword arguments of `population_generate`."""
        return dict(
            max_new_tokens=self.max_new_tokens,
            greedy=self.greedy,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop_tokens=self.stop_tokens,
            bucket=self.bucket,
            member_batch=self.member_batch,
        )


@dataclasses.dataclass
class ESResult:
    """What `run_es` hands back.

    Attributes:
        state: the final strategy state (its "theta" is the search's centre).
        history: one metrics dict per generation run.
        space: the search space.
        strategy: the strategy.
    """

    state: dict
    history: list[dict]
    space: Any
    strategy: Any


def _log_line(g: int, m: dict) -> str:
    return (
        f"gen {g:4d} fitness mean {m['fitness_mean']:+.4f} max {m['fitness_max']:+.4f} "
        f"min {m['fitness_min']:+.4f} | update {m['update_norm']:.3g} | {m['generated_tokens_per_s']:.0f} tok/s"
    )


def run_es(
    model: Model,
    space,
    strategy,
    examples: Sequence,
    reward_fn: Callable | str,
    spec: ESLoopSpec,
    *,
    tokenizer: Any = None,
    encode: Callable | None = None,
    run: Run | None = None,
    state: dict | None = None,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] = "members",
    held_out: HeldOut | None = None,
    log: Callable[[str], None] | None = print,
) -> ESResult:
    """Run ES generations up to `spec.generations` (each: `es_generation`).

    Args:
        model: the base decoder.
        space: the search space (`spaces`).
        strategy: the evolution strategy (`strategies`).
        examples: the training prompts.
        reward_fn: a reward function or its name (`get_reward_fn`).
        spec: the loop's settings.
        tokenizer: decodes completions for text rewards and encodes string prompts.
        encode: example -> prompt ids (default `PromptEncoder(tokenizer)`: `meta["prompt_ids"]` or the
            chat template).
        run: a `Run` for metrics, checkpoints (state + data position, every `spec.checkpoint_every`
            generations and at the end), resume, progress bar and held-out evaluation; without one, a
            log line per `spec.log_every` generations to `log`.
        state: a strategy state to continue from (default: `strategy.init` at the space's start).
        mesh: a mesh to spread the members over (`population_generate`).
        axis: the mesh axis (or axes) of the members.
        held_out: the held-out evaluation (with `run`).
        log: where log lines go without a run (None: nowhere).

    Returns:
        The final state, per-generation metrics, space and strategy.
    """
    reward_fn = get_reward_fn(reward_fn)
    encode = encode or PromptEncoder(tokenizer)
    if mesh is not None:  # replicate once, not per generation
        model, space, strategy = replicate((model, space, strategy), mesh)
    if state is None:
        fresh: dict = strategy.init(space.init(model), jax.random.PRNGKey(spec.seed))
        state = fresh
    if mesh is not None:  # a global array on every process (checkpoints are written by all of them)
        state = replicate(state, mesh)
    data_iter = iter(
        make_loader(examples, batch_size=spec.prompts_per_generation, seed=spec.seed, shuffle=spec.shuffle)
    )
    identity, desc = ckpt.model_identity(model), describe(space, strategy)
    if run is not None:
        state, meta = run.restore(state, identity=identity, trainable_config=desc, unit="generation")
        if meta is not None:
            data_iter.set_state(ckpt.decode_data_state(meta["data_state"]))
        if held_out is not None:
            held_out.before(run, model)
    gen_kw = dict(spec.sampler_kwargs(), tokenizer=tokenizer, mesh=mesh, axis=axis)
    history: list[dict] = []
    with run.progress(spec.generations, "es") if run is not None else contextlib.nullcontext() as bar:
        while int(state["generation"]) < spec.generations:
            batch = next(data_iter)
            state, metrics, _, _ = es_generation(
                model, space, strategy, state, batch, [encode(e) for e in batch], reward_fn, **gen_kw
            )
            history.append(metrics)
            g = int(state["generation"])
            if run is None:
                if log and (g % max(spec.log_every, 1) == 0 or g == spec.generations):
                    log(_log_line(g, metrics))
                continue
            assert bar is not None  # run.progress's bar: a run is given here
            run.check_finite(g, {"fitness_mean": metrics["fitness_mean"], "theta": state["theta"]})
            run.log(g, metrics)
            bar.set_postfix(
                fit=f"{metrics['fitness_mean']:+.3f}",
                best=f"{metrics['fitness_max']:+.3f}",
                acc=f"{metrics['accuracy']:.2f}",
                tok_s=f"{metrics['generated_tokens_per_s']:.0f}",
                refresh=False,
            )
            bar.update(1)
            if held_out is not None:
                held_out.during(run, g, lambda theta=state["theta"]: space.apply(model, center_member(space, theta)))
            if run.due(g, spec.checkpoint_every, spec.generations):
                meta = {
                    "model": identity,
                    "trainable": desc,
                    "data_state": ckpt.encode_data_state(data_iter.get_state()),
                }
                run.save(g, state, meta)
    return ESResult(state, history, space, strategy)


def train_es(cfg: TrainConfig, inputs: Inputs, run: Run, *, lora: dict | None = None) -> tuple[Any, list, dict]:
    """An ES run on `run` (see the module docstring).

    Args:
        cfg: the run config.
        inputs: the model, data and reward (`build_inputs`).
        run: the run directory.
        lora: ESSA's warm start given directly (else from `model.init_from`).

    Returns:
        `(theta, history, files)`: the final centre, per-generation metrics, run files.
    """
    model, es = inputs.model, cfg.es
    space, strategy = es_space_for_run(cfg, model, inputs.tokenizer, lora)
    dims = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(jax.eval_shape(space.init, model)))
    run.say(
        f"model {cfg.model.spec}: {model.config.n_layers} layers, d={model.config.d_model} | {cfg.algorithm}: "
        f"{type(space).__name__} ({dims:,} dims), {type(strategy).__name__}, population {es.population}, "
        f"sigma {es.sigma:g} | {cfg.prompts_per_step} prompts per generation, {cfg.steps} generations"
    )
    held_out = HeldOut.from_config(
        cfg, inputs.eval_examples, inputs.encode, inputs.tokenizer, inputs.reward_fn, mesh=make_mesh()
    )  # held-out prompts split over every device
    if jax.process_count() > 1 and es.population % jax.device_count():
        raise ConfigError(
            f"es.population={es.population} does not split over the {jax.device_count()} devices "
            f"of {jax.process_count()} processes"
        )
    mesh = member_mesh() if jax.device_count() > 1 and es.population % jax.device_count() == 0 else None
    t0 = time.perf_counter()
    result = run_es(
        model,
        space,
        strategy,
        inputs.train_examples,
        inputs.reward_fn,
        ESLoopSpec.from_config(cfg),
        tokenizer=inputs.tokenizer,
        encode=inputs.encode,
        run=run,
        mesh=mesh,
        held_out=held_out,
    )
    train_seconds = time.perf_counter() - t0
    held_out.after(run, lambda: space.apply(model, center_member(space, result.state["theta"])))
    theta = to_host(result.state["theta"])
    trains_trainable = isinstance(space, TrainableSpace)
    if trains_trainable and cfg.trainable.kind in LAYERED_KINDS:
        run.files.update(export_steering(run.directory, cfg, model, theta, run.say))
    what = cfg.trainable.kind if trains_trainable else type(space).__name__
    files = run.finish(
        {
            "steps": cfg.steps,
            "algorithm": cfg.algorithm,
            "space": type(space).__name__,
            "strategy": type(strategy).__name__,
            "search_dims": dims,
            "population": es.population,
            "trainable_kind": cfg.trainable.kind if trains_trainable else None,
            "rollouts": cfg.steps * cfg.rollouts_per_step,
            "train_seconds": train_seconds,
            "peak_rss_mb": peak_rss_mb(),
            "eval_before": run.evals.get("before"),
            "eval_after": run.evals.get("after"),
        },
        title=f"{cfg.model.spec} / {cfg.algorithm} / {what}",
    )
    return theta, result.history, files


def load_es_policy(cfg: TrainConfig, *, step: int | None = None, model: Model | None = None, tokenizer: Any = None):
    """The centre of an ES run's checkpoint in `cfg.output_dir`, validated like a resume (`jaxsteer eval`).

    Args:
        cfg: the run's config.
        step: the checkpoint (None: the latest).
        model: the base model (default: loaded from `cfg.model`).
        tokenizer: its tokenizer.

    Returns:
        `(model, tokenizer, (policy_model, interventions), meta)`.
    """
    if model is None:
        model, tokenizer = build_model(cfg.model)
    space, strategy = es_space_for_run(cfg, model, tokenizer)
    template = strategy.init(space.init(model), jax.random.PRNGKey(cfg.seed))
    checkpointer = ckpt.Checkpointer(os.path.join(cfg.output_dir, "checkpoints"), read_only=True)
    try:
        state, meta = checkpointer.restore(
            template, identity=ckpt.model_identity(model), trainable_config=describe(space, strategy), step=step
        )
    finally:
        checkpointer.close()
    return model, tokenizer, space.apply(model, center_member(space, state["theta"])), meta


__all__ = ["build_es", "es_space_for_run", "describe", "ESLoopSpec", "ESResult", "run_es", "train_es", "load_es_policy"]
