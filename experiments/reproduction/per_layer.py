"""Part `per_layer`: held-out accuracy of a single RL steering vector trained at one layer, per layer.

The steering paper (arXiv 2509.06608, section 4) trains vectors at single layers in isolation and
studies the last two in depth. Here: every 5th layer (4, 9, ..., 29; 6 of the 30, to fit the CPU
budget of a loaded 2-core machine), each vector trained alone with the demo recipe for fewer steps
(10 x 4 prompts x G=8 = 320 rollouts, half of table1's budget), held-out greedy accuracy on 100 test
problems.
"""

from __future__ import annotations

import json

import common
import numpy as np

TITLE = "Per-layer curve: one steering vector trained at a single layer"

LAYERS = list(range(4, 30, 5))  # 4, 9, 14, 19, 24, 29
STEPS, EVAL_N = 10, 100


def run(ctx: common.Context) -> dict:
    """One run per layer (reused when already trained); the base model's accuracy from the first."""
    layers = ctx.scale(LAYERS, [LAYERS[-2], LAYERS[-1]])
    points, base = [], None
    for i, layer in enumerate(layers):
        overrides = [
            f"trainable.layers=[{layer}]",
            f"steps={STEPS}",
            f"eval.n={EVAL_N}",
            f"eval.before={'true' if i == 0 else 'false'}",
            "checkpoint.every=0",
        ]
        s = ctx.train_or_load(f"per_layer_{layer:02d}", common.STEERING_CONFIG, overrides)
        if s is None:  # --collect-only and the run did not finish
            continue
        base = base or common.acc(s.get("eval_before"))
        vec = np.load(ctx.runs_dir / f"per_layer_{layer:02d}" / "steering_vectors.npy")[layer]
        points.append(
            {
                "layer": layer,
                "lenient": common.acc(s.get("eval_after")),
                "strict": common.acc(s.get("eval_after"), "strict"),
                "norm": float(np.linalg.norm(vec)),
                "wall_s": s.get("wall_s"),
                "cpu_s": s.get("cpu_s"),
                "rollouts": s.get("rollouts"),
            }
        )
    all_layers = None  # table1's all-layer run (20 steps, n = 200) when it has finished: a reference line
    summary = ctx.runs_dir / common.STEERING_RUN / "summary.json"
    if summary.exists():
        all_layers = common.acc(json.loads(summary.read_text()).get("eval_after"))
    return {
        "points": points,
        "base": base,
        "steps": STEPS,
        "eval_n": EVAL_N,
        "all_layers": all_layers,
        "figure": figure(ctx, points, base, all_layers),
    }


def figure(ctx: common.Context, points: list[dict], base: dict | None, all_layers: dict | None = None) -> str:
    """Accuracy (95% CI) of each single-layer vector against its layer, the base model as a line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    xs = [p["layer"] for p in points]
    ys = np.array([100 * p["lenient"]["acc"] for p in points])
    lo = np.maximum(0.0, ys - np.array([100 * p["lenient"]["lo"] for p in points]))  # Wilson lo can be 1e-18 > 0
    hi = np.maximum(0.0, np.array([100 * p["lenient"]["hi"] for p in points]) - ys)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label="single-layer vector (lenient)")
    if base:
        ax.axhline(100 * base["acc"], color="gray", ls="--", label="base model")
    if all_layers:
        ax.axhline(100 * all_layers["acc"], color="tab:green", ls=":", label="all 30 layers, 20 steps (table1)")
    ax.set_xlabel("layer of the single vector")
    ax.set_ylabel("held-out greedy accuracy (%)")
    ax.set_title(f"One RL steering vector per layer, {STEPS} steps each (95% Wilson CI)")
    ax.legend(loc="center right", fontsize=8)
    return ctx.save_fig(fig, "per_layer_accuracy")


def section(result: dict) -> str:
    """Markdown: the curve, a table, and what it says next to the paper's finding."""
    pts, base = result["points"], result["base"]
    if not pts:
        return "No per-layer run finished in time."
    lines = [
        f"Layers {', '.join(str(p['layer']) for p in pts)} (every 5th of 30, to fit the budget; the others "
        f"were not run). Each vector alone, {result['steps']} RL steps x 32 rollouts, lr 1e-2, zeros at the "
        f"start; held-out n = {result['eval_n']} (95% Wilson intervals). Base model: {common.pct(base)}.",
        "",
        f"![per-layer accuracy]({result['figure']})",
        "",
        "| layer | lenient acc. | strict acc. | vector norm | run wall s | run CPU s |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for p in pts:
        lines.append(
            f"| {p['layer']} | {common.pct(p['lenient'])} | {common.pct(p['strict'])} | {p['norm']:.2f} "
            f"| {p['wall_s'] or 0:.0f} | {p['cpu_s'] or 0:.0f} |"
        )
    best = max(pts, key=lambda p: p["lenient"]["acc"])
    late = [p for p in pts if p["layer"] >= 20]
    early = [p for p in pts if p["layer"] < 10]
    lines += ["", f"Best single layer: {best['layer']} ({common.pct(best['lenient'])})."]
    if base:
        above = [p["layer"] for p in pts if p["lenient"]["acc"] > base["acc"] and p["lenient"]["lo"] > base["hi"]]
        lines.append(
            f"Layers whose interval lies wholly above the base model's: {', '.join(map(str, above)) or 'none'}."
        )
    if result.get("all_layers"):
        lines.append(
            f"For reference, all 30 vectors trained together for 20 steps (table1, n = 200): "
            f"{common.pct(result['all_layers'])}. A single vector gets 1/30 of the parameters and here half "
            "the steps; the best one is "
            + (
                "below the all-layer run's interval."
                if best["lenient"]["hi"] < result["all_layers"]["lo"]
                else "within reach of the all-layer run (intervals overlap)."
            )
        )
    if late and early:
        d = np.mean([p["lenient"]["acc"] for p in late]) - np.mean([p["lenient"]["acc"] for p in early])
        lines.append(
            f"Mean accuracy of the layers >= 20 minus layers < 10: {100 * d:+.1f} points. The paper (arXiv "
            "2509.06608, section 4) trains single-layer vectors on 1.5B-8B models and builds its mechanistic story "
            "on the last and penultimate layers (token substitution on the first generated token; an MLP / "
            "unembedding circuit); its per-layer accuracies are not in ../shared/METHODS.md, so only the shape is "
            "compared here, not numbers. "
            + (
                "A late-layer vector alone moving accuracy as much as or more than an early one fits that story."
                if d > 0
                else "Here the late layers are not better than the early ones; with 10 steps at lr 1e-2 a single "
                "576-number vector is far from converged, and the n = 100 intervals are wide (about +-9 points)."
            )
        )
    return "\n".join(lines)
