"""Part `table1`: the steering paper's Table 1 at small scale (arXiv 2505.18706 / 2509.06608).

Base model / RL steering vectors at every layer / PPO (value head) steering vectors / one RL vector
at the last layer / RL LoRA / RL full fine-tuning / ESSA from an SFT LoRA warm start / OpenAI-ES on
the steering vectors, every trained
row at the same rollout budget (640 sampled completions: 20 RL steps x 4 prompts x G=8; ES and ESSA
10 generations x 16 members x 4 prompts, each member's answers counting as rollouts), held-out
greedy accuracy on 200 test problems with 95% Wilson intervals, lenient and strict extraction.
"""

from __future__ import annotations

import common
import numpy as np

TITLE = "Table 1 at small scale: steering vectors vs LoRA vs full fine-tuning vs ES / ESSA"

NO_BEFORE = ["eval.before=false"]  # the base model is evaluated once, in the steering run
ES_BUDGET = ["prompts_per_step=4", "steps=10"]  # 10 x 16 members x 4 prompts = 640 rollouts
LAST_LAYER = 29

# (row key, label, run name, config, overrides); the SFT run must precede ESSA (its warm start).
ROWS = [
    (
        "steering",
        "RL steering vectors, all 30 layers",
        common.STEERING_RUN,
        common.STEERING_CONFIG,
        common.STEERING_OVERRIDES,
    ),
    (
        "ppo",
        "PPO (learned value head, GAE) steering vectors, all 30 layers",
        "table1_ppo",
        common.cfg_path("smollm2_arithmetic_ppo.yaml"),
        NO_BEFORE,
    ),
    (
        "one_layer",
        f"RL steering vector, layer {LAST_LAYER} only",
        "table1_one_layer",
        common.STEERING_CONFIG,
        [f"trainable.layers=[{LAST_LAYER}]", *NO_BEFORE],
    ),
    ("lora", "RL LoRA r=8, all projections", "table1_lora", common.cfg_path("smollm2_arithmetic_lora.yaml"), NO_BEFORE),
    ("full", "RL full fine-tuning", "table1_full", common.cfg_path("smollm2_arithmetic_full.yaml"), NO_BEFORE),
    (
        "sft_lora",
        "SFT LoRA (ESSA's warm start; 320 reference answers, no rollouts)",
        "table1_sft_lora",
        common.cfg_path("smollm2_arithmetic_sft_lora.yaml"),
        NO_BEFORE,
    ),
    (
        "essa",
        "ESSA: CMA-ES on the SFT LoRA's singular values",
        "table1_essa",
        common.cfg_path("smollm2_arithmetic_essa.yaml"),
        [*ES_BUDGET, *NO_BEFORE],
    ),
    (
        "es",
        "OpenAI-ES on the steering vectors",
        "table1_es",
        common.cfg_path("smollm2_arithmetic_es.yaml"),
        [*ES_BUDGET, *NO_BEFORE],
    ),
]

# A prompt that asks for the papers' answer format, trained on the strict reward: the rows in which strict
# extraction means something (YAML double quotes: \n is a newline; {{}} survives str.format as {}).
BOXED = [
    'data.prompt_template="<|im_start|>user\\n{prompt} Put the number in \\\\boxed{{}}.<|im_end|>\\n'
    '<|im_start|>assistant\\n"',
    "data.reward=correctness_strict",
    "sampling.max_new_tokens=16",
    "plot=false",
]  # the library's curves.png fails on a 0% accuracy (Wilson lower bound 1.7e-18 > 0)
ROWS.append(
    (
        "steering_boxed",
        "RL steering vectors, all layers, boxed prompt + strict reward",
        "table1_steering_boxed",
        common.STEERING_CONFIG,
        BOXED,
    )
)

# What docs/training.md reports for the committed steering config (accuracy, 95% CI): compared, not reused.

# The papers' Table 1 (accuracy %, GSM8K, Qwen2.5-Math-1.5B; ../shared/METHODS.md section 1).
PAPER = {"base": 29.3, "full": 86.5, "steering": 79.9, "lora": 85.4}


