"""Part `convergence`: Table 1 trained to a plateau (issue 18, items 1-2), under protocol.py's rules.

Every trained row: its step size swept over 3 log-spaced values on seed 0 against the validation
split, the best one re-run on seeds 1 and 2 for the main rows, every chosen run evaluated on the
test split greedy and sampled at temperature 1 (k samples per problem). The base model's pass@k
for k = 1..16 says how much RL could gain by sharpening what the model already samples.
"""

from __future__ import annotations

import json

import common
import numpy as np
import protocol
from protocol import Method

TITLE = "Table 1 at convergence: step sizes swept on validation, several seeds, greedy and sampled accuracy"

LAST_LAYER = 29
ATTENTION = "trainable.lora_targets=[q_proj,k_proj,v_proj,o_proj]"  # the ESSA paper adapts attention only
MAIN = ("steering", "lora", "full")  # rows run on 3 seeds; the others on the chosen seed 0

METHODS = [
    Method("steering", "RL steering vectors, all 30 layers", common.STEERING_CONFIG, "optimizer.lr",
           (3e-3, 1e-2, 3e-2), steps=80, eval_every=10),
    Method("last_layer", f"RL steering vector, layer {LAST_LAYER} only", common.STEERING_CONFIG, "optimizer.lr",
           (1e-2, 5e-2, 2.5e-1), steps=80, eval_every=10, overrides=(f"trainable.layers=[{LAST_LAYER}]",)),
    Method("lora", "RL LoRA r=8, all projections", common.cfg_path("smollm2_arithmetic_lora.yaml"),
           "optimizer.lr", (1.5e-4, 5e-4, 1.5e-3), steps=80, eval_every=10),
    Method("full", "RL full fine-tuning", common.cfg_path("smollm2_arithmetic_full.yaml"), "optimizer.lr",
           (3e-6, 1e-5, 3e-5), steps=80, eval_every=10),
    Method("sft_lora", "SFT LoRA r=8, attention (ESSA's warm start)",
           common.cfg_path("smollm2_arithmetic_sft_lora.yaml"), "optimizer.lr", (1.5e-4, 5e-4, 1.5e-3),
           steps=40, eval_every=10, overrides=(ATTENTION,)),
    Method("rl_from_sft", "RL LoRA started from the SFT LoRA", common.cfg_path("smollm2_arithmetic_lora.yaml"),
           "optimizer.lr", (1.5e-4, 5e-4, 1.5e-3), steps=80, eval_every=10, overrides=(ATTENTION,),
           start_from="sft_lora"),
    Method("essa", "ESSA: CMA-ES on the SFT LoRA's singular values",
           common.cfg_path("smollm2_arithmetic_essa.yaml"), "es.sigma", (0.02, 0.05, 0.125), steps=15,
           eval_every=3, start_from="sft_lora"),
    Method("es", "OpenAI-ES on the steering vectors", common.cfg_path("smollm2_arithmetic_es.yaml"), "es.lr",
           (3e-3, 1e-2, 3e-2), steps=30, eval_every=5),
]  # fmt: skip


def _row_runs(ctx: common.Context, m: Method, chosen: dict, samples: int) -> dict:
    """Sweep `m`'s step size on seed 0, re-run the best on more seeds, evaluate those on test."""
    sweep = {}
    for size in ctx.scale(m.step_sizes, m.step_sizes[1:2]):
        s = protocol.train(ctx, m, size, 0, chosen)
        if s is None:
            continue
        curve = protocol.val_curve(ctx, protocol.run_name(m, size, 0), s["rollouts"] / max(s["steps"], 1))
        sweep[size] = {"val": protocol.final_score(curve), "curve": curve, "plateau": protocol.plateaued(curve)}
    if not sweep:
        return {"key": m.key, "label": m.label, "missing": True}
    best = max(sweep, key=lambda size: sweep[size]["val"])
    chosen[m.key] = protocol.run_name(m, best, 0)
    seeds = []
    for seed in [0, *ctx.scale([1, 2] if m.key in MAIN else [], [])]:
        s = protocol.train(ctx, m, best, seed, chosen)
        if s is None:
            continue
        name = protocol.run_name(m, best, seed)
        ev = protocol.evaluate_on_test(ctx, name, samples)
        curve = protocol.val_curve(ctx, name, s["rollouts"] / max(s["steps"], 1))
        seeds.append({
            "seed": seed,
            "greedy": ev.get("greedy_acc_lenient", ev["greedy_acc"]),
            "greedy_strict": ev.get("greedy_acc_strict"),
            "sampled": ev.get("pass1_lenient", ev.get("pass1")),
            "curve": curve,
            "plateau": protocol.plateaued(curve),
            "rollouts": s["rollouts"],
            "cpu_s": s["cpu_s"],
        })  # fmt: skip
    sweep_out = {f"{k:g}": {"val": v["val"], "plateau": v["plateau"], "curve": v["curve"]} for k, v in sweep.items()}
    unfinished = [f"{k:g}" for k in ctx.scale(m.step_sizes, m.step_sizes[1:2]) if k not in sweep]
    return {"key": m.key, "label": m.label, "step_key": m.step_key, "chosen": best, "sweep": sweep_out,
            "sweep_unfinished": unfinished, "seeds": seeds}  # fmt: skip


