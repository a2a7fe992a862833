"""Part `decodability`: decodability vs causality (arXiv 2510.09794) on SmolLM2-135M-Instruct.

The paper (counting ViTs) trains linear probes for a concept per layer and token group and runs
activation patching of the same activations between clean and corrupted inputs; the two curves
diverge: middle-layer object tokens are causal but weakly decodable, final-layer object tokens are
decodable but inert, and the CLS token is decodable in the middle layers but causal only late.

The analogue here, on 2-digit addition with sums below 100: the concept is the units digit of the
answer. Every sequence is the chat prompt plus the model's usual answer format with the tens digit
filled in, `... assistant\\n{a} + {b} = {tens}`, so the next token is the units digit (the base model
answers "a + b = s" by itself; the units digit is the part it gets right most often). Token groups:
`b units (prompt)` and `b units (echo)` (the units digit of the second operand, in the question and
in the echoed equation: the "object" tokens), `=` (the echoed equals sign) and `last` (the tens
digit, whose next-token prediction is the answer: the readout token, like CLS).

- Decodability: `harvest` `resid_post` at each group for N problems, `train_probes` (softmax
  regression, 10 classes, held-out accuracy, one 75/25 split).
- Causality: `activation_patching` at `resid_post`, one `(layer, group)` entry at a time, clean
  values into the corrupted run (denoising). Corrupted = the same problem with another units digit
  of b, chosen so the carry (and so the tens digit) is unchanged; metric = logit(clean units digit)
  - logit(corrupted units digit) at the last position, averaged over B pairs, normalised to
  0 (corrupted) .. 1 (clean).
"""

from __future__ import annotations

import random

import common
import numpy as np

TITLE = "Decodability vs causality (arXiv 2510.09794): the answer's units digit in 2-digit addition"

TEMPLATE = (
    "<|im_start|>user\nWhat is {a} + {b}? Answer with just the number.<|im_end|>\n"
    "<|im_start|>assistant\n{a} + {b} = {t}"
)
N_PROBE, N_PAIRS = 480, 24  # probe problems, patching pairs (full scale)
SITE = "resid_post"
# thresholds that name a layer "decodable but inert" / "causal but weakly decodable" (stated in the report)
DECODABLE, INERT, CAUSAL, WEAK = 0.8, 0.1, 0.5, 0.5


def problems(n: int, seed: int) -> list[tuple[int, int]]:
    """`n` distinct pairs (a, b) of 2-digit operands in [10, 89] with a + b <= 99, deterministic in seed."""
    rng, seen = random.Random(seed), set()
    while len(seen) < n:
        a, b = rng.randint(10, 89), rng.randint(10, 89)
        if a + b <= 99:
            seen.add((a, b))
    return sorted(seen, key=lambda p: rng.random())


def corrupt_b(a: int, b: int, rng: random.Random) -> int:
    """Another b with a different units digit and the same carry into the tens (so the same tens
    digit of a + b and a different units digit); None when there is none (e.g. 1 + 9)."""
    carry = (a % 10 + b % 10) >= 10
    options = [
        b - b % 10 + u
        for u in range(10)
        if u != b % 10 and ((a % 10 + u) >= 10) == carry and 10 <= b - b % 10 + u <= 89
    ]
    return rng.choice(options) if options else None