def _row(key: str, label: str, summary: dict, ev: dict | None) -> dict:
    """One table row from a run's summary and one of its evaluations (None: not run)."""
    return {
        "key": key,
        "label": label,
        "lenient": common.acc(ev, "lenient"),
        "strict": common.acc(ev, "strict"),
        "rollouts": summary.get("rollouts") if key not in ("base", "base_boxed", "sft_lora") else 0,
        "trainable_params": summary.get("trainable_params") or summary.get("search_dims"),
        "train_s": summary.get("train_seconds"),
        "wall_s": summary.get("wall_s"),
        "cpu_s": summary.get("cpu_s"),
        "steps": summary.get("steps"),
        "algorithm": summary.get("algorithm"),
        "example": (ev or {}).get("examples", [{}])[0].get("completion") if ev and ev.get("examples") else None,
    }


def run(ctx: common.Context) -> dict:
    """Train (or reuse) every row's run and collect the held-out accuracies."""
    rows, runs = [], {}
    for key, label, name, config, overrides in ROWS:
        extra = [f"model.init_from={ctx.runs_dir / 'table1_sft_lora'}"] if key == "essa" else []
        s = ctx.train_or_load(name, config, [*overrides, *extra])
        runs[key] = {"name": name, "config": config, "overrides": [*overrides, *extra], "missing": s is None}
        if s is None:  # --collect-only and the run did not finish
            label, s = label + " (not run)", {}
        if key == "steering":
            rows.append(_row("base", "base model (no training)", {}, s.get("eval_before")))
        if key == "steering_boxed":
            rows.append(_row("base_boxed", "base model, boxed prompt", {}, s.get("eval_before")))
        rows.append(_row(key, label, s, s.get("eval_after")))
    fig_path = figure(ctx, rows)
    boxed_train = None  # the largest fraction of rewarded samples in any step of the strict-reward run
    if not runs.get("steering_boxed", {}).get("missing", True):
        boxed_train = max(
            (r.get("accuracy") or 0.0 for r in ctx.metrics("table1_steering_boxed") if r["kind"] == "train"),
            default=None,
        )
    return {"rows": rows, "runs": runs, "figure": fig_path, "paper": PAPER, "boxed_train_acc_max": boxed_train}


def figure(ctx: common.Context, rows: list[dict]) -> str:
    """Bar chart: lenient and strict accuracy per row with 95% intervals."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.2))
    x = np.arange(len(rows))
    for off, mode, color in ((-0.2, "lenient", "tab:blue"), (0.2, "strict", "tab:orange")):
        vals = [100 * (r[mode] or {}).get("acc", 0) for r in rows]
        lo = [
            max(0.0, v - 100 * (r[mode] or {}).get("lo", 0)) for v, r in zip(vals, rows, strict=True)
        ]  # Wilson lo can be 1e-18 > 0
        hi = [max(0.0, 100 * (r[mode] or {}).get("hi", 0) - v) for v, r in zip(vals, rows, strict=True)]
        ax.bar(x + off, vals, 0.4, yerr=[lo, hi], capsize=3, color=color, label=f"{mode} extraction")
    ax.set_xticks(x)
    ax.set_xticklabels([r["key"] for r in rows], rotation=20)
    ax.set_ylabel("held-out greedy accuracy (%)")
    n = next((r["lenient"]["n"] for r in rows if r.get("lenient")), "?")
    ax.set_title(f"SmolLM2-135M-Instruct, 2-digit addition, n={n} (95% Wilson CI)")
    ax.legend()
    return ctx.save_fig(fig, "table1_accuracy")


def _overlap(a: dict | None, b: dict | None) -> bool:
    """Whether two accuracies' 95% intervals overlap."""
    return bool(a and b and a["lo"] <= b["hi"] and b["lo"] <= a["hi"])


