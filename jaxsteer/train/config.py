"""Training configuration: a tree of frozen dataclasses, read from YAML plus dotted overrides.

    cfg = load_config("experiments/smollm2_arithmetic_steering.yaml", ["trainable.kind=lora", "lr=1e-4"])

Every key of the YAML file and of an override must name a field (`section.field` for nested
sections); anything else is a `ConfigError` naming the key. Values are converted to the field's
type (`"1e-4"` -> float, `"[10, 20]"` -> tuple, `"null"` -> None, `"true"` -> bool).
`config_to_dict(cfg)` gives the effective config back as plain JSON-able data (saved with every
checkpoint and printed at the start of a run).

This module holds specs only and knows no learner. Which fields each learner reads is listed in
`RL_ONLY` and `ES_ONLY`; a field of the other learner set away from its default is a
`ConfigError` naming it (`unused_fields`), never silently ignored. Everything else is shared.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Sequence

import yaml

from ..errors import JaxsteerError
from ..models.decoder import PROJECTIONS
from .trainable import TrainableConfig

RL_ALGORITHMS = ("grpo", "ppo", "expert_iteration", "sft")
ES_ALGORITHMS = ("es", "eggroll", "essa")
ES_STRATEGIES = ("openai", "cma", "sep_cma")
ES_SPACES = ("trainable", "full", "eggroll", "essa", "essa_product", "random_subspace")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")
MODEL_DTYPES = ("auto", "float32", "bfloat16")
# model.remat policies: config name -> `jax.checkpoint_policies` name (what each layer keeps for the backward)
REMAT_POLICIES = {"dots": "dots_with_no_batch_dims_saveable",
                  "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
                  "dots_saveable": "dots_saveable", "nothing_saveable": "nothing_saveable"}


class ConfigError(JaxsteerError, ValueError):
    """A config key or value that cannot be used (the message names it)."""


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Policy-loss settings of the RL learner (static; hashable).

    clip_eps_low / clip_eps_high: PPO ratio clipping `clip(rho, 1 - low, 1 + high)`; None = off
    (the steering paper's on-policy choice). GRPO: 0.2 / 0.2, DAPO: 0.2 / 0.28. Setting only
    `clip_eps_low` clips symmetrically.
    kl_coef: weight of the k3 KL estimator to the reference policy (0 = off; the steering paper
    uses 0 or 0.01).
    aggregation: "token_mean" (sum over all tokens / total tokens; DAPO and the public steering
    code), "seq_mean_token_mean" (GRPO), "seq_sum_norm" (Dr. GRPO: sum / (B * max_len)).
    max_len: the constant of "seq_sum_norm" (None: `sampling.max_new_tokens` in a training run, so the
    per-token weight does not depend on the batch's longest completion; the width N in a bare `aggregate`).
    dash_tau: DASH gradient filtering; when > 0, samples with `|A| <= dash_tau` are dropped
    (masked out, so they leave every denominator too). 0 = off.
    importance_cap: truncated importance sampling (TIS) for off-policy minibatch updates: the weight
    `pi_theta / pi_old` is cut at this value and used as a constant weight on `grad log pi`, with the
    group advantages of the sampling policy. None = off. With `algorithm.advantage: rapid` it is
    instead the clip of RAPID's sequence weights (`rl.losses.rapid_advantages`; None = unclipped).
    importance_level: TIS weight per "token" or per "sequence" (the product of the token ratios,
    `pi_theta(y|x) / pi_old(y|x)`).
    value_coef / value_clip: PPO only (`algorithm.name: ppo`): the weight of the value-head loss in
    the joint loss, and its clip range: `0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`
    per token (None = the unclipped squared error).
    """

    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    aggregation: str = "token_mean"
    max_len: int | None = None
    dash_tau: float = 0.0
    importance_cap: float | None = None
    importance_level: str = "token"
    value_coef: float = 0.5
    value_clip: float | None = 0.2

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose from {AGGREGATIONS}")
        if self.clip_eps_high is not None and self.clip_eps_low is None:
            raise ValueError("clip_eps_high is set but clip_eps_low is None; set both (or only clip_eps_low)")
        if self.importance_level not in ("token", "sequence"):
            raise ValueError(f"importance_level must be 'token' or 'sequence', got {self.importance_level!r}")
        if self.importance_cap is not None and self.importance_cap <= 0:
            raise ValueError("importance_cap must be positive")
        if self.value_coef < 0 or (self.value_clip is not None and self.value_clip <= 0):
            raise ValueError("value_coef must be >= 0 and value_clip positive (or null)")


