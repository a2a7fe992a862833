"""Training: RL (policy gradients), SFT and evolution strategies as learners on one `Run`
(SAE training, `jaxsteer.train.sae`, is a learner on the same `Run` with its own config).

    from jaxsteer.train import load_config, train, evaluate_run
    result = train(load_config("experiments/smollm2_arithmetic_steering.yaml", ["steps=20"]))

How the pieces fit (imports point one way, left to right):

    config  <-  build, run, evaluate, state, gradient, checkpoint, metrics, export, ...
            <-  rl/, sft/, es/, sae/  <-  this module  <-  cli

`config` holds the specs; the shared machinery builds inputs (`build`), owns the run directory
(`run.Run`), evaluates held-out accuracy (`evaluate`), holds gradient-trained state (`state`) and
the gradient learners' update and loop (`gradient`); the learners `rl.learner.train_rl`,
`sft.learner.train_sft` and `es.learner.train_es` never import each other. This module
is the only one that knows every learner: `train` and `evaluate_run` dispatch on
`algorithm`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ..errors import NotFoundError
from ..models.params import Model
from .build import PromptEncoder, build_inputs, check_before_loading, load_examples
from .config import ConfigError, TrainConfig, load_config
from .es.learner import load_es_policy, train_es
from .evaluate import HeldOut, evaluate_policy
from .lock import RunLock
from .plan import check_model_fits
from .rewards import get_reward_fn
from .rl.learner import check_layout as check_rl_layout
from .rl.learner import train_rl
from .run import Run
from .sft.learner import check_layout as check_sft_layout
from .sft.learner import train_sft
from .sharding import make_mesh
from .state import load_trainable
from .trainable import build_policy


@dataclasses.dataclass
class TrainResult:
    """What `train` hands back (`trainable`: the trained part; for ES the final centre)."""

    config: TrainConfig
    model: Model
    tokenizer: Any
    trainable: Any
    history: list[dict]
    eval_before: dict | None
    eval_after: dict | None
    output_dir: str
    files: dict[str, str]


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
    lora: dict | None = None,
) -> TrainResult:
    """Train as configured: RL for `algorithm` grpo | ppo | expert_iteration, SFT for sft,
    evolution strategies for es | eggroll | essa. Keyword arguments replace what the config would load (tests pass tiny
    models and token-id tasks); `resume` continues from the latest checkpoint in `output_dir`;
    `devices` (RL, SFT) restricts the mesh; `lora` (ESSA) gives the warm-start adapters directly."""
    if cfg.is_es and devices is not None:
        raise ConfigError("train(devices=...) is not supported for ES runs; the population uses every device")
    if not cfg.is_es and lora is not None:
        raise ConfigError(f"train(lora=...) is ESSA's warm start; this is an {cfg.algorithm} run")
    check_before_loading(cfg, train_examples=train_examples, eval_examples=eval_examples, reward_fn=reward_fn)
    if model is None:  # the model's context and the planned memory, from its config alone
        check_model_fits(cfg, devices=devices)
    if not cfg.is_es:  # the batch must split over processes, the mesh and the micro-batches
        try:
            check_layout = check_sft_layout if cfg.algorithm == "sft" else check_rl_layout
            check_layout(cfg, make_mesh(cfg.mesh.data, cfg.mesh.fsdp, devices))
        except ValueError as err:
            raise ConfigError(f"mesh: {err}") from None
    if jax.process_index() == 0:  # a busy run directory is refused before the model loads
        RunLock(cfg.output_dir).check_free()
    inputs = build_inputs(
        cfg,
        model=model,
        tokenizer=tokenizer,
        reward_fn=reward_fn,
        train_examples=train_examples,
        eval_examples=eval_examples,
    )
    run = Run(
        cfg.output_dir,
        config=cfg,
        resume=resume,
        keep=cfg.checkpoint.keep,
        tensorboard=cfg.tensorboard,
        progress=cfg.progress,
        plot=cfg.plot,
    )
    try:
        if cfg.is_es:
            trained, history, files = train_es(cfg, inputs, run, lora=lora)
        elif cfg.algorithm == "sft":
            trained, history, files = train_sft(cfg, inputs, run, devices=devices)
        else:
            trained, history, files = train_rl(cfg, inputs, run, devices=devices)
    finally:
        run.close()
    return TrainResult(
        cfg,
        inputs.model,
        inputs.tokenizer,
        trained,
        history,
        run.evals.get("before"),
        run.evals.get("after"),
        cfg.output_dir,
        files,
    )


def _restore_policy(cfg: TrainConfig, step: int | None, model: Model | None, tokenizer: Any):
    """`(base model, tokenizer, policy model, interventions, trainable or None for ES, meta)` of a
    run's latest (or `step`) checkpoint."""
    if cfg.is_es:
        model, tokenizer, (policy, ivs), meta = load_es_policy(cfg, step=step, model=model, tokenizer=tokenizer)
        return model, tokenizer, policy, ivs, None, meta
    given_tokenizer = tokenizer
    model, tokenizer, trainable, meta = load_trainable(cfg, step=step, model=model, tokenizer=tokenizer)
    policy, ivs = build_policy(model, trainable, cfg.trainable)
    return model, given_tokenizer if given_tokenizer is not None else tokenizer, policy, ivs, trainable, meta