def _compare(rows: dict, paper: dict) -> list[str]:
    """Sentences comparing the measured gaps with the paper's, computed from the numbers."""
    out = []
    st = rows.get("steering", {}).get("lenient")
    for other in ("full", "lora"):
        o = rows.get(other, {}).get("lenient")
        if not (st and o):
            continue
        gap, pgap = 100 * (st["acc"] - o["acc"]), paper["steering"] - paper[other]
        same = _overlap(st, o)
        out.append(
            f"- Steering vectors vs {other}: {gap:+.1f} points here "
            f"({'intervals overlap' if same else 'intervals do not overlap'}), "
            f"{pgap:+.1f} in the paper (Qwen2.5-Math-1.5B, GSM8K). "
            + (
                "Consistent with the paper's claim that vectors recover most of the fine-tuning gain."
                if gap > -10 or same
                else "Here the vectors fall further behind than in the paper: at 20 steps a 17,280-number policy "
                "and a 2.4M / 135M-parameter one are both far from converged, so the gap measures speed at "
                "this learning rate as much as capacity."
            )
        )
    if st:
        out.append(
            f"- This run ({common.pct(st)}) is seed 0 of the demo config. The seed spread, measured outside "
            "this script with `jaxsteer train experiments/smollm2_arithmetic_steering.yaml seed=S` (docs/training.md): "
            "45.5 / 43.0 / 54.0% for seeds 0 / 1 / 2 at commit 08c6889, and 62.0 / 56.0 / 45.5% at commit "
            "a9609f8, where the README's earlier 62.0% came from (its sampling keys differ from step 1 on). So "
            "one RL run's interval covers evaluation noise only; seeds move this row by ~7 points, and the "
            "differences between rows that are smaller than that are not findings."
        )
    ppo = rows.get("ppo", {}).get("lenient")
    if ppo and st:
        out.append(
            f"- PPO with a critic {common.pct(ppo)} vs RLOO {common.pct(st)} on the same vectors and rollouts "
            f"({100 * (ppo['acc'] - st['acc']):+.1f} points; "
            + ("intervals overlap" if _overlap(ppo, st) else "intervals do not overlap")
            + "). The RL-for-reasoning seed study compares PPO, GRPO and expert iteration on models trained "
            "from scratch; this row is the same comparison on a pretrained model's vectors."
        )
    base = rows.get("base", {}).get("lenient")
    if base and st:
        out.append(
            f"- Gain over the base model: {100 * (st['acc'] - base['acc']):+.1f} points here, "
            f"{paper['steering'] - paper['base']:+.1f} in the paper (GSM8K, whose base accuracy is "
            "higher and whose answers are longer)."
        )
    es, essa = rows.get("es", {}).get("lenient"), rows.get("essa", {}).get("lenient")
    lora, full = rows.get("lora", {}).get("lenient"), rows.get("full", {}).get("lenient")
    if essa and lora and full:
        above = all(essa["acc"] > o["acc"] and not _overlap(essa, o) for o in (lora, full))
        below = all(essa["acc"] < o["acc"] and not _overlap(essa, o) for o in (lora, full))
        out.append(
            f"- ESSA {common.pct(essa)} vs RL (GRPO-style) LoRA {common.pct(lora)} and full fine-tuning "
            f"{common.pct(full)}, 640 rollouts each (ESSA also had its SFT start). The ESSA paper reports ESSA above "
            "GRPO (+12.6% on GSM8K with Qwen2.5-Math-7B, population 192-608); "
            + (
                "here too."
                if above
                else "here ESSA is below both."
                if below
                else "here ESSA is not distinguishable from RL fine-tuning (intervals overlap)."
            )
            + " Population 16 with 4 prompts per member (all that 640 rollouts allow in 10 generations) makes "
            "each fitness a 4-problem estimate."
        )
    sft = rows.get("sft_lora", {}).get("lenient")
    if essa and sft:
        out.append(
            f"- ESSA vs its own SFT warm start: {100 * (essa['acc'] - sft['acc']):+.1f} points "
            f"({common.pct(sft)} -> {common.pct(essa)})"
            + (
                "; SFT on the reference answers did the work, the singular-value search on top of it changed "
                "little in its generations."
                if abs(essa["acc"] - sft["acc"]) < 0.05
                else "."
            )
        )
    if es:
        out.append(
            f"- OpenAI-ES on the same 17,280 steering numbers: {common.pct(es)}; with 10 generations of "
            "16 members the ES gradient is a 16-sample estimate in 17,280 dimensions."
        )
    return out


