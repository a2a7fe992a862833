"""Shared helpers for the benchmarks: logging to stderr, timing, machine description, and MFU
against a checked matmul reference.

Importing this module sets `OMP_WAIT_POLICY=PASSIVE` (unless already set) before torch is
imported, so torch's OpenMP threads sleep instead of spinning between parallel regions and
CPU-time ratios measure work; XLA:CPU's thread pool has no such switch (its idle spinning is
short). Every benchmark states the policy in its output (`thread_policy()`).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def log(*args: Any) -> None:
    print("[bench]", *args, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call of `fn` (which must itself block until its result is ready)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], Any], n: int) -> tuple[float, list[float]]:
    """Median wall time of `n` calls (no warm-up: call `fn` once yourself before)."""
    times = [timed(fn)[0] for _ in range(n)]
    return statistics.median(times), times


def interleaved_times(
    fns: dict[str, Callable[[], Any]],
    n: int | dict[str, int],
    on_result: Callable[[str, float, float], None] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run the callables round-robin, so slow drift of the machine hits all alike. `n`: rounds, or
    rounds per name (a name with fewer takes part in the first rounds only).

    Returns (wall seconds, process CPU seconds) per name. CPU time (all threads of this process)
    counts the work done and is much less sensitive than wall time to other processes competing
    for the cores; spin-waiting threads inflate it a little."""
    counts = n if isinstance(n, dict) else {k: n for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(max(counts.values())):
        for k, fn in fns.items():
            if r < counts.get(k, 0):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
                if on_result:
                    on_result(k, wall[k][-1], cpu[k][-1])
    return wall, cpu


_COMPILE_S = [0.0]
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


def _on_jax_event(name: str, secs: float, **_: Any) -> None:
    if name in _COMPILE_EVENTS:
        _COMPILE_S[0] += secs


def compile_seconds() -> float:
    """Seconds JAX has spent tracing, lowering and compiling in this process so far (from
    `jax.monitoring` events; take differences around a call)."""
    if not getattr(compile_seconds, "_registered", False):
        import jax

        jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
        compile_seconds._registered = True
    return _COMPILE_S[0]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags that matter for float32 matmul throughput."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    import jax

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except Exception:  # pragma: no cover
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- model FLOPs and MFU

FLOP_COUNT = (
    "model FLOPs of a forward over n new tokens = 2 * P_mm * n (P_mm = the per-layer matmul weights summed over "
    "layers, L * (d*H*hd + 2*d*KV*hd + H*hd*d + 3*d*F): the '2 * params * tokens' rule without embeddings and "
    "norms) + 4 * L * H * hd * (keys each token attends to, causal: a prompt of P tokens attends to P(P+1)/2 keys "
    "in all) + 2 * d * V per position that goes through the unembedding; norms, RoPE, softmax and activations "
    "are not counted, nor recomputation under remat. A backward costs 1x the forward when only activation "
    "gradients are needed (steering vectors: the frozen weights get none; LoRA: nearly so) and 2x with weight "
    "gradients (full fine-tuning): forward + backward = 2x or 3x the forward"
)


def forward_flop_terms(cfg, rows: float, new: int, past: int = 0, head: int | None = None) -> dict[str, float]:
    """`forward_flops` by term: {"params_matmul": P_mm, "layers": the weight matmuls, "attention",
    "lm_head", "total"} (FLOPs, see `FLOP_COUNT`; "params_matmul" is a weight count)."""
    L, d, F, H, KV, hd, V = (
        cfg.n_layers,
        cfg.d_model,
        cfg.d_mlp,
        cfg.n_heads,
        cfg.n_kv_heads,
        cfg.head_dim,
        cfg.vocab_size,
    )
    p_mm = L * (d * H * hd + 2 * d * KV * hd + H * hd * d + 3 * d * F)
    keys = new * past + new * (new + 1) / 2  # causal: token i of the new ones sees past + i + 1 keys
    head = new if head is None else head
    layers, attention, lm_head = 2.0 * p_mm * new, 4.0 * L * H * hd * keys, 2.0 * d * V * head  # per row
    return {
        "params_matmul": p_mm,
        "layers": rows * layers,
        "attention": rows * attention,
        "lm_head": rows * lm_head,
        "total": rows * (layers + attention + lm_head),
    }


def forward_flops(cfg, rows: float, new: int, past: int = 0, head: int | None = None) -> float:
    """Model FLOPs (see `FLOP_COUNT`) of a forward of `rows` rows of `new` tokens each, placed after
    `past` cached positions, with `head` positions per row through the unembedding (None: all)."""
    return forward_flop_terms(cfg, rows, new, past, head)["total"]


def generate_flops(cfg, prompts: int, rows: int, prompt_len: int, new_tokens: int) -> float:
    """Model FLOPs of sampling `new_tokens` for `rows` rows from `prompts` distinct prompts of
    `prompt_len` tokens (each prompt prefilled once, one logit row each; then one token per row per step)."""
    prefill = forward_flops(cfg, prompts, prompt_len, head=1)
    decode = sum(forward_flops(cfg, rows, 1, past=prompt_len + i) for i in range(new_tokens - 1))
    return prefill + decode


def matmul_peak_call(n: int = 1024, dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """`(call, flops)`: a blocking, jitted `n x n` matmul in `dtype` (the large-matmul peak to divide
    by; time it in the same rounds as what it is compared with) and its FLOPs."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    return (lambda: dot(a, b).block_until_ready()), 2.0 * n**3


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: `flops / seconds` over the measured large-matmul rate.

    A value above 1 is not physical: the reference matmul ran slower than the work it divides
    (other load on the machine during its rounds); it is returned as measured with a warning."""
    value = flops / seconds / peak_flops_per_s
    if value > 1.0:
        import warnings

        warnings.warn(
            f"MFU {value:.2f} > 1: the reference matmul ran slower than expected (machine load?); "
            "rerun on an idle machine or read the CPU-time figures",
            RuntimeWarning,
            stacklevel=2,
        )
    return value


def package_version(dist: str) -> str:
    """An installed distribution's version, or "not installed" (for the peer statements)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def thread_policy() -> dict[str, Any]:
    """The thread settings that decide what CPU time means here (stated in every benchmark's output)."""
    out: dict[str, Any] = {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "note": "PASSIVE: torch's OpenMP workers sleep when idle, so process CPU time counts "
        "work rather than spinning; XLA:CPU's pool is not affected",
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import torch

        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


def torch_matmul_call(n: int = 1024, dtype: str = "float32") -> tuple[Callable[[], Any], float]:
    """`(call, flops)`: an `n x n` torch.mm in `dtype` under `torch.inference_mode` (the PyTorch
    side's own matmul rate, for its MFU)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype))

    def call():
        with torch.inference_mode():
            return torch.mm(a, b)

    call()
    return call, 2.0 * n**3


MFU_REFERENCE_FLOOR = 0.7  # below this fraction of its idle rate, the in-round reference is flagged


class MatmulReference:
    """A framework's large-matmul rate, checked: `idle(rounds)` times it alone before the benchmark
    (the best of `rounds`), then the benchmark times `call` in its own interleaved rounds and
    `report(wall, cpu)` compares the two. MFU divides by the in-round rate (same load as the
    work), but is flagged when that rate fell below `MFU_REFERENCE_FLOOR` of the idle rate or when
    an MFU exceeds 1 (both mean the reference was slowed by other load, not the work sped up)."""

    def __init__(self, framework: str, call: Callable[[], Any], flops: float):
        self.framework, self.call, self.flops = framework, call, flops
        self.idle_wall = self.idle_cpu = None

    def idle(self, rounds: int = 5) -> MatmulReference:
        wall, cpu = [], []
        for _ in range(rounds):
            c0, t0 = time.process_time(), time.perf_counter()
            self.call()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        self.idle_wall, self.idle_cpu = self.flops / min(wall), self.flops / min(cpu)
        return self

    def report(self, wall: list[float], cpu: list[float]) -> dict[str, Any]:
        """The reference's rates from its in-round timings (medians) and whether it is trustworthy."""
        rate, rate_cpu = self.flops / statistics.median(wall), self.flops / statistics.median(cpu)
        out = {
            "framework": self.framework,
            "gflops_per_s_in_rounds": rate / 1e9,
            "gflops_per_cpu_s_in_rounds": rate_cpu / 1e9,
            "gflops_per_s_idle": None if self.idle_wall is None else self.idle_wall / 1e9,
            "gflops_per_cpu_s_idle": None if self.idle_cpu is None else self.idle_cpu / 1e9,
            "flags": [],
        }
        for suffix, got, idle in (("wall", rate, self.idle_wall), ("cpu", rate_cpu, self.idle_cpu)):
            if idle and got < MFU_REFERENCE_FLOOR * idle:
                out["flags"].append(
                    f"{self.framework} matmul ran at {got / idle:.0%} of its idle rate by {suffix} "
                    f"time in the rounds (< {MFU_REFERENCE_FLOOR:.0%}): MFU by {suffix} time is "
                    "inflated by other load"
                )
        return out


def mfu_entry(flops: float, wall_s: float, cpu_s: float, reference: dict[str, Any]) -> dict[str, Any]:
    """MFU of `flops` done in `wall_s` / `cpu_s` against `reference` (a `MatmulReference.report`
    of the same framework, same rounds), by wall and CPU time, with the reference's flags and a
    flag for any MFU > 1."""
    out = {
        "vs": reference["framework"],
        "mfu_wall": flops / wall_s / (reference["gflops_per_s_in_rounds"] * 1e9),
        "mfu_cpu_time": flops / cpu_s / (reference["gflops_per_cpu_s_in_rounds"] * 1e9),
    }
    flags = list(reference["flags"])
    flags += [
        f"MFU by {k[4:]} > 1: the reference was slowed, not the work sped up"
        for k in ("mfu_wall", "mfu_cpu_time")
        if out[k] > 1
    ]
    out["flags"] = flags
    return out
