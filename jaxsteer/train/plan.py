"""Memory plan of a run config: per-device bytes before paying for the hardware.

    jaxsteer plan experiments/paper_qwen2.5_math_7b_steering.yaml --mesh data=8,fsdp=1 --device h100

Nothing is allocated: shapes come from `jax.eval_shape` of the real initialisers (`init_params`,
`init_trainable`, `init_state` with the run's optimizer) and per-device sizes from the training
shardings (`fsdp_spec`: the base and "full" trainables split along their largest axis divisible
by the fsdp size, everything else replicated; rows split over data x fsdp). The model's
architecture comes from `model.hf_config` (a Hugging Face config mapping or a config.json path),
so paper-scale models are planned without their weights.

Activations of one update micro-batch are a model of what XLA keeps alive for the backward pass
of the RL step (`rl.step.train_step`: grouped scoring, the prompt run once per group), in
elements per token per layer (`ACTIVATION_TERMS`) plus float32 logits and log-softmax over the
vocabulary. The coefficients were measured on XLA:CPU (float32) with `memory_analysis()` of the
compiled step; tests/train/test_plan.py checks the plan against it within 15%. Accelerator backends fuse
more, so on a GPU or TPU this is an upper bound. Attention through XLA materialises the scores
`[rows, H, T, S]` in float32; a flash kernel (cuDNN on GPU) keeps none, which the plan shows apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any

import jax
import numpy as np

from ..errors import InputError
from ..models.config import ModelConfig, from_hf_config
from ..models.decoder import ATTENTION_PROJECTIONS, PROJECTIONS
from ..models.params import Model, init_params
from .config import RL_ALGORITHMS, ConfigError, TrainConfig, resolve_dtype
from .sharding import fsdp_spec

# Device memory per chip (bytes). TPU: HBM per chip; GPU: the card's nominal size.
DEVICES = {
    "v4": 32 * 2**30,
    "v5e": 16 * 2**30,
    "v5p": 95 * 2**30,
    "v6e": 32 * 2**30,
    "a100-40gb": 40 * 10**9,
    "a100-80gb": 80 * 10**9,
    "h100": 80 * 10**9,
    "h200": 141 * 10**9,
}

# Peak dense bf16 matmul rate (FLOP/s) and HBM bandwidth (bytes/s) per chip, from the vendors'
# datasheets (H100 / H200: SXM; dense, no sparsity). The roofline below divides by these.
PEAKS = {
    "v4": (275e12, 1.2e12),
    "v5e": (197e12, 819e9),
    "v5p": (459e12, 2.765e12),
    "v6e": (918e12, 1.64e12),
    "a100-40gb": (312e12, 1.555e12),
    "a100-80gb": (312e12, 2.039e12),
    "h100": (989e12, 3.35e12),
    "h200": (989e12, 4.8e12),
}

# Elements kept per token per layer by the backward pass of the RL step without remat, by what
# they scale with (measured on XLA:CPU, float32; see the module docstring). "scores" are float32.
ACTIVATION_TERMS = {"d_model": 1.25, "d_mlp": 5.5, "qkv": 0.25, "scores": 3.25, "kv_cache": 1.5}
# Added per token per layer when the weights get gradients ("lora", "full"): matmul inputs kept for dW.
WEIGHT_GRAD_TERMS = {"d_model": 2.5, "d_mlp": 1.75, "heads": 0.5}
LOGIT_COPIES = 4.0  # float32 [rows, N, V] arrays alive at once: logits, log-softmax, its exp, the gradient
REMAT_CARRY = 1.0  # with remat: the residual stream entering each layer, per token, activation dtype
REMAT_LAYER = 1.25  # with remat: working set of the one layer being recomputed, in no-remat layers


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


# --------------------------------------------------------------------------- model and shapes


def model_config(spec) -> ModelConfig:
    """The architecture of a `ModelSpec` without loading weights: `hf_config` (mapping or config.json
    path) first, then "random", a local HF directory's config.json or a GGUF file's metadata."""
    hf = getattr(spec, "hf_config", None)
    if isinstance(hf, str):
        hf = json.loads(pathlib.Path(hf).expanduser().read_text())
    if hf:
        return from_hf_config(hf)
    if spec.spec == "random":
        from .build import random_model_config

        return random_model_config(spec.random)
    from ..models.loading import DEFAULT_MODEL_ALIAS, default_model_path

    path = default_model_path() if spec.spec.lower() == DEFAULT_MODEL_ALIAS else pathlib.Path(spec.spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return from_hf_config(json.loads((path / "config.json").read_text()))
    if path.is_file() and path.suffix.lower() == ".gguf":
        from ..models.gguf_file import GGUFFile, gguf_config

        return gguf_config(GGUFFile(path))
    raise ConfigError(
        f"model.spec={spec.spec!r} is not local; give its architecture as model.hf_config "
        "(a Hugging Face config mapping or a config.json path) to plan without downloading"
    )


def abstract_model(config: ModelConfig, dtype) -> Model:
    """The model with `jax.ShapeDtypeStruct` leaves (nothing allocated)."""
    return jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0), dtype=dtype))


def device_bytes(tree: Any, fsdp: int = 1, shard: bool = False) -> int:
    """Bytes one device holds of `tree`: each leaf split by `fsdp_spec` when `shard`, else whole."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = tuple(np.shape(leaf))
        spec = fsdp_spec(shape, fsdp) if shard else ()
        per = [
            n // fsdp if ax == "fsdp" else n for n, ax in zip(shape, tuple(spec) + (None,) * len(shape), strict=False)
        ]
        total += math.prod(per) * np.dtype(leaf.dtype).itemsize
    return total