def section(result: dict) -> str:
    """Markdown: the table, the figure, the budget and the comparison with the paper."""
    rows = result["rows"]
    by = {r["key"]: r for r in rows}
    rl, es, sft = by.get("steering", {}), by.get("es", {}), by.get("sft_lora", {})
    lines = [
        "A small, equal budget, far from converged: the next part (`convergence`) runs these rows to a plateau "
        "with step sizes chosen on a validation split and several seeds; read the comparisons with the papers "
        "there.",
        "",
        f"Equal rollout budget: every trained row except `sft_lora` sampled **{rl.get('rollouts')} completions** "
        f"(RL: {rl.get('steps')} steps x 4 prompts x G=8, RLOO advantages, token-mean loss, no KL, lr 1e-2 / "
        f"5e-4 / 1e-5 for vectors / LoRA / full as in the committed configs; ES / ESSA: {es.get('steps')} "
        "generations x 16 members x 4 prompts, greedy, each member's answers counted). The SFT LoRA is ESSA's "
        f"warm start: {sft.get('steps')} steps x 16 reference answers, no rollouts; ESSA's total is that SFT plus "
        f"its {by.get('essa', {}).get('rollouts')} rollouts. The single vector sits at layer {LAST_LAYER} (the "
        f"last), chosen in advance. Held-out: {rl['lenient']['n'] if rl.get('lenient') else '?'} "
        "test problems, greedy.",
        "",
        "| row | lenient acc. (95% CI) | strict acc. (95% CI) | rollouts | trainable numbers "
        "| train s | run wall s | run CPU s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = lambda v, d=0: "" if v is None else f"{v:,.{d}f}"  # noqa: E731
        lines.append(
            f"| {r['label']} | {common.pct(r['lenient'])} | {common.pct(r['strict'])} | {f(r['rollouts'])} "
            f"| {f(r['trainable_params'])} | {f(r['train_s'])} | {f(r['wall_s'])} | {f(r['cpu_s'])} |"
        )
    lines += [
        "",
        f"![Table 1 accuracies]({result['figure']})",
        "",
        "Run wall / CPU include setup, compilation and the held-out evaluations (`train s` is the "
        "library's own training time); a run reused from an earlier invocation keeps its first timing.",
        "",
        "**Against the papers**",
        "",
    ]
    lines += _compare(by, result["paper"])
    by["_boxed_train"] = result.get("boxed_train_acc_max")
    strict = [r["strict"]["acc"] for r in rows if r.get("strict") and "boxed" not in r["key"]]
    if strict:
        lines.append(
            f"- Strict extraction with the task's own prompt: at most {100 * max(strict):.1f}% in any row. "
            "The prompt asks for just the number and the training reward is lenient, so no policy writes "
            "`\\boxed{}`; the papers' strict numbers come from prompts that ask for a boxed answer."
        )
    bb, sb = by.get("base_boxed"), by.get("steering_boxed")
    if bb and sb and bb.get("strict") and sb.get("strict"):
        lines.append(
            f"- With a prompt that asks for `\\boxed{{}}` (16 new tokens) and the strict reward: base model strict "
            f"{common.pct(bb['strict'])} / lenient {common.pct(bb['lenient'])}; RL steering vectors strict "
            f"{common.pct(sb['strict'])} / lenient {common.pct(sb['lenient'])} after the same "
            f"{sb.get('rollouts')} rollouts. Under the papers' extraction the vectors "
            + (
                "raise accuracy here too."
                if sb["strict"] and bb["strict"] and sb["strict"]["acc"] > bb["strict"]["acc"]
                else "do not raise accuracy here"
            )
            + (
                f". In training at most {100 * by['_boxed_train']:.1f}% of a step's sampled completions "
                "earned the strict reward; with (almost) every reward -1 the group advantages are (almost) all "
                "zero and RL has no signal to learn the format from: a 135M model needs the format shown or "
                "supervised first."
                if by.get("_boxed_train") is not None and by["_boxed_train"] < 0.05
                else "."
            )
        )
    ex = [(r["key"], r["example"]) for r in rows if r.get("example")]
    if ex:
        lines += [
            "",
            "First held-out completion of each row (problem 1): "
            + "; ".join(f"{k}: `{e.strip()[:40]!r}`" for k, e in ex),
        ]
    return "\n".join(lines)
