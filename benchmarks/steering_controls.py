"""What do steering controls cost? Steered greedy decoding at B = 32 with per-row vectors, token
selection and conditions, side by side with a plain `Steer`.

    python -m benchmarks.steering_controls                       # B=32, 64 new tokens, 5 rounds
    python -m benchmarks.steering_controls --new-tokens 16 --rounds 3 --out controls.json
    python -m benchmarks.steering_controls --variants conditional,conditional_all_layers   # vs steer only

All variants run the same compiled sampler (`sample_tokens`) on the same 32 chat prompts of the
default model, no stop tokens (every row decodes `--new-tokens`), interleaved round-robin so
drift of a loaded machine hits all alike. Reported per variant: median wall and process-CPU
seconds, the ratio to plain `Steer` (CPU time is the steadier measure on a shared machine), and
MFU: model FLOPs (`benchmarks.common.generate_flops`; the extra prompt read of
`conditional_all_layers` is not counted as model work) over the float32 large-matmul rate timed
in the same rounds. `conditional` steers the layers above its condition layer, so the prefill
decides it from its own activations; `conditional_all_layers` also steers at and below it and
pays an unsteered read of the prompt through layers 0..layer.
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import generate_flops, interleaved_times, log, machine_info, matmul_peak_call, mfu


def variants(model, tok, batch: int, layer: int) -> dict:
    from jaxsteer import Conditional, OnTokens, RowSteer, Steer

    c = model.config
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(c.n_layers, c.d_model)) * 0.5, jnp.float32)
    bank = jnp.asarray(rng.normal(size=(4, c.n_layers, c.d_model)) * 0.5, jnp.float32)
    per_row = jnp.asarray(rng.normal(size=(batch, c.n_layers, c.d_model)) * 0.5, jnp.float32)
    trig = tok(" the", add_special_tokens=False)["input_ids"] + tok(".", add_special_tokens=False)["input_ids"]
    condition = jnp.asarray(rng.normal(size=c.d_model), jnp.float32)
    above = tuple(range(layer + 1, c.n_layers))
    return {
        "steer": Steer(v),
        "row_bank": RowSteer(bank, index=jnp.asarray(np.arange(batch) % 4)),
        "row_vectors": RowSteer(per_row, scale=jnp.asarray(rng.uniform(0.5, 2, size=batch), jnp.float32)),
        "generated_first_8": OnTokens(Steer(v), first=8),
        "triggers": OnTokens(Steer(v), triggers=trig),
        # CAST's layout: the condition read below the layers it steers, decided inside the prefill
        "conditional": Conditional(Steer(v, layers=above), condition, layer=layer, threshold=0.0),
        # the behaviour also at or below the condition layer: the condition needs its own unsteered read
        "conditional_all_layers": Conditional(Steer(v), condition, layer=layer, threshold=0.0),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layer", type=int, default=12, help="the condition's layer")
    ap.add_argument("--peak-n", type=int, default=1024)
    ap.add_argument(
        "--variants", help="comma-separated variants to run (default: all; plain steer always runs, the peer)"
    )
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    import jaxsteer
    from jaxsteer.models.generate import SamplingConfig, prepare_prompts, sample_tokens, tokenize_prompts
    from jaxsteer.steering.evaluate import load_task

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    task = load_task("sentiment")
    prompts = ((task.test + task.validation) * 2)[: args.batch]
    prepared = prepare_prompts(
        model, tokenize_prompts(tok, prompts), tokenizer=tok, max_new_tokens=args.new_tokens, stop_tokens=()
    )
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, greedy=True)
    key = jax.random.PRNGKey(0)
    calls = {}
    chosen = variants(model, tok, args.batch, args.layer)
    if args.variants:
        unknown = set(args.variants.split(",")) - set(chosen)
        if unknown:
            raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(chosen)}")
        chosen = {k: v for k, v in chosen.items() if k == "steer" or k in args.variants.split(",")}
    for name, iv in chosen.items():

        def call(iv=iv):
            return jax.block_until_ready(
                sample_tokens(model, *prepared.args, key=key, interventions=(iv,), sampling=sampling)
            )

        log(f"compiling {name}")
        call()
        calls[name] = call
    peak_call, peak_flops = matmul_peak_call(args.peak_n)
    calls["matmul_peak"] = peak_call
    wall, cpu = interleaved_times(
        calls, args.rounds, on_result=lambda k, w, c: log(f"{k}: {w:.2f} s wall, {c:.2f} s CPU")
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    P = int(prepared.mask.sum(1).mean())
    flops = generate_flops(model.config, args.batch, args.batch, P, args.new_tokens)
    peak, peak_cpu = peak_flops / med["matmul_peak"], peak_flops / med_cpu["matmul_peak"]
    rows = {}
    for name in calls:
        if name == "matmul_peak":
            continue
        rows[name] = {
            "wall_s": med[name],
            "cpu_s": med_cpu[name],
            "wall_ratio": med[name] / med["steer"],
            "cpu_ratio": med_cpu[name] / med_cpu["steer"],
            "mfu": mfu(flops, med[name], peak),
            "mfu_cpu_time": mfu(flops, med_cpu[name], peak_cpu),
        }
    result = {
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "prompt_tokens_mean": P,
        "rounds": args.rounds,
        "model_flops": flops,
        "matmul_peak_flops_per_s": peak,
        "variants": rows,
        "machine": machine_info(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)
    log("variant | wall s | CPU s | CPU ratio vs steer | MFU")
    for name, r in rows.items():
        log(f"{name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['cpu_ratio']:.3f} | {r['mfu']:.3%}")


if __name__ == "__main__":
    main()
