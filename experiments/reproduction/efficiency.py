"""Part `efficiency`: DASH's and RAPID's time savings where their papers claim them (issue 18 item 6).

First the sampler's throughput against batch size (8 / 32 / 128 rows) and completion length
(16 / 64 / 128 new tokens, no stop token), which says where sampling is cheap per token on this
machine. Then the same task as the rest of the report with room for long completions
(`sampling.max_new_tokens=64`: the base model's sampled completions run ~45 tokens on average,
the longest to the cap), training the all-layer steering vectors from zeros:

- GRPO and DASH with the same micro-batching (4 micro-batches of 8 rows: DASH needs them to pack
  the rows its filter keeps, so GRPO gets them too);
- RAPID: 16 prompts x G = 8 sampled in one call, 4 off-policy updates per batch, against on-policy GRPO.

Each on 2 seeds; validation accuracy (greedy, 64 new tokens) every 4 steps; time to a validation
accuracy fixed in advance (THRESHOLD), in training CPU seconds (evaluations excluded).
"""

from __future__ import annotations

import json
import time

import common
import numpy as np
import protocol
import time_to_accuracy as tta

TITLE = "Efficiency where the papers claim it: sampler throughput, DASH and RAPID with long completions"

THRESHOLD = 0.30  # validation greedy accuracy, fixed before any long-completion run was seen
BATCHES, LENGTHS = (8, 32, 128), (16, 64, 128)
SEEDS = (0, 1)
STEPS, NEW_TOKENS = 24, 64
COMMON = [
    f"sampling.max_new_tokens={NEW_TOKENS}",
    f"eval.max_new_tokens={NEW_TOKENS}",
    f"data.train={protocol.TRAIN}",
    f"data.eval={protocol.VAL.replace('n=100', 'n=64')}",
    "eval.n=64",
    "eval.batch_size=64",
    "eval.every=4",
    "eval.before=true",
    "checkpoint.every=0",
    f"steps={STEPS}",
    "optimizer.micro_batches=4",
]
ALGOS = [
    ("GRPO", ["rl.advantage=grpo"]),
    ("DASH", ["rl.advantage=grpo", "rl.dash=true", "rl.loss.dash_tau=0.1"]),
    (
        "RAPID",
        [
            "rl.advantage=rapid",
            "prompts_per_step=16",
            "rl.updates_per_batch=4",
            "rl.loss.importance_cap=2.0",
            f"steps={STEPS // 4}",
            "eval.every=1",
        ],
    ),
]


def throughput(ctx: common.Context) -> list[dict]:
    """Generated tokens per second (wall and per CPU-second) of one sampler call per (B, N), after a
    compiling call with the same shapes; every row runs to N tokens (no stop token). Measured once
    into <runs_dir>/efficiency_throughput.json and reused like a training run (delete it to re-measure)."""
    cache = ctx.runs_dir / "efficiency_throughput.json"
    if cache.exists():
        ctx.log(f"efficiency: reusing the throughput grid in {cache}")
        return json.loads(cache.read_text())
    grid = measure_throughput(ctx)
    cache.write_text(json.dumps(grid, indent=1))
    return grid


def measure_throughput(ctx: common.Context) -> list[dict]:
    """The (B, N) grid of `throughput`, measured now."""
    import jax

    from jaxsteer.models.generate import generate
    from jaxsteer.train.build import load_examples

    model, tok = ctx.model()
    prompts = [e.prompt for e in load_examples(protocol.VAL)]
    out = []
    for n in ctx.scale(LENGTHS, LENGTHS[:1]):
        for b in ctx.scale(BATCHES, BATCHES[:1]):
            ids = [tok.encode(p) for p in (prompts * 2)[:b]]

            def call(seed, ids=ids, n=n):
                g = generate(model, ids, tokenizer=None, max_new_tokens=n, stop_tokens=[], seed=seed, bucket=32)
                return jax.block_until_ready(g.tokens)

            call(0)
            w0, c0 = time.perf_counter(), time.process_time()
            call(1)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            out.append({"batch": b, "new_tokens": n, "tok_s": b * n / wall, "tok_per_cpu_s": b * n / cpu})
            ctx.log(f"efficiency: B={b} N={n}: {b * n / wall:.0f} tok/s, {b * n / cpu:.0f} tok per CPU-s")
    return out