def encode(tok, pairs: list[tuple[int, int]]) -> np.ndarray:
    """Token ids `[N, T]` of the teacher-forced sequences (all the same length: digits are single tokens)."""
    rows = [tok(TEMPLATE.format(a=a, b=b, t=(a + b) // 10), add_special_tokens=False)["input_ids"] for a, b in pairs]
    if len({len(r) for r in rows}) != 1:
        raise ValueError("sequences differ in length; the template must tokenize every problem alike")
    return np.asarray(rows, np.int32)


def group_positions(tok, clean: np.ndarray, corrupt: np.ndarray) -> dict[str, int]:
    """Positions of the groups, from where clean and corrupted rows differ (b's units digit twice)
    and the echoed ' =' token; identical for every row by construction (checked)."""
    diff = [tuple(np.nonzero(c != x)[0]) for c, x in zip(clean, corrupt, strict=True)]
    if len(set(diff)) != 1 or len(diff[0]) != 2:
        raise ValueError(f"clean / corrupted rows should differ at the same two positions, got {set(diff)}")
    eq = tok(" =", add_special_tokens=False)["input_ids"]
    eq_pos = [i for i in range(clean.shape[1]) if clean[0, i] == eq[-1]]
    p_prompt, p_echo = diff[0]
    return {
        "b units (prompt)": int(p_prompt),
        "b units (echo)": int(p_echo),
        "=": int(eq_pos[-1]),
        "last": int(clean.shape[1] - 1),
    }


def digit_ids(tok) -> list[int]:
    """Token id of each digit 0..9 (single tokens in SmolLM2's vocabulary)."""
    return [tok(str(d), add_special_tokens=False)["input_ids"][-1] for d in range(10)]


def patch_pairs(tok, n: int, seed: int):
    """Clean and corrupted token arrays `[n, T]` and per-row answers `[n, 2]` (clean, corrupted units digit ids)."""
    rng = random.Random(seed + 1)
    clean_p, corrupt_p = [], []
    for a, b in problems(4 * n, seed + 1000):
        c = corrupt_b(a, b, rng)
        if c is not None and len(clean_p) < n:
            clean_p.append((a, b))
            corrupt_p.append((a, c))
    dig = digit_ids(tok)
    answers = np.asarray(
        [[dig[(a + b) % 10], dig[(a + c) % 10]] for (a, b), (_, c) in zip(clean_p, corrupt_p, strict=True)], np.int32
    )
    return encode(tok, clean_p), encode(tok, corrupt_p), answers, clean_p


def units_accuracy(model, clean: np.ndarray, pairs: list[tuple[int, int]], dig: list[int]) -> float:
    """How often the model's top digit at the last position is the answer's units digit (clean rows)."""
    import jaxsteer

    logits, _ = jaxsteer.forward(model, clean)
    pred = np.asarray(logits[:, -1])[:, dig].argmax(-1)
    return float(np.mean(pred == np.asarray([(a + b) % 10 for a, b in pairs])))


def divergence(groups: list[str], probe: np.ndarray, patch: np.ndarray) -> dict:
    """Per group: the layers where the two measures disagree (thresholds DECODABLE, INERT, CAUSAL,
    WEAK), where each peaks, the first decodable layer and the last causal one."""
    out = {}
    for i, g in enumerate(groups):
        pr, pa = probe[i], patch[i]
        decodable = [l for l in range(len(pr)) if pr[l] >= DECODABLE]
        causal = [l for l in range(len(pa)) if pa[l] >= CAUSAL]
        out[g] = {
            "decodable_but_inert": [l for l in range(len(pr)) if pr[l] >= DECODABLE and pa[l] <= INERT],
            "causal_but_weakly_decodable": [l for l in range(len(pr)) if pa[l] >= CAUSAL and pr[l] <= WEAK],
            "probe_peak_layer": int(np.argmax(pr)),
            "probe_peak": float(np.max(pr)),
            "patch_peak_layer": int(np.nanargmax(pa)),
            "patch_peak": float(np.nanmax(pa)),
            "first_decodable_layer": decodable[0] if decodable else None,
            "first_causal_layer": causal[0] if causal else None,
            "last_causal_layer": causal[-1] if causal else None,
            "pearson": float(np.corrcoef(pr, pa)[0, 1]) if np.std(pr) > 0 and np.std(pa) > 0 else None,
        }
    return out


def curves_figure(ctx: common.Context, rep, control: np.ndarray, title: str) -> str:
    """One panel per token group on a shared y axis: probe accuracy and patching effect over layers
    (the divergence), with the control probe (b's own digit) dotted and the probe's chance level."""
    import matplotlib.pyplot as plt

    G = len(rep.groups)
    fig, axes = plt.subplots(1, G, figsize=(4.2 * G, 3.4), sharey=True)
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(rep.layers, rep.probe[i], marker="o", ms=3, label="probe: answer's units digit")
        ax.plot(rep.layers, rep.patching[i], marker="s", ms=3, label="patching effect")
        ax.plot(rep.layers, control[i], ls=":", color="grey", label="probe: b's units digit (control)")
        ax.axhline(rep.chance, color="grey", ls="--", lw=0.8, label="probe chance")
        ax.set_title(rep.groups[i], fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(-0.2, 1.15)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="center left")
    fig.suptitle(title, fontsize=10)
    return ctx.save_fig(fig, "decodability_curves")


def run(ctx: common.Context) -> dict:
    """Probes on `N_PROBE` problems, patching on `N_PAIRS` clean / corrupted pairs, one figure."""
    import time

    from jaxsteer import analysis as A

    model, tok = ctx.model()
    n_probe, n_pairs = ctx.scale(N_PROBE, 48), ctx.scale(N_PAIRS, 4)
    clean, corrupt, answers, clean_p = patch_pairs(tok, n_pairs, ctx.seed)
    groups = group_positions(tok, clean, corrupt)
    probe_p = problems(n_probe, ctx.seed)
    labels = np.asarray([(a + b) % 10 for a, b in probe_p], np.int32)
    t0 = time.perf_counter()
    ctx.log(f"decodability: harvesting {SITE} for {n_probe} problems at groups {groups}")
    acts = A.harvest(model, encode(tok, probe_p), site=SITE, groups=groups)
    probes = A.train_probes(acts.values, labels, groups=acts.groups, seed=ctx.seed)
    control = A.train_probes(
        acts.values, np.asarray([b % 10 for _, b in probe_p], np.int32), groups=acts.groups, seed=ctx.seed
    )  # what the operand token holds: b's own units digit
    t1 = time.perf_counter()
    ctx.log(f"decodability: probes done in {t1 - t0:.0f} s; patching {n_pairs} pairs")
    patch = A.activation_patching(
        model, clean, corrupt, site=SITE, answers=answers, tokenizer=tok, positions={g: [p] for g, p in groups.items()}
    )
    t2 = time.perf_counter()
    rep = A.decodability_vs_causality(probes, patch)
    figure = curves_figure(
        ctx,
        rep,
        np.atleast_2d(control.scores),
        f"units digit of a + b: probe accuracy (N={n_probe}) vs patching effect ({n_pairs} pairs), {SITE}",
    )
    return {
        "n_probe": n_probe,
        "n_pairs": n_pairs,
        "site": SITE,
        "groups": groups,
        "layers": list(rep.layers),
        "probe": rep.probe.tolist(),
        "probe_train": np.atleast_2d(probes.train_scores).tolist(),
        "patching": rep.patching.tolist(),
        "chance": float(rep.chance),
        "control_probe_b_units": np.atleast_2d(control.scores).tolist(),
        "clean_metric": float(patch.clean_metric),
        "corrupt_metric": float(patch.corrupt_metric),
        "units_accuracy_clean_pairs": units_accuracy(model, clean, clean_p, digit_ids(tok)),
        "divergence": divergence(list(rep.groups), rep.probe, rep.patching),
        "thresholds": {"decodable": DECODABLE, "inert": INERT, "causal": CAUSAL, "weak": WEAK},
        "probe_s": t1 - t0,
        "patching_s": t2 - t1,
        "figure": figure,
        "example": tok.decode(clean[0]),
    }


def _layers(ls: list[int]) -> str:
    """'3-7, 12' for a sorted list of layers ('none' when empty)."""
    if not ls:
        return "none"
    runs, start = [], ls[0]
    for prev, cur in zip(ls, ls[1:] + [None], strict=True):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)


def crossing(values: list[float], level: float, upward: bool) -> int | None:
    """The first layer from which `values` stay above (upward) or below `level`; None if never."""
    for l in range(len(values)):
        rest = values[l:]
        if all((v >= level) if upward else (v < level) for v in rest):
            return l
    return None


def verdicts(result: dict) -> list[str]:
    """Sentences comparing each group's curves with the paper's pattern (object tokens: causal in the
    middle while weakly decodable, decodable late while inert; readout token: decodable before causal)."""
    div, groups = result["divergence"], list(result["groups"])
    out = []
    for g in ("b units (prompt)", "b units (echo)"):
        d = div[g]
        i = groups.index(g)
        mid, late = bool(d["causal_but_weakly_decodable"]), bool(d["decodable_but_inert"])
        text = (
            f"- `{g}` (object token): probe at most {d['probe_peak']:.2f} (layer {d['probe_peak_layer']}), patching "
            f"at most {d['patch_peak']:.2f}; causal but weakly decodable at layers "
            f"{_layers(d['causal_but_weakly_decodable'])}, "
            f"decodable but inert at layers {_layers(d['decodable_but_inert'])}. "
        )
        if d["patch_peak"] < 2 * INERT:
            text += "Inert at every layer: the model does not read this copy of the operand. "
        text += (
            "Both halves of the paper's object-token pattern appear."
            if mid and late
            else "Only the late half of the paper's pattern (decodable but inert) appears."
            if late
            else "Only the early half of the paper's pattern (causal while weakly decodable) appears."
            if mid
            else "Neither half of the paper's pattern appears."
        )
        ctrl = result.get("control_probe_b_units")
        if ctrl:
            inert = [
                l
                for l, (c, p) in enumerate(zip(ctrl[i], result["patching"][i], strict=True))
                if c >= DECODABLE and p <= INERT
            ]
            text += (
                f" Control: b's own units digit (what this token carries) is decodable here at "
                f"{min(ctrl[i]):.2f}-{max(ctrl[i]):.2f}; taking it as the concept, the token is decodable but "
                f"inert at layers {_layers(inert)}."
            )
        out.append(text)
    d = div["last"]
    fd, fc = d["first_decodable_layer"], d["first_causal_layer"]
    rel = (
        "before it becomes causal, as the paper's CLS token"
        if fd is not None and fc is not None and fd < fc
        else "only when or after it becomes causal, unlike the paper's CLS token (decodable in the middle, causal late)"
    )
    out.append(
        f"- `last` (readout token): first decodable (probe >= {DECODABLE}) at layer {fd}, first causal "
        f"(patching >= {CAUSAL}) at layer {fc}: decodable {rel}."
    )
    echo, last = result["patching"][groups.index("b units (echo)")], result["patching"][groups.index("last")]
    off, on = crossing(echo, CAUSAL, upward=False), crossing(last, CAUSAL, upward=True)
    if off is not None and on is not None:
        out.append(
            f"- Hand-off: the echoed operand stops being causal at layer {off} and the last position becomes "
            f"causal at layer {on}: the information moves from one to the other there."
        )
    return out


def why(result: dict) -> str:
    """Our reading of where and why this differs from the paper, conditioned on the numbers."""
    div = result["divergence"]
    obj = [div[g] for g in ("b units (prompt)", "b units (echo)")]
    never_computed = all(d["probe_peak"] < WEAK for d in obj)
    ctrl = result.get("control_probe_b_units")
    groups = list(result["groups"])
    operand_readable = bool(ctrl) and min(ctrl[groups.index("b units (echo)")]) >= DECODABLE
    parts = []
    if never_computed:
        parts.append(
            "The answer's digit is never linearly decodable at the operand tokens (their probes stay below "
            f"{WEAK})"
            + (", while the operand's own digit is at every layer" if operand_readable else "")
            + ": the sum is not computed there but at the readout position after attention moves the "
            "operand over. In a causal decoder nothing requires the sum at the operand token; in the "
            "paper's ViT, bidirectional attention lets object tokens accumulate the global count in late "
            "layers, which (we think) is what makes them decodable while inert. So the late half of the "
            "paper's object-token pattern has no analogue for the answer's digit; the early half (causal "
            "while weakly decodable) does."
        )
    if ctrl:
        i = groups.index("b units (echo)")
        inert = [
            l
            for l, (c, p) in enumerate(zip(ctrl[i], result["patching"][i], strict=True))
            if c >= DECODABLE and p <= INERT
        ]
        if inert:
            parts.append(
                f"For the operand's own digit (the control) the late half does appear: it stays decodable at "
                f"the echoed operand at layers {_layers(inert)}, after attention has read it and the token "
                "stops mattering."
            )
    d = div["last"]
    if (
        d["first_decodable_layer"] is not None
        and d["first_causal_layer"] is not None
        and d["first_decodable_layer"] >= d["first_causal_layer"]
    ):
        parts.append(
            "At the readout token the order is reversed relative to CLS: once the operand tokens hand the "
            "information over, nothing else carries it, so the last position is causal as soon as it holds "
            "it, and a linear probe reads the digit only a few layers later, once it is written in a "
            "readable direction."
        )
    parts.append(
        f"Probes trained on {result['n_probe'] - round(0.25 * result['n_probe'])} problems and patching on "
        f"{result['n_pairs']} pairs are small samples; the probe curves carry a few points of split noise."
    )
    return " ".join(parts)


def section(result: dict) -> str:
    """Markdown: setup, the figure, the per-layer table and the comparison with the paper."""
    groups, layers = list(result["groups"]), result["layers"]
    th = result["thresholds"]
    lines = [
        f"Concept: the units digit of a + b (10 classes; held-out probe chance {result['chance']:.2f}). "
        f"Sequence (teacher-forced tens digit, the next token is the units digit): `{result['example']!r}`. "
        f"Probes: {result['n_probe']} problems, `{result['site']}`, softmax regression, 25% held out. Patching: "
        f"{result['n_pairs']} clean / corrupted pairs (b's units digit changed, same carry), clean values patched into "
        f"the corrupted run one (layer, group) at a time; metric logit(clean digit) - logit(corrupted digit), "
        f"clean {result['clean_metric']:.2f}, corrupted {result['corrupt_metric']:.2f}; "
        f"the model's top digit is the right units digit on {100 * result['units_accuracy_clean_pairs']:.0f}% "
        "of the clean rows. Probes took "
        f"{result['probe_s']:.0f} s, patching {result['patching_s']:.0f} s.",
        "",
        f"![decodability vs causality]({result['figure']})",
        "",
        "| layer | " + " | ".join(f"{g} probe | {g} patch" for g in groups) + " |",
        "|---:|" + "---:|---:|" * len(groups),
    ]
    for j, l in enumerate(layers):
        cells = " | ".join(f"{result['probe'][i][j]:.2f} | {result['patching'][i][j]:.2f}" for i in range(len(groups)))
        lines.append(f"| {l} | {cells} |")
    lines += [
        "",
        f"Thresholds: decodable = probe >= {th['decodable']}, inert = patching <= {th['inert']}, causal = "
        f"patching >= {th['causal']}, weakly decodable = probe <= {th['weak']}.",
        "",
    ]
    lines += verdicts(result)
    lines += ["", "Where and why this differs from the paper: " + why(result)]
    return "\n".join(lines)
