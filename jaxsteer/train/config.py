"""Training configuration: a tree of frozen dataclasses, read from YAML plus dotted overrides.

    cfg = load_config("experiments/smollm2_arithmetic_steering.yaml", ["trainable.kind=lora", "optimizer.lr=1e-4"])

One section per concern: `model`, `trainable`, `data`, `optimizer` (gradient learners: RL and
SFT), `rl` (the RL learner: advantages, groups, off-policy updates, `rl.loss`), `es` (evolution
strategies), `sampling`, `eval`, `checkpoint`, `mesh`; `algorithm` (top level) picks the learner.
The loading, coercion, overrides, renamed keys and resume diff are `jaxsteer.config`'s, shared by
every run kind. Which learner reads a section is on its class (`LEARNERS`), or on a field
(`metadata={"learners": ...}`); a field the run's learner does not read, set away from its default,
is a `ConfigError` naming it, never silently ignored.

Keys renamed since the first release (`TrainConfig.RENAMED`: `algorithm.name` -> `algorithm`,
`lr` -> `optimizer.lr`, `loss.*` -> `rl.loss.*`, `algorithm.*` -> `rl.*`, `es.warm_start` ->
`model.init_from`, ...) still load, with a one-line deprecation warning naming the new key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

from .. import config as _config_lib
from ..config import ConfigDeprecationWarning, ConfigError, config_to_dict, read_config_file, save_config
from ..models.decoder import PROJECTIONS
from .trainable import TrainableConfig

RL_ALGORITHMS = ("grpo", "ppo", "expert_iteration")
ES_ALGORITHMS = ("es", "eggroll", "essa")
GRADIENT_ALGORITHMS = (*RL_ALGORITHMS, "sft")
ALGORITHMS = (*GRADIENT_ALGORITHMS, *ES_ALGORITHMS)
ES_STRATEGIES = ("openai", "cma", "sep_cma")
ES_SPACES = ("trainable", "full", "eggroll", "essa", "essa_product", "random_subspace")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_sum_norm")
MODEL_DTYPES = ("auto", "float32", "bfloat16")
# model.remat policies: config name -> `jax.checkpoint_policies` name (what each layer keeps for the backward)
REMAT_POLICIES = {
    "dots": "dots_with_no_batch_dims_saveable",
    "dots_with_no_batch_dims_saveable": "dots_with_no_batch_dims_saveable",
    "dots_saveable": "dots_saveable",
    "nothing_saveable": "nothing_saveable",
}


def read_by(*learners: str) -> dict:
    """Field metadata: only these `algorithm`s' learners read the field."""
    return {"learners": learners}


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The `rl.loss` section: policy-loss settings of the RL learner (static; hashable).

    Attributes:
        clip_eps_low: PPO ratio clipping `clip(rho, 1 - low, 1 + high)`; None = off (the steering
            paper's on-policy choice). GRPO: 0.2 / 0.2, DAPO: 0.2 / 0.28. Alone, it clips symmetrically.
        clip_eps_high: the upper clip (needs `clip_eps_low`).
        kl_coef: weight of the k3 KL estimator to the reference policy (0 = off; the steering paper
            uses 0 or 0.01).
        aggregation: "token_mean" (sum over all tokens / total tokens; DAPO and the public steering
            code), "seq_mean_token_mean" (GRPO), "seq_sum_norm" (Dr. GRPO: sum / (B * max_len)).
        max_len: the constant of "seq_sum_norm" (None: `sampling.max_new_tokens` in a training run, so
            the per-token weight does not depend on the batch's longest completion; the width N in a
            bare `aggregate`).
        dash_tau: DASH gradient filtering: when > 0, samples with `|A| <= dash_tau` are dropped (masked
            out, so they leave every denominator too). 0 = off.
        importance_cap: truncated importance sampling (TIS) for off-policy minibatch updates: the weight
            `pi_theta / pi_old` is cut at this value and used as a constant weight on `grad log pi`,
            with the group advantages of the sampling policy. None = off. With `rl.advantage: rapid`
            it is instead the clip of RAPID's sequence weights (`rl.losses.rapid_advantages`; None =
            unclipped).
        importance_level: TIS weight per "token" or per "sequence" (the product of the token ratios,
            `pi_theta(y|x) / pi_old(y|x)`).
        value_coef: PPO only (`algorithm: ppo`): the weight of the value-head loss in the joint loss.
        value_clip: PPO only: the value loss's clip range c,
            `0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)` per token (None = the
            unclipped squared error).
    """

    clip_eps_low: float | None = None
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    aggregation: str = "token_mean"
    max_len: int | None = None
    dash_tau: float = 0.0
    importance_cap: float | None = None
    importance_level: str = "token"
    value_coef: float = dataclasses.field(default=0.5, metadata=read_by("ppo"))
    value_clip: float | None = dataclasses.field(default=0.2, metadata=read_by("ppo"))

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
    """The `es:` section of a training config (read when `algorithm` is es | eggroll | essa).

    The algorithm picks the defaults: "es" = dense ES over `space` (default the run's `trainable`,
    e.g. steering vectors), "eggroll" = low-rank perturbations of the projection matrices, "essa" =
    the paper's recipe: the singular values of a trained (SFT) LoRA's adapters, from `model.init_from`
    (the output directory of a LoRA training run, its latest checkpoint), each factor decomposed
    separately (2r values per adapted matrix).

    Attributes:
        space: "trainable" | "full" | "eggroll" | "essa" | "essa_product" | "random_subspace" (None:
            from the algorithm). "essa_product" = the product form (the SVD of `scale * a @ b`, r
            values per matrix) of the same warm start; "random_subspace" = random orthonormal U, V of
            rank `essa_rank` with s = 0, the singular values evolving: a random-subspace ES, not ESSA,
            which needs no warm start.
        strategy: "openai" | "cma" | "sep_cma" (None: "cma" for essa, else "openai").
        population: members per generation.
        sigma: noise scale (OpenES) or initial step size (CMA).
        lr: OpenES's learning rate (see `OpenES`).
        optimizer: OpenES's optimizer of the estimated gradient.
        shaping: OpenES's fitness shaping (`shape_fitness`).
        antithetic: OpenES's mirrored noise pairs.
        divide_by_sigma: OpenES's gradient scaling, `sum f eps / (M sigma)`.
        rank: EGGROLL's noise rank.
        targets: the projections searched (None: the warm start's q/k/v/o adapters for essa, all its
            adapters for essa_product, all seven for eggroll / random_subspace).
        alpha: the evolving fraction of each SVD's singular values (the largest), rounded down as in
            the ESSA paper (0 evolving values is an error).
        essa_rank: random_subspace's rank (and the warm-start rank `jaxsteer plan` assumes for essa).
        member_batch: members evaluated at once (0 = all).
        greedy: greedy evaluation (else sampled with the run's sampling settings, one key shared by
            all members).
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
    member_batch: int = 0
    greedy: bool = True

    LEARNERS: ClassVar[tuple[str, ...]] = ES_ALGORITHMS

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
                raise ValueError(
                    f"es.targets: unknown projections {bad}; choose a non-empty subset of {list(PROJECTIONS)}"
                )
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

    Attributes:
        spec: anything `jaxsteer.load` takes (alias, HF directory, hub id, .gguf), or "random" for a
            randomly initialised model built from `random`.
        dtype: "auto" | "float32" | "bfloat16" of the frozen weights; "auto" = bfloat16 on a GPU or
            TPU backend, float32 on CPU (`resolve_dtype`). Trainable arrays, optimizer moments, logits
            and losses are always float32.
        remat: rematerialise the layer scan in the backward pass of gradient learners (RL, SFT):
            false (keep every layer's activations), true (keep only the residual entering each layer,
            recompute the rest), or a policy: "dots" (also keep the weight matmuls' outputs; =
            "dots_with_no_batch_dims_saveable") or one of `REMAT_POLICIES`. Same gradients, less
            memory, about one more forward of compute. `jaxsteer plan` reports the update's peak for
            this setting.
        random: `ModelConfig` fields of the "random" model (for tests and smoke runs).
        random_seed: the seed of the random model's weights.
        random_scale: the std of the random weights.
        hf_config: a HF config mapping or config.json path, read by `jaxsteer plan`; training ignores it.
        init_from: the output directory of a trained gradient run (RL or SFT) on the same base model:
            a gradient run's trainable starts from that run's latest checkpoint (e.g. RL LoRA started
            from an SFT LoRA) instead of its zero-effect init; the trainable sections must agree
            (kind, rank, targets, layers). The optimizer starts fresh; the reference policy stays the
            base model. For ESSA (es.space essa | essa_product) it is the LoRA run whose singular
            values evolve.
    """

    spec: str = "smollm2-135m-instruct"
    dtype: str = "auto"
    remat: bool | str = dataclasses.field(default=False, metadata=read_by(*GRADIENT_ALGORITHMS))
    random: dict | None = None
    random_seed: int = 0
    random_scale: float = 0.02
    hf_config: dict | str | None = None
    init_from: str | None = dataclasses.field(default=None, metadata=read_by(*ALGORITHMS))

    def __post_init__(self):
        if self.dtype not in MODEL_DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.remat, bool) and self.remat not in REMAT_POLICIES:
            raise ConfigError(
                f"model.remat must be true, false or a policy ({', '.join(REMAT_POLICIES)}), got {self.remat!r}"
            )

    @property
    def remat_arg(self) -> bool | str:
        """`remat` as `run_layers(remat=...)` takes it: a bool or a `jax.checkpoint_policies` name."""
        return REMAT_POLICIES.get(self.remat, self.remat) if isinstance(self.remat, str) else self.remat


def resolve_dtype(name: str, backend: str | None = None) -> str:
    """The weights' dtype name for `model.dtype` on a backend.

    Args:
        name: "auto", "float32" or "bfloat16".
        backend: a JAX backend name (default: JAX's).

    Returns:
        "bfloat16" for "auto" on an accelerator (anything but "cpu"), "float32" for "auto" on CPU,
        else `name`.
    """
    if name != "auto":
        return name
    import jax

    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The `optimizer` section: the gradient learners' (RL and SFT) AdamW and schedule.

    Attributes:
        lr: the peak learning rate (0 = a null run: nothing moves).
        value_lr: PPO's value-head rate (None = lr; same schedule shape).
        schedule: "constant" (after warmup) | "cosine".
        warmup_frac: the warmup's fraction of the updates.
        weight_decay: AdamW's weight decay.
        b1: AdamW's first-moment decay.
        b2: AdamW's second-moment decay.
        eps: AdamW's epsilon.
        grad_clip: the global-norm clip (0 = off).
        micro_batches: gradient accumulation inside the jitted step (a step's batch is split into this
            many micro-batches; same update, less memory).
    """

    lr: float = 1e-3
    value_lr: float | None = dataclasses.field(default=None, metadata=read_by("ppo"))
    schedule: str = "constant"
    warmup_frac: float = 0.03
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 2.0
    micro_batches: int = 1

    LEARNERS: ClassVar[tuple[str, ...]] = GRADIENT_ALGORITHMS

    def __post_init__(self):
        checks = [
            (self.lr >= 0, "lr must be >= 0 (0 = a null run: nothing moves)"),
            (self.value_lr is None or self.value_lr >= 0, "value_lr must be >= 0"),
            (0 <= self.b1 < 1 and 0 <= self.b2 < 1, "b1 and b2 must be in [0, 1)"),
            (self.eps > 0, "eps must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.warmup_frac < 1, "warmup_frac must be in [0, 1)"),
            (
                self.schedule in ("constant", "cosine"),
                f"schedule must be 'constant' or 'cosine', got {self.schedule!r}",
            ),
            (self.grad_clip >= 0, "grad_clip must be >= 0 (0 = off)"),
            (self.micro_batches >= 1, "micro_batches must be >= 1"),
        ]
        _check("optimizer.", checks)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """The `rl` section: the RL learner (`algorithm` grpo | ppo | expert_iteration).

    Attributes:
        advantage: "rloo" | "grpo" | "mean" | "rapid" (the policy-gradient family REINFORCE / RLOO /
            GRPO / DAPO / Dr. GRPO is set by `advantage` and `loss`; PPO uses GAE instead).
        group_size: completions per prompt (G).
        dash: DASH preemptive sampling: the whole accumulation batch is sampled in one call, then the
            update runs over the micro-batches (set `loss.dash_tau`, e.g. 0.1, to drop samples with
            |A| <= tau). Without dash, sampling runs in calls of whole micro-batches
            (`sampling.call_rows`).
        updates_per_batch: off-policy minibatch updates per rollout batch (RAPID's schedule): the
            batch is split into this many minibatches, one optimizer step each, importance-weighted
            against the stored pi_old log-probs: RAPID's estimator with `advantage: rapid`, else
            truncated importance sampling (set `loss.importance_cap`). 1 = on-policy.
        epochs: passes over those minibatches per rollout batch (PPO's K epochs; every pass after the
            first is off-policy too), so a step makes `updates_per_batch * epochs` optimizer updates.
        gamma: PPO's discount over the generated tokens.
        gae_lambda: PPO's GAE lambda (gamma = lambda = 1: Monte Carlo returns, every token's return is
            the sequence's reward).
        ei_threshold: expert iteration keeps samples with reward above it (rejection-sampling SFT).
        log_kl: score the reference policy each step to log KL even when `loss.kl_coef` = 0.
        dynamic_sampling: DAPO's dynamic sampling: drop groups whose rewards all agree and sample more
            to refill the batch (`rl.dynamic`).
        dynamic_sampling_rounds: the most extra sampling rounds of dynamic sampling.
        overlong_buffer: DAPO's soft overlong punishment: L_cache tokens before
            `sampling.max_new_tokens` (0 = off; `rewards.overlong_penalty`).
        loss: the policy loss (`LossConfig`).
    """

    advantage: str = "rloo"
    group_size: int = 8
    dash: bool = False
    updates_per_batch: int = 1
    epochs: int = 1
    gamma: float = dataclasses.field(default=1.0, metadata=read_by("ppo"))
    gae_lambda: float = dataclasses.field(default=0.95, metadata=read_by("ppo"))
    ei_threshold: float = dataclasses.field(default=0.0, metadata=read_by("expert_iteration"))
    log_kl: bool = False
    dynamic_sampling: bool = False
    dynamic_sampling_rounds: int = 3
    overlong_buffer: int = 0
    loss: LossConfig = LossConfig()

    LEARNERS: ClassVar[tuple[str, ...]] = RL_ALGORITHMS

    def __post_init__(self):
        checks = [
            (
                self.advantage in ("grpo", "rloo", "mean", "rapid"),
                f"advantage must be grpo, rloo, mean or rapid, got {self.advantage!r}",
            ),
            (self.group_size >= 1, "group_size must be >= 1"),
            (self.updates_per_batch >= 1, "updates_per_batch must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma and gae_lambda must be in [0, 1]"),
            (not (self.dash and self.epochs > 1), "dash and epochs > 1 exclude each other"),
            (not (self.dash and self.updates_per_batch > 1), "dash and updates_per_batch > 1 exclude each other"),
            (self.dynamic_sampling_rounds >= 0, "dynamic_sampling_rounds must be >= 0"),
            (self.overlong_buffer >= 0, "overlong_buffer must be >= 0"),
        ]
        _check("rl.", checks)


def _check(prefix: str, checks: list[tuple[bool, str]]) -> None:
    """ConfigError with the first failed check's message (prefixed with its section)."""
    for ok, msg in checks:
        if not ok:
            raise ConfigError(prefix + msg)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """Rollout sampling (the compiled KV-cache sampler's settings).

    Attributes:
        max_new_tokens: tokens sampled per completion at most.
        temperature: softmax temperature.
        top_p: nucleus filtering mass (1.0: off).
        top_k: keep the k most likely tokens (0: off).
        bucket: prompts are left-padded to a multiple of this (fewer recompilations).
        call_rows: without `rl.dash` the RL learner samples micro-batch by micro-batch; calls are
            merged (several micro-batches' prompts in one sampler call) while a call holds at most
            this many rows over the whole mesh, or one micro-batch's rows if that is more. Decode
            matmuls are `[rows, d] x [d, d_mlp]`: at 32 rows a CPU runs them at about half its
            large-matmul rate, at 128 rows near it (docs/scale.md); raise it with the devices of the
            mesh, lower it when the rollout's K/V cache does not fit (`jaxsteer plan`). 0 = one call
            per micro-batch. The update's micro-batches are unchanged.
        refill_slots: 0 = the static sampler (every row of a call decodes until the longest ends);
            S > 0 = the refill sampler (`jaxsteer.models.refill`), S rows in flight per device, a
            finished row's slot taken by the next waiting row: faster when completion lengths
            spread widely (docs/scale.md). Also used by the held-out evaluation.
    """

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    bucket: int = 8
    call_rows: int = dataclasses.field(default=128, metadata=read_by(*RL_ALGORITHMS))
    refill_slots: int = 0


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Prompts, references and the reward.

    Attributes:
        train: the training set: a dataset spec for `load_dataset` ("arithmetic:n=2000,digits=2,
            split=train", a file path), or "py:module:function" returning a list of `Example`s.
        eval: the held-out set, as `train`.
        reward: "correctness" | "format" | "countdown" | "pkg.module:function".
        prompt_template: how a prompt becomes text for the tokenizer: "chat" (the tokenizer's chat
            template), "raw" (the prompt as is), or a format string with `{prompt}`. Token-id prompts
            (`meta["prompt_ids"]`) bypass all of this.
        system: the chat template's system message (None: none).
        shuffle: shuffle the training prompts (each epoch anew, deterministic in the run's seed).
    """

    train: str = "arithmetic:n=5000,digits=2,seed=0,split=train"
    eval: str = "arithmetic:n=200,digits=2,seed=1,split=test"
    reward: str = "correctness"
    prompt_template: str = "chat"
    system: str | None = None
    shuffle: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Held-out evaluation: greedy accuracy (Wilson CI) and sampled pass@1 over `samples` draws.

    Attributes:
        every: evaluate every N steps during training (0 = only before and after).
        before: evaluate the base model before training.
        after: evaluate the trained policy at the end.
        n: held-out problems evaluated.
        greedy: report greedy accuracy.
        samples: k for sampled pass@1 (0 = skip).
        max_new_tokens: tokens per completion (None: `sampling.max_new_tokens`).
        batch_size: prompts per sampler call.
        temperature: the sampling temperature of pass@1.
    """

    every: int = 0
    before: bool = True
    after: bool = True
    n: int = 200
    greedy: bool = True
    samples: int = 0
    max_new_tokens: int | None = None
    batch_size: int = 200
    temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """When a run saves and how many checkpoints it keeps.

    Attributes:
        every: save every N steps (and at the end); 0 = only at the end.
        keep: the newest checkpoints kept on disk.
    """

    every: int = 50
    keep: int = 2


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """Device mesh ("data", "fsdp") of the gradient learners.

    Attributes:
        data: data-parallel devices (-1: all remaining devices).
        fsdp: devices each weight is sharded over (-1: all remaining devices).
    """

    data: int = -1
    fsdp: int = 1

    LEARNERS: ClassVar[tuple[str, ...]] = GRADIENT_ALGORITHMS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run.

    Attributes:
        algorithm: the learner: "grpo" (the policy-gradient family), "ppo" (a learned value head,
            per-token GAE advantages, the clipped objective), "expert_iteration" (NLL on own samples
            with reward above `rl.ei_threshold`) — these read `rl` —, "sft" (NLL on the prompts'
            reference answers), or an evolution strategy "es" | "eggroll" | "essa" (reads `es`; then
            `steps` counts generations). The gradient learners (RL and SFT) read `optimizer` and `mesh`.
        steps: optimizer steps (ES: generations).
        prompts_per_step: prompts per step over all processes (RL: each sampled `rl.group_size` times;
            ES: per generation, every member scored on them).
        seed: every random draw of the run.
        output_dir: the run directory.
        log_every: write metrics.jsonl / TensorBoard every N steps.
        progress: show a progress bar.
        plot: draw the curves' PNG at the end.
        tensorboard: write TensorBoard event files.
        model: the model (`ModelSpec`).
        trainable: what is trained (`TrainableConfig`).
        data: prompts, references and reward (`DataSpec`).
        optimizer: the gradient learners' optimizer (`OptimizerConfig`).
        rl: the RL learner (`RLConfig`).
        es: the evolution strategies (`ESConfig`).
        sampling: rollout sampling (`SamplingSpec`).
        eval: held-out evaluation (`EvalSpec`).
        checkpoint: checkpoint cadence and retention (`CheckpointSpec`).
        mesh: the device mesh (`MeshSpec`).
    """

    algorithm: str = "grpo"
    steps: int = 100
    prompts_per_step: int = 8
    seed: int = 0
    output_dir: str = "runs/default"
    log_every: int = 1
    progress: bool = True
    plot: bool = True
    tensorboard: bool = True
    model: ModelSpec = ModelSpec()
    trainable: TrainableConfig = TrainableConfig()
    data: DataSpec = DataSpec()
    optimizer: OptimizerConfig = OptimizerConfig()
    rl: RLConfig = RLConfig()
    es: ESConfig = ESConfig()
    sampling: SamplingSpec = SamplingSpec()
    eval: EvalSpec = EvalSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    mesh: MeshSpec = MeshSpec()

    # old key -> new key (`jaxsteer.config.migrate`); "x.*" moves a whole section
    RENAMED: ClassVar[dict[str, str]] = {
        "algorithm.name": "algorithm",
        "algorithm.prompts_per_step": "prompts_per_step",
        "algorithm.micro_batches": "optimizer.micro_batches",
        "algorithm.*": "rl.*",
        "loss.*": "rl.loss.*",
        **{
            k: f"optimizer.{k}"
            for k in ("lr", "value_lr", "warmup_frac", "schedule", "weight_decay", "b1", "b2", "grad_clip")
        },
        "adam_eps": "optimizer.eps",
        "es.warm_start": "model.init_from",
    }

    # Settings a resumed run may change (dotted prefixes): how long it runs, what it prints and how
    # often it saves or evaluates. Everything else would make the checkpoints' trajectory a mix of
    # two runs (data, reward, model, algorithm, optimizer, sampling, the held-out set's size).
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "steps",
        "output_dir",
        "progress",
        "plot",
        "tensorboard",
        "log_every",
        "checkpoint.every",
        "checkpoint.keep",
        "eval.every",
        "eval.batch_size",
        "eval.after",
    )

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """Old SFT configs had to say `algorithm.group_size: 1` (SFT ran as an RL algorithm); SFT
        does not read `rl`, so that setting is dropped."""
        rl = data.get("rl")
        if data.get("algorithm") == "sft" and isinstance(rl, dict) and rl.get("group_size") == 1:
            rl = {k: v for k, v in rl.items() if k != "group_size"}
            data = {**data, "rl": rl} if rl else {k: v for k, v in data.items() if k != "rl"}
        return data

    def __post_init__(self):
        bad = non_finite_fields(self)
        if bad:
            raise ConfigError(f"{', '.join(bad)}: must be a finite number")
        s, e = self.sampling, self.eval
        checks = [
            (self.algorithm in ALGORITHMS, f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.prompts_per_step >= 1, "prompts_per_step must be >= 1"),
            (s.temperature > 0, "sampling.temperature must be > 0"),
            (0 < s.top_p <= 1, "sampling.top_p must be in (0, 1]"),
            (s.top_k >= 0 and s.bucket >= 1, "sampling.top_k must be >= 0 and sampling.bucket >= 1"),
            (s.max_new_tokens >= 1, "sampling.max_new_tokens must be >= 1"),
            (s.call_rows >= 0, "sampling.call_rows must be >= 0 (0 = one sampler call per micro-batch)"),
            (s.refill_slots >= 0, "sampling.refill_slots must be >= 0 (0 = the static sampler)"),
            (e.n >= 1 and e.batch_size >= 1, "eval.n and eval.batch_size must be >= 1"),
            (e.samples >= 0 and e.every >= 0, "eval.samples and eval.every must be >= 0"),
            (
                e.greedy or e.samples > 0 or not (e.before or e.after or e.every),
                "eval.greedy=false with eval.samples=0 evaluates nothing; set eval.greedy=true, eval.samples=K, "
                "or turn the evaluations off (eval.before=false eval.after=false)",
            ),
            (self.checkpoint.every >= 0 and self.log_every >= 1, "checkpoint.every must be >= 0 and log_every >= 1"),
            (self.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
            (self.rl.overlong_buffer <= s.max_new_tokens, "rl.overlong_buffer must be in [0, sampling.max_new_tokens]"),
        ]
        _check("", checks)
        unused = _config_lib.unused_fields(self, self.algorithm)
        if unused:
            raise ConfigError(
                f"{', '.join(unused)}: not used by {learner_name(self.algorithm)}; "
                f"remove {'them' if len(unused) > 1 else 'it'}"
            )
        if self.algorithm in RL_ALGORITHMS:
            self._check_rl()

    def _check_rl(self) -> None:
        """The RL learner's cross-section rules: groups of two or more for GRPO, PPO's exclusions,
        a batch that splits into minibatches of equal micro-batches."""
        rl, loss = self.rl, self.rl.loss
        if rl.group_size < 2 and self.algorithm == "grpo":  # one sample per prompt: every group advantage is 0
            raise ConfigError(
                f"rl.group_size=1 gives a zero {rl.advantage} advantage (and gradient) every step; "
                "use group_size >= 2 (or algorithm=expert_iteration)"
            )
        if self.algorithm == "ppo":
            bad = [
                (rl.dash, "rl.dash"),
                (rl.advantage == "rapid", "rl.advantage=rapid"),
                (loss.dash_tau > 0, "rl.loss.dash_tau"),
                (loss.importance_cap is not None, "rl.loss.importance_cap"),
            ]
            named = [name for on, name in bad if on]
            if named:
                raise ConfigError(
                    f"{', '.join(named)}: not available with algorithm=ppo (per-token GAE "
                    "advantages and the clipped objective replace them)"
                )
        batch = self.prompts_per_step * rl.group_size
        per_update = batch // rl.updates_per_batch
        if batch % rl.updates_per_batch or per_update % self.optimizer.micro_batches:
            raise ConfigError(
                f"prompts_per_step * rl.group_size = {batch} must split into rl.updates_per_batch="
                f"{rl.updates_per_batch} minibatches of optimizer.micro_batches={self.optimizer.micro_batches} "
                "equal micro-batches"
            )

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per step: `rl.updates_per_batch * rl.epochs` for RL, 1 otherwise."""
        if self.algorithm not in RL_ALGORITHMS:
            return 1
        return self.rl.updates_per_batch * self.rl.epochs

    @property
    def is_es(self) -> bool:
        """An evolution-strategies run (`algorithm` es | eggroll | essa)."""
        return self.algorithm in ES_ALGORITHMS

    @property
    def group_size(self) -> int:
        """Completions per prompt: `rl.group_size` for RL, 1 for SFT, the population for ES."""
        if self.is_es:
            return self.es.population
        return self.rl.group_size if self.algorithm in RL_ALGORITHMS else 1

    @property
    def rollouts_per_step(self) -> int:
        """Completions sampled per step (ES: per generation, over the whole population)."""
        return self.prompts_per_step * self.group_size

    def _repr_html_(self) -> str:
        from ..models.display import config_html

        return config_html(self, "TrainConfig")


def learner_name(algorithm: str) -> str:
    """Which learner runs `algorithm`, in words (for error messages)."""
    if algorithm in ES_ALGORITHMS:
        return f"evolution strategies (algorithm={algorithm})"
    return f"the SFT learner (algorithm={algorithm})" if algorithm == "sft" else f"the RL learner ({algorithm})"


def non_finite_fields(cfg: Any, prefix: str = "") -> list[str]:
    """The float fields of a config tree that are NaN or infinite.

    Args:
        cfg: the config (a tree of dataclasses).
        prefix: the dotted key of `cfg` (with a trailing "."), for the names.

    Returns:
        `"key=value"` per non-finite field.
    """
    out = []
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out += non_finite_fields(value, name + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            out.append(f"{name}={value}")
    return out


def unused_fields(cfg: TrainConfig) -> list[str]:
    """Dotted names of fields set away from their default that the run's learner does not read."""
    return _config_lib.unused_fields(cfg, cfg.algorithm)


# --------------------------------------------------------------------------- loading (jaxsteer.config)


def config_from_dict(data: dict | None, *, warn: bool = True) -> TrainConfig:
    """A `TrainConfig` from nested plain data.

    Args:
        data: nested plain data (None: all defaults); renamed keys are migrated.
        warn: warn about renamed keys.

    Returns:
        The config.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    return _config_lib.config_from_dict(TrainConfig, data, warn=warn)


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `section.key=value` strings to nested plain training-config data.

    Args:
        data: nested plain data.
        overrides: dotted `key=value` strings.

    Returns:
        The updated copy of `data`.
    """
    return _config_lib.apply_overrides(TrainConfig, data, overrides)


def load_config(path: str | None = None, overrides: Sequence[str] = (), *, warn: bool = True) -> TrainConfig:
    """Read a YAML training config and apply dotted `key=value` overrides.

    Args:
        path: the YAML file (None: all defaults).
        overrides: dotted `key=value` strings applied after the file.
        warn: warn about renamed keys (False: they move silently, as for a run directory's saved config).

    Returns:
        The `TrainConfig`.

    Raises:
        ConfigError: an unreadable file, an unknown key or a bad value.
    """
    return _config_lib.load_config(TrainConfig, path, overrides, warn=warn)


__all__ = [
    "ConfigError",
    "ConfigDeprecationWarning",
    "TrainConfig",
    "ModelSpec",
    "OptimizerConfig",
    "RLConfig",
    "LossConfig",
    "ESConfig",
    "SamplingSpec",
    "DataSpec",
    "EvalSpec",
    "CheckpointSpec",
    "MeshSpec",
    "ALGORITHMS",
    "RL_ALGORITHMS",
    "GRADIENT_ALGORITHMS",
    "ES_ALGORITHMS",
    "MODEL_DTYPES",
    "REMAT_POLICIES",
    "read_by",
    "learner_name",
    "resolve_dtype",
    "unused_fields",
    "non_finite_fields",
    "load_config",
    "read_config_file",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "save_config",
]
