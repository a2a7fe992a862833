"""Refill vs static sampling on completions of widely spread lengths (issue 24 item 3).

The task: chat prompts of the default model (SmolLM2-135M-Instruct) that half ask for a one-number
answer and half for an explanation, sampled at temperature 1 with G samples per prompt; a
completion ends at EOS or, with `--stop sentence` (the default), at its first "." too, so lengths
spread from a few tokens to `max_new_tokens` (`--stop eos`: most explanations run to the limit).
The same rows are sampled two ways, side by side in interleaved rounds:

- static: calls of B rows (`B / G` prompts each), every row decoding until the call's longest ends;
- refill: one call over all rows with B slots (`SamplingConfig.refill_slots = B`), a finished
  row's slot taken by the next waiting row.

Both give the same tokens per row (checked). Reported: effective completion tokens per second
(the rows' real tokens, up to and including EOS) by wall and by CPU time, the ratio, and the MFU of
the useful FLOPs (each prompt's prefill once, each row's real tokens) against the jitted float32
large matmul timed in the same rounds (`common.MatmulReference`, flagged when load slowed it).
Absolute figures depend on the machine's load; the ratio is measured side by side.

    python -m benchmarks.refill                 # B = 32, 128 rows, max_new_tokens 64
    python -m benchmarks.refill --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    MatmulReference,
    forward_flops,
    interleaved_times,
    log,
    machine_info,
    matmul_peak_call,
    mfu_entry,
    thread_policy,
)

SHORT = "What is {a} + {b}? Reply with only the number."
LONG = "Explain {t} step by step, with an example."
TOPICS = ["the water cycle", "how a bicycle gear works", "why the sky is blue", "photosynthesis"]


def spread_prompts(n: int) -> list[str]:
    """`n` chat prompts alternating a one-number question and a request for an explanation."""
    return [
        SHORT.format(a=3 + i, b=11 + 2 * i) if i % 2 == 0 else LONG.format(t=TOPICS[(i // 2) % len(TOPICS)])
        for i in range(n)
    ]


def useful_flops(cfg, n_prompts: int, width: int, lengths: np.ndarray) -> float:
    """Model FLOPs of the work a row needs: each prompt's prefill once, then each row's real tokens."""
    prefill = forward_flops(cfg, n_prompts, width, head=1)
    return prefill + sum(forward_flops(cfg, 1, 1, past=width + i) for n in lengths for i in range(int(n)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32, help="rows per static call = refill slots")
    ap.add_argument("--rows", type=int, default=128, help="rows in all (prompts x samples)")
    ap.add_argument("--samples", type=int, default=4, help="samples per prompt (G)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=2, help="interleaved rounds")
    ap.add_argument("--stop", choices=("sentence", "eos"), default="sentence", help="end at EOS or '.' / EOS only")
    ap.add_argument("--quick", action="store_true", help="B = 8, 16 rows, 16 tokens, 1 round")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rows, args.max_new_tokens, args.reps = 8, 16, 16, 1
    import dataclasses

    import jax
    import jax.numpy as jnp

    import jaxsteer
    from jaxsteer.models.generate import (
        SamplingConfig,
        default_stop_tokens,
        prepare_prompts,
        sample_tokens,
        tokenize_prompts,
    )
    from jaxsteer.models.refill import sample_tokens_refill

    G, B = args.samples, args.batch
    if B % G or args.rows % B:
        raise SystemExit("--batch must be a multiple of --samples and --rows a multiple of --batch")
    model, tok = jaxsteer.load("smollm2-135m-instruct", dtype=jnp.float32)
    ids = tokenize_prompts(tok, spread_prompts(args.rows // G))
    stop = default_stop_tokens(model, tok)
    if args.stop == "sentence":
        stop += tuple(tok.encode(".", add_special_tokens=False))
    prepared = prepare_prompts(model, ids, tokenizer=tok, max_new_tokens=args.max_new_tokens, stop_tokens=stop)
    static = SamplingConfig(args.max_new_tokens, 1.0, samples_per_prompt=G)
    refill = dataclasses.replace(static, refill_slots=B)
    key = jax.random.PRNGKey(0)
    prompt, mask, stop_ids, pad_id = prepared.args
    per_call = B // G

    def run_static():
        outs = [  # row_offset: every row draws with its index in the whole batch, as in the refill run
            sample_tokens(
                model, prompt[c : c + per_call], mask[c : c + per_call], stop_ids, pad_id, key, (), static, c * G
            )
            for c in range(0, len(ids), per_call)
        ]
        return [np.concatenate([np.asarray(o[i]) for o in outs]) for i in range(3)]

    def run_refill():
        return [np.asarray(x) for x in sample_tokens_refill(model, prompt, mask, stop_ids, pad_id, key, (), refill)]

    ref = MatmulReference("jax", *matmul_peak_call()).idle()
    t0 = time.perf_counter()
    outs = {"static": run_static(), "refill": run_refill()}  # compile and warm
    log(f"compiled and warmed in {time.perf_counter() - t0:.0f} s")
    wall, cpu = interleaved_times(
        {"static": run_static, "refill": run_refill, "jnp_dot": ref.call},
        args.reps,
        on_result=lambda k, w, c: log(f"{k}: {w:.2f} s wall, {c:.2f} s cpu"),
    )
    reference = ref.report(wall["jnp_dot"], cpu["jnp_dot"])
    lengths = outs["refill"][2]
    width = prepared.tokens.shape[1]
    flops = useful_flops(model.config, len(ids), width, lengths)
    tokens = int(lengths.sum())
    result: dict[str, Any] = {
        "task": {
            "model": "smollm2-135m-instruct (float32)",
            "prompts": len(ids),
            "samples_per_prompt": G,
            "rows": args.rows,
            "prompt_width": width,
            "max_new_tokens": args.max_new_tokens,
            "stop": args.stop,
            "lengths": {"min": int(lengths.min()), "median": float(np.median(lengths)), "max": int(lengths.max())},
            "static": f"{args.rows // B} calls of {B} rows",
            "refill": f"1 call, {B} slots",
        },
        "same_rows": bool(all(np.array_equal(outs["static"][i], outs["refill"][i]) for i in (0, 2))),
        "effective_tokens": tokens,
        "reference": reference,
        "machine": machine_info(),
        "threads": thread_policy(),
    }
    for name in ("static", "refill"):
        w, c = float(np.median(wall[name])), float(np.median(cpu[name]))
        result[name] = {
            "wall_s": w,
            "cpu_s": c,
            "tokens_per_s": tokens / w,
            "tokens_per_cpu_s": tokens / c,
            "useful_mfu": mfu_entry(flops, w, c, reference),
        }
    result["refill_over_static"] = {
        "wall": result["refill"]["tokens_per_s"] / result["static"]["tokens_per_s"],
        "cpu_time": result["refill"]["tokens_per_cpu_s"] / result["static"]["tokens_per_cpu_s"],
    }
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