def run_name(label: str, seed: int) -> str:
    """The run directory's name of `label`'s long-completion run on `seed`."""
    return f"eff_{label.lower()}_s{seed}"


def _train(ctx: common.Context, label: str, overrides: list[str], seed: int) -> dict | None:
    """Train (or reuse) `label`'s long-completion run on `seed`."""
    overrides = [*COMMON, *overrides]
    return ctx.train_or_load(run_name(label, seed), common.STEERING_CONFIG, overrides, stamp=True, seed=seed)


def run(ctx: common.Context) -> dict:
    """The throughput grid, then every algorithm on every seed (reused when finished)."""
    grid = throughput(ctx)
    # seed-major: every algorithm's first seed comes before any second seed (a partial run compares them)
    jobs = [(label, overrides, seed) for seed in ctx.scale(SEEDS, SEEDS[:1]) for label, overrides in ALGOS]
    ctx.share_runs(lambda job=job: _train(ctx, *job) for job in jobs)
    algos = []
    for label, overrides, seed in jobs:
        name = run_name(label, seed)
        s = _train(ctx, label, overrides, seed)
        if s is None:
            continue
        recs = ctx.metrics(name)
        pts = tta.curve(s, recs)
        train = [r for r in recs if r["kind"] == "train"]
        k = tta.updates_per_batch(ctx, name)  # update_rows is logged per update
        algos.append({
            "label": label,
            "seed": seed,
            "run": name,
            "curve": pts,
            "hit": tta.reached(pts, THRESHOLD),
            "final": pts[-1]["acc"] if pts else None,
            "completion_length": [r.get("completion_length") for r in train],
            "update_rows": float(k * np.sum([r.get("update_rows") or 0 for r in train])),
            **tta.step_costs(s, recs),
            "completions_per_step": s["rollouts"] / max(s["steps"], 1),
            "train_cpu_s": pts[-1]["cpu_s"] if pts else None,
        })  # fmt: skip
    return {"threshold": THRESHOLD, "grid": grid, "algos": algos, "figure": figure(ctx, grid, algos)}


def figure(ctx: common.Context, grid: list[dict], algos: list[dict]) -> str:
    """Left: sampler tokens per CPU-second against batch size per length. Right: validation accuracy
    against training CPU seconds, every run."""
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4))
    for n in sorted({g["new_tokens"] for g in grid}):
        pts = [g for g in grid if g["new_tokens"] == n]
        a0.plot([g["batch"] for g in pts], [g["tok_per_cpu_s"] for g in pts], marker="o", label=f"{n} new tokens")
    a0.set_xscale("log", base=2)
    a0.set_xlabel("rows per sampler call")
    a0.set_ylabel("generated tokens per CPU-second")
    a0.legend(fontsize=8)
    colors = {label: f"C{i}" for i, (label, _) in enumerate(ALGOS)}
    for a in algos:
        a1.plot(
            [p["cpu_s"] for p in a["curve"]],
            [100 * p["acc"] for p in a["curve"]],
            marker="o",
            ms=3,
            color=colors[a["label"]],
            ls="-" if a["seed"] == 0 else "--",
            label=f"{a['label']} seed {a['seed']}",
        )
    a1.axhline(100 * THRESHOLD, color="gray", ls=":", lw=1)
    a1.set_xlabel("training CPU seconds (evaluations excluded)")
    a1.set_ylabel("validation greedy accuracy (%), n=64")
    if algos:
        a1.legend(fontsize=7)
    else:
        a1.text(0.5, 0.5, "training runs not made yet", ha="center", va="center", transform=a1.transAxes)
    return ctx.save_fig(fig, "efficiency")


def _fmt(v, spec: str = ".0f", none: str = "not reached") -> str:
    """`v` formatted with `spec`, or `none` for None."""
    return none if v is None else format(v, spec)


