"""Part `sae_features`: the steering paper's SAE study on the converged all-layer vectors (issue 18 item 7).

experiments/sae_rollout_features.py run on the convergence part's chosen all-layer steering run
(seed 0): TopK SAEs on resid_post of layers 13-15 (trained once from the base model, kept under the
runs folder), temperature-1 rollouts of the steered policy on test-split problems outside the
ablation's held-out set, latents ranked by Cohen's d between correct and incorrect rollouts against
a shuffled-label null (pooled and within problem), their flow across layers, and the causal check:
ablating the top latents of each sign at layer 14 against random live latents (drawn uniformly, and
matched latent by latent in mass, mean activation x decoder norm: ablating a latent removes that
much from the residual, so a fair control removes as much), greedy accuracy on the 200 test problems
with an exact McNemar test.
"""

from __future__ import annotations

import json
import sys

import common
import convergence
import protocol

TITLE = "SAE features of correct vs incorrect rollouts of the converged vectors, checked by ablation"

RANDOM_CONTROLS = 5
MATCHED_CONTROLS = 10  # per side: a rank test against them can reach p = 1/11


def run(ctx: common.Context) -> dict:
    """Run (or reuse) the study on the converged vectors; its JSON plus the figures' paths."""
    sys.path.insert(0, str(common.ROOT / "experiments"))
    import sae_rollout_features as study

    work = ctx.runs_dir / "sae_features"
    figures = ctx.out_dir / "sae_features"
    vectors = convergence.chosen_run(ctx, "steering")
    argv = ["--run", vectors, "--sae-dir", str(work / "saes"), "--figures", str(figures),
            "--json", str(work / "study.json"), "--eval-data", protocol.TEST, "--eval-n", str(ctx.scale(200, 24)),
            "--random-controls", str(ctx.scale(RANDOM_CONTROLS, 1)),
            "--matched-controls", str(ctx.scale(MATCHED_CONTROLS, 1)), *ctx.scale([], ["--quick"])]  # fmt: skip
    done = work / "study.json"
    if not (done.exists() and json.loads(done.read_text())["args"] == vars(study.parse_args(argv))):
        ctx.log(f"sae_features: {' '.join(argv)}")
        study.main(argv)
    res = json.loads(done.read_text())
    rel = f"reproduction/{figures.name}"
    out = {k: res[k] for k in ("layers", "ablations", "n_rollouts", "n_correct", "saes")}
    pngs = [f"{rel}/sae_rollout_flow.png", f"{rel}/sae_rollout_ablation.png"]
    sae_args = {k: res["args"][k] for k in ("d_sae", "k", "sae_steps", "layers")}
    return {**out, "run": argv[1], "flow": res["flow"]["stats"], "figures": pngs, "sae_args": sae_args}


def reading(ablations: list[dict]) -> str:
    """Whether ablating the top latents of each sign moves accuracy beyond random latents of the same
    mass (mean activation x decoder norm; else beyond uniformly drawn ones), from the numbers."""
    steered = next(a for a in ablations if a["condition"].startswith("steered"))
    uniform = [a for a in ablations if "random live" in a["condition"]]
    out = []
    for a in ablations:
        if not a["condition"].startswith("ablate top"):
            continue
        side = a["condition"].split()[-1]  # more-in-correct / more-in-incorrect
        matched = [c for c in ablations if f"mass-matched to {side}" in c["condition"]]
        controls, kind = (matched, "mass-matched") if matched else (uniform, "random")
        beyond = bool(controls) and a["acc"] < min(c["acc"] for c in controls) and a["mcnemar_p_vs_steered"] < 0.05
        drops = ", ".join(f"{100 * (steered['acc'] - c['acc']):+.1f}" for c in controls) or "none run"
        verdict = (
            f"beyond every {kind} control (with {len(controls)} controls a rank test cannot go below p = "
            f"{1 / (len(controls) + 1):.2f})" if beyond else f"not separated from the {kind} controls"
        )  # fmt: skip
        out.append(
            f"ablating the top {side} latents costs {100 * (steered['acc'] - a['acc']):+.1f} points (McNemar p "
            f"{a['mcnemar_p_vs_steered']:.3g}; {kind} controls: {drops}), {verdict}"
        )
    text = "; ".join(out) + "."
    worse = [a for a in ablations if a["condition"].endswith("more-in-incorrect") and a["acc"] < steered["acc"]]
    if worse and worse[0]["mcnemar_p_vs_steered"] < 0.05:
        text += (
            " Ablating the latents more active in incorrect rollouts lowers accuracy instead of raising it: "
            "they take part in the computation (and are more active on the problems the policy gets wrong) "
            "rather than cause the errors."
        )
    return text


def section(result: dict) -> str:
    """Markdown: features per layer against their nulls, the ablation table, the reading, the figures."""
    a = result["sae_args"]
    evs = ", ".join(f"layer {s['layer']} {s['held_out_ev']:.3f}" for s in result["saes"] if "held_out_ev" in s)
    lines = [
        f"Run: `{result['run'].split('/')[-1]}`; {result['n_correct']} of {result['n_rollouts']} rollouts "
        f"correct (temperature 1). SAEs: TopK, {a['d_sae']} latents, k {a['k']}, {a['sae_steps']} steps on the base "
        f"model's resid_post at layers {a['layers']}" + (f", held-out explained variance {evs}." if evs else "."),
        "",
        "| layer | max abs d | shuffled-label null (95%) | latents beyond | within problem: max abs d | null "
        "| beyond |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["layers"]:
        lines.append(
            f"| {r['layer']} | {r['max_abs_d']:.2f} | {r['null_max_abs_d_95']:.2f} | {r['n_beyond_null']} "
            f"| {r['max_abs_d_within']:.2f} | {r['null_within_max_abs_d_95']:.2f} | {r['n_within_beyond_null']} |"
        )
    lines += ["", "| ablation at the middle layer | mass removed | test greedy acc | 95% CI | flips (lost / gained) "
              "| McNemar p |", "|---|---:|---:|---|---|---:|"]  # fmt: skip
    for a in result["ablations"]:
        lines.append(
            f"| {a['condition']} | {a.get('mass', float('nan')):.2f} | {100 * a['acc']:.1f}% "
            f"| [{100 * a['ci'][0]:.1f}, {100 * a['ci'][1]:.1f}] "
            f"| {a['flips'][0]} / {a['flips'][1]} | {a['mcnemar_p_vs_steered']:.3g} |"
        )
    lines += ["", f"**Reading.** {reading(result['ablations'])}", ""]
    lines += [f"![{p.split('/')[-1]}]({p})" for p in result["figures"]]
    return "\n".join(lines)
