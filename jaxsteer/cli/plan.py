"""`jaxsteer plan`: will a run config fit on a device mesh? Per-device memory and, for a known
accelerator, the roofline of one step (`jaxsteer.train.plan` computes both).

    jaxsteer plan experiments/paper_qwen2.5_math_7b_steering.yaml --mesh data=8,fsdp=1 --device h100
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..train.plan import MemoryPlan, Roofline


def add_parsers(sub) -> None:
    """Register `plan`."""
    from ..train.plan import DEVICES

    p = sub.add_parser("plan", help="per-device memory of a run config on a mesh, without loading weights")
    p.add_argument("config", help="YAML run config (model.hf_config gives the architecture without a download)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--mesh", help="data=D,fsdp=F (default: the config's mesh, -1 read as 1)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--device-memory", help="memory per device, e.g. 16GiB, 80GB")
    group.add_argument("--device", choices=sorted(DEVICES), help="a known accelerator's memory per device")
    p.add_argument("--prompt-len", type=int, default=512, help="prompt tokens per row (default 512)")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args) -> None:
    """Print the plan (and, for a known `--device`, its roofline)."""
    from ..train.config import load_config
    from ..train.plan import DEVICES, PEAKS, plan, roofline

    cfg = load_config(args.config, args.overrides)
    data, fsdp = parse_mesh(args.mesh) if args.mesh else (None, None)
    capacity = DEVICES[args.device] if args.device else parse_bytes(args.device_memory) if args.device_memory else None
    if args.prompt_len < 1:
        raise InputError(f"--prompt-len must be positive, got {args.prompt_len}")
    backend = None if not args.device else "tpu" if args.device.startswith("v") else "gpu"  # for dtype auto
    result = plan(cfg, data=data, fsdp=fsdp, capacity=capacity, prompt_len=args.prompt_len, backend=backend)
    print(format_plan(result, args.device))
    if args.device in PEAKS:
        print(format_roofline(roofline(result, args.device)))


def format_plan(p: MemoryPlan, device: str | None = None) -> str:
    """The plan as the text `jaxsteer plan` prints."""
    from ..train.plan import fmt_bytes

    c, cfg = p.model, p.config
    what = (
        f"{cfg.algorithm} ({cfg.es.space_for(cfg.algorithm)} space), population {cfg.es.population}"
        if cfg.is_es
        else f"{cfg.algorithm}, trainable {cfg.trainable.kind}, {cfg.prompts_per_step} prompts x {cfg.group_size} = "
        f"{cfg.rollouts_per_step} rollouts per step, micro_batches {cfg.optimizer.micro_batches}"
    )
    cap = "" if p.capacity is None else f"; {fmt_bytes(p.capacity)} per device" + (f" ({device})" if device else "")
    dtype = p.dtype + (" (model.dtype=auto)" if cfg.model.dtype == "auto" else "")
    lines = [
        f"model: {c.architecture}, {c.n_params() / 1e9:.2f}B parameters ({dtype}): {c.n_layers} layers, "
        f"d_model {c.d_model}, d_mlp {c.d_mlp}, {c.n_heads} heads / {c.n_kv_heads} KV heads, vocab {c.vocab_size}",
        f"run: {what}",
        f"mesh: data={p.data} x fsdp={p.fsdp} = {p.data * p.fsdp} devices{cap}",
    ]
    lines += [f"  {n}" for n in p.notes]
    lines.append("per device:")
    lines += [f"  {k:<50}{fmt_bytes(v):>12}" for k, v in p.parts.items()]
    lines.append("peaks:")
    for k, v in p.peaks.items():
        verdict = "" if p.capacity is None else ("  fits" if v <= p.capacity else "  does NOT fit")
        lines.append(f"  {k:<50}{fmt_bytes(v):>12}{verdict}")
    if p.largest:
        per_update = cfg.rollouts_per_step // cfg.rl.updates_per_batch
        shards = p.data * p.fsdp
        lines.append("largest update micro-batch that fits (rows per device):")
        for k, rows in p.largest.items():
            got = "none" if rows is None else f"{rows} (micro_batches={per_update // (rows * shards)})"
            lines.append(f"  {k:<50}{got:>12}")
    if p.fits is not None:
        what = "" if cfg.is_es else (f" (rollout; update with model.remat={str(cfg.model.remat).lower()})")
        lines.append(f"verdict: {'fits' if p.fits else 'does NOT fit'} as configured{what}")
    return "\n".join(lines)


def format_roofline(r: Roofline) -> str:
    """The roofline as `jaxsteer plan --device` prints it."""
    from ..train.plan import PEAKS, fmt_bytes

    flops, bw = PEAKS[r.device]
    lines = [f"roofline on {r.device} ({flops / 1e12:g} TFLOP/s bf16, {bw / 1e12:g} TB/s HBM), per device:"]
    for k, (f, b) in r.phases.items():
        t = r.seconds[k]
        bound = "compute" if f / flops >= b / bw else "memory"
        lines.append(f"  {k:<22}{f / 1e12:>12.2f} TFLOP {fmt_bytes(b):>12} {t:>10.3f} s  {bound}-bound")
    lines.append(f"  predicted step time {r.step_seconds:.3f} s (a lower bound); MFU bound {100 * r.mfu_bound:.1f}%")
    return "\n".join(lines)


def parse_mesh(text: str) -> tuple[int, int]:
    """'data=8,fsdp=2' -> (8, 2); a missing axis is 1."""
    axes = {"data": 1, "fsdp": 1}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        if name not in axes or not value.isdigit() or int(value) < 1:
            raise InputError(f"--mesh: expected data=D,fsdp=F with positive integers, got {text!r}")
        axes[name] = int(value)
    return axes["data"], axes["fsdp"]


_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_bytes(text: str) -> int:
    """'16GiB', '80GB', '95 gib', '1e9' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InputError(f"cannot read a memory size from {text!r} (e.g. 16GiB, 80GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


__all__ = ["add_parsers", "cmd_plan", "format_plan", "format_roofline", "parse_mesh", "parse_bytes"]