def evaluate_run(
    cfg: TrainConfig,
    *,
    step: int | None = None,
    base: bool = True,
    model: Model | None = None,
    tokenizer: Any = None,
    eval_examples: Sequence | None = None,
    reward_fn: Callable | None = None,
) -> dict:
    """Held-out accuracy of a trained run (RL or ES) with and without its trained part (`jaxsteer eval`)."""
    model, tokenizer, policy, ivs, _, meta = _restore_policy(cfg, step, model, tokenizer)
    examples = list(eval_examples if eval_examples is not None else load_examples(cfg.data.eval))[: cfg.eval.n]
    encode = PromptEncoder(tokenizer, cfg.data.prompt_template, cfg.data.system)
    held_out = HeldOut.from_config(
        cfg, examples, encode, tokenizer, get_reward_fn(reward_fn if reward_fn is not None else cfg.data.reward)
    )
    out: dict[str, Any] = {"step": int(meta["step"]), "n": len(examples)}
    if base:
        out["base"] = held_out(model, ())
    out["trained"] = held_out(policy, ivs)
    return out


@dataclasses.dataclass
class LoadedRun:
    """A trained run, ready to use (`load_run`).

    model: the policy (the base with LoRA or full weights applied; the base itself for steering);
    base_model: the untrained base; interventions: what the policy adds at run time (the trained
    `Steer` / `AdaptiveSteer`; empty for LoRA and full weights); trainable: the trained pytree
    (None for ES runs, whose centre is already applied); config: the run's `TrainConfig`; step:
    the checkpoint's step. `encode(prompt)` formats and tokenizes a prompt exactly as training did
    (the run's `data.prompt_template` and `data.system`), and `generate(prompts, **kw)` samples
    from the policy with those prompts (`max_new_tokens` defaults to the run's `sampling.max_new_tokens`)."""

    model: Model
    base_model: Model
    tokenizer: Any
    interventions: tuple
    trainable: Any
    config: TrainConfig
    step: int
    directory: str

    def encode(self, prompt: Any) -> list[int]:
        """Token ids of one prompt (text, or an `Example`) as the run's training formatted it."""
        from .data import Example

        example = prompt if isinstance(prompt, Example) else Example(str(prompt), "")
        return PromptEncoder(self.tokenizer, self.config.data.prompt_template, self.config.data.system)(example)

    @property
    def vectors(self):
        """The trained steering vectors, dense `[L, *feat]` float32 (steering kinds only)."""
        if self.config.trainable.kind not in ("steering", "adaptive_steering"):
            raise AttributeError(f"run {self.directory} trained {self.config.trainable.kind!r}, not steering vectors")
        if self.trainable is None:  # ES: the centre is already a Steer
            import numpy as np

            steers = [iv for iv in self.interventions if hasattr(iv, "vector")]
            if len(steers) != 1:
                raise AttributeError(f"run {self.directory}: no single steering intervention to read vectors from")
            return np.asarray(steers[0].vector, np.float32)
        from .export import steering_array

        return steering_array(self.trainable, self.config.trainable, self.base_model.config.n_layers)

    def generate(self, prompts: Sequence, **kwargs):
        """`jaxsteer.generate` on the policy, each prompt encoded as in training (`encode`)."""
        from ..models.generate import generate

        kwargs.setdefault("max_new_tokens", self.config.sampling.max_new_tokens)
        ids = [self.encode(p) if not isinstance(p, (list, tuple)) else list(p) for p in prompts]
        ivs = tuple(self.interventions) + tuple(kwargs.pop("interventions", ()))
        return generate(self.model, ids, tokenizer=self.tokenizer, interventions=ivs, **kwargs)

    def __repr__(self) -> str:
        t = self.config.trainable
        return (
            f"LoadedRun({self.directory!r}, step={self.step}, {self.config.algorithm} on {t.kind}, "
            f"{len(self.interventions)} intervention(s), prompt_template={self.config.data.prompt_template!r})"
        )


def load_run(
    directory: str,
    *,
    step: int | None = None,
    model: Model | None = None,
    tokenizer: Any = None,
    overrides: Sequence[str] = (),
) -> LoadedRun:
    """Load a run directory written by `train` (RL or ES): its config, the model and tokenizer it
    trained, and its latest (or `step`) checkpoint's trained part. `model` / `tokenizer` replace
    what the config would load (the checkpoint still checks that the model matches)."""
    import os

    path = os.path.join(directory, "config.yaml")
    if not os.path.isfile(path):
        raise NotFoundError(f"{directory} is not a run directory (no config.yaml)")
    cfg = load_config(path, [*overrides, f"output_dir={directory}"], warn=False)
    base, tokenizer, policy, ivs, trainable, meta = _restore_policy(cfg, step, model, tokenizer)
    return LoadedRun(policy, base, tokenizer, tuple(ivs), trainable, cfg, int(meta["step"]), directory)


__all__ = [
    "train",
    "evaluate_run",
    "load_run",
    "LoadedRun",
    "TrainResult",
    "load_config",
    "ConfigError",
    "evaluate_policy",
]