@dataclasses.dataclass(frozen=True)
class ESConfig:
    """The `es:` section of a training config (used when `algorithm.name` is es | eggroll | essa).

    The algorithm picks the defaults: "es" = dense ES over `space` (default the run's `trainable`,
    e.g. steering vectors), "eggroll" = low-rank perturbations of the projection matrices, "essa" =
    the paper's recipe: the singular values of a trained (SFT) LoRA's adapters, from `warm_start`,
    each factor decomposed separately (2r values per adapted matrix).
    space: "trainable" | "full" | "eggroll" | "essa" | "essa_product" | "random_subspace" (None: from
    the algorithm). "essa_product" = today's product form (the SVD of `scale * a @ b`, r values per
    matrix) of the same warm start; "random_subspace" = random orthonormal U, V of rank `essa_rank`
    with s = 0, the singular values evolving: a random-subspace ES, not ESSA, which needs no warm start.
    strategy: "openai" | "cma" | "sep_cma" (None: "cma" for essa, else "openai").
    sigma: noise scale (OpenES) or initial step size (CMA). lr, optimizer, shaping, antithetic,
    divide_by_sigma: OpenES settings (see `OpenES`). rank: EGGROLL noise rank. targets: the
    projections searched (None: the warm start's q/k/v/o adapters for essa, all its adapters for
    essa_product, all seven for eggroll / random_subspace). alpha: the evolving fraction of each SVD's singular values
    (the largest), rounded down as in the ESSA paper (0 evolving values is an error); essa_rank:
    random_subspace's rank (and the warm-start rank `jaxsteer plan` assumes for essa). warm_start: ESSA's LoRA warm start, the output directory of a LoRA
    training run (`algorithm.name: sft` in the paper's recipe; its latest checkpoint).
    member_batch: members evaluated at once (0 = all). greedy: greedy evaluation (else sampled with
    the run's sampling settings, one key shared by all members).
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
    targets: tuple[str, ...] | None = None
    alpha: float = 1.0
    essa_rank: int = 8
    warm_start: str | None = None
    member_batch: int = 0
    greedy: bool = True

    def __post_init__(self):
        if self.space not in (None, *ES_SPACES):
            raise ValueError(f"es.space must be one of {', '.join(ES_SPACES)}, got {self.space!r}")
        if self.strategy not in (None, *ES_STRATEGIES):
            raise ValueError(f"es.strategy must be one of {sorted(ES_STRATEGIES)}, got {self.strategy!r}")
        if self.population < 2:
            raise ValueError(f"es.population must be >= 2, got {self.population}")
        if not 0 < self.alpha <= 1:
            raise ValueError(f"es.alpha must be in (0, 1], got {self.alpha}")
        if self.targets is not None:
            bad = [t for t in self.targets if t not in PROJECTIONS]
            if bad or not self.targets:
                raise ValueError(f"es.targets: unknown projections {bad}; choose a non-empty subset of {list(PROJECTIONS)}")
            object.__setattr__(self, "targets", tuple(self.targets))

    def space_for(self, algorithm: str) -> str:
        """The search space's name for `algorithm` (es | eggroll | essa)."""
        _check_es_algorithm(algorithm)
        return self.space or {"es": "trainable", "eggroll": "eggroll", "essa": "essa"}[algorithm]

    def targets_for(self, space: str) -> tuple[str, ...] | None:
        """The projections `space` searches: `targets`, or its default (None: the warm start's adapters)."""
        if self.targets is not None:
            return self.targets
        return None if space in ("essa", "essa_product") else PROJECTIONS

    def strategy_for(self, algorithm: str) -> str:
        """The strategy's name for `algorithm` (es | eggroll | essa)."""
        _check_es_algorithm(algorithm)
        return self.strategy or ("cma" if algorithm == "essa" else "openai")


