"""Activation-patching sweep speed: jaxsteer's one-call vmapped sweep vs a loop of Hugging Face
forward passes with PyTorch hooks, side by side in one process on SmolLM2-135M-Instruct.

    python -m benchmarks.patching                  # full resid_pre sweep, layers x positions
    python -m benchmarks.patching --repeats 2 --skip-full --out bench_patching.json

The task: an indirect-object prompt pair (23 tokens each, differing in one name) and the
metric logit(" Mary") - logit(" John") at the last position; patch the clean `resid_pre` into
the corrupted run at every (layer, position): 30 x 23 = 690 patched runs.

- jaxsteer: `activation_patching(..., site="resid_pre")`, one compiled call (a `lax.map` over
  chunks of a `vmap` over one-hot `Patch` masks). Compile time is reported separately; the
  steady-state figure is the median of `--repeats` end-to-end calls (the clean and corrupted
  runs included). With `--skip-full` off it also times `fast=False` (plain full forward passes
  vmapped), to show how much of the gain is batching and how much is reusing the base run.
- Hugging Face: `AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=float32)` on
  the same GGUF file, eager attention, `torch.inference_mode`, `logits_to_keep=1` (only the
  last position's logits, which is all the metric needs); the clean run's hidden states come
  from `output_hidden_states=True`; each patched run is one forward with a forward pre-hook on
  decoder layer l that overwrites position t of its input. torch runs with whichever of its
  default thread count and 1 thread was faster on a short probe (on a loaded machine extra
  threads can make torch much slower).

Runs alternate (jaxsteer, HF, jaxsteer, ...) so drift of a shared machine hits both. Progress
goes to stderr; one JSON object goes to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from .common import log, machine_info

CLEAN = "After a long day at the office, Mary and John went to the store. John gave a bottle of milk to"
CORRUPT = "After a long day at the office, Mary and John went to the store. Mary gave a bottle of milk to"
ANSWERS = (" Mary", " John")


def _hf_model():
    import torch
    import transformers

    from jaxsteer.models.loading import default_model_path

    path = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def _hf_sweep(hf, clean, corrupt, answers):
    """Loop of single forward passes with a pre-hook patching one position of one layer's input.
    Returns (logit differences [L, T], clean metric, corrupted metric)."""
    import torch

    a, b = answers
    layers = hf.model.layers
    L, T = len(layers), clean.shape[1]
    x_clean, x_corrupt = torch.tensor(clean), torch.tensor(corrupt)
    with torch.inference_mode():
        out = hf(x_clean, output_hidden_states=True, logits_to_keep=1)
        resid_pre = out.hidden_states[:L]  # hidden_states[l] is the input of decoder layer l
        m_clean = float(out.logits[0, -1, a] - out.logits[0, -1, b])
        lg = hf(x_corrupt, logits_to_keep=1).logits
        m_corrupt = float(lg[0, -1, a] - lg[0, -1, b])
        result = np.zeros((L, T))
        for l in range(L):
            for t in range(T):
                def hook(module, args, kwargs, l=l, t=t):
                    h = (args[0] if args else kwargs["hidden_states"]).clone()
                    h[:, t] = resid_pre[l][:, t]
                    if args:
                        return (h,) + tuple(args[1:]), kwargs
                    return args, {**kwargs, "hidden_states": h}

                handle = layers[l].register_forward_pre_hook(hook, with_kwargs=True)
                try:
                    lg = hf(x_corrupt, logits_to_keep=1).logits
                finally:
                    handle.remove()
                result[l, t] = float(lg[0, -1, a] - lg[0, -1, b])
    return result, m_clean, m_corrupt


def _pick_threads(hf, tokens, probes: int = 5) -> tuple[int, dict]:
    import torch

    default = torch.get_num_threads()
    x = torch.tensor(tokens)
    timings = {}
    for n in sorted({default, 1}, reverse=True):
        torch.set_num_threads(n)
        with torch.inference_mode():
            hf(x, logits_to_keep=1)
            ts = []
            for _ in range(probes):
                t0 = time.perf_counter()
                hf(x, logits_to_keep=1)
                ts.append(time.perf_counter() - t0)
        timings[n] = statistics.median(ts)
    best = min(timings, key=timings.get)
    torch.set_num_threads(best)
    return best, {str(k): round(v, 4) for k, v in timings.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="steady-state runs of each side (interleaved)")
    ap.add_argument("--batch-size", type=int, default=32, help="patched runs per vmapped chunk (jaxsteer)")
    ap.add_argument("--skip-full", action="store_true", help="do not time jaxsteer's fast=False variant")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)

    import jaxsteer
    from jaxsteer.analysis import single_token_ids, tokenize_pair
    from jaxsteer.analysis.patching import activation_patching, normalise

    log("loading SmolLM2-135M-Instruct (jaxsteer GGUF loader) ...")
    model, tok = jaxsteer.load("smollm2-135m-instruct")
    clean, corrupt = tokenize_pair(tok, CLEAN, CORRUPT)
    answers = single_token_ids(tok, ANSWERS)
    L, T = model.config.n_layers, clean.shape[1]
    log(f"{L} layers x {T} positions = {L * T} patched runs per sweep")
    log("loading the same GGUF with transformers ...")
    hf = _hf_model()
    threads, thread_probe = _pick_threads(hf, corrupt)
    log(f"torch threads: {threads} (median forward s per thread count: {thread_probe})")

    def run_jax(fast=True):
        return activation_patching(model, clean, corrupt, site="resid_pre", answers=answers,
                                   batch_size=args.batch_size, fast=fast)

    t0 = time.perf_counter()
    res = run_jax()
    first = time.perf_counter() - t0
    log(f"jaxsteer first call (compile + run): {first:.1f} s")
    jax_times, hf_times = [], []
    hf_res = None
    for i in range(args.repeats):
        t0 = time.perf_counter()
        res = run_jax()
        jax_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hf_res = _hf_sweep(hf, clean, corrupt, answers)
        hf_times.append(time.perf_counter() - t0)
        log(f"repeat {i}: jaxsteer {jax_times[-1]:.1f} s, hf loop {hf_times[-1]:.1f} s")
    jax_s, hf_s = statistics.median(jax_times), statistics.median(hf_times)
    hf_raw, hf_clean, hf_corrupt = hf_res
    hf_norm = normalise(hf_raw, hf_clean, hf_corrupt)

    full = None
    if not args.skip_full:
        t0 = time.perf_counter()
        run_jax(fast=False)
        full_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res_full = run_jax(fast=False)
        full = {"first_call_s": round(full_first, 2), "steady_s": round(time.perf_counter() - t0, 2),
                "max_abs_diff_vs_fast": float(np.abs(res_full.raw - res.raw).max())}
        log(f"jaxsteer fast=False: {full}")

    out = {
        "benchmark": "activation patching sweep, resid_pre, layers x positions",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)",
        "prompt_tokens": T,
        "layers": L,
        "patched_runs": L * T,
        "jaxsteer": {
            "first_call_s": round(first, 2),
            "compile_s": round(first - jax_s, 2),
            "steady_s": round(jax_s, 2),
            "steady_runs_s": [round(t, 2) for t in jax_times],
            "batch_size": args.batch_size,
            "fast_false": full,
        },
        "hf_hook_loop": {
            "steady_s": round(hf_s, 2),
            "runs_s": [round(t, 2) for t in hf_times],
            "per_forward_s": round(hf_s / (L * T + 2), 4),
            "torch_threads": threads,
            "thread_probe_forward_s": thread_probe,
        },
        "speedup_hf_over_jaxsteer": round(hf_s / jax_s, 2),
        "max_abs_diff_normalised": float(np.abs(hf_norm - res.values).max()),
        "max_abs_diff_logit_diff": float(np.abs(hf_raw - res.raw).max()),
        "metric_clean_corrupt": {"jaxsteer": [res.clean_metric, res.corrupt_metric], "hf": [hf_clean, hf_corrupt]},
        "machine": machine_info(),
        "command": "python -m benchmarks.patching " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return out


if __name__ == "__main__":
    main()
