"""Part `essa_signal`: can CMA-ES climb ESSA's 32-prompt fitness from the SFT LoRA? (issue 18)

The convergence part's ESSA row ends where it starts (the SFT LoRA's accuracy) at every sigma. This
part measures why, on one generation of the paper's recipe: from the chosen SFT LoRA, CMA-ES's first
population (24 members, theta + sigma z_m over the 1,920 singular values) at each swept sigma, every
member and the centre decoded greedily on 96 validation prompts split into 3 mini-batches of 32 (the
size of one generation's fitness batch). It reports how many answers a perturbation changes, how far
members spread, and whether the ranking on one mini-batch carries over to the other two (split-half
correlation, and the held-out accuracy of the members CMA-ES would select). A fitness whose ranking
does not carry over gives CMA-ES a random direction each generation: the centre then drifts without
climbing.
"""

from __future__ import annotations

import common
import convergence
import numpy as np
import protocol

TITLE = "Why ESSA's centre does not move: is one generation's fitness a signal?"

SIGMAS = (0.02, 0.05, 0.125)  # the convergence part's ESSA sweep
BATCHES, BATCH = 3, 32  # 3 mini-batches of 32 validation prompts
MAX_NEW_TOKENS = 12


def correct_matrix(ctx: common.Context, sigma: float, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """(members `[M, n]`, centre `[n]`) greedy correctness on the first `n_prompts` validation prompts
    of CMA-ES's first ESSA population at `sigma` (seed 0) and of its unperturbed centre."""
    import jax

    from jaxsteer.models.generate import generate
    from jaxsteer.train import load_config
    from jaxsteer.train.build import build_inputs, load_examples
    from jaxsteer.train.es import center_member, es_space_for_run
    from jaxsteer.train.es.population import population_generate, score_population
    from jaxsteer.train.rewards import score_completions

    model, tok = ctx.model()
    essa = next(m for m in convergence.METHODS if m.key == "essa")
    overrides = [
        f"model.init_from={convergence.chosen_run(ctx, 'sft_lora')}",
        f"es.sigma={sigma}",
        *ctx.scale([], ["es.population=4"]),
    ]
    cfg = load_config(str(common.ROOT / essa.config), overrides)
    examples = load_examples(protocol.VAL)[:n_prompts]
    inputs = build_inputs(cfg, model=model, tokenizer=tok, eval_examples=examples)
    ids = [inputs.encode(e) for e in examples]
    space, strategy = es_space_for_run(cfg, model, tok)
    state = strategy.init(space.init(model), jax.random.PRNGKey(0))
    kw = {"max_new_tokens": MAX_NEW_TOKENS, "greedy": True, "tokenizer": tok, "bucket": 1}
    members = score_population(
        inputs.reward_fn, examples, ids, population_generate(model, space, strategy, state, ids, **kw)
    )
    run_model, interventions = space.apply(model, center_member(space, state["theta"]))
    gen = generate(run_model, ids, interventions=interventions, **kw)
    centre = score_completions(inputs.reward_fn, examples, ids, gen)
    return members > 0, centre > 0


def signal(correct: np.ndarray, centre: np.ndarray, batches: int) -> dict:
    """Statistics of members' correctness `[M, n]` against the centre's `[n]`, the n prompts cut into
    `batches` equal mini-batches: answers changed, member spread, split-half correlation of member
    fitness between mini-batches, and the held-out gain of the top half chosen on one mini-batch."""
    m, n = correct.shape
    acc = correct.reshape(m, batches, n // batches).mean(axis=2)  # [M, batches]
    rs, gains, best = [], [], []
    for b in range(batches):
        rest = np.delete(np.arange(batches), b)
        held = acc[:, rest].mean(axis=1)
        for c in rest[rest > b]:
            if acc[:, b].std() > 0 and acc[:, c].std() > 0:
                rs.append(float(np.corrcoef(acc[:, b], acc[:, c])[0, 1]))
        order = np.argsort(-acc[:, b], kind="stable")
        gains.append(float(held[order[: m // 2]].mean() - held[order[m // 2 :]].mean()))
        centre_held = centre.reshape(batches, -1)[rest].mean()
        best.append(float(held[order[0]] - centre_held))
    return {
        "centre_acc": float(centre.mean()),
        "member_acc_mean": float(correct.mean()),
        "members_above_centre": int((correct.mean(axis=1) > centre.mean()).sum()),
        "members": int(m),
        "changed_answers": float((correct != centre[None]).sum(axis=1).mean()),
        "prompts": int(n),
        "batch_spread_sd": float(acc.std(axis=0).mean()),
        "split_half_r": float(np.mean(rs)) if rs else None,
        "top_half_gain": float(np.mean(gains)),
        "best_member_gain": float(np.mean(best)),
    }


def run(ctx: common.Context) -> dict:
    """One ESSA population per swept sigma, decoded on the validation mini-batches; their statistics."""
    batch = ctx.scale(BATCH, 4)
    rows = []
    for sigma in ctx.scale(SIGMAS, SIGMAS[:1]):
        ctx.log(f"essa_signal: sigma {sigma}")
        correct, centre = correct_matrix(ctx, sigma, BATCHES * batch)
        rows.append({"sigma": sigma, **signal(correct, centre, BATCHES), "acc": correct.tolist()})
    start = convergence.chosen_run(ctx, "sft_lora").split("/")[-1]
    return {"rows": rows, "batch": batch, "batches": BATCHES, "warm_start": start, "figure": figure(ctx, rows, batch)}


def figure(ctx: common.Context, rows: list[dict], batch: int) -> str:
    """Each member's accuracy on mini-batch 1 against mini-batches 2-3, one panel per sigma."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.4), squeeze=False)
    for ax, r in zip(axes[0], rows, strict=True):
        acc = np.asarray(r["acc"], float).reshape(len(r["acc"]), BATCHES, batch).mean(axis=2)
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, acc.shape[0]) / batch  # of one prompt's step
        ax.scatter(100 * (acc[:, 0] + jitter), 100 * acc[:, 1:].mean(axis=1), s=14)
        ax.axhline(100 * r["centre_acc"], color="gray", ls="--", lw=1, label="centre (SFT LoRA)")
        r_txt = "n/a" if r["split_half_r"] is None else f"{r['split_half_r']:+.2f}"
        ax.set_title(f"sigma {r['sigma']:g}: split-half r {r_txt}", fontsize=9)
        ax.set_xlabel(f"member accuracy, mini-batch 1 ({batch} prompts; jittered), %", fontsize=8)
    axes[0][0].set_ylabel(f"accuracy on the other {2 * batch} prompts, %")
    axes[0][0].legend(fontsize=7)
    return ctx.save_fig(fig, "essa_signal")


def reading(rows: list[dict]) -> str:
    """What the numbers say about CMA-ES's chance to climb, computed from them."""
    usable = [r for r in rows if r["split_half_r"] is not None]
    if not usable:
        return "Every member scored alike on some mini-batch: no ranking to read."
    weak = [r for r in usable if r["split_half_r"] < 0.3 and r["top_half_gain"] < 0.02]
    if len(weak) == len(usable):
        lo, hi = min(r["changed_answers"] for r in rows), max(r["changed_answers"] for r in rows)
        above = ", ".join(f"{r['members_above_centre']} of {r['members']}" for r in rows)
        return (
            f"A member changes {lo:.1f}-{hi:.1f} of {rows[0]['prompts']} greedy answers (sigma "
            f"{rows[0]['sigma']:g} to {rows[-1]['sigma']:g}), in both directions ({above} members score "
            "above the centre), and the ranking on one 32-prompt mini-batch does not carry over to the "
            "other prompts (split-half r < 0.3; the top half chosen on one mini-batch is within 2 points "
            "of the bottom half elsewhere). Each generation's selection is then mostly noise: CMA-ES's "
            "mean takes a near-random step and the centre stays where the SFT LoRA put it, which is what "
            "the convergence row shows. A perturbation's true effect here is smaller than a fitness batch "
            "of this size resolves; the paper's setting (GSM8K, 100 prompts, a 7B model with more "
            "headroom over its SFT start) is not tested by this measurement."
        )
    ok = ", ".join(f"{r['sigma']:g}" for r in usable if r not in weak)
    return (
        f"At sigma {ok} the ranking on one mini-batch carries over to the other prompts, so selection "
        "has a signal there; the centre's flat curve then comes from the size of its steps or the budget."
    )


def section(result: dict) -> str:
    """Markdown: the statistics per sigma, the figure, the reading."""
    n = result["batch"] * result["batches"]
    lines = [
        f"CMA-ES's first ESSA population (seed 0) from `{result['warm_start']}` (the SFT LoRA the "
        f"convergence part chose), every member and the centre decoded greedily on {n} validation "
        f"prompts, cut into {result['batches']} mini-batches of {result['batch']} (one generation's "
        "fitness batch).",
        "",
        "| sigma | centre acc | members' mean acc | members above centre | answers changed (of "
        f"{n}) | spread of member acc on a mini-batch (sd) | split-half r | held-out gain, top half | "
        "held-out gain, best member vs centre |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        rr = "n/a" if r["split_half_r"] is None else f"{r['split_half_r']:+.2f}"
        lines.append(
            f"| {r['sigma']:g} | {100 * r['centre_acc']:.1f}% | {100 * r['member_acc_mean']:.1f}% "
            f"| {r['members_above_centre']} of {r['members']} | {r['changed_answers']:.1f} "
            f"| {100 * r['batch_spread_sd']:.1f} pts | {rr} | {100 * r['top_half_gain']:+.1f} pts "
            f"| {100 * r['best_member_gain']:+.1f} pts |"
        )
    lines += [
        "",
        "Split-half r: correlation over members of accuracy on one mini-batch with another (mean over "
        "pairs). Held-out gain: accuracy on the other mini-batches of the members ranked best on one "
        "(top half minus bottom half; best member minus the centre), mean over the choice of mini-batch.",
        "",
        f"![ESSA fitness split-half]({result['figure']})",
        "",
        f"**Reading.** {reading(result['rows'])}",
    ]
    return "\n".join(lines)