# --------------------------------------------------------------------------- activations


def _passes(rows: float, group: int, prompt: int, new: int) -> tuple[list[tuple[float, int]], int, float]:
    """`([(rows, tokens)] through the layers, key slots S, cache rows)` of the RL step's scoring."""
    if group > 1:  # grouped_sequence_logprobs: each prompt once, its K/V repeated for the group
        return [(rows / group, prompt), (rows, new - 1)], prompt + new - 1, rows / group + rows
    return [(rows, prompt + new)], prompt + new, 0.0


def activation_bytes(
    c: ModelConfig,
    rows: float,
    *,
    group: int,
    prompt: int,
    new: int,
    act_bytes: int,
    remat: bool = False,
    flash: bool = False,
    weight_grads: bool = False,
) -> dict[str, float]:
    """Bytes XLA keeps for one micro-batch's backward: `layers` (of which `scores`, the float32
    attention scores a flash kernel would not keep) and `logits` (float32 over the vocabulary).
    `weight_grads`: the projections get gradients (LoRA, full), so their inputs are kept too."""
    passes, slots, cache_rows = _passes(rows, group, prompt, new)
    tokens = sum(r * t for r, t in passes)
    t = ACTIVATION_TERMS
    qkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
    per_token = t["d_model"] * c.d_model + t["d_mlp"] * c.d_mlp + t["qkv"] * qkv
    if weight_grads:
        w = WEIGHT_GRAD_TERMS
        per_token += w["d_model"] * c.d_model + w["d_mlp"] * c.d_mlp + w["heads"] * c.n_heads * c.head_dim
    per_token *= act_bytes
    scores_layer = 0.0 if flash else t["scores"] * c.n_heads * slots * tokens * 4
    cache_layer = t["kv_cache"] * cache_rows * slots * 2 * c.n_kv_heads * c.head_dim * act_bytes
    one_layer = per_token * tokens + scores_layer + cache_layer
    logits = LOGIT_COPIES * rows * new * c.vocab_size * 4
    if not remat:
        layers = c.n_layers * one_layer
        return {"layers": layers, "scores": c.n_layers * scores_layer, "logits": logits, "total": layers + logits}
    # remat: the residual entering every layer is kept; one layer is recomputed at a time, and its
    # working set and the logits' are not alive together (measured: the peak takes the larger)
    carry = c.n_layers * REMAT_CARRY * c.d_model * tokens * act_bytes
    work = REMAT_LAYER * one_layer
    return {
        "layers": carry + work,
        "scores": REMAT_LAYER * scores_layer,
        "logits": logits,
        "total": carry + max(work, logits),
    }


