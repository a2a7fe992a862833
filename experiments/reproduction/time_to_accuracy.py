"""Part `time_to_accuracy`: time to a fixed held-out accuracy for GRPO, DAPO, Dr. GRPO, DASH and RAPID.

Every algorithm trains the same all-layer steering vectors from zeros (the demo recipe: lr 1e-2,
4 prompts x G=8 per step, 12 new tokens) for the same 384 sampled completions, with a held-out
greedy evaluation on 64 test problems every 2 steps (RAPID: every rollout batch, i.e. every 128
completions / 4 updates). The time of a step is its training time only: CPU seconds of this process
between two metrics records (evaluations excluded) and the step's wall-clock (`step_s`).
The threshold is fixed in advance (THRESHOLD), not read off the curves.
"""

from __future__ import annotations

import common
import numpy as np

TITLE = "Time to a fixed accuracy: GRPO, DAPO, Dr. GRPO, DASH, RAPID"

THRESHOLD = 0.40  # held-out lenient accuracy to reach (base ~0.17, the 20-step steering run ~0.6)
# Added after the real GRPO run was seen crossing 40% at its first evaluation (step 2), which makes the
# 40% comparison a comparison of two steps' cost; 55% is roughly where GRPO's curve levels off. Post hoc,
# chosen from GRPO's curve alone (not from the DASH / RAPID runs or the papers' numbers); both are reported.
THRESHOLD_2 = 0.55
STEPS = 12  # 384 completions (RAPID: 3 batches of 128); the 20-step demo run reaches ~60% (table1)
EVAL = ["eval.n=64", "eval.batch_size=64", "eval.every=2", "checkpoint.every=0", f"steps={STEPS}"]
STEER = common.STEERING_CONFIG
ALGOS = [  # (label, config, overrides); the papers' efficiency claims (DASH, RAPID) first
    ("GRPO", STEER, ["rl.advantage=grpo"]),
    ("DASH", STEER, ["rl.advantage=grpo", "rl.dash=true", "rl.loss.dash_tau=0.1", "optimizer.micro_batches=4"]),
    (
        "RAPID",
        STEER,
        [
            "rl.advantage=rapid",
            "prompts_per_step=16",
            "rl.updates_per_batch=4",
            "rl.loss.importance_cap=2.0",
            f"steps={STEPS // 4}",
            "eval.every=1",
        ],
    ),
    ("DAPO", common.cfg_path("smollm2_arithmetic_dapo.yaml"), []),
    ("Dr. GRPO", STEER, ["rl.advantage=mean", "rl.loss.aggregation=seq_sum_norm"]),
]
PAPER_SAVING = {
    "DASH": "83% less training time than GRPO at equal accuracy (arXiv 2505.17218)",
    "RAPID": "11-34% less runtime than on-policy training (arXiv 2510.03515)",
}


def curve(summary: dict, records: list[dict]) -> list[dict]:
    """Per evaluation: step, rollouts so far, cumulative training CPU / wall seconds, accuracy."""
    stamps = summary.get("stamps") or []
    train_cpu, last_cpu, cum_cpu = {}, None, 0.0
    for s in stamps:  # a train record's CPU = CPU since the previous record (eval or train)
        if s["kind"] == "train" and last_cpu is not None:
            cum_cpu += s["cpu_s"] - last_cpu
            train_cpu[s["step"]] = cum_cpu
        last_cpu = s["cpu_s"]
    wall, done, cum_wall, cum_roll = {}, {0: 0.0}, 0.0, 0.0
    per_step = summary["rollouts"] / max(summary["steps"], 1)
    for r in records:
        if r["kind"] == "train":  # DAPO's dynamic sampling draws whole extra rounds of a batch
            cum_wall += r.get("step_s") or 0.0
            cum_roll += per_step * (1 + (r.get("dynamic_rounds") or 0))
            wall[r["step"]], done[r["step"]] = cum_wall, cum_roll
    pts = []
    for r in records:
        if r["kind"] == "eval" and ("greedy_acc_lenient" in r or "base_greedy_acc_lenient" in r):
            k = r["step"]
            a = r.get("greedy_acc_lenient", r.get("base_greedy_acc_lenient"))
            pts.append(
                {
                    "step": k,
                    "rollouts": done.get(k, 0.0),
                    "cpu_s": train_cpu.get(k, 0.0),
                    "wall_s": wall.get(k, 0.0),
                    "acc": float(a),
                }
            )
    return sorted(pts, key=lambda p: p["step"])