def run(ctx: common.Context) -> dict:
    """Train (or reuse) every sweep and seed run, evaluate the chosen ones on test, draw the figures."""
    unknown = (ctx.methods or set()) - {m.key for m in METHODS}
    if unknown:
        raise ValueError(f"unknown convergence rows {sorted(unknown)}; rows: {[m.key for m in METHODS]}")
    samples, pass_k = ctx.scale(8, 2), ctx.scale(16, 4)
    base = protocol.base_on_test(ctx, pass_k)
    # a --methods run warm-starts from rows it does not run itself: their earlier choices
    steps = chosen_steps(ctx)
    chosen = {m.key: protocol.run_name(m, steps[m.key], 0) for m in METHODS if m.key in steps}
    rows = []
    for m in METHODS:
        if ctx.methods and m.key not in ctx.methods:
            continue
        ctx.log(f"convergence: {m.key}")
        rows.append(_row_runs(ctx, m, chosen, samples))
    if ctx.methods:
        rows = kept_rows(ctx, rows)
    result = {
        "rows": rows,
        "base": base,
        "samples": samples,
        "pass_k": pass_k,
        "plateau_points": protocol.PLATEAU_POINTS,
    }
    result["gaps"] = _gaps({r["key"]: r for r in rows})
    result["figures"] = {"curves": _curves(ctx, rows), "pass_at_k": _pass_at_k(ctx, base), "sweeps": _sweeps(ctx, rows)}
    return result


