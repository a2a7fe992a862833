"""`jaxsteer sae train CONFIG.yaml`: the run configuration (strict: unknown keys are errors).

    model: smollm2-135m-instruct     # any jaxsteer.load spec
    site: resid_post
    layer: 15
    text: py:jaxsteer.sae.corpora:general_text   # file, directory, hf:NAME[:SPLIT], py:module:fn
    context: 128
    out_dir: runs/sae_topk
    sae: {kind: topk, expansion: 16, k: 32}      # or d_sae; kron_heads/kron_m/kron_n; matryoshka_widths; dtype
    train: {batch_size: 4096, steps: 2000, lr: 2e-4, k_aux: 288, dead_tokens: 1000000}
    buffer: {contexts_per_forward: 8, buffer_batches: 16}
    eval: {contexts: 64}
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Sequence

import yaml

from ..train.config import ConfigError, read_config_file


@dataclasses.dataclass
class SAESpec:
    kind: str = "topk"
    d_sae: int = 0  # 0: expansion * d_model
    expansion: int = 16
    k: int = 32
    kron_heads: int = 0
    kron_m: int = 0
    kron_n: int = 0
    matryoshka_widths: list = dataclasses.field(default_factory=list)  # kind matryoshka: nested prefix sizes
    dtype: str = "float32"


@dataclasses.dataclass
class TrainSpec:
    batch_size: int = 4096
    steps: int = 1000
    lr: float = 2e-4
    warmup_steps: int = 0
    decay_start: float = 0.8
    grad_clip: float = 0.0
    k_aux: int = 0  # 0: d_model // 2
    aux_coef: float = 1.0 / 32
    dead_tokens: int = 1_000_000
    threshold_lr: float = 0.01
    htopk_levels: list = dataclasses.field(default_factory=list)
    b_dec_init: str = "geometric_median"
    l0_coef: float = 0.0  # jumprelu: L0 penalty weight (FVU units per active latent)
    l0_warmup_steps: int = 0
    jumprelu_bandwidth: float = 0.001  # in units of the batch's RMS activation (Gemma Scope)
    jumprelu_init_threshold: float = 0.001  # likewise


@dataclasses.dataclass
class BufferSpec:
    contexts_per_forward: int = 8
    buffer_batches: int = 16
    skip_first: int = 1
    cache: str = ""  # an .npy activation cache to train from instead of the model


@dataclasses.dataclass
class EvalSpec:
    contexts: int = 64
    fraction: float = 0.05  # of the packed windows held out from training for evaluation
    text: str = ""  # evaluate on another text (default: the held-out windows)
    every: int = 0  # also evaluate during training every N steps (0: only at the end)


@dataclasses.dataclass
class SAERunConfig:
    model: str = "smollm2-135m-instruct"
    model_dtype: str = "float32"
    site: str = "resid_post"
    layer: int = 15
    text: str = "py:jaxsteer.sae.corpora:general_text"
    context: int = 128
    out_dir: str = "runs/sae"
    seed: int = 0
    base_sae: str = ""  # residual SAE: a run directory or SAELens directory of the frozen base
    shard_latents: int = 1  # split the latent axis over this many devices (0: all of them)
    save_every: int = 500
    keep: int = 2
    log_every: int = 10
    sae: SAESpec = dataclasses.field(default_factory=SAESpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    buffer: BufferSpec = dataclasses.field(default_factory=BufferSpec)
    eval: EvalSpec = dataclasses.field(default_factory=EvalSpec)


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v or {}, f"{prefix}{k}.")
        elif tp is float and isinstance(v, (int, float, str)):
            kwargs[k] = float(v)
        elif tp is int and isinstance(v, (int, float)) and float(v).is_integer():
            kwargs[k] = int(v)
        elif tp is list and isinstance(v, (list, tuple)):
            kwargs[k] = list(v)
        elif isinstance(v, tp):
            kwargs[k] = v
        else:
            raise ConfigError(f"config key {prefix}{k}: expected {tp.__name__}, got {v!r}")
    return cls(**kwargs)


def _set(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def load_run_config(path: str | None, overrides: Sequence[str] = ()) -> SAERunConfig:
    """Read a YAML config and apply `key.sub=value` overrides (values parsed as YAML)."""
    data = read_config_file(path) if path else {}
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep:
            raise ConfigError(f"override {ov!r} must look like key.sub=value")
        _set(data, key.strip(), yaml.safe_load(value))
    return _build(SAERunConfig, data, "")


def config_dict(cfg: SAERunConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def save_run_config(cfg: SAERunConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(config_dict(cfg), f, sort_keys=False)


__all__ = ["SAESpec", "TrainSpec", "BufferSpec", "EvalSpec", "SAERunConfig", "load_run_config", "config_dict",
           "save_run_config"]
