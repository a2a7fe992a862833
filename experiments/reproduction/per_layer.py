"""Part `per_layer`: one RL steering vector trained alone at a single layer, every third layer (issue 18 item 4).

The steering paper (arXiv 2509.06608, section 4) trains vectors at single layers in isolation and
studies the last two in depth. A vector's effect depends on its size beside the residual stream,
whose norm grows ~25x from the first to the last layers here, while Adam moves every coordinate by
about the learning rate per step. So each layer's step size is scaled to its residual norm,
`lr_l = c * ||h_l|| / sqrt(d)` (h_l: resid_post at the last prompt token, mean over validation
prompts), with `c` swept over 3 log-spaced values at two layers on the validation split and the
best `c` used at every layer. Reported beside accuracy: `||s_l|| / ||h_l||`, the vector's size as a
fraction of the residual it is added to. Protocol: protocol.py (validation split, plateau rule, test split).
"""

from __future__ import annotations

import json

import common
import convergence
import numpy as np
import protocol
from protocol import Method

TITLE = "Per-layer curve: one steering vector trained at a single layer, step size scaled to the residual"

LAYERS = list(range(2, 30, 3))  # 2, 5, ..., 29: every third layer
SWEEP_LAYERS = (14, 29)
SCALES = (1e-3, 4e-3, 1.6e-2)  # c in lr_l = c * rms(h_l)
STEPS, EVAL_EVERY, NORM_N = 40, 10, 32


def residual_norms(ctx: common.Context) -> list[float]:
    """Mean ||resid_post_l|| at the last prompt token over `NORM_N` validation prompts, per layer."""
    from jaxsteer.models.decoder import run_with_cache
    from jaxsteer.train import load_config
    from jaxsteer.train.build import PromptEncoder, load_examples

    cfg = load_config(str(common.ROOT / common.STEERING_CONFIG), [f"data.eval={protocol.VAL}"])
    model, tok = ctx.model()
    encode = PromptEncoder(tok, cfg.data.prompt_template, cfg.data.system)
    ids = [encode(e) for e in list(load_examples(cfg.data.eval))[:NORM_N]]
    if len({len(i) for i in ids}) != 1:
        raise ValueError("the validation prompts must share one length (no padding) for this measurement")
    _, trace = run_with_cache(model, np.asarray(ids), names="resid_post")
    h = np.asarray(trace["resid_post"])[:, :, -1]  # [L, N, d]
    return [float(v) for v in np.linalg.norm(h, axis=-1).mean(axis=1)]


def layer_method(layer: int, rms: float, scales) -> Method:
    """The single-layer steering row at `layer` with step sizes `c * rms` for each `c` in `scales`."""
    return Method(
        f"layer{layer:02d}",
        f"RL steering vector, layer {layer} only",
        common.STEERING_CONFIG,
        "optimizer.lr",
        tuple(float(f"{c * rms:.3g}") for c in scales),
        steps=STEPS,
        eval_every=EVAL_EVERY,
        overrides=(f"trainable.layers=[{layer}]",),
    )


def choose_scale(ctx: common.Context, rms: list[float]) -> tuple[float, dict]:
    """Sweep `c` at `SWEEP_LAYERS` on validation; the `c` with the best mean final validation accuracy."""
    scores: dict[float, list[float]] = {c: [] for c in ctx.scale(SCALES, SCALES[1:2])}
    for layer in ctx.scale(SWEEP_LAYERS, SWEEP_LAYERS[-1:]):
        m = layer_method(layer, rms[layer], scores)
        for c, lr in zip(scores, m.step_sizes, strict=True):
            s = protocol.train(ctx, m, lr, 0, {})
            if s is not None:
                curve = protocol.val_curve(ctx, protocol.run_name(m, lr, 0), s["rollouts"] / max(s["steps"], 1))
                scores[c].append(protocol.final_score(curve))
    means = {c: float(np.mean(v)) for c, v in scores.items() if v}
    return max(means, key=lambda c: means[c]), {f"{c:g}": v for c, v in means.items()}


def run(ctx: common.Context) -> dict:
    """Residual norms, the step-size sweep, one run per layer at the chosen scale, test accuracy."""
    rms_norms = residual_norms(ctx)
    d = ctx.model()[0].config.d_model
    rms = [n / np.sqrt(d) for n in rms_norms]
    c, sweep = choose_scale(ctx, rms)
    layers = ctx.scale(LAYERS, list(SWEEP_LAYERS[-1:]))
    methods = {layer: layer_method(layer, rms[layer], (c,)) for layer in layers}
    ctx.share_runs(lambda m=m: protocol.train(ctx, m, m.step_sizes[0], 0, {}) for m in methods.values())
    points, chosen = [], {}
    for layer, m in methods.items():
        lr = m.step_sizes[0]
        s = protocol.train(ctx, m, lr, 0, {})
        if s is None:  # --collect-only and the run did not finish
            continue
        name = protocol.run_name(m, lr, 0)
        chosen[layer] = name
        ev = protocol.evaluate_on_test(ctx, name, 0)
        curve = protocol.val_curve(ctx, name, s["rollouts"] / max(s["steps"], 1))
        vec = np.load(ctx.runs_dir / name / "steering_vectors.npy")[layer]
        points.append({
            "layer": layer,
            "lr": lr,
            "lenient": common.acc(ev, "lenient"),
            "strict": common.acc(ev, "strict"),
            "val": protocol.final_score(curve),
            "plateau": protocol.plateaued(curve),
            "norm": float(np.linalg.norm(vec)),
            "resid_norm": rms_norms[layer],
            "norm_ratio": float(np.linalg.norm(vec)) / rms_norms[layer],
            "wall_s": s.get("wall_s"),
            "cpu_s": s.get("cpu_s"),
            "rollouts": s.get("rollouts"),
        })  # fmt: skip
    (ctx.runs_dir / "per_layer_chosen.json").write_text(json.dumps({str(k): v for k, v in chosen.items()}))
    base = protocol.base_on_test(ctx, ctx.scale(16, 4))
    base_acc = common.acc(base, "lenient")
    row = convergence.last_rows(ctx).get("steering") or {}  # the all-layer row (seed 0), when it has run
    all_layers = row["seeds"][0]["greedy"] if row.get("seeds") else None
    return {
        "points": points,
        "base": base_acc,
        "scale": c,
        "sweep": sweep,
        "resid_norms": rms_norms,
        "steps": ctx.scale(STEPS, 2),
        "all_layers": all_layers,
        "figure": figure(ctx, points, base_acc, all_layers),
    }


