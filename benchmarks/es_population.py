"""ES population evaluation throughput against plain batched generation, side by side.

    python -m benchmarks.es_population              # SmolLM2-135M-Instruct, 8 members x 4 prompts vs batch 32
    python -m benchmarks.es_population --quick      # fewer new tokens and rounds
    python -m benchmarks.es_population --members 8 --prompts 4 --new-tokens 32 --reps 3 --out es.json

In one process, on the same model (float32) and the same 4 chat prompts:

- plain: `jaxsteer.generate` on the prompts tiled to a batch of members x prompts (no perturbation);
- one row per search space, `population_generate` (the member axis vmapped in one compiled call,
  perturbations regenerated from keys inside it) with members x prompts rows:
  steering (OpenES over `[L, d]` vectors), EGGROLL (rank-1 noise on all 7 projections of every
  layer, OpenES), ESSA (a random rank-8 LoRA on all projections, SVD-reparameterised, CMA-ES over
  the singular values).

Greedy decoding, `stop_tokens=[]` (every row generates exactly `new_tokens`), timings interleaved
round-robin after one compile/warm-up call each; prefill included, as in `benchmarks.inference`.
Throughput = rows x new tokens per second. `fraction_of_plain` uses process CPU seconds (median
of `reps` rounds): on a shared, oversubscribed machine wall time mostly measures the neighbours,
while the CPU time the program burns is stable to ~3%; wall-clock tokens/s (best and median
round) are reported next to it and agree with it on an idle machine. Progress on stderr; one JSON object
on stdout (and in --out).

MFU of each population evaluation (and of plain generation): model FLOPs per second over the
rate of a large matmul (`n x n`, `--peak-n`, the model's dtype) timed in the same interleaved
rounds, by wall and by CPU time. Model FLOPs (`benchmarks.common.FLOP_COUNT`): members x (each
prompt's prefill, its real tokens, once + one forward per further token per row), forward only;
the perturbation itself (noise regeneration, low-rank products) is not counted, so a search
space's extra work shows as a lower MFU than plain generation's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

import numpy as np

from .common import (
    MatmulReference,
    generate_flops,
    interleaved_times,
    log,
    machine_info,
    matmul_peak_call,
    mfu,
    thread_policy,
    timed,
)

MODEL_ALIAS = "smollm2-135m-instruct"
PROMPTS = [
    "What is 17 + 25?",
    "Name a prime number larger than 50.",
    "Explain in one sentence why the sky is blue.",
    "Write a short haiku about autumn leaves falling in the park.",
]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def population_calls(model, prompt_ids: list, M: int, N: int, names: list[str]) -> tuple[dict, dict]:
    """`(calls, extra)`: "plain" generation of the tiled prompts and one `population_generate` per
    search space in `names` (zero-argument callables returning the tokens), and each space's facts."""
    import jax
    import jax.numpy as jnp

    import jaxsteer
    from jaxsteer.train.es import CMAES, EggrollSpace, OpenES, SteeringSpace, essa_space, population_generate
    from jaxsteer.train.trainable import TrainableConfig

    tiled = [p for _ in range(M) for p in prompt_ids]

    def plain():
        return jaxsteer.generate(model, tiled, tokenizer=None, greedy=True, max_new_tokens=N, stop_tokens=[]).tokens

    lora_cfg = TrainableConfig(kind="lora", lora_rank=8, lora_alpha=16.0)
    rng = np.random.default_rng(0)
    lora = {}
    for p in lora_cfg.lora_targets:
        L, d_in, d_out = model.params["layers"][p].shape
        lora[p] = {
            "a": jnp.asarray(rng.normal(size=(L, d_in, 8)) / np.sqrt(d_in), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(L, 8, d_out)) * 0.01, jnp.float32),
        }
    setups = {
        "steering": lambda: (SteeringSpace(), OpenES(population=M, sigma=0.01, lr=0.01)),
        "eggroll": lambda: (EggrollSpace(rank=1), OpenES(population=M, sigma=1e-3, lr=1e-3)),
        "essa": lambda: (essa_space(model, lora, lora_cfg), CMAES(population=M, sigma=0.01)),
    }
    calls = {"plain": plain}
    extra: dict[str, Any] = {}
    for name in names:
        space, strategy = setups[name]()
        state = strategy.init(space.init(model), jax.random.PRNGKey(0))
        leaves = jax.tree_util.tree_leaves(state["theta"])
        extra[name] = {
            "search_dims": int(sum(x.size for x in leaves)),
            "strategy": type(strategy).__name__,
            "space": type(space).__name__,
        }
        calls[name] = lambda space=space, strategy=strategy, state=state: (
            population_generate(
                model, space, strategy, state, prompt_ids, greedy=True, max_new_tokens=N, stop_tokens=[], bucket=32
            ).tokens
        )
    return calls, extra