def _mean(vals: list) -> float | None:
    """Mean of the values that are not None (None when none is)."""
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def _grid_reading(grid: list[dict]) -> list[str]:
    """What the throughput grid says, from its own numbers: the gain of sampling many rows at once (what
    RAPID's large batches can buy) and how the per-token cost grows with completion length."""
    rate = {(g["batch"], g["new_tokens"]): g["tok_per_cpu_s"] for g in grid}
    batches, lengths = sorted({b for b, _ in rate}), sorted({n for _, n in rate})
    if len(batches) < 2 or len(lengths) < 2:
        return []
    lo, hi, short, long = batches[0], batches[-1], lengths[0], lengths[-1]
    gains = ", ".join(f"{rate[hi, n] / rate[lo, n]:.1f}x at {n} tokens" for n in lengths)
    cost = rate[hi, short] / rate[hi, long]
    why = "the prompt's prefill is spread over more tokens" if cost < 1 else "attention reads a longer cache"
    return [
        f"- Batching: {hi} rows per call give {gains} the tokens per CPU-second of {lo} rows; "
        f"{hi} rows give {rate[hi, short] / rate[batches[-2], short]:.2f}x those of {batches[-2]} at {short} tokens.",
        f"- Length: at {hi} rows a {long}-token completion costs {cost:.2f}x as much per token as a {short}-token one "
        f"({why}).",
    ]


def section(result: dict) -> str:
    """Markdown: the throughput grid, the time-to-threshold table over seeds, the reading."""
    grid, algos = result["grid"], result["algos"]
    lines = [
        "Sampler throughput (one call after a compiling one; tokens per CPU-second / per wall-second):",
        "",
        "| rows | " + " | ".join(f"{n} tokens" for n in sorted({g["new_tokens"] for g in grid})) + " |",
        "|---:|" + "---:|" * len({g["new_tokens"] for g in grid}),
    ]
    for b in sorted({g["batch"] for g in grid}):
        cells = [g for g in sorted(grid, key=lambda g: g["new_tokens"]) if g["batch"] == b]
        lines.append(f"| {b} | " + " | ".join(f"{g['tok_per_cpu_s']:.0f} / {g['tok_s']:.0f}" for g in cells) + " |")
    lines += ["", *_grid_reading(grid)]
    lines += [
        "",
        f"![efficiency]({result['figure']})",
        "",
        f"Time to {100 * result['threshold']:.0f}% validation accuracy (fixed in advance), {NEW_TOKENS} new tokens:",
        "",
        "| algorithm | seeds reaching it | training CPU s to it (mean) | CPU s / step | completions / step "
        "| mean completion length (first / last step) | rows forward+backward | final val. acc. (mean) |",
        "|---|---|---:|---:|---:|---|---:|---:|",
    ]
    by: dict[str, list[dict]] = {}
    for a in algos:
        by.setdefault(a["label"], []).append(a)
    for label, runs in by.items():
        hits = [r["hit"]["cpu_s"] if r["hit"] else None for r in runs]
        lens = [r["completion_length"] for r in runs if r["completion_length"]]
        first = _mean([x[0] for x in lens])
        last = _mean([x[-1] for x in lens])
        lines.append(
            f"| {label} | {sum(h is not None for h in hits)} of {len(runs)} | {_fmt(_mean(hits))} "
            f"| {_fmt(_mean([r['cpu_per_step'] for r in runs]), '.1f', '-')} | {runs[0]['completions_per_step']:.0f} "
            f"| {_fmt(first, '.1f', '-')} / {_fmt(last, '.1f', '-')} "
            f"| {_mean([r['update_rows'] for r in runs]):.0f} | {100 * (_mean([r['final'] for r in runs]) or 0):.0f}% |"
        )
    g = _mean([r["hit"]["cpu_s"] if r["hit"] else None for r in by.get("GRPO", [])])
    lines += [
        "",
        "**Against the papers** (+ = saved vs GRPO; mean time over the seeds that reached the threshold)",
        "",
    ]
    for label, claim in tta.PAPER_SAVING.items():
        t = _mean([r["hit"]["cpu_s"] if r["hit"] else None for r in by.get(label, [])])
        if label not in by or "GRPO" not in by:
            here = "not run yet (its training runs or GRPO's are missing)."
        elif t and g:
            here = f"{100 * (1 - t / g):+.0f}% training CPU time."
        else:
            here = "not measurable (none of its runs or none of GRPO's reached the threshold)."
        lines.append(f"- {label}: the paper reports {claim}. Here: {here}")
    return "\n".join(lines)