def figure(ctx: common.Context, points: list[dict], base: dict | None, all_layers: float | None = None) -> str:
    """Test accuracy (95% CI) of each single-layer vector against its layer, and its ||s|| / ||h||."""
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True, height_ratios=(2, 1))
    xs = [p["layer"] for p in points]
    ys = np.array([100 * p["lenient"]["acc"] for p in points])
    lo = np.maximum(0.0, ys - np.array([100 * p["lenient"]["lo"] for p in points]))  # Wilson lo can be 1e-18 > 0
    hi = np.maximum(0.0, np.array([100 * p["lenient"]["hi"] for p in points]) - ys)
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label="single-layer vector (lenient)")
    if base:
        ax.axhline(100 * base["acc"], color="gray", ls="--", label="base model")
    if all_layers is not None:
        ax.axhline(100 * all_layers, color="tab:green", ls=":", label="all 30 layers (convergence, seed 0)")
    ax.set_ylabel("test greedy accuracy (%)")
    ax.set_title("One RL steering vector per layer, step size scaled to the residual norm (95% Wilson CI)")
    ax.legend(loc="best", fontsize=8)
    ax2.plot(xs, [p["norm_ratio"] for p in points], marker="s", color="tab:orange")
    ax2.set_yscale("log")
    ax2.set_ylabel("||s_l|| / ||h_l||")
    ax2.set_xlabel("layer of the single vector")
    return ctx.save_fig(fig, "per_layer_accuracy")


def section(result: dict) -> str:
    """Markdown: the curve, a table, and what it says next to the paper's finding."""
    pts, base = result["points"], result["base"]
    if not pts:
        return "No per-layer run finished in time."
    sweep = ", ".join(f"c = {k}: {100 * v:.1f}%" for k, v in result["sweep"].items())
    end = protocol.sweep_edge(result["scale"], result["sweep"])
    edge = f" (the {end} swept: a better c may lie beyond it)" if end else ""
    lines = [
        f"Layers {', '.join(str(p['layer']) for p in pts)}. Each vector alone, zeros at the start, "
        f"{result['steps']} RL steps x 32 rollouts, lr_l = c * ||h_l|| / sqrt(d); c swept at layers "
        f"{', '.join(map(str, SWEEP_LAYERS))} on validation (mean final validation accuracy: {sweep}); "
        f"chosen c = {result['scale']:g}{edge}. Test greedy accuracy, n = {pts[0]['lenient']['n']} (95% Wilson "
        f"intervals). Base model: {common.pct(base)}.",
        "",
        f"![per-layer accuracy]({result['figure']})",
        "",
        "| layer | lr | test acc. (lenient) | strict | final val. acc. | plateau | ‖h_l‖ | ‖s_l‖ "
        "| ‖s_l‖ / ‖h_l‖ | run CPU s |",
        "|---:|---:|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for p in pts:
        plateau = {True: "yes", False: "no", None: "?"}[p["plateau"]]
        lines.append(
            f"| {p['layer']} | {p['lr']:.3g} | {common.pct(p['lenient'])} | {common.pct(p['strict'])} "
            f"| {100 * p['val']:.1f}% | {plateau} | {p['resid_norm']:.1f} | {p['norm']:.2f} "
            f"| {p['norm_ratio']:.3f} | {p['cpu_s'] or 0:.0f} |"
        )
    best = max(pts, key=lambda p: p["lenient"]["acc"])
    late = [p for p in pts if p["layer"] >= 20]
    early = [p for p in pts if p["layer"] < 10]
    lines += ["", f"Best single layer: {best['layer']} ({common.pct(best['lenient'])})."]
    if base:
        above = [p["layer"] for p in pts if p["lenient"]["lo"] > base["hi"]]
        lines.append(
            f"Layers whose interval lies wholly above the base model's: {', '.join(map(str, above)) or 'none'}."
        )
    if result.get("all_layers") is not None:
        lines.append(
            f"All 30 vectors trained together (the convergence part, seed 0): {100 * result['all_layers']:.1f}%."
        )
    if late and early:
        d = np.mean([p["lenient"]["acc"] for p in late]) - np.mean([p["lenient"]["acc"] for p in early])
        lines.append(
            f"Mean accuracy of the layers >= 20 minus layers < 10: {100 * d:+.1f} points. The paper (arXiv "
            "2509.06608, section 4) builds its mechanistic story on the last and penultimate layers (token "
            "substitution on the first generated token; an MLP / unembedding circuit); its per-layer accuracies "
            "are not in ../shared/METHODS.md, so only the shape is compared here."
        )
    return "\n".join(lines)