def kv_cache_bytes(c: ModelConfig, rows: float, slots: int, act_bytes: int) -> float:
    """The sampler's K/V cache: 2 x L x rows x slots x KV heads x head_dim x bytes."""
    return 2 * c.n_layers * rows * slots * c.n_kv_heads * c.head_dim * act_bytes


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes of a run on a mesh.

    Attributes:
        model: the model's config.
        config: the run's config.
        data: data-parallel devices.
        fsdp: devices each weight is sharded over.
        capacity: bytes per device (None: sizes only).
        prompt_len: the prompt length planned for.
        rows: update micro-batch rows per device.
        rollout_rows: sampler rows per device.
        parts: persistent and per-phase sizes, by name.
        peaks: the update (per activation variant) and rollout peaks.
        largest: per variant, the largest update micro-batch in rows per device that fits (None: none
            fits; absent without a capacity).
        notes: lines explaining the layout (and warnings).
        dtype: the base weights' dtype (`model.dtype` resolved for the backend).
    """

    model: ModelConfig
    config: TrainConfig
    data: int
    fsdp: int
    capacity: int | None
    prompt_len: int
    rows: float
    rollout_rows: float
    parts: dict[str, float]
    peaks: dict[str, float]
    largest: dict[str, int | None]
    notes: list[str]
    dtype: str = "float32"

    @property
    def configured(self) -> str:
        """The peak the config runs: "update, remat" with `model.remat` set (any policy; a policy
        that keeps matmul outputs needs more), else "update, no remat" (XLA attention); ES: "rollout"."""
        if self.config.is_es:
            return "rollout"
        return "update, remat" if self.config.model.remat else "update, no remat"

    @property
    def fits(self) -> bool | None:
        """Whether the run as configured fits: the rollout and the `configured` update; None
        without a capacity."""
        if self.capacity is None:
            return None
        return max(self.peaks["rollout"], self.peaks[self.configured]) <= self.capacity


VARIANTS = {
    "no remat": dict(remat=False),
    "remat": dict(remat=True),
    "remat + flash attention": dict(remat=True, flash=True),
}


def _state_shapes(cfg: TrainConfig, model: Model) -> dict:
    """Abstract `{"step", "trainable", "opt"}` of the RL learner (the run's optimizer)."""
    from .state import init_state, make_optimizer
    from .trainable import init_trainable

    tx, _ = make_optimizer(
        cfg.optimizer.lr,
        cfg.steps,
        warmup_frac=cfg.optimizer.warmup_frac,
        schedule=cfg.optimizer.schedule,
        weight_decay=cfg.optimizer.weight_decay,
        grad_clip=cfg.optimizer.grad_clip,
    )
    return jax.eval_shape(lambda m: init_state(init_trainable(m, cfg.trainable, jax.random.PRNGKey(0)), tx), model)


def _update_batch_bytes(rows: float, prompt: int, new: int) -> float:
    """tokens, mask (int32 [rows, P + N]), old_logp (float32 [rows, N]), advantages, rewards."""
    return rows * (2 * 4 * (prompt + new) + 4 * new + 8)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """What the per-phase sizes of an RL run depend on besides the micro-batch count."""

    c: ModelConfig
    cfg: TrainConfig
    shards: int
    prompt: int
    act_bytes: int

    def update_rows(self, micro_batches: int) -> tuple[float, int]:
        """`(rows per device, group)` of one update micro-batch (group 1: rows scored one by one)."""
        from .rl.learner import step_spec

        cfg = dataclasses.replace(
            self.cfg, optimizer=dataclasses.replace(self.cfg.optimizer, micro_batches=micro_batches)
        )
        per_micro = self.cfg.rollouts_per_step // self.cfg.rl.updates_per_batch // micro_batches
        return per_micro / self.shards, step_spec(cfg).shared_prompts if cfg.algorithm in RL_ALGORITHMS else 1

    def rollout_rows(self, micro_batches: int) -> float:
        """Sampler rows per device: the batch over `rl.learner.sampler_calls` (1 with dash; else
        micro-batches merged up to `sampling.call_rows` rows per call)."""
        from .rl.learner import sampler_calls

        cfg = dataclasses.replace(
            self.cfg, optimizer=dataclasses.replace(self.cfg.optimizer, micro_batches=micro_batches)
        )
        return cfg.prompts_per_step / sampler_calls(cfg) * cfg.group_size / self.shards

    def transient(self, micro_batches: int) -> dict[str, Any]:
        """Per-phase bytes at `micro_batches`: activations per variant, update batch, KV cache."""
        rows, group = self.update_rows(micro_batches)
        new = self.cfg.sampling.max_new_tokens
        wg = self.cfg.trainable.kind != "steering"
        act = {
            k: activation_bytes(
                self.c, rows, group=group, prompt=self.prompt, new=new, act_bytes=self.act_bytes, weight_grads=wg, **kw
            )
            for k, kw in VARIANTS.items()
        }
        rollout = self.rollout_rows(micro_batches)
        kv = kv_cache_bytes(self.c, rollout, self.prompt + new, self.act_bytes)
        return {
            "act": act,
            "batch": _update_batch_bytes(rows, self.prompt, new),
            "kv": kv,
            "decode": 2 * rollout * self.c.vocab_size * 4,
        }


def rl_plan(
    cfg: TrainConfig, c: ModelConfig, model: Model, data: int, fsdp: int, capacity: int | None, prompt_len: int
) -> MemoryPlan:
    """The plan of a gradient (RL) run; the arguments as `plan`'s, resolved.

    Args:
        cfg: the run config.
        c: its model's config.
        model: the model as abstract arrays (`abstract_model`).
        data: data-parallel devices.
        fsdp: fsdp devices.
        capacity: bytes per device (None: sizes only).
        prompt_len: the prompt length planned for.

    Returns:
        The `MemoryPlan`.
    """
    a, new = cfg.rl, cfg.sampling.max_new_tokens
    lay = _Layout(c, cfg, data * fsdp, prompt_len, np.dtype(model.params["embed"].dtype).itemsize)
    state = _state_shapes(cfg, model)
    shard_state = cfg.trainable.kind == "full" and fsdp > 1
    trainable = device_bytes(state["trainable"], fsdp, shard_state)
    parts: dict[str, float] = {
        "base parameters": device_bytes(model, fsdp, shard=fsdp > 1),
        "trainable state": trainable,
        "optimizer moments": device_bytes(state["opt"], fsdp, shard_state),
        "gradients": 2 * trainable,  # the micro-batch scan's accumulator and this micro-batch's
    }
    if fsdp > 1:  # XLA all-gathers one layer (and the unembedding) at a time
        layer = sum(
            math.prod(x.shape[1:]) * np.dtype(x.dtype).itemsize
            for x in jax.tree_util.tree_leaves(model.params["layers"])
        )
        parts["gathered weights (fsdp: a layer + unembedding)"] = layer + c.vocab_size * c.d_model * lay.act_bytes
    held = sum(parts.values()) - parts["gradients"]
    t = lay.transient(cfg.optimizer.micro_batches)
    parts["update batch"] = t["batch"]
    for k, v in t["act"].items():
        parts[f"activations, {k}"] = v["layers"]
    parts["  of which attention scores (no remat)"] = t["act"]["no remat"]["scores"]
    parts["logits / log-softmax (float32)"] = t["act"]["no remat"]["logits"]
    parts["rollout KV cache"] = t["kv"]
    peaks = _peaks(held, parts["gradients"], t)
    largest = {}
    if capacity is not None:
        for k in VARIANTS:
            largest[k] = _largest_rows(lay, held, parts["gradients"], capacity, k)
    rows, group = lay.update_rows(cfg.optimizer.micro_batches)
    notes = [
        f"update micro-batch: {cfg.rollouts_per_step // a.updates_per_batch} rollouts / "
        f"{cfg.optimizer.micro_batches} micro-batches / {lay.shards} shards = {rows:g} rows per device"
        + (f", groups of {group} completions share their prompt" if group > 1 else ""),
        f"sampler: {lay.rollout_rows(cfg.optimizer.micro_batches):g} rows per device x {prompt_len + new} slots "
        f"({prompt_len} prompt + {new} new tokens), data-parallel over the mesh",
    ]
    per_micro = cfg.rollouts_per_step // a.updates_per_batch // cfg.optimizer.micro_batches
    if per_micro % lay.shards:
        notes.append(
            f"WARNING: a micro-batch of {per_micro} rollouts does not split over {lay.shards} batch shards; "
            "jaxsteer train refuses this layout"
        )
    return MemoryPlan(
        c,
        cfg,
        data,
        fsdp,
        capacity,
        prompt_len,
        rows,
        lay.rollout_rows(cfg.optimizer.micro_batches),
        parts,
        peaks,
        largest,
        notes,
    )


def _peaks(held: float, grads: float, t: dict) -> dict[str, float]:
    peaks = {f"update, {k}": held + grads + t["batch"] + v["total"] for k, v in t["act"].items()}
    peaks["rollout"] = held + t["kv"] + t["decode"]
    return peaks


def _largest_rows(lay: _Layout, held: float, grads: float, capacity: int, variant: str) -> int | None:
    """Largest update micro-batch (rows per device) whose update and rollout both fit, over the
    micro_batches values that split the batch evenly over micro-batches and shards."""
    cfg = lay.cfg
    a = cfg.rl
    per_update = cfg.rollouts_per_step // a.updates_per_batch
    for m in range(1, per_update + 1):
        if per_update % m or (per_update // m) % lay.shards or (not a.dash and cfg.prompts_per_step % m):
            continue
        t = lay.transient(m)
        p = _peaks(held, grads, t)
        if max(p[f"update, {variant}"], p["rollout"]) <= capacity:
            return int(lay.update_rows(m)[0])
    return None


def es_plan(
    cfg: TrainConfig, c: ModelConfig, model: Model, devices: int, capacity: int | None, prompt_len: int
) -> MemoryPlan:
    """The plan of an evolution-strategies run: no gradients; members split over all devices, each
    sampling `prompts_per_step` completions (the population's K/V caches at once).

    Args:
        cfg: the run config.
        c: its model's config.
        model: the model as abstract arrays (`abstract_model`).
        devices: all devices.
        capacity: bytes per device (None: sizes only).
        prompt_len: the prompt length planned for.

    Returns:
        The `MemoryPlan`.
    """
    es, new = cfg.es, cfg.sampling.max_new_tokens
    act_bytes = np.dtype(model.params["embed"].dtype).itemsize
    space = es.space_for(cfg.algorithm)
    layers = {k: v.shape for k, v in model.params["layers"].items()}
    targets = es.targets_for(space) or (
        ATTENTION_PROJECTIONS if space == "essa" else PROJECTIONS
    )  # warm start: assumed
    r = es.essa_rank  # ESSA's warm-start rank as far as the plan knows
    if space == "essa":  # U_a, V_a^T, U_b, V_b^T per adapted matrix; 2 floor(alpha r) values
        frozen = sum(L * (i + 2 * r + o) * r for L, i, o in (layers[t] for t in targets)) * 4
        n = sum(layers[t][0] for t in targets) * 2 * int(math.floor(es.alpha * r + 1e-9))
    elif space in ("essa_product", "random_subspace"):
        frozen = sum(L * (i + o) * r for L, i, o in (layers[t] for t in targets)) * 4  # U, V^T
        n = sum(layers[t][0] for t in targets) * int(math.floor(es.alpha * r + 1e-9))
    elif space == "eggroll":
        frozen, n = 0, sum(math.prod(layers[t]) for t in targets)
    elif space == "full":
        frozen, n = 0, c.n_params()
    else:
        from .trainable import init_trainable

        frozen = 0
        n = sum(
            math.prod(x.shape)
            for x in jax.tree_util.tree_leaves(
                jax.eval_shape(lambda m: init_trainable(m, cfg.trainable, jax.random.PRNGKey(0)), model)
            )
        )
    strategy = es.strategy_for(cfg.algorithm)
    members = es.member_batch or es.population
    per_device = math.ceil(members / devices)
    per_member = (
        sum(L * (i + o) * es.rank for L, i, o in (layers[t] for t in targets)) * 4
        if space == "eggroll"
        else n * 4
        if space != "full"
        else n * act_bytes
    )
    rows = per_device * cfg.prompts_per_step
    parts: dict[str, float] = {
        "base parameters": device_bytes(model),
        "search space (frozen U, V)" if frozen else "search space": frozen + 4 * n,
        f"strategy state ({strategy})": 4 * (n * n + 4 * n if strategy == "cma" else 3 * n),
        f"members' parameters ({per_device} per device)": per_device * per_member,
        "rollout KV cache": kv_cache_bytes(c, rows, prompt_len + new, act_bytes),
    }
    peaks: dict[str, float] = {"rollout": sum(parts.values()) + 2 * rows * c.vocab_size * 4}
    notes = [
        f"{space} search space: {n:,} evolving values; population {es.population}, {members} members "
        f"evaluated at once, {per_device} per device over {devices} devices",
        f"sampler: {rows:g} rows per device x {prompt_len + new} slots ({prompt_len} prompt + {new} new tokens); "
        "the base is replicated (ES uses no fsdp axis)",
    ]
    return MemoryPlan(c, cfg, devices, 1, capacity, prompt_len, 0, rows, parts, peaks, {}, notes)


def plan(
    cfg: TrainConfig,
    *,
    data: int | None = None,
    fsdp: int | None = None,
    capacity: int | None = None,
    prompt_len: int = 512,
    backend: str | None = None,
) -> MemoryPlan:
    """The per-device memory plan of `cfg` on a data x fsdp mesh. Allocates nothing.

    Args:
        cfg: the run config.
        data: data-parallel devices (default: `cfg.mesh.data`, -1 read as 1).
        fsdp: fsdp devices (default: `cfg.mesh.fsdp`, -1 read as 1).
        capacity: bytes per device (None: report sizes only).
        prompt_len: the prompt length planned for.
        backend: resolves `model.dtype: auto` (default: this machine's JAX backend).

    Returns:
        The `MemoryPlan`.
    """
    c = model_config(cfg.model)
    from .build import DTYPES

    dtype = resolve_dtype(cfg.model.dtype, backend)
    model = abstract_model(c, DTYPES[dtype])
    data = data or (cfg.mesh.data if cfg.mesh.data > 0 else 1)
    fsdp = fsdp or (cfg.mesh.fsdp if cfg.mesh.fsdp > 0 else 1)
    if cfg.is_es:
        result = es_plan(cfg, c, model, data * fsdp, capacity, prompt_len)
    else:
        result = rl_plan(cfg, c, model, data, fsdp, capacity, prompt_len)
    return dataclasses.replace(result, dtype=dtype)


def device_capacity(device=None) -> int | None:
    """Bytes one device can hold: the accelerator's `bytes_limit`; on CPU, the machine's
    physical memory shared by its local CPU devices (None when unknown)."""
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return int(ram // max(1, len([d for d in jax.local_devices() if d.platform == device.platform])))


def check_model_fits(cfg: TrainConfig, *, devices=None, margin: float = 2.0) -> None:
    """Check, before the model loads and from its config only, that the run can fit.

    Local models only (hub ids are skipped): the shortest possible prompt (one `sampling.bucket`)
    plus `max_new_tokens` must fit the model's context, and the planned per-device peak (`plan`
    with that prompt length, a lower bound) must stay within `margin` x the device's memory.

    Args:
        cfg: the run config.
        devices: the devices of the mesh (default: all).
        margin: how far over a device's memory the lower-bound peak may go.

    Raises:
        ConfigError: naming the settings that do not fit.
    """
    try:
        c = model_config(cfg.model)
    except ConfigError:  # not local: nothing to read without a download
        return
    new = max(cfg.sampling.max_new_tokens, cfg.eval.max_new_tokens or 0)
    if cfg.sampling.bucket + new > c.max_position_embeddings:
        raise ConfigError(
            f"sampling.bucket ({cfg.sampling.bucket}, the shortest padded prompt) + max_new_tokens ({new}) exceeds "
            f"the context length of {cfg.model.spec} ({c.max_position_embeddings} tokens); lower "
            "sampling.max_new_tokens / eval.max_new_tokens"
        )
    devices = list(devices) if devices is not None else jax.devices()
    mine = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    capacity = device_capacity(mine[0])  # this process's own device (another's cannot be asked)
    if capacity is None:
        return
    mesh_data = cfg.mesh.data if cfg.mesh.data > 0 else max(1, len(devices) // max(1, cfg.mesh.fsdp))
    p = plan(
        cfg,
        data=mesh_data,
        fsdp=max(1, cfg.mesh.fsdp),
        capacity=capacity,
        prompt_len=cfg.sampling.bucket,
        backend=mine[0].platform,
    )
    phase = "rollout" if p.peaks["rollout"] >= p.peaks[p.configured] else p.configured
    peak = p.peaks[phase]
    if peak > margin * capacity:
        raise ConfigError(
            f"planned memory: the {phase} needs {fmt_bytes(peak)} per device even with {cfg.sampling.bucket}-token "
            f"prompts, and a {mine[0].platform} device here has {fmt_bytes(capacity)} "
            f"(prompts_per_step={cfg.prompts_per_step} x group_size={cfg.group_size}, "
            f"micro_batches={cfg.optimizer.micro_batches}); lower them, raise micro_batches or "
            "sampling.call_rows, or see "
            "`jaxsteer plan CONFIG`"
        )


# --------------------------------------------------------------------------- the roofline


@dataclasses.dataclass
class Roofline:
    """Per-device FLOPs and HBM bytes of one RL step (or ES generation) by phase.

    Each phase needs the time at the device's peak matmul rate or bandwidth, whichever binds (`PEAKS`).

    Attributes:
        device: a key of `PEAKS`.
        phases: phase name -> (FLOPs, bytes) per device.
    """

    device: str
    phases: dict[str, tuple[float, float]]

    @property
    def seconds(self) -> dict[str, float]:
        """Phase name -> its lower-bound seconds."""
        flops, bw = PEAKS[self.device]
        return {k: max(f / flops, b / bw) for k, (f, b) in self.phases.items()}

    @property
    def step_seconds(self) -> float:
        """The step's lower-bound seconds (all phases)."""
        return sum(self.seconds.values())

    @property
    def mfu_bound(self) -> float:
        """Model FLOPs over (predicted time x peak): the MFU a perfect implementation would reach."""
        return sum(f for f, _ in self.phases.values()) / (self.step_seconds * PEAKS[self.device][0])


def roofline(p: MemoryPlan, device: str) -> Roofline:
    """The roofline of `p`'s run on `device` (a key of `PEAKS`). Per device: rollout prefill
    (`2 N_mm` FLOPs per token plus attention, the weights read once per sampler call), decode (one
    read of all weights and of the rows' K/V cache per generated token per call: FSDP gathers the
    weights, so each device reads them whole) and, for RL, the update (forward + activation
    gradients, + weight gradients for lora/full, + a recomputed forward under remat; the weights
    read per micro-batch in each pass, the train state read and written). `N_mm`: the matmul
    parameters (the input embedding is a lookup). Ignores collectives, the reference-policy forward
    (KL), dynamic-sampling rounds, early stops and kernel efficiency: a lower bound on step time."""
    if device not in PEAKS:
        raise InputError(f"no peak figures for device {device!r}; known: {sorted(PEAKS)}")
    c, cfg = p.model, p.config
    act = 2 if p.dtype == "bfloat16" else 4
    n_mm = c.n_params() - (0 if c.tie_word_embeddings else c.vocab_size * c.d_model)
    weights = c.n_params() * act
    attn = 4 * c.n_layers * c.n_heads * c.head_dim  # FLOPs per (query, key) pair, QK^T and AV
    kv_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * act
    P, N, devices = p.prompt_len, cfg.sampling.max_new_tokens, p.data * p.fsdp
    rows = (
        math.ceil(cfg.es.population / devices) * cfg.prompts_per_step if cfg.is_es else cfg.rollouts_per_step / devices
    )  # sampled rows per device per step / generation
    calls = max(1, math.ceil(rows / max(p.rollout_rows, 1)))  # sampler calls, each reading all weights per token
    phases = {
        "rollout prefill": (rows * (2 * n_mm * P + attn * P * P / 2), calls * weights + rows * P * kv_token),
        "rollout decode": (
            rows * N * (2 * n_mm + attn * (P + N / 2)),
            calls * N * weights + rows * N * (P + N / 2) * kv_token,
        ),
    }
    if not cfg.is_es:
        passes = 2 + (cfg.trainable.kind != "steering") + bool(cfg.model.remat)
        tokens = rows * (P + N)
        from .build import DTYPES

        model = abstract_model(c, DTYPES[p.dtype])
        state = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(_state_shapes(cfg, model)))
        state /= devices if cfg.trainable.kind == "full" and p.fsdp > 1 else 1
        phases["update"] = (
            passes * (2 * n_mm * tokens + attn * rows * (P + N) ** 2 / 2),
            cfg.optimizer.micro_batches * cfg.rl.updates_per_batch * passes * weights + 3 * state,
        )
    return Roofline(device, phases)


__all__ = [
    "DEVICES",
    "PEAKS",
    "Roofline",
    "roofline",
    "ACTIVATION_TERMS",
    "WEIGHT_GRAD_TERMS",
    "LOGIT_COPIES",
    "MemoryPlan",
    "model_config",
    "abstract_model",
    "device_bytes",
    "device_capacity",
    "check_model_fits",
    "activation_bytes",
    "kv_cache_bytes",
    "plan",
    "rl_plan",
    "es_plan",
    "fmt_bytes",
]