def step_costs(summary: dict, records: list[dict]) -> dict:
    """Median per-step CPU seconds (from the stamps; step 1, which compiles, left out) and mean
    sampling / update wall seconds per step from the metrics."""
    deltas, last = [], None
    for s in summary.get("stamps") or []:
        if s["kind"] == "train" and last is not None and s["step"] > 1:
            deltas.append(s["cpu_s"] - last)
        last = s["cpu_s"]
    train = [r for r in records if r["kind"] == "train" and r["step"] > 1]
    mean = lambda k: float(np.mean([r.get(k) or 0.0 for r in train])) if train else None  # noqa: E731
    return {
        "cpu_per_step": float(np.median(deltas)) if deltas else None,
        "rollout_s": mean("rollout_s"),
        "update_s": mean("update_s"),
    }


def updates_per_batch(ctx: common.Context, name: str) -> int:
    """rl.updates_per_batch of a finished run (its effective config.yaml; runs written before the
    config's sections were split kept it under `algorithm`)."""
    import yaml

    cfg = yaml.safe_load((ctx.runs_dir / name / "config.yaml").read_text()) or {}
    section = cfg.get("rl") if isinstance(cfg.get("rl"), dict) else cfg.get("algorithm")
    return int((section if isinstance(section, dict) else {}).get("updates_per_batch", 1))


def reached(pts: list[dict], threshold: float = THRESHOLD) -> dict | None:
    """The first evaluation at or above `threshold`."""
    return next((p for p in pts if p["acc"] >= threshold), None)


def run(ctx: common.Context) -> dict:
    """Train every algorithm (reused when finished) and read its accuracy-vs-time curve."""
    algos = []
    for label, config, overrides in ALGOS:
        name = "tta_" + label.lower().replace(". ", "_").replace(" ", "_")
        s = ctx.train_or_load(name, config, [*EVAL, *overrides], stamp=True)
        if s is None:  # --collect-only and the run did not finish
            continue
        recs = ctx.metrics(name)
        pts = curve(s, recs)
        train = [r for r in recs if r["kind"] == "train"]
        k = updates_per_batch(ctx, name)  # update_rows is logged per update
        algos.append(
            {
                "label": label,
                "run": name,
                "config": config,
                "overrides": overrides,
                "curve": pts,
                "hit": reached(pts),
                "hit2": reached(pts, THRESHOLD_2),
                "final": pts[-1]["acc"] if pts else None,
                "rollouts": pts[-1]["rollouts"] if pts else s["rollouts"],
                "update_rows": float(k * np.sum([r.get("update_rows") or 0 for r in train])),
                "updates_per_batch": k,
                **step_costs(s, recs),
                "completions_per_step": s["rollouts"] / max(s["steps"], 1),
                "train_cpu_s": pts[-1]["cpu_s"] if pts else None,
                "train_wall_s": pts[-1]["wall_s"] if pts else None,
            }
        )
    grpo = next((a for a in algos if a["label"] == "GRPO"), {"hit": None, "hit2": None})
    for a in algos:
        for hit, suffix in (("hit", ""), ("hit2", "_2")):
            for unit in ("cpu_s", "wall_s"):
                ok = a[hit] and grpo[hit] and grpo[hit][unit] > 0
                a[f"saving_{unit}{suffix}"] = 1 - a[hit][unit] / grpo[hit][unit] if ok else None
    return {
        "threshold": THRESHOLD,
        "threshold_2": THRESHOLD_2,
        "algos": algos,
        "figure": figure(ctx, algos),
        "paper": PAPER_SAVING,
    }


