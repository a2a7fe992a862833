"""Activation-patching sweep speed: jaxsteer's one-call vmapped sweep vs Hugging Face forward
passes with PyTorch hooks, side by side in one process on SmolLM2-135M-Instruct.

    python -m benchmarks.patching                  # 3 interleaved rounds of each side
    python -m benchmarks.patching --quick          # 1 round, no fast=False variant

The task: an indirect-object prompt pair (23 tokens each, differing in one name) and the
metric logit(" Mary") - logit(" John") at the last position; patch the clean `resid_pre` into
the corrupted run at every (layer, position): 30 x 23 = 690 patched runs.

- jaxsteer: `activation_patching(..., site="resid_pre")`, one compiled call (a `lax.map` over
  chunks of a `vmap` over one-hot `Patch` masks). Compile time is reported separately. With
  `--skip-full` off it also times `fast=False` (plain full forward passes vmapped), to show how
  much of the gain is batching and how much is reusing the base run.
- Hugging Face (the peer at its fastest documented CPU setting): `AutoModelForCausalLM` on the
  same GGUF file, float32, `attn_implementation="sdpa"` (transformers' default; `--hf-attn
  eager` for parity checks), `torch.inference_mode`, `logits_to_keep=1`; the clean run's hidden
  states come from `output_hidden_states=True`. Two peers:
  `hf_batched_hooks` (the headline): per layer, one forward of T copies of the corrupted prompt
  with a pre-hook that patches row t at position t: L forwards of T rows, what a user batching
  by hand would write; `hf_batch1_loop`: one forward per (layer, position) (`--skip-loop` drops it).
  torch runs with whichever of its default thread count and 1 thread was faster on a short probe.

Rounds interleave (jaxsteer, HF batched, HF loop, jaxsteer, ...) so drift of a shared machine hits
all; wall and process CPU time are both reported, with OMP_WAIT_POLICY=PASSIVE (see
`benchmarks.common`). Progress goes to stderr; one JSON object goes to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

from .common import interleaved_times, log, machine_info, thread_policy

CLEAN = "After a long day at the office, Mary and John went to the store. John gave a bottle of milk to"
CORRUPT = "After a long day at the office, Mary and John went to the store. Mary gave a bottle of milk to"
ANSWERS = (" Mary", " John")


def _hf_model(attn: str = "sdpa"):
    import torch
    import transformers

    from jaxsteer.models.loading import default_model_path

    path = default_model_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attn
    )
    return model.eval()


def _clean_and_corrupt(hf, x_clean, x_corrupt, a, b, L):
    out = hf(x_clean, output_hidden_states=True, logits_to_keep=1)
    resid_pre = out.hidden_states[:L]  # hidden_states[l] is the input of decoder layer l
    lg = hf(x_corrupt, logits_to_keep=1).logits
    return resid_pre, float(out.logits[0, -1, a] - out.logits[0, -1, b]), float(lg[0, -1, a] - lg[0, -1, b])


def _patch_hook(patch):
    """A forward pre-hook on a decoder layer that rewrites its input with `patch(h)`."""

    def hook(module, args, kwargs):
        h = patch((args[0] if args else kwargs["hidden_states"]).clone())
        if args:
            return (h,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    return hook


def _hf_sweep(hf, clean, corrupt, answers):
    """The batch-1 loop: one forward per (layer, position), a pre-hook patching that position of
    that layer's input. Returns (logit differences [L, T], clean metric, corrupted metric)."""
    import torch

    a, b = answers
    layers = hf.model.layers
    L, T = len(layers), clean.shape[1]
    x_clean, x_corrupt = torch.tensor(clean), torch.tensor(corrupt)
    with torch.inference_mode():
        resid_pre, m_clean, m_corrupt = _clean_and_corrupt(hf, x_clean, x_corrupt, a, b, L)
        result = np.zeros((L, T))
        for l in range(L):
            for t in range(T):

                def patch(h, l=l, t=t):
                    h[:, t] = resid_pre[l][:, t]
                    return h

                handle = layers[l].register_forward_pre_hook(_patch_hook(patch), with_kwargs=True)
                try:
                    lg = hf(x_corrupt, logits_to_keep=1).logits
                finally:
                    handle.remove()
                result[l, t] = float(lg[0, -1, a] - lg[0, -1, b])
    return result, m_clean, m_corrupt


def _hf_batched_sweep(hf, clean, corrupt, answers):
    """What a user would write with hooks and batching: per layer, one forward of T copies of the
    corrupted prompt, row t with position t of that layer's input patched (L forwards of T rows)."""
    import torch

    a, b = answers
    layers = hf.model.layers
    L, T = len(layers), clean.shape[1]
    x_clean, x_corrupt = torch.tensor(clean), torch.tensor(corrupt)
    rows = torch.arange(T)
    with torch.inference_mode():
        resid_pre, m_clean, m_corrupt = _clean_and_corrupt(hf, x_clean, x_corrupt, a, b, L)
        batch = x_corrupt.expand(T, -1)
        result = np.zeros((L, T))
        for l in range(L):

            def patch(h, l=l):
                h[rows, rows] = resid_pre[l][0]
                return h

            handle = layers[l].register_forward_pre_hook(_patch_hook(patch), with_kwargs=True)
            try:
                lg = hf(batch, logits_to_keep=1).logits
            finally:
                handle.remove()
            result[l] = (lg[:, -1, a] - lg[:, -1, b]).numpy()
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