def measure(calls: dict, reps: int, expect_size: int) -> tuple[dict, dict, dict]:
    """`(first-call seconds, wall seconds, CPU seconds)` per call: one compile / warm-up call each
    (its output must have `expect_size` tokens), then `reps` interleaved rounds."""
    first = {}
    for name, fn in calls.items():
        log(f"first call (compile) of {name} ...")
        first[name], out = timed(fn)
        assert out is None or out.size == expect_size, out.shape
    log(f"{reps} interleaved rounds of {', '.join(calls)} ...")
    times, cpu = interleaved_times(calls, reps)
    log("  medians: " + ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in times.items()))
    return first, times, cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--spaces", default="steering,eggroll,essa")
    ap.add_argument("--quick", action="store_true", help="8 new tokens, 1 round")
    ap.add_argument("--peak-n", type=int, default=1024, help="size of the square matmul whose rate MFU divides by")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.new_tokens, args.reps = 8, 1

    import jax.numpy as jnp

    import jaxsteer
    from jaxsteer.models.generate import tokenize_prompts

    M, B, N = args.members, args.prompts, args.new_tokens
    load_before = _loadavg()
    log(f"loading {MODEL_ALIAS} ...")
    t_load, (model, tok) = timed(lambda: jaxsteer.load(MODEL_ALIAS, dtype=jnp.float32))
    c = model.config
    prompt_ids = tokenize_prompts(tok, (PROMPTS * (1 + B // len(PROMPTS)))[:B])
    names = [s for s in args.spaces.split(",") if s]
    calls, extra = population_calls(model, prompt_ids, M, N, names)
    reference = MatmulReference("jnp.dot", *matmul_peak_call(args.peak_n, str(model.params["embed"].dtype))).idle()
    calls["matmul_peak"] = lambda: (reference.call(), None)[1]
    first, times, cpu = measure(calls, args.reps, M * B * N)
    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rows = M * B
    result: dict[str, Any] = {
        "benchmark": "es_population",
        "model": MODEL_ALIAS,
        "config": {"n_layers": c.n_layers, "d_model": c.d_model, "params": c.n_params(), "dtype": "float32"},
        "members": M,
        "prompts": B,
        "rows": rows,
        "new_tokens": N,
        "prompt_width": -(-max(len(p) for p in prompt_ids) // 32) * 32,
        "decoding": "greedy, stop_tokens=[] (exactly new_tokens per row), prefill included",
        "measure": "fraction_of_plain = (tokens per process-CPU-second) / (the same for plain), medians over the "
        "interleaved rounds: stable on a shared machine; wall-clock figures (best and median round) "
        "are given too and equal it on an idle machine",
        "plain_tokens_per_cpu_s": rows * N / med_cpu["plain"],
        "plain_tokens_per_s_wall_best": rows * N / best["plain"],
        "plain_tokens_per_s_wall_median": rows * N / med["plain"],
        "spaces": {},
        "times_s": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "cpu_times_s": {k: [round(t, 4) for t in v] for k, v in cpu.items()},
        "first_call_s": {k: round(v, 2) for k, v in first.items()},
        "load_s": round(t_load, 2),
        "reps": args.reps,
        "loadavg_before_after": [load_before, None],
        "peer": "jaxsteer's own plain batched generation of the same rows (no ES peer library runs on this model)",
        "thread_policy": thread_policy(),
        "machine": machine_info(),
    }
    result["matmul_reference"] = reference.report(times["matmul_peak"], cpu["matmul_peak"])
    result["mfu"] = mfu_table(c, prompt_ids, M, N, reference.flops, med, med_cpu, ["plain", *names])
    result["mfu"]["flags"] = result["matmul_reference"]["flags"] + [
        f"MFU of {k} > 1: the reference was slowed, not the work sped up"
        for k, v in result["mfu"].items()
        if isinstance(v, float) and k not in ("flops_per_call",) and not k.startswith("peak") and v > 1
    ]
    for name in names:
        result["spaces"][name] = {
            **extra[name],
            "fraction_of_plain": med_cpu["plain"] / med_cpu[name],
            "tokens_per_cpu_s": rows * N / med_cpu[name],
            "tokens_per_s_wall_best": rows * N / best[name],
            "tokens_per_s_wall_median": rows * N / med[name],
            "fraction_of_plain_wall_best": best["plain"] / best[name],
            "fraction_of_plain_wall_median": med["plain"] / med[name],
            "mfu": result["mfu"][name],
            "mfu_cpu_time": result["mfu"][f"{name}_cpu_time"],
        }
    result["loadavg_before_after"][1] = _loadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


def mfu_table(
    c, prompt_ids: list, M: int, N: int, peak_flops: float, med: dict, med_cpu: dict, names: list[str]
) -> dict[str, Any]:
    """MFU of each call (wall and CPU time) from its median times and the matmul's in the same rounds."""
    B = len(prompt_ids)
    flops = M * generate_flops(c, B, B, sum(map(len, prompt_ids)) / B, N)  # members x the prompts' generation
    peak, peak_cpu = peak_flops / med["matmul_peak"], peak_flops / med_cpu["matmul_peak"]
    out: dict[str, Any] = {
        "flops_per_call": flops,
        "peak_flops_per_s": peak,
        "peak_flops_per_cpu_s": peak_cpu,
        "flop_count": "see benchmarks.common.FLOP_COUNT (forward only)",
    }
    for name in names:
        out[name] = mfu(flops, med[name], peak)
        out[f"{name}_cpu_time"] = mfu(flops, med_cpu[name], peak_cpu)
        log(f"MFU {name}: {out[name]:.3f} (by CPU time {out[f'{name}_cpu_time']:.3f})")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