def last_rows(ctx: common.Context) -> dict[str, dict]:
    """{row key: row} of the last convergence.json (empty without one)."""
    path = ctx.out_dir / "convergence.json"
    return {r["key"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}


def chosen_steps(ctx: common.Context) -> dict[str, float]:
    """{row key: its chosen step size} from the last convergence.json (empty without one)."""
    keys = {m.key for m in METHODS}
    return {k: r["chosen"] for k, r in last_rows(ctx).items() if "chosen" in r and k in keys}


def chosen_run(ctx: common.Context, key: str, seed: int = 0) -> str:
    """The run directory of row `key`'s chosen step size on `seed`, from the last convergence.json."""
    steps = chosen_steps(ctx)
    if key not in steps:
        path = ctx.out_dir / "convergence.json"
        raise RuntimeError(f"{path} has no chosen {key} run: run the convergence part first")
    m = next(m for m in METHODS if m.key == key)
    return str(ctx.runs_dir / protocol.run_name(m, steps[key], seed))


def kept_rows(ctx: common.Context, rows: list[dict]) -> list[dict]:
    """`rows` (a `--methods` run's) joined with the other rows of the last convergence.json, in
    METHODS order, so a run of some rows leaves the whole table in place."""
    old, new = last_rows(ctx), {r["key"]: r for r in rows}
    return [new.get(m.key) or old[m.key] for m in METHODS if m.key in new or m.key in old]


def _gaps(by: dict) -> dict:
    """Steering vectors minus LoRA / full fine-tuning, test greedy, paired by seed: mean and 95% t-interval."""
    out = {}
    st = {s["seed"]: s["greedy"] for s in by.get("steering", {}).get("seeds", [])}
    for other in ("full", "lora"):
        o = {s["seed"]: s["greedy"] for s in by.get(other, {}).get("seeds", [])}
        paired = [100 * (st[k] - o[k]) for k in sorted(set(st) & set(o))]
        if paired:
            out[other] = dict(zip(("mean", "lo", "hi"), protocol.seed_interval(paired), strict=True)) | {
                "n": len(paired)
            }
    return out


def _curves(ctx: common.Context, rows: list[dict]) -> str:
    """Validation accuracy against rollouts and against CPU seconds, every chosen seed of every row."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(x for x in rows if x.get("seeds")):
        color = f"C{i}"
        for j, s in enumerate(r["seeds"]):
            c = s["curve"]
            label = r["key"] if j == 0 else None
            axes[0].plot(c["rollouts"], [100 * a for a in c["acc"]], color=color, alpha=0.8, label=label, marker=".")
            if all(t is not None for t in c["cpu_s"]):
                axes[1].plot(c["cpu_s"], [100 * a for a in c["acc"]], color=color, alpha=0.8, marker=".")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("sampled completions (rollouts, log scale)")
    axes[1].set_xlabel("CPU seconds of the run")
    for ax in axes:
        ax.set_ylabel("validation greedy accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Learning curves on the validation split (every seed of each row's chosen step size)")
    return ctx.save_fig(fig, "convergence_curves")


def _pass_at_k(ctx: common.Context, base: dict) -> str:
    """The base model's pass@k on the test split."""
    import matplotlib.pyplot as plt

    curve = base.get("pass_at_k_lenient", base.get("pass_at_k", []))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker="o")
    ax.axhline(100 * base.get("greedy_acc_lenient", base["greedy_acc"]), ls="--", color="gray", label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem, temperature 1)")
    ax.set_ylabel("pass@k (%)")
    ax.set_title("Base model, test problems")
    ax.legend()
    return ctx.save_fig(fig, "convergence_pass_at_k")


def _sweeps(ctx: common.Context, rows: list[dict]) -> str:
    """Final validation accuracy against step size, one panel per row."""
    import matplotlib.pyplot as plt

    swept = [r for r in rows if r.get("sweep")]
    fig, axes = plt.subplots(1, max(len(swept), 1), figsize=(2.2 * max(len(swept), 1), 2.8), squeeze=False)
    for ax, r in zip(axes[0], swept, strict=False):
        sizes = sorted(r["sweep"], key=float)
        ax.plot([float(s) for s in sizes], [100 * r["sweep"][s]["val"] for s in sizes], marker="o")
        ax.set_xscale("log")
        ax.set_title(r["key"], fontsize=9)
        ax.set_xlabel(r["step_key"], fontsize=8)
    axes[0][0].set_ylabel("final validation acc. (%)")
    return ctx.save_fig(fig, "convergence_sweeps")


def _fmt(values: list[float | None]) -> str:
    """'mean [lo, hi] (a / b / c)' in percent over seeds; one value alone when one seed."""
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{100 * v[0]:.1f}"
    m, lo, hi = protocol.seed_interval(v)
    return f"{100 * m:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] ({' / '.join(f'{100 * x:.1f}' for x in v)})"


PAPER_GAP = {"full": 79.9 - 86.5, "lora": 79.9 - 85.4}  # steering minus full / LoRA, Qwen2.5-Math-1.5B, GSM8K
PAPER_ESSA_GAIN = 12.6  # ESSA minus GRPO from the same SFT checkpoint, GSM8K, Qwen2.5-Math-7B (points)