def _fast_false_row(run_jax, res) -> dict[str, Any]:
    """jaxsteer's `fast=False` sweep (vmapped full forwards, no base-run reuse): first call and one
    steady call, and its difference from the fast sweep `res`."""
    t0 = time.perf_counter()
    run_jax(fast=False)
    full_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res_full = run_jax(fast=False)
    full = {
        "first_call_s": round(full_first, 2),
        "steady_s": round(time.perf_counter() - t0, 2),
        "max_abs_diff_vs_fast": float(np.abs(res_full.raw - res.raw).max()),
    }
    log(f"jaxsteer fast=False: {full}")
    return full


def _peer_rows(results: dict, wall: dict, cpu: dict, res) -> dict[str, Any]:
    """Each Hugging Face side's times, its ratios to jaxsteer (same rounds) and its differences
    from jaxsteer's result `res`."""
    from jaxsteer.analysis.patching import normalise

    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    peers = {}
    for name, out in results.items():
        if name == "jaxsteer":
            continue
        raw, m_clean, m_corrupt = out
        peers[name] = {
            "steady_s": round(med[name], 3),
            "steady_cpu_s": round(cmed[name], 3),
            "runs_s": [round(t, 2) for t in wall[name]],
            "speedup_over_jaxsteer_wall": round(med[name] / med["jaxsteer"], 2),
            "speedup_over_jaxsteer_cpu_time": round(cmed[name] / cmed["jaxsteer"], 2),
            "max_abs_diff_normalised": float(np.abs(normalise(raw, m_clean, m_corrupt) - res.values).max()),
            "max_abs_diff_logit_diff": float(np.abs(raw - res.raw).max()),
            "metric_clean_corrupt": [m_clean, m_corrupt],
        }
    return peers


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="steady-state runs of each side (interleaved)")
    ap.add_argument("--quick", action="store_true", help="one round, no fast=False variant")
    ap.add_argument("--batch-size", type=int, default=32, help="patched runs per vmapped chunk (jaxsteer)")
    ap.add_argument(
        "--hf-attn",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="transformers attention (sdpa: its default and fastest on CPU)",
    )
    ap.add_argument("--skip-loop", action="store_true", help="do not time the batch-1 HF loop (second row)")
    ap.add_argument("--skip-full", action="store_true", help="do not time jaxsteer's fast=False variant")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.skip_full = 1, True
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)

    import jaxsteer
    from jaxsteer.analysis import single_token_ids, tokenize_pair
    from jaxsteer.analysis.patching import activation_patching

    log("loading SmolLM2-135M-Instruct (jaxsteer GGUF loader) ...")
    model, tok = jaxsteer.load("smollm2-135m-instruct")
    clean, corrupt = tokenize_pair(tok, CLEAN, CORRUPT)
    answers = single_token_ids(tok, ANSWERS)
    L, T = model.config.n_layers, clean.shape[1]
    log(f"{L} layers x {T} positions = {L * T} patched runs per sweep")
    log(f"loading the same GGUF with transformers (attn_implementation={args.hf_attn}) ...")
    hf = _hf_model(args.hf_attn)
    threads, thread_probe = _pick_threads(hf, corrupt)
    log(f"torch threads: {threads} (median forward s per thread count: {thread_probe})")

    def run_jax(fast=True):
        return activation_patching(
            model, clean, corrupt, site="resid_pre", answers=answers, batch_size=args.batch_size, fast=fast
        )

    t0 = time.perf_counter()
    res = run_jax()
    first = time.perf_counter() - t0
    log(f"jaxsteer first call (compile + run): {first:.1f} s")
    results: dict[str, Any] = {}
    sides = {"jaxsteer": run_jax, "hf_batched_hooks": lambda: _hf_batched_sweep(hf, clean, corrupt, answers)}
    if not args.skip_loop:
        sides["hf_batch1_loop"] = lambda: _hf_sweep(hf, clean, corrupt, answers)
    calls = {k: (lambda k=k, f=f: results.__setitem__(k, f())) for k, f in sides.items()}
    calls["hf_batched_hooks"]()  # torch warm-up (first-call allocations), untimed like jaxsteer's compile
    wall, cpu = interleaved_times(
        calls, args.repeats, on_result=lambda k, w, c: log(f"{k}: {w:.2f} s wall, {c:.2f} s CPU")
    )
    med = {k: statistics.median(v) for k, v in wall.items()}
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    res = results["jaxsteer"]

    full = None if args.skip_full else _fast_false_row(run_jax, res)

    peers = _peer_rows(results, wall, cpu, res)
    out = {
        "benchmark": "activation patching sweep, resid_pre, layers x positions",
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantised to float32)",
        "peer": (
            f"transformers {machine_info()['transformers']} AutoModelForCausalLM on the same GGUF, float32, "
            f"attn_implementation={args.hf_attn!r}, torch.inference_mode, logits_to_keep=1, {threads} torch "
            "threads; hf_batched_hooks: per layer one forward of T rows with a pre-hook patching row t at "
            "position t (the headline peer); hf_batch1_loop: one forward per (layer, position)"
        ),
        "rounds": args.repeats,
        "prompt_tokens": T,
        "layers": L,
        "patched_runs": L * T,
        "jaxsteer": {
            "first_call_s": round(first, 2),
            "compile_s": round(first - med["jaxsteer"], 2),
            "steady_s": round(med["jaxsteer"], 3),
            "steady_cpu_s": round(cmed["jaxsteer"], 3),
            "steady_runs_s": [round(t, 2) for t in wall["jaxsteer"]],
            "batch_size": args.batch_size,
            "fast_false": full,
            "metric_clean_corrupt": [res.clean_metric, res.corrupt_metric],
        },
        **peers,
        "torch_thread_probe_forward_s": thread_probe,
        "thread_policy": thread_policy(),
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
