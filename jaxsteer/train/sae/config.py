"""`jaxsteer sae train CONFIG.yaml`: the SAE training run's configuration (`jaxsteer.config`'s
loader, the training runs' vocabulary: `model.spec/dtype`, `output_dir`, `steps`,
`checkpoint.every/keep`, `optimizer.lr`, `eval.*`; unknown keys are errors).

    model: {spec: smollm2-135m-instruct, dtype: float32}   # any jaxsteer.load spec, or "random"
    site: resid_post
    layer: 15
    text: py:jaxsteer.train.sae.corpora:general_text   # file, directory, hf:NAME[:SPLIT], py:module:fn
    context: 128
    output_dir: runs/sae_topk
    steps: 2000
    sae: {kind: topk, expansion: 16, k: 32}      # or d_sae; kron_heads/kron_m/kron_n; matryoshka_widths; dtype
    optimizer: {lr: 2e-4, warmup_steps: 0, decay_start: 0.8}
    train: {batch_size: 4096, k_aux: 288, dead_tokens: 1000000}
    buffer: {contexts_per_forward: 8, buffer_batches: 16}
    checkpoint: {every: 500, keep: 2}
    eval: {contexts: 64}

Keys of the first release (`out_dir`, `save_every`, `keep`, `model: NAME`, `model_dtype`,
`train.steps`, `train.lr`, ...) still load, with a one-line deprecation warning naming the new key
(`SAERunConfig.RENAMED`); run directories written with them keep loading and resuming.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

from ... import config as _config_lib
from ...config import ConfigError
from ..config import CheckpointSpec, ModelSpec

SAE_LEARNER = "sae"  # the `learners` name of SAE training (`jaxsteer.config.unused_fields`)


OLD_CORPORA = "py:jaxsteer.sae.corpora:"  # where the shipped corpora lived before SAE training moved


def moved_corpus(text: str) -> str:
    """A text spec naming the corpora's old module, pointed at `jaxsteer.train.sae.corpora`."""
    return "py:jaxsteer.train.sae.corpora:" + text[len(OLD_CORPORA) :] if text.startswith(OLD_CORPORA) else text


@dataclasses.dataclass(frozen=True)
class SAESpec:
    """The `sae` section: the architecture trained.

    Attributes:
        kind: "topk" | "jumprelu" | "matryoshka" | "htopk" | "kron" (see `jaxsteer.sae.arch`).
        d_sae: latents (0: `expansion * d_model`). k: active latents (TopK kinds).
        kron_heads / kron_m / kron_n: KronSAE's factorisation. matryoshka_widths: nested prefix sizes.
        dtype: the SAE parameters' dtype.
    """

    kind: str = "topk"
    d_sae: int = 0
    expansion: int = 16
    k: int = 32
    kron_heads: int = 0
    kron_m: int = 0
    kron_n: int = 0
    matryoshka_widths: tuple[int, ...] = ()
    dtype: str = "float32"