def _readings(result: dict) -> list[str]:
    """The paper comparisons, each with a verdict computed from the numbers (nothing typed by hand)."""
    lines = []
    for other, g in result.get("gaps", {}).items():
        paper = PAPER_GAP[other]
        verdict = "contains" if g["lo"] <= paper <= g["hi"] else "excludes"
        lines.append(
            f"- Steering vectors minus {other} (test greedy, paired by seed, n = {g['n']}): {g['mean']:+.1f} points "
            f"[{g['lo']:+.1f}, {g['hi']:+.1f}]; the paper (Qwen2.5-Math-1.5B, GSM8K) reports {paper:+.1f}, "
            f"which this interval {verdict}."
        )
    edge = [
        f"{r['key']} ({r['chosen']:g}, {end})"
        for r in result["rows"]
        if "chosen" in r and (end := protocol.sweep_edge(r["chosen"], r.get("sweep") or {}))
    ]
    if edge:
        lines.append("- Chosen at an end of its sweep (a better step size may lie beyond it): " + ", ".join(edge) + ".")
    by = {r["key"]: r for r in result["rows"] if r.get("seeds")}
    if "essa" in by and "rl_from_sft" in by:
        essa, rl = by["essa"]["seeds"][0], by["rl_from_sft"]["seeds"][0]
        lines.append(
            "- ESSA minus RL LoRA from the same SFT LoRA (seed 0): greedy "
            f"{100 * (essa['greedy'] - rl['greedy']):+.1f}, "
            f"sampled {100 * ((essa['sampled'] or 0) - (rl['sampled'] or 0)):+.1f} points; the ESSA paper reports "
            f"{PAPER_ESSA_GAIN:+.1f} (GSM8K, Qwen2.5-Math-7B). Why the centre does not move is measured "
            "in the next section (essa_signal)."
        )
    curve = result["base"].get("pass_at_k_lenient", result["base"].get("pass_at_k", []))
    if len(curve) >= 8 and by:
        best = max(by.values(), key=lambda r: np.mean([x["sampled"] or 0 for x in r["seeds"]]))
        sampled = np.mean([x["sampled"] or 0 for x in best["seeds"]])
        lines.append(
            f"- Sharpening: the base model samples the right answer once in 8 tries on {100 * curve[7]:.1f}% of the "
            f"test problems (pass@8) and once in {len(curve)} on {100 * curve[-1]:.1f}%; the best trained row "
            f"({best['key']}) answers {100 * sampled:.1f}% in a single sample."
        )
    return lines


def section(result: dict) -> str:
    """Markdown: protocol, the table over seeds, the gaps, figures."""
    base = result["base"]
    lines = [
        f"Protocol (`experiments/reproduction/protocol.py`): training problems `{protocol.TRAIN}`; step sizes "
        f"chosen on the validation split `{protocol.VAL}` (mean of the last two validation evaluations, seed 0); "
        f"numbers below on the test split `{protocol.TEST}`, greedy and sampled at temperature 1 "
        f"({result['samples']} samples per problem). Plateau: validation gain below {result['plateau_points']:g} "
        "points over the last quarter of the steps. Main rows (steering, LoRA, full) on seeds 0-2; the others on "
        "seed 0. Intervals over seeds are 95% t-intervals (wide with 3 seeds).",
        "",
        f"Base model: greedy {100 * base.get('greedy_acc_lenient', base['greedy_acc']):.1f}%, sampled "
        f"{100 * base.get('pass1_lenient', base.get('pass1', 0)):.1f}%.",
        "",
        "| row | step size (swept) | test greedy % | test sampled % | plateau (seeds) | rollouts | CPU s / run |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for r in result["rows"]:
        if r.get("missing"):
            lines.append(f"| {r['label']} | not run | | | | | |")
            continue
        s = r["seeds"]
        swept = ", ".join(f"{k}{'*' if float(k) == r['chosen'] else ''}" for k in sorted(r["sweep"], key=float))
        if r.get("sweep_unfinished"):
            swept += f" (sweep unfinished: {', '.join(r['sweep_unfinished'])} not run)"
        plateau = " / ".join({True: "yes", False: "no", None: "?"}[x["plateau"]] for x in s)
        cpu = np.mean([x["cpu_s"] for x in s]) if s else float("nan")
        lines.append(
            f"| {r['label']} | {r['step_key']} {swept} | {_fmt([x['greedy'] for x in s])} "
            f"| {_fmt([x['sampled'] for x in s])} | {plateau} | {s[0]['rollouts'] if s else ''} | {cpu:,.0f} |"
        )
    lines += ["", "`*` marks the chosen step size.", "", *_readings(result)]
    figs = result["figures"]
    lines += [
        "",
        f"![learning curves]({figs['curves']})",
        "",
        f"![step-size sweeps]({figs['sweeps']})",
        "",
        f"![base pass@k]({figs['pass_at_k']})",
    ]
    return "\n".join(lines)
