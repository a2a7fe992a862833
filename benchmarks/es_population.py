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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

from .common import log, machine_info, timed

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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--spaces", default="steering,eggroll,essa")
    ap.add_argument("--quick", action="store_true", help="8 new tokens, 1 round")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.new_tokens, args.reps = 8, 1

    import jax
    import jax.numpy as jnp

    import jaxsteer
    from jaxsteer.models.generate import tokenize_prompts
    from jaxsteer.train.es import CMAES, EggrollSpace, OpenES, SteeringSpace, essa_space, population_generate
    from jaxsteer.train.trainable import TrainableConfig

    M, B, N = args.members, args.prompts, args.new_tokens
    load_before = _loadavg()
    log(f"loading {MODEL_ALIAS} ...")
    t_load, (model, tok) = timed(lambda: jaxsteer.load(MODEL_ALIAS, dtype=jnp.float32))
    c = model.config
    prompt_ids = tokenize_prompts(tok, (PROMPTS * (1 + B // len(PROMPTS)))[:B])
    tiled = [p for _ in range(M) for p in prompt_ids]

    def plain():
        return jaxsteer.generate(model, tiled, tokenizer=None, greedy=True, max_new_tokens=N, stop_tokens=[]).tokens

    lora_cfg = TrainableConfig(kind="lora", lora_rank=8, lora_alpha=16.0)
    rng = np.random.default_rng(0)
    lora = {}
    for p in lora_cfg.lora_targets:
        L, d_in, d_out = model.params["layers"][p].shape
        lora[p] = {"a": jnp.asarray(rng.normal(size=(L, d_in, 8)) / np.sqrt(d_in), jnp.float32),
                   "b": jnp.asarray(rng.normal(size=(L, 8, d_out)) * 0.01, jnp.float32)}
    setups = {
        "steering": lambda: (SteeringSpace(), OpenES(population=M, sigma=0.01, lr=0.01)),
        "eggroll": lambda: (EggrollSpace(rank=1), OpenES(population=M, sigma=1e-3, lr=1e-3)),
        "essa": lambda: (essa_space(model, lora, lora_cfg), CMAES(population=M, sigma=0.01)),
    }
    names = [s for s in args.spaces.split(",") if s]
    calls = {"plain": plain}
    extra: dict[str, Any] = {}
    for name in names:
        space, strategy = setups[name]()
        state = strategy.init(space.init(model), jax.random.PRNGKey(0))
        leaves = jax.tree_util.tree_leaves(state["theta"])
        extra[name] = {"search_dims": int(sum(x.size for x in leaves)), "strategy": type(strategy).__name__,
                       "space": type(space).__name__}
        calls[name] = (lambda space=space, strategy=strategy, state=state: population_generate(
            model, space, strategy, state, prompt_ids, greedy=True, max_new_tokens=N, stop_tokens=[], bucket=32).tokens)

    first = {}
    for name, fn in calls.items():
        log(f"first call (compile) of {name} ...")
        first[name], out = timed(fn)
        assert out.size == M * B * N, out.shape
    log(f"{args.reps} interleaved rounds of {', '.join(calls)} ...")
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(args.reps):
        for name, fn in calls.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
        log(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
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
        "machine": machine_info(),
    }
    for name in names:
        result["spaces"][name] = {
            **extra[name],
            "fraction_of_plain": med_cpu["plain"] / med_cpu[name],
            "tokens_per_cpu_s": rows * N / med_cpu[name],
            "tokens_per_s_wall_best": rows * N / best[name],
            "tokens_per_s_wall_median": rows * N / med[name],
            "fraction_of_plain_wall_best": best["plain"] / best[name],
            "fraction_of_plain_wall_median": med["plain"] / med[name],
        }
    result["loadavg_before_after"][1] = _loadavg()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