@dataclasses.dataclass(frozen=True)
class SAEOptimizerSpec:
    """The `optimizer` section of SAE training: Adam at `lr`, linear warmup over `warmup_steps`,
    linear decay to 0 over the last `1 - decay_start` of the steps, global-norm clip `grad_clip`
    (0 = off)."""

    lr: float = 2e-4
    warmup_steps: int = 0
    decay_start: float = 0.8
    grad_clip: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The `train` section: the SAE objective and batches.

    Attributes:
        batch_size: activations per step. k_aux / aux_coef / dead_tokens: the TopK auxiliary loss on
        dead latents (k_aux 0: d_model // 2; a latent is dead after `dead_tokens` tokens unused).
        threshold_lr: the EMA rate of BatchTopK's (and Matryoshka's) inference threshold.
        htopk_levels: HierarchicalTopK's k levels.
        b_dec_init: "geometric_median" | "mean" | "zeros". l0_coef / l0_warmup_steps: JumpReLU's L0
        penalty (FVU units per active latent) and its ramp. jumprelu_bandwidth /
        jumprelu_init_threshold: in units of the RMS activation of the first batch, the run's fixed
        `act_scale` (Gemma Scope's values assume inputs with RMS 1).
    """

    batch_size: int = 4096
    k_aux: int = 0
    aux_coef: float = 1.0 / 32
    dead_tokens: int = 1_000_000
    threshold_lr: float = 0.01
    htopk_levels: tuple[int, ...] = ()
    b_dec_init: str = "geometric_median"
    l0_coef: float = 0.0
    l0_warmup_steps: int = 0
    jumprelu_bandwidth: float = 0.001
    jumprelu_init_threshold: float = 0.001


@dataclasses.dataclass(frozen=True)
class BufferSpec:
    """The `buffer` section: the activation stream (contexts per model forward, batches shuffled
    together, leading positions skipped) or an `.npy` activation `cache` to train from."""

    contexts_per_forward: int = 8
    buffer_batches: int = 16
    skip_first: int = 1
    cache: str = ""


@dataclasses.dataclass(frozen=True)
class SAEEvalSpec:
    """The `eval` section: `contexts` windows evaluated, the held-out `fraction` of the packed
    windows, another `text` to evaluate on (default: the held-out windows), `every` N steps during
    training (0: only at the end)."""

    contexts: int = 64
    fraction: float = 0.05
    text: str = ""
    every: int = 0


@dataclasses.dataclass(frozen=True)
class SAERunConfig:
    """An SAE training run.

    Attributes:
        model: the model whose activations are encoded (`ModelSpec`; float32 by default).
        site / layer: where (`jaxsteer.sae.splice` sites). text: the corpus spec; context: window length.
        output_dir / steps / seed / log_every: as for every run. base_sae: a residual SAE's frozen
        base (a run or SAELens directory). shard_latents: split the latent axis over this many
        devices (0: all). sae / optimizer / train / buffer / checkpoint / eval: the sections.
    """

    model: ModelSpec = ModelSpec(dtype="float32")
    site: str = "resid_post"
    layer: int = 15
    text: str = "py:jaxsteer.train.sae.corpora:general_text"
    context: int = 128
    output_dir: str = "runs/sae"
    steps: int = 1000
    seed: int = 0
    base_sae: str = ""
    shard_latents: int = 1
    log_every: int = 10
    sae: SAESpec = SAESpec()
    optimizer: SAEOptimizerSpec = SAEOptimizerSpec()
    train: TrainSpec = TrainSpec()
    buffer: BufferSpec = BufferSpec()
    checkpoint: CheckpointSpec = CheckpointSpec(every=500, keep=2)
    eval: SAEEvalSpec = SAEEvalSpec()

    RENAMED: ClassVar[dict[str, str]] = {
        "out_dir": "output_dir",
        "save_every": "checkpoint.every",
        "keep": "checkpoint.keep",
        "model": "model.spec",
        "model_dtype": "model.dtype",
        "train.steps": "steps",
        **{f"train.{k}": f"optimizer.{k}" for k in ("lr", "warmup_steps", "decay_start", "grad_clip")},
    }
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        "steps",
        "output_dir",
        "log_every",
        "checkpoint.every",
        "checkpoint.keep",
        "eval.every",
    )

    @classmethod
    def migrate(cls, data: dict) -> dict:
        """`model_dtype: bf16` of the first release is `model.dtype: bfloat16`; the corpora of
        `py:jaxsteer.sae.corpora:NAME` are `py:jaxsteer.train.sae.corpora:NAME` (moved with SAE training)."""
        model = data.get("model")
        if isinstance(model, dict) and model.get("dtype") == "bf16":
            data = {**data, "model": {**model, "dtype": "bfloat16"}}
        if isinstance(data.get("text"), str):
            data = {**data, "text": moved_corpus(data["text"])}
        evaluation = data.get("eval")
        if isinstance(evaluation, dict) and isinstance(evaluation.get("text"), str):
            data = {**data, "eval": {**evaluation, "text": moved_corpus(evaluation["text"])}}
        return data

    def __post_init__(self):
        unused = _config_lib.unused_fields(self, SAE_LEARNER)
        if unused:
            raise ConfigError(
                f"{', '.join(unused)}: not used by SAE training; remove {'them' if len(unused) > 1 else 'it'}"
            )
        if self.steps < 1 or self.log_every < 1 or self.checkpoint.keep < 1 or self.checkpoint.every < 0:
            raise ConfigError("steps, log_every and checkpoint.keep must be >= 1, checkpoint.every >= 0")


def load_run_config(path: str | None, overrides: Sequence[str] = (), *, warn: bool = True) -> SAERunConfig:
    """Read a YAML SAE run config (None = all defaults) and apply dotted `key=value` overrides.
    warn=False: renamed keys move silently (a run directory's saved config)."""
    return _config_lib.load_config(SAERunConfig, path, overrides, warn=warn)


__all__ = [
    "SAESpec",
    "SAEOptimizerSpec",
    "TrainSpec",
    "BufferSpec",
    "SAEEvalSpec",
    "SAERunConfig",
    "load_run_config",
]