def figure(ctx: common.Context, algos: list[dict]) -> str:
    """Held-out accuracy against training CPU seconds and against sampled completions."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for a in algos:
        for ax, unit in zip(axes, ("cpu_s", "rollouts"), strict=True):
            ax.plot(
                [p[unit] for p in a["curve"]], [100 * p["acc"] for p in a["curve"]], marker="o", ms=3, label=a["label"]
            )
    for ax, xl in zip(axes, ("training CPU seconds (evaluations excluded)", "sampled completions"), strict=True):
        ax.axhline(100 * THRESHOLD, color="gray", ls="--", lw=1)
        ax.axhline(100 * THRESHOLD_2, color="gray", ls=":", lw=1)
        ax.set_xlabel(xl)
    axes[0].set_ylabel("held-out greedy accuracy (%), n=64")
    axes[0].legend()
    fig.suptitle("Steering vectors on SmolLM2-135M from zeros: accuracy vs cost")
    return ctx.save_fig(fig, "time_to_accuracy")


def _fmt(v, spec: str = ".0f", none: str = "not reached") -> str:
    """`v` formatted with `spec`, or `none` for None."""
    return none if v is None else format(v, spec)


def _threshold_table(result: dict, hit_key: str, suffix: str, thr: float) -> list[str]:
    """Markdown rows: when each algorithm first reached `thr` percent and what it saved vs GRPO."""
    lines = [
        f"| algorithm | step at {thr:.0f}% | completions | training CPU s | training wall s | CPU saved vs GRPO "
        "| wall saved vs GRPO | final acc. | total training CPU s | rows forward+backward |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a in result["algos"]:
        h = a.get(hit_key) or {}
        sc, sw = a.get(f"saving_cpu_s{suffix}"), a.get(f"saving_wall_s{suffix}")
        lines.append(
            f"| {a['label']} | {_fmt(h.get('step'))} | {_fmt(h.get('rollouts'))} | {_fmt(h.get('cpu_s'))} "
            f"| {_fmt(h.get('wall_s'))} | {_fmt(None if sc is None else 100 * sc, '+.0f', '-')}% "
            f"| {_fmt(None if sw is None else 100 * sw, '+.0f', '-')}% | {100 * (a['final'] or 0):.0f}% "
            f"| {_fmt(a['train_cpu_s'])} | {a['update_rows']:.0f} |"
        )
    return lines


def _steps(a: dict) -> str:
    """'2 and 4': the steps at which `a` first reached the two thresholds ('-' if never)."""
    return " and ".join(str((a.get(h) or {}).get("step", "-")) for h in ("hit", "hit2"))


def _explain(by: dict) -> list[str]:
    """Data-driven reading of the comparison (per-step costs, rows, sampled completions)."""
    out, g, d, r = [], by.get("GRPO"), by.get("DASH"), by.get("RAPID")
    if g and d and g.get("cpu_per_step") and d.get("cpu_per_step"):
        cut = 1 - d["update_rows"] / max(g["update_rows"], 1)
        out.append(
            f"- DASH's filter removed {100 * cut:.0f}% of the rows from the update, yet a DASH step cost "
            f"{d['cpu_per_step']:.1f} CPU s against GRPO's {g['cpu_per_step']:.1f}: packing needs the batch split "
            "into micro-batches (4 of 8 rows here; GRPO runs one of 32), and on a CPU four small forward/backward "
            "passes plus a compile per packed micro-batch count cost more than the rows saved. "
            f"DASH crossed the thresholds at steps {_steps(d)} (GRPO: {_steps(g)}); a lead in steps with one seed and "
            "n = 64 evaluations is within noise, and a lead at the same step comes from the first (compiling) "
            "steps, not from the filter. The paper's 83% comes from long reasoning completions on GPUs, where the "
            "backward pass over thousands of tokens dominates and micro-batches are needed anyway."
        )
    if g and r and g.get("cpu_per_step") and r.get("cpu_per_step"):
        per32 = r["cpu_per_step"] * 32 / r.get("completions_per_step", 128)
        out.append(
            f"- RAPID costs {per32:.1f} CPU s per 32 completions (one large sampling call, {r['updates_per_batch']} "
            f"updates per batch) against GRPO's {g['cpu_per_step']:.1f}, so its per-sample saving is small at "
            f"12 tokens, where sampling 32 rows is already one batched call; "
            f"it ended at {100 * (r['final'] or 0):.0f}% vs "
            f"GRPO's {100 * (g['final'] or 0):.0f}% after the same completions, and its evaluations come every 128 "
            "completions, so it is first seen above a threshold later. The paper's 11-34% is for long generations, "
            "where off-policy reuse amortises a large inference call."
        )
    a = by.get("DAPO")
    if a and g:
        out.append(
            f"- DAPO's dynamic sampling drew {a['rollouts']:.0f} completions in the {STEPS} steps (GRPO: "
            f"{g['rollouts']:.0f}): with rewards of +-1 and G = 8, many groups agree and are resampled, which "
            "costs sampling time; DAPO's paper claims stability and accuracy, not time."
        )
    out.append(
        "- Wall-clock columns are confounded by the machine's load (other sessions' jobs), which changed while "
        "the runs went one after another; the CPU columns are this process's own time and the fairer comparison."
    )
    return out


def section(result: dict) -> str:
    """Markdown: the side-by-side table, the figure and the comparison with the papers' claims."""
    thr = 100 * result["threshold"]
    lines = [
        f"Fixed threshold: **{thr:.0f}% held-out greedy accuracy** (lenient, n = 64, so one evaluation's 95% "
        "interval is about +-12 points: a crossing is a noisy event and a single seed is shown). Same start "
        f"(all-layer steering vectors at zero), same budget of {STEPS} steps x 32 completions. GRPO: (r - mean) / std "
        "advantages, token-mean loss. DAPO: the committed `smollm2_arithmetic_dapo.yaml` (clip-higher 0.2 / "
        "0.28, token-level loss, dynamic sampling with up to 3 extra rounds, overlong shaping over the last 2 "
        "tokens; its extra rounds sample more). Dr. GRPO: mean-only advantage, sum / (B x 12). "
        "DASH: GRPO with preemptive sampling of the whole batch and |A| <= 0.1 filtered before the update, "
        "4 micro-batches. RAPID: 16 prompts x 8 sampled at once, 4 off-policy updates with importance-weighted "
        "group advantages, weights clipped at 2.",
        "",
        f"![accuracy vs time]({result['figure']})",
        "",
    ]
    lines += _threshold_table(result, "hit", "", thr)
    if result.get("threshold_2"):
        lines += [
            "",
            f"Second threshold, {100 * result['threshold_2']:.0f}% (added after GRPO's run crossed "
            f"{thr:.0f}% at its first evaluation; read off GRPO's curve alone, see the module docstring):",
            "",
        ]
        lines += _threshold_table(result, "hit2", "_2", 100 * result["threshold_2"])
    lines += [
        "",
        "Per-step cost after the first (compiling) step: median CPU seconds of a step, mean wall seconds "
        "of its sampling and of its update (wall-clock inflated by the machine's load; RAPID's step is 128 "
        "completions and 4 updates, the others' 32 and 1).",
        "",
        "| algorithm | CPU s / step | sampling wall s / step | update wall s / step |",
        "|---|---:|---:|---:|",
    ]
    for a in result["algos"]:
        lines.append(
            f"| {a['label']} | {_fmt(a.get('cpu_per_step'), '.1f', '-')} | {_fmt(a.get('rollout_s'), '.1f', '-')} "
            f"| {_fmt(a.get('update_s'), '.1f', '-')} |"
        )
    by = {a["label"]: a for a in result["algos"]}
    lines += ["", "**Against the papers**", ""]
    for label, claim in result["paper"].items():
        a = by.get(label)
        if a is None:
            continue
        said = []
        for hit, suffix, t in (("hit", "", thr), ("hit2", "_2", 100 * result.get("threshold_2", 0))):
            sc = a.get(f"saving_cpu_s{suffix}")
            said.append(
                f"{100 * sc:+.0f}% training CPU time to {t:.0f}% vs GRPO"
                if sc is not None
                else f"no saving at {t:.0f}% ({label if not a.get(hit) else 'GRPO'} did not reach it)"
            )
        cps, g = a.get("cpu_per_step"), by.get("GRPO", {}).get("cpu_per_step")
        if cps and g:  # per 32 sampled completions (RAPID's step samples 128 and updates 4 times)
            said.append(
                f"{100 * (1 - cps * 32 / a.get('completions_per_step', 32) / g):+.0f}% CPU per 32 completions "
                "after the first step"
            )
        lines.append(f"- {label}: the paper reports {claim}. Here (+ = saved): " + "; ".join(said) + ".")
    lines += _explain(by)
    return "\n".join(lines)