def _check_es_algorithm(algorithm: str) -> None:
    if algorithm not in ES_ALGORITHMS:
        raise ValueError(f"ES algorithm must be one of {ES_ALGORITHMS}, got {algorithm!r}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to train.

    spec: anything `jaxsteer.load` takes (alias, HF directory, hub id, .gguf), or "random" for a
    randomly initialised model built from `random` (ModelConfig fields; for tests and smoke runs).
    dtype: "auto" | "float32" | "bfloat16" of the frozen weights; "auto" = bfloat16 on a GPU or TPU
    backend, float32 on CPU (`resolve_dtype`). Trainable arrays, optimizer moments, logits and
    losses are always float32.
    remat: rematerialise the layer scan in the backward pass of gradient learners (RL, SFT):
    false (keep every layer's activations), true (keep only the residual entering each layer,
    recompute the rest), or a policy: "dots" (also keep the weight matmuls' outputs; =
    "dots_with_no_batch_dims_saveable") or one of `REMAT_POLICIES`. Same gradients, less memory,
    about one more forward of compute. `jaxsteer plan` reports the update's peak for this setting.
    init_from: the output directory of a trained gradient run (RL or SFT) on the same base model:
    a gradient run's trainable starts from that run's latest checkpoint (e.g. RL LoRA started from
    an SFT LoRA) instead of its zero-effect init; the trainable sections must agree (kind, rank,
    targets, layers). The optimizer starts fresh; the reference policy stays the base model.
    """

    spec: str = "smollm2-135m-instruct"
    dtype: str = "auto"
    remat: bool | str = False
    random: dict | None = None
    random_seed: int = 0
    random_scale: float = 0.02  # std of the random weights
    hf_config: dict | str | None = None  # a HF config mapping or config.json path, read by `jaxsteer plan`; training ignores it
    init_from: str | None = None  # a trained gradient run's directory: the trainable starts from its latest checkpoint

    def __post_init__(self):
        if self.dtype not in MODEL_DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.remat, bool) and self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be true, false or a policy ({', '.join(REMAT_POLICIES)}), "
                             f"got {self.remat!r}")

    @property
    def remat_arg(self) -> bool | str:
        """`remat` as `run_layers(remat=...)` takes it: a bool or a `jax.checkpoint_policies` name."""
        return REMAT_POLICIES.get(self.remat, self.remat) if isinstance(self.remat, str) else self.remat


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """The weights' dtype name for `model.dtype` on `backend` (default: JAX's): "auto" is
    "bfloat16" on an accelerator (anything but "cpu"), "float32" on CPU; others as given."""
    if name != "auto":
        return name
    import jax

    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """The RL algorithm.

    name: "grpo" (the policy-gradient family: REINFORCE/RLOO/GRPO/DAPO/Dr. GRPO, set by
    `advantage` and `loss`), "ppo" (a learned value head on the policy's last residual stream,
    per-token GAE advantages with `gamma` / `gae_lambda`, the clipped policy objective with
    `loss.clip_eps_low` and the clipped value loss `loss.value_coef` / `loss.value_clip`; `advantage`
    is not used), "expert_iteration" (NLL on samples with reward > ei_threshold: rejection-
    sampling SFT), "sft" (NLL on the prompts' reference answers; group_size 1), or an
    evolution strategy: "es" | "eggroll" | "essa" (settings in the `es` section; then `steps` counts
    generations, `prompts_per_step` is the prompts per generation and the GRPO fields are unused).
    group_size: completions per prompt (G). prompts_per_step: prompts per optimizer step over all
    processes. micro_batches: gradient accumulation inside the jitted step (the batch of
    prompts_per_step * G completions is split into this many micro-batches).
    dash: DASH preemptive sampling: the whole accumulation batch is sampled in one call, then the
    update runs over the micro-batches (set `loss.dash_tau`, e.g. 0.1, to drop samples with
    |A| <= tau). Without dash, sampling runs in calls of whole micro-batches (`sampling.call_rows`).
    updates_per_batch: off-policy minibatch updates per rollout batch (RAPID's schedule): the batch is
    split into this many minibatches, one optimizer step each, importance-weighted against the
    stored pi_old log-probs: RAPID's estimator with `advantage: rapid`, else truncated importance
    sampling (set `loss.importance_cap`). 1 = on-policy.
    epochs: passes over those minibatches per rollout batch (PPO's K epochs; every pass after the
    first is off-policy too), so a step makes `updates_per_batch * epochs` optimizer updates.
    gamma / gae_lambda: PPO's discount and GAE lambda over the generated tokens (1 / 1 = Monte
    Carlo returns: every token's return is the sequence's reward).
    dynamic_sampling / dynamic_sampling_rounds / overlong_buffer: DAPO's dynamic sampling and overlong
    reward shaping (see `rl.dynamic` and `rewards.overlong_penalty`).
    """

    name: str = "grpo"
    advantage: str = "rloo"
    group_size: int = 8
    prompts_per_step: int = 8
    micro_batches: int = 1
    dash: bool = False
    updates_per_batch: int = 1
    epochs: int = 1
    gamma: float = 1.0
    gae_lambda: float = 0.95
    ei_threshold: float = 0.0
    log_kl: bool = False  # score the reference policy each step to log KL even when loss.kl_coef = 0
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards all agree, sample more prompts to refill
    dynamic_sampling_rounds: int = 3  # extra sampling rounds allowed per step to refill the batch
    overlong_buffer: int = 0  # DAPO soft overlong punishment: L_cache tokens before sampling.max_new_tokens (0 = off)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Rollout sampling (the compiled KV-cache sampler's settings).

    call_rows: without `algorithm.dash` the RL learner samples micro-batch by micro-batch; calls
    are merged (several micro-batches' prompts in one sampler call) while a call holds at most
    this many rows over the whole mesh, or one micro-batch's rows if that is more. Decode
    matmuls are `[rows, d] x [d, d_mlp]`: at 32 rows a CPU runs them at about half its
    large-matmul rate, at 128 rows near it (docs/scale.md); raise it with the devices of the
    mesh, lower it when the rollout's K/V cache does not fit (`jaxsteer plan`). 0 = one call
    per micro-batch. The update's micro-batches are unchanged.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    bucket: int = 8  # prompts are left-padded to a multiple of this
    call_rows: int = 128


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Prompts, references and the reward.

    train / eval: dataset specs for `load_dataset` ("arithmetic:n=2000,digits=2,split=train", a
    file path), or "py:module:function" returning a list of `Example`s.
    reward: "correctness" | "format" | "countdown" | "pkg.module:function".
    prompt_template: how a prompt becomes text for the tokenizer: "chat" (the tokenizer's chat
    template, with `system` as the system message when not None), "raw" (the prompt as is), or a
    format string with `{prompt}`. Token-id prompts (`meta["prompt_ids"]`) bypass all of this.
    """

    train: str = "arithmetic:n=5000,digits=2,seed=0,split=train"
    eval: str = "arithmetic:n=200,digits=2,seed=1,split=test"
    reward: str = "correctness"
    prompt_template: str = "chat"
    system: str | None = None
    shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Held-out evaluation: greedy accuracy (Wilson CI) and sampled pass@1 over `samples` draws."""

    every: int = 0  # evaluate every N steps during training (0 = only before and after)
    before: bool = True
    after: bool = True
    n: int = 200
    greedy: bool = True
    samples: int = 0  # k for sampled pass@1 (0 = skip)
    max_new_tokens: int | None = None  # default: sampling.max_new_tokens
    batch_size: int = 200
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    every: int = 50  # save every N steps (and at the end); 0 = only at the end
    keep: int = 2


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Device mesh ("data", "fsdp"). -1 on one axis = all remaining devices."""

    data: int = -1
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run."""

    model: ModelSpec = ModelSpec()
    trainable: TrainableConfig = TrainableConfig()
    loss: LossConfig = LossConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    sampling: SamplingSpec = SamplingSpec()
    data: DataSpec = DataSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    mesh: MeshSpec = MeshSpec()
    es: ESConfig = ESConfig()
    steps: int = 100
    seed: int = 0
    lr: float = 1e-3
    value_lr: float | None = None  # PPO: the value head's learning rate (None = lr; same schedule shape)
    warmup_frac: float = 0.03
    schedule: str = "constant"  # "constant" (after warmup) | "cosine"
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    adam_eps: float = 1e-8
    grad_clip: float = 2.0
    output_dir: str = "runs/default"
    log_every: int = 1  # write metrics.jsonl / TensorBoard every N steps
    progress: bool = True
    plot: bool = True
    tensorboard: bool = True

    def __post_init__(self):
        a = self.algorithm
        bad = non_finite_fields(self)
        if bad:
            raise ConfigError(f"{', '.join(bad)}: must be a finite number")
        s = self.sampling
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.lr >= 0, "lr must be >= 0 (0 = a null run: nothing moves)"),
            (self.value_lr is None or self.value_lr >= 0, "value_lr must be >= 0"),
            (0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1 and b2 must be in [0, 1)"),
            (self.adam_eps > 0, "adam_eps must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (s.temperature > 0, "sampling.temperature must be > 0"),
            (0 < s.top_p <= 1, "sampling.top_p must be in (0, 1]"),
            (s.top_k >= 0 and s.bucket >= 1, "sampling.top_k must be >= 0 and sampling.bucket >= 1"),
            (self.eval.n >= 1 and self.eval.batch_size >= 1, "eval.n and eval.batch_size must be >= 1"),
            (self.eval.samples >= 0 and self.eval.every >= 0, "eval.samples and eval.every must be >= 0"),
            (self.eval.greedy or self.eval.samples > 0 or not (self.eval.before or self.eval.after or self.eval.every),
             "eval.greedy=false with eval.samples=0 evaluates nothing; set eval.greedy=true, eval.samples=K, "
             "or turn the evaluations off (eval.before=false eval.after=false)"),
            (self.checkpoint.every >= 0 and self.log_every >= 1, "checkpoint.every must be >= 0 and log_every >= 1"),
            (0 <= self.warmup_frac < 1, "warmup_frac must be in [0, 1)"),
            (self.schedule in ("constant", "cosine"), f"schedule must be 'constant' or 'cosine', got {self.schedule!r}"),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (a.name in RL_ALGORITHMS + ES_ALGORITHMS,
             f"algorithm.name must be one of {', '.join(RL_ALGORITHMS + ES_ALGORITHMS)}, got {a.name!r}"),
            (a.advantage in ("grpo", "rloo", "mean", "rapid"),
             f"algorithm.advantage must be grpo, rloo, mean or rapid, got {a.advantage!r}"),
            (a.group_size >= 1, "algorithm.group_size must be >= 1"),
            (a.prompts_per_step >= 1, "algorithm.prompts_per_step must be >= 1"),
            (a.micro_batches >= 1, "algorithm.micro_batches must be >= 1"),
            (a.updates_per_batch >= 1, "algorithm.updates_per_batch must be >= 1"),
            (a.epochs >= 1, "algorithm.epochs must be >= 1"),
            (0 <= a.gamma <= 1 and 0 <= a.gae_lambda <= 1, "algorithm.gamma and algorithm.gae_lambda must be in [0, 1]"),
            (not (a.dash and a.epochs > 1), "algorithm.dash and algorithm.epochs > 1 exclude each other"),
            (not (a.dash and a.updates_per_batch > 1), "algorithm.dash and algorithm.updates_per_batch > 1 exclude each other"),
            (self.sampling.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1"),
            (self.sampling.call_rows >= 0, "sampling.call_rows must be >= 0 (0 = one sampler call per micro-batch)"),
            (a.dynamic_sampling_rounds >= 0, "algorithm.dynamic_sampling_rounds must be >= 0"),
            (0 <= a.overlong_buffer <= self.sampling.max_new_tokens,
             "algorithm.overlong_buffer must be in [0, sampling.max_new_tokens]"),
            (self.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        unused = unused_fields(self)
        if unused:
            who = f"evolution strategies (algorithm.name={a.name})" if self.is_es else f"the RL learner ({a.name})"
            raise ConfigError(f"{', '.join(unused)}: not used by {who}; remove {'them' if len(unused) > 1 else 'it'}")
        if self.is_es:
            return
        if a.group_size < 2 and a.name == "grpo":  # one sample per prompt: every group advantage is 0
            raise ConfigError(
                f"algorithm.group_size=1 gives a zero {a.advantage} advantage (and gradient) every step; "
                "use group_size >= 2 (or algorithm.name=expert_iteration)"
            )
        self._check_ppo_fields()
        batch = a.prompts_per_step * a.group_size
        per_update = batch // a.updates_per_batch
        if batch % a.updates_per_batch or per_update % a.micro_batches:
            raise ConfigError(
                f"prompts_per_step * group_size = {batch} must split into updates_per_batch={a.updates_per_batch} "
                f"minibatches of micro_batches={a.micro_batches} equal micro-batches"
            )

    def _check_ppo_fields(self) -> None:
        """PPO's own fields are an error elsewhere; PPO's exclusions are an error in PPO."""
        a, loss = self.algorithm, self.loss
        ppo_only = [f"algorithm.{n}" for n in ("gamma", "gae_lambda") if getattr(a, n) != _default(AlgorithmConfig, n)]
        ppo_only += [f"loss.{n}" for n in ("value_coef", "value_clip") if getattr(loss, n) != _default(LossConfig, n)]
        ppo_only += ["value_lr"] if self.value_lr is not None else []
        if a.name != "ppo" and ppo_only:
            raise ConfigError(f"{', '.join(ppo_only)}: PPO settings, not used by algorithm.name={a.name}; remove them")
        if a.name == "ppo":
            bad = [(a.dash, "algorithm.dash"), (a.advantage == "rapid", "algorithm.advantage=rapid"),
                   (loss.dash_tau > 0, "loss.dash_tau"), (loss.importance_cap is not None, "loss.importance_cap")]
            named = [name for on, name in bad if on]
            if named:
                raise ConfigError(f"{', '.join(named)}: not available with algorithm.name=ppo (per-token GAE "
                                  "advantages and the clipped objective replace them)")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per RL step: `updates_per_batch * epochs`."""
        return self.algorithm.updates_per_batch * self.algorithm.epochs

    @property
    def is_es(self) -> bool:
        """An evolution-strategies run (`algorithm.name` es | eggroll | essa)."""
        return self.algorithm.name in ES_ALGORITHMS

    @property
    def rollouts_per_step(self) -> int:
        """Completions sampled per step (ES: per generation, over the whole population)."""
        per_prompt = self.es.population if self.is_es else self.algorithm.group_size
        return self.algorithm.prompts_per_step * per_prompt

    def _repr_html_(self) -> str:
        from ..models.display import config_html

        return config_html(self, "TrainConfig")


def non_finite_fields(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted names of the float fields of a config tree that are NaN or infinite."""
    out = []
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out += non_finite_fields(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{name}={value}")
    return out


# Fields only one learner reads ("section" = every field of it). The rest is shared.
RL_ONLY = ("model.remat", "model.init_from", "lr", "value_lr", "warmup_frac", "schedule", "weight_decay", "b1", "b2", "adam_eps", "grad_clip", "loss", "mesh",
           "algorithm.advantage", "algorithm.group_size", "algorithm.micro_batches", "algorithm.dash",
           "algorithm.updates_per_batch", "algorithm.epochs", "algorithm.gamma", "algorithm.gae_lambda",
           "algorithm.ei_threshold", "algorithm.log_kl", "algorithm.dynamic_sampling",
           "algorithm.dynamic_sampling_rounds", "algorithm.overlong_buffer", "sampling.call_rows")
ES_ONLY = ("es",)


def _default(cls, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def unused_fields(cfg: TrainConfig) -> list[str]:
    """Dotted names of fields set away from their default that the run's learner does not read
    (RL-only fields in an ES run, `es.*` in an RL run)."""
    out = []
    for name in ES_ONLY if not cfg.is_es else RL_ONLY:
        section, _, field = name.partition(".")
        if section in _SECTIONS:
            cls, value = _SECTIONS[section], getattr(cfg, section)
            names = [field] if field else _fields(cls)
            out += [f"{section}.{n}" for n in names if getattr(value, n) != _default(cls, n)]
        elif getattr(cfg, name) != _default(TrainConfig, name):
            out.append(name)
    return out


# --------------------------------------------------------------------------- (de)serialisation

_SECTIONS = {
    "model": ModelSpec,
    "trainable": TrainableConfig,
    "loss": LossConfig,
    "algorithm": AlgorithmConfig,
    "sampling": SamplingSpec,
    "data": DataSpec,
    "eval": EvalSpec,
    "checkpoint": CheckpointSpec,
    "mesh": MeshSpec,
    "es": ESConfig,
}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _parse_scalar(text: str) -> Any:
    """A command-line value: YAML, except that `1e-4` is a float (YAML 1.1 reads it as a string)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if tp is Any:
        return value
    if origin is tuple or tp is tuple:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if isinstance(value, (int, str)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _parse_scalar(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _build(cls, values: dict, prefix: str) -> Any:
    """`cls(**values)` with each value coerced to its field's type; ConfigError naming bad keys."""
    hints = _hints(cls)
    names = _fields(cls)
    kwargs = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in names:
            where = f"in {prefix[:-1]}" if prefix else "top-level"
            raise ConfigError(f"unknown config key {key!r}; valid {where} keys: {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix[:-1] + ': ' if prefix else ''}{e}") from None


def config_from_dict(data: dict | None) -> TrainConfig:
    """A `TrainConfig` from nested plain data (unknown keys raise `ConfigError`)."""
    values = {}
    for k, v in dict(data or {}).items():
        if k in _SECTIONS:
            if v is not None and not isinstance(v, dict):
                raise ConfigError(f"config section {k!r} must be a mapping, got {v!r}")
            v = _build(_SECTIONS[k], v or {}, f"{k}.")
        values[k] = v
    return _build(TrainConfig, values, "")


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    return x


def config_to_dict(cfg: TrainConfig) -> dict:
    """The effective config as plain JSON-able data (round-trips through `config_from_dict`)."""
    return _jsonable(cfg)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `section.key=value` strings to nested plain data (a copy)."""
    data = json.loads(json.dumps(data or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"unknown config key {key!r}")
        if len(parts) == 2:
            section, field = parts
            if section not in _SECTIONS:
                raise ConfigError(f"unknown config key {key!r}: no section {section!r} (sections: {', '.join(_SECTIONS)})")
            if field not in _fields(_SECTIONS[section]):
                raise ConfigError(
                    f"unknown config key {key!r}; valid keys in {section}: {', '.join(_fields(_SECTIONS[section]))}"
                )
            node = data.setdefault(section, {}) or {}
            data[section] = node
            node[field] = _parse_scalar(text)
        else:
            if key in _SECTIONS:
                raise ConfigError(f"config key {key!r} is a section; set one of its fields ({key}.FIELD=value)")
            if key not in _fields(TrainConfig):
                raise ConfigError(f"unknown config key {key!r}; valid top-level keys: {', '.join(_fields(TrainConfig))}")
            data[key] = _parse_scalar(text)
    return data


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first != line:
                raise ConfigError(f"{self.name}:{line}: duplicate key {key!r} (first given on line {first}); "
                                  "keep one")
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str) -> dict:
    """A YAML config file as a mapping. ConfigError, one line, for a syntax error
    (`file:line:col: problem`), a duplicated key (naming both lines), an empty file or a top level
    that is not a mapping."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path} is empty: it would run on every default setting; write the settings you mean")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (None = all defaults; see `read_config_file`) and apply dotted
    `key=value` overrides."""
    data = read_config_file(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides))


def save_config(cfg: Any, path: str) -> None:
    """Write a config (any tree of dataclasses, or plain data) as YAML."""
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(_jsonable(cfg), f, sort_keys=False)


__all__ = [
    "ConfigError",
    "TrainConfig",
    "ModelSpec",
    "AlgorithmConfig",
    "SamplingSpec",
    "DataSpec",
    "EvalSpec",
    "CheckpointSpec",
    "MeshSpec",
    "ESConfig",
    "LossConfig",
    "RL_ALGORITHMS",
    "MODEL_DTYPES",
    "REMAT_POLICIES",
    "resolve_dtype",
    "ES_ALGORITHMS",
    "unused_fields",
    "non_finite_fields",
    "load_config",
    "read_config_file",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
]
