"""Which SAE features differ between correct and incorrect rollouts of a trained steering run, how
they flow across layers, and whether ablating them moves held-out accuracy (arXiv 2509.06608's SAE
study; issue 18 item 7, issue 23 item 5).

    jaxsteer train experiments/smollm2_arithmetic_steering.yaml output_dir=runs/steer_demo
    python experiments/sae_rollout_features.py --run runs/steer_demo              # the study in docs/sae.md
    python experiments/sae_rollout_features.py --run runs/steer_demo --quick      # a smoke run (minutes)

1. SAEs: a TopK SAE on `resid_post` of each of `--layers` (kept in `--sae-dir/l{L}`, SAELens
   format; trained there with `jaxsteer.train.sae.fit` when missing). Training text: the general
   text that ships with Python plus arithmetic transcripts in the run's own prompt format (train
   split), harvested once from the base model for all layers in one pass.
2. Rollouts: `--samples` completions at temperature 1 of the steered policy for each of
   `--problems` test-split problems that are not in the run's held-out evaluation set, scored with
   the run's reward.
3. Features: per rollout, each latent's mean over the completion tokens (steered forward);
   ranked per layer by Cohen's d between correct and incorrect rollouts, against a permutation
   null (the largest |d| over all latents when the labels are shuffled).
4. Flow: `jaxsteer.sae.flow.flow_graph` from the first layer's top features (both signs) through
   the next layers, by activation correlation on the rollouts' completion tokens.
5. Intervention: at `--intervene-layer`, `Splice(feature_scale=0, keep_error=True)` ablates the
   top `--n-ablate` features of each sign; held-out greedy accuracy (the run's eval set, or
   `--eval-data`; the rollout problems exclude it) against the plain steered policy, against
   `--random-controls` draws of as many random live features, and against `--matched-controls`
   draws matched feature by feature in mass (mean activation x decoder norm: what ablating removes
   from the residual), with an exact McNemar test on the same problems.

Writes `--json`, `--figures`/sae_rollout_flow.png and sae_rollout_ablation.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxsteer import sae
from jaxsteer.sae.flow import flow_graph
from jaxsteer.sae.splice import site_activations

SITE = "resid_post"


# ---------------------------------------------------------------- 1. SAEs


def corpus_windows(run, n_windows: int, context: int) -> np.ndarray:
    """`[n, context]` windows: half general text, half arithmetic transcripts in the run's prompt
    format (`{prompt}{a op b = answer}<|im_end|>`, train split)."""
    from jaxsteer.train.build import load_examples
    from jaxsteer.train.sae.activations import pack_tokens
    from jaxsteer.train.sae.corpora import general_text

    tok = run.tokenizer
    general = pack_tokens(general_text(), tok, context, tok.bos_token_id)[: n_windows - n_windows // 2]
    ids: list[int] = []
    for ex in load_examples(run.config.data.train):
        expr = re.search(r"What is (.+?)\?", ex.prompt)
        answer = f"{expr.group(1)} = {ex.answer}" if expr else ex.answer
        ids += run.encode(ex) + tok(answer + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
        if len(ids) >= (n_windows // 2) * context:
            break
    n_arith = min(n_windows // 2, len(ids) // context)
    arith = np.asarray(ids[: n_arith * context], np.int32).reshape(n_arith, context)
    rows = np.concatenate([general, arith])
    return rows[np.random.default_rng(0).permutation(len(rows))]


def harvest_layers(model, windows: np.ndarray, layers: tuple[int, ...], batch: int = 8) -> np.ndarray:
    """`[len(layers), N, d]` base-model activations at every layer in one pass (first position skipped)."""
    run_layers = jax.jit(lambda m, t: site_activations(m, t, SITE, layers)[:, :, 1:])
    out = [
        np.asarray(run_layers(model, jnp.asarray(windows[i : i + batch])), np.float32).reshape(
            len(layers), -1, model.config.d_model
        )
        for i in tqdm(range(0, len(windows), batch), desc="harvest", leave=False)
    ]
    return np.concatenate(out, axis=1)


def explained_variance(s, x) -> float:
    x = jnp.asarray(x)
    return float(1 - jnp.sum((x - sae.reconstruct(s, x)) ** 2) / jnp.sum((x - x.mean(0)) ** 2))


def get_saes(run, args) -> tuple[list, list[dict]]:
    """Load the SAE of each layer from `--sae-dir`, training the missing ones."""
    from jaxsteer.train.sae.activations import CachedActivations
    from jaxsteer.train.sae.step import StepConfig, fit

    paths = [os.path.join(args.sae_dir, f"l{layer}") for layer in args.layers]
    missing = [layer for layer, p in zip(args.layers, paths, strict=True) if not os.path.isdir(p)]
    info = []
    if missing:
        windows = corpus_windows(run, args.corpus_windows, args.context)
        acts = harvest_layers(run.base_model, windows, tuple(missing))
        n_held = len(acts[0]) // 20
        step = StepConfig(
            lr=1e-3,
            total_steps=args.sae_steps,
            warmup_steps=max(1, args.sae_steps // 25),
            decay_start=0.8,
            k_aux=run.base_model.config.d_model // 2,
            dead_batches=max(1, 100_000 // args.sae_batch),
        )
        for j, layer in enumerate(tqdm(missing, desc="train SAEs")):
            cfg = sae.SAEConfig(kind="topk", d_in=acts.shape[-1], d_sae=args.d_sae, k=args.k, site=SITE, layer=layer)
            s, _ = fit(cfg, CachedActivations(acts[j, n_held:], args.sae_batch, seed=layer), step)
            sae.save_saelens(s, os.path.join(args.sae_dir, f"l{layer}"), model_name=run.config.model.spec)
            info.append(
                {"layer": layer, "held_out_ev": explained_variance(s, acts[j, :n_held]), "steps": args.sae_steps}
            )
    return [sae.load_saelens(p) for p in paths], info


# ---------------------------------------------------------------- 2.-3. rollouts and features


def held_out_spec(run, args) -> tuple[str, int]:
    """(dataset spec, n) of the ablation's held-out problems: `--eval-data` / `--eval-n`, else the run's eval set."""
    return args.eval_data or run.config.data.eval, args.eval_n or run.config.eval.n


def study_problems(run, n: int, args) -> list:
    """`n` test-split problems of the run's task that are not among the ablation's held-out problems."""
    from jaxsteer.train.build import load_examples
    from jaxsteer.train.data import arithmetic_problems

    spec, n_held = held_out_spec(run, args)
    held = {e.prompt for e in load_examples(spec)[:n_held]}
    pool = arithmetic_problems(n + len(held), seed=2, digits=2, split="test")
    return [p for p in pool if p.prompt not in held][:n]


def sample_rollouts(run, problems, samples: int, seed: int = 0):
    """Temperature-1 completions of the steered policy and whether each is correct."""
    from jaxsteer.train.rewards import get_reward_fn

    out = run.generate([p.prompt for p in problems], samples_per_prompt=samples, temperature=1.0, seed=seed)
    reward = get_reward_fn(run.config.data.reward)
    rows = [p for p in problems for _ in range(samples)]
    correct = np.array([reward(p.prompt, t, p.answer) > 0 for p, t in zip(rows, out.texts, strict=True)])
    return out, correct


def rollout_codes(run, saes, out, batch: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per SAE: the mean latents over each rollout's completion tokens `[N, d_sae]` (returned
    stacked `[S, N, d_sae]`) and the activations of every completion token `[M, d]` (for the flow)."""
    toks = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
    P = out.prompt_tokens.shape[1]
    gen_mask = np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
    mask = np.concatenate([out.prompt_mask, gen_mask], axis=1).astype(np.int32)
    comp = np.zeros(mask.shape, np.float32)
    comp[:, P:] = gen_mask
    layers = jnp.asarray([s.config.layer for s in saes])
    import jaxsteer

    @jax.jit
    def acts(model, ivs, t, m):
        _, trace = jaxsteer.forward(model, t, attention_mask=m, interventions=ivs, record=(SITE,), return_logits=False)
        return trace[SITE][layers]

    means, tokens = [[] for _ in saes], [[] for _ in saes]
    for i in tqdm(range(0, len(toks), batch), desc="rollout features", leave=False):
        a = acts(
            run.model, tuple(run.interventions), jnp.asarray(toks[i : i + batch]), jnp.asarray(mask[i : i + batch])
        )
        c = comp[i : i + batch]
        for j, s in enumerate(saes):
            z = np.asarray(sae.encode(s, a[j]), np.float32)
            means[j].append((z * c[..., None]).sum(1) / np.maximum(c.sum(1, keepdims=True), 1))
            tokens[j].append(np.asarray(a[j], np.float32)[c > 0])
    return np.stack([np.concatenate(m) for m in means]), [np.concatenate(t) for t in tokens]


def cohens_d(f: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """Cohen's d of every column of `f [N, F]` between correct and incorrect rows (0 where both are constant)."""
    a, b = f[correct], f[~correct]
    pooled = np.sqrt((a.var(0, ddof=1) * (len(a) - 1) + b.var(0, ddof=1) * (len(b) - 1)) / max(len(a) + len(b) - 2, 1))
    return np.where(pooled > 0, (a.mean(0) - b.mean(0)) / np.maximum(pooled, 1e-12), 0.0)


def permutation_max_d(f: np.ndarray, correct: np.ndarray, groups: np.ndarray | None = None, n: int = 200) -> float:
    """95th percentile over label shuffles (within `groups` when given) of max |d| over all
    latents: what chance reaches."""
    rng = np.random.default_rng(0)

    def shuffle():
        if groups is None:
            return rng.permutation(correct)
        out = correct.copy()
        for g in np.unique(groups):
            idx = np.flatnonzero(groups == g)
            out[idx] = correct[rng.permutation(idx)]
        return out

    return float(np.quantile([np.abs(cohens_d(f, shuffle())).max() for _ in range(n)], 0.95))


def within_problem(f: np.ndarray, correct: np.ndarray, problem: np.ndarray):
    """Rows of problems with both outcomes, each centred on its problem's mean: what differs
    between correct and incorrect answers to the same problem (not which problems are easy)."""
    mixed = np.array([0 < correct[problem == p].mean() < 1 for p in problem])
    fc = f[mixed].copy()
    for p in np.unique(problem[mixed]):
        rows = problem[mixed] == p
        fc[rows] -= fc[rows].mean(0)
    return fc, correct[mixed], problem[mixed]


def rank_features(means: np.ndarray, correct: np.ndarray, problem: np.ndarray, saes, top: int) -> list[dict]:
    """Per layer: d of every latent (pooled and within problem), the top `top` of each sign by
    pooled d, the permutation nulls, the live latents (firing on >= 1% of rollouts)."""
    out = []
    for j, s in enumerate(saes):
        d = cohens_d(means[j], correct)
        fc, cc, pc = within_problem(means[j], correct, problem)
        order = np.argsort(-d)
        out.append(
            {
                "layer": s.config.layer,
                "d": d,
                "d_within": cohens_d(fc, cc),
                "n_mixed_rollouts": int(len(cc)),
                "more_in_correct": [int(i) for i in order[:top]],
                "more_in_incorrect": [int(i) for i in order[::-1][:top]],
                "null_max_abs_d_95": permutation_max_d(means[j], correct),
                "null_within_max_abs_d_95": permutation_max_d(fc, cc, pc),
                "live": np.flatnonzero((means[j] > 0).mean(0) >= 0.01),
                # what ablating a latent removes from the residual: mean activation x decoder row norm
                "mass": means[j].mean(0) * np.linalg.norm(np.asarray(s.params["W_dec"], np.float32), axis=1),
            }
        )
    return out


# ---------------------------------------------------------------- 4. flow


def follow(saes, token_acts, ranked, top_start: int, args):
    """The flow graph from the first layer's top features of each sign, and how the signs carry over."""
    first = ranked[0]
    start = first["more_in_correct"][:top_start] + first["more_in_incorrect"][:top_start]
    g = flow_graph(saes, token_acts, features=start, top=args.flow_top, by="correlation")
    ds = {(lv, f): float(ranked[lv]["d"][f]) for lv, f in g.nodes}
    tops = [set(r["more_in_correct"]) | set(r["more_in_incorrect"]) for r in ranked]
    edges = [e for e in g.edges if e == max((x for x in g.edges if x["src"] == e["src"]), key=lambda x: x["weight"])]
    carried = [
        {
            "src": e["src"],
            "dst": e["dst"],
            "correlation": e["correlation"],
            "d_src": ds[e["src"]],
            "d_dst": ds[e["dst"]],
            "dst_in_top": e["dst"][1] in tops[e["dst"][0]],
        }
        for e in edges
    ]
    stats = {
        "best_successors": len(carried),
        "same_sign": int(sum(np.sign(c["d_src"]) == np.sign(c["d_dst"]) for c in carried)),
        "successor_in_next_top": int(sum(c["dst_in_top"] for c in carried)),
        "chance_in_next_top": float(np.mean([len(tops[lv]) / saes[lv].config.d_sae for lv in range(1, len(saes))])),
        "mean_correlation": float(np.mean([c["correlation"] for c in carried])) if carried else 0.0,
    }
    return g, ds, carried, stats


def draw_flow(g, ds, path: str, title: str) -> None:
    """The flow graph, nodes labelled with their Cohen's d and coloured by its sign."""
    labels = {n: f"{n[1]}  d={ds[n]:+.2f}" for n in g.nodes}
    colors = {n: ("#2a9d4b" if ds[n] > 0 else "#c0392b") for n in g.nodes}
    g.plot(path, title=title, labels=labels, node_colors=colors)


# ---------------------------------------------------------------- 5. intervention


def mcnemar_p(base: np.ndarray, other: np.ndarray) -> float:
    """Exact two-sided McNemar p-value for paired 0/1 outcomes on the same problems."""
    b, c = int(np.sum(base & ~other)), int(np.sum(~base & other))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def held_out_correct(run, held, interventions) -> np.ndarray:
    """Per-problem greedy correctness of the policy plus `interventions` on the run's held-out set."""
    from jaxsteer.models.generate import SamplingConfig
    from jaxsteer.train.evaluate import sample_batch
    from jaxsteer.train.rewards import score_completions

    gen = sample_batch(
        run.model,
        tuple(run.interventions) + tuple(interventions),
        held.prompt_ids,
        jax.random.PRNGKey(0),
        SamplingConfig(held.settings["max_new_tokens"], greedy=True),
        tokenizer=run.tokenizer,
        bucket=held.settings["bucket"],
    )
    return score_completions(held.settings["reward_fn"], held.examples, held.prompt_ids, gen) > 0


def ablate_mask(s, features) -> jax.Array:
    """`[d_sae]` ones with zeros at `features` (`Splice.feature_scale`)."""
    return jnp.ones(s.config.d_sae).at[jnp.asarray(features)].set(0.0)


def matched_draw(mass: np.ndarray, features: list[int], pool: np.ndarray, rng, near: int = 5) -> list[int]:
    """For each of `features`, a distinct latent of `pool` drawn among the `near` closest to it in
    `mass` (what ablating removes from the residual): a random control of the same size."""
    free, out = list(pool), []
    for f in features:
        cand = sorted(free, key=lambda i: abs(mass[i] - mass[f]))[:near]
        pick = int(rng.choice(cand))
        out.append(pick)
        free.remove(pick)
    return out


def ablation_study(run, s, ranked_layer: dict, args) -> list[dict]:
    """Held-out greedy accuracy with the top / random features of one SAE ablated."""
    from jaxsteer.train.build import PromptEncoder, load_examples
    from jaxsteer.train.evaluate import HeldOut, wilson_interval
    from jaxsteer.train.rewards import get_reward_fn

    cfg = run.config
    spec, n_held = held_out_spec(run, args)
    examples = load_examples(spec)[:n_held]
    encode = PromptEncoder(run.tokenizer, cfg.data.prompt_template, cfg.data.system)
    held = HeldOut.from_config(cfg, examples, encode, run.tokenizer, get_reward_fn(cfg.data.reward))
    n = args.n_ablate
    rng = np.random.default_rng(0)
    live = np.setdiff1d(
        ranked_layer["live"], ranked_layer["more_in_correct"][:n] + ranked_layer["more_in_incorrect"][:n]
    )
    conditions = {
        "steered (no ablation)": None,
        f"ablate top {n} more-in-correct": ranked_layer["more_in_correct"][:n],
        f"ablate top {n} more-in-incorrect": ranked_layer["more_in_incorrect"][:n],
    }
    for r in range(args.random_controls):
        conditions[f"ablate {n} random live #{r + 1}"] = [int(i) for i in rng.choice(live, n, replace=False)]
    for side in ("more_in_correct", "more_in_incorrect"):
        for r in range(args.matched_controls):
            feats = matched_draw(ranked_layer["mass"], ranked_layer[side][:n], live, rng)
            conditions[f"ablate {n} mass-matched to {side.replace('_', '-')} #{r + 1}"] = feats
    rows, base = [], None
    for name, feats in tqdm(conditions.items(), desc=f"ablations at layer {s.config.layer}"):
        ivs = () if feats is None else (sae.Splice(s, feature_scale=ablate_mask(s, feats), keep_error=True),)
        ok = held_out_correct(run, held, ivs)
        base = ok if base is None else base
        k = int(ok.sum())
        rows.append(
            {
                "condition": name,
                "features": feats,
                "mass": float(np.sum(ranked_layer["mass"][feats])) if feats else 0.0,
                "acc": k / len(ok),
                "ci": list(wilson_interval(k, len(ok))),
                "n": len(ok),
                "mcnemar_p_vs_steered": mcnemar_p(base, ok),
                "flips": [int(np.sum(base & ~ok)), int(np.sum(~base & ok))],
            }
        )
    return rows


def draw_ablation(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.3))
    y = np.arange(len(rows))[::-1]
    acc = np.array([r["acc"] for r in rows]) * 100
    lo = acc - np.array([r["ci"][0] for r in rows]) * 100
    hi = np.array([r["ci"][1] for r in rows]) * 100 - acc
    shade = {"no ablation": "#555", "random": "#999", "mass-matched": "#c8c8c8"}  # controls in grey
    colors = [next((c for k, c in shade.items() if k in r["condition"]), "#2a6fb0") for r in rows]
    ax.barh(y, acc, xerr=[lo, hi], color=colors, capsize=3)
    ax.set_yticks(y, [r["condition"] for r in rows], fontsize=8)
    ax.set_xlabel(f"held-out greedy accuracy, % ({rows[0]['n']} problems, 95% Wilson CI)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# ---------------------------------------------------------------- main


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained steering run directory (jaxsteer train)")
    ap.add_argument("--layers", type=int, nargs="+", default=[13, 14, 15])
    ap.add_argument("--sae-dir", default="runs/sae_rollout_flow")
    ap.add_argument("--d-sae", type=int, default=1152)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--sae-steps", type=int, default=400)
    ap.add_argument("--sae-batch", type=int, default=1024)
    ap.add_argument("--corpus-windows", type=int, default=600)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--problems", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--top", type=int, default=10, help="features of each sign kept per layer")
    ap.add_argument("--flow-start", type=int, default=5, help="first-layer features of each sign to follow")
    ap.add_argument("--flow-top", type=int, default=1, help="successors kept per feature")
    ap.add_argument("--n-ablate", type=int, default=10)
    ap.add_argument("--intervene-layer", type=int, help="default: the middle of --layers")
    ap.add_argument("--random-controls", type=int, default=3)
    ap.add_argument(
        "--matched-controls",
        type=int,
        default=3,
        help="random sets per sign matched latent by latent in mass (mean activation x decoder norm)",
    )
    ap.add_argument("--eval-n", type=int, default=0, help="held-out problems (0: the run's eval.n)")
    ap.add_argument("--eval-data", help="the ablation's held-out dataset spec (default: the run's data.eval)")
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--json", default="runs/sae_rollout_flow.json")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny SAEs, few rollouts and problems")
    args = ap.parse_args(argv)
    if args.quick:
        args.sae_dir = args.sae_dir.rstrip("/") + "_quick"
        args.d_sae, args.sae_steps, args.sae_batch, args.corpus_windows = 256, 20, 256, 40
        args.problems, args.samples, args.eval_n, args.random_controls, args.n_ablate = 16, 4, 24, 1, 5
        args.matched_controls = 1
        if args.figures == ap.get_default("figures"):
            args.figures = os.path.join("runs", "sae_rollout_flow_quick")
        if args.json == ap.get_default("json"):
            args.json = "runs/sae_rollout_flow_quick.json"
    if args.intervene_layer is None:
        args.intervene_layer = args.layers[len(args.layers) // 2]
    if args.intervene_layer not in args.layers:
        ap.error(f"--intervene-layer {args.intervene_layer} is not one of --layers {args.layers}")
    return args


def main(argv=None) -> None:
    import jaxsteer

    args = parse_args(argv)
    run = jaxsteer.load_run(args.run)
    saes, sae_info = get_saes(run, args)
    problems = study_problems(run, args.problems, args)
    out, correct = sample_rollouts(run, problems, args.samples)
    print(f"{int(correct.sum())} correct / {len(correct)} rollouts of {len(problems)} problems")
    if correct.all() or not correct.any():
        raise SystemExit("need both correct and incorrect rollouts to compare; raise --problems / --samples")
    means, token_acts = rollout_codes(run, saes, out)
    problem = np.repeat(np.arange(len(problems)), args.samples)
    ranked = rank_features(means, correct, problem, saes, args.top)
    g, ds, carried, flow_stats = follow(saes, token_acts, ranked, args.flow_start, args)
    os.makedirs(args.figures, exist_ok=True)
    tag = f"{args.run.rstrip('/').split('/')[-1]}, {int(correct.sum())}/{len(correct)} rollouts correct"
    draw_flow(g, ds, os.path.join(args.figures, "sae_rollout_flow.png"), f"SAE features, correct vs incorrect\n{tag}")
    j = args.layers.index(args.intervene_layer)
    ablations = ablation_study(run, saes[j], ranked[j], args)
    draw_ablation(
        ablations,
        os.path.join(args.figures, "sae_rollout_ablation.png"),
        f"SAE feature ablation at layer {args.intervene_layer}\n({tag})",
    )
    report(args, run, sae_info, correct, ranked, out, means, flow_stats, carried, ablations)


def report(args, run, sae_info, correct, ranked, out, means, flow_stats, carried, ablations) -> None:
    texts = np.array(out.texts, dtype=object)
    layers = []
    for j, r in enumerate(ranked):
        d = r["d"]
        pick = [
            [
                {
                    "feature": i,
                    "d": float(d[i]),
                    "d_within_problem": float(r["d_within"][i]),
                    "example": str(texts[int(np.argmax(means[j][:, i]))])[:60],
                }
                for i in r[side]
            ]
            for side in ("more_in_correct", "more_in_incorrect")
        ]
        layers.append(
            {
                "layer": r["layer"],
                "max_abs_d": float(np.abs(d).max()),
                "null_max_abs_d_95": r["null_max_abs_d_95"],
                "n_beyond_null": int(np.sum(np.abs(d) > r["null_max_abs_d_95"])),
                "n_mixed_rollouts": r["n_mixed_rollouts"],
                "max_abs_d_within": float(np.abs(r["d_within"]).max()),
                "null_within_max_abs_d_95": r["null_within_max_abs_d_95"],
                "n_within_beyond_null": int(np.sum(np.abs(r["d_within"]) > r["null_within_max_abs_d_95"])),
                "live_features": len(r["live"]),
                "more_in_correct": pick[0],
                "more_in_incorrect": pick[1],
            }
        )
        lr = layers[-1]
        print(
            f"layer {r['layer']}: max |d| {lr['max_abs_d']:.2f} (permutation 95%: {r['null_max_abs_d_95']:.2f}, "
            f"{lr['n_beyond_null']} latents beyond); within problem ({lr['n_mixed_rollouts']} rollouts): "
            f"max |d| {lr['max_abs_d_within']:.2f} (null {lr['null_within_max_abs_d_95']:.2f}, "
            f"{lr['n_within_beyond_null']} beyond)"
        )
    print("flow:", json.dumps(flow_stats))
    for a in ablations:
        print(
            f"  {a['condition']:36s} {100 * a['acc']:5.1f}% [{100 * a['ci'][0]:.1f}, {100 * a['ci'][1]:.1f}]  "
            f"flips -{a['flips'][0]} +{a['flips'][1]}  McNemar p={a['mcnemar_p_vs_steered']:.3f}"
        )
    res = {
        "args": vars(args),
        "run_step": run.step,
        "saes": sae_info,
        "n_rollouts": int(len(correct)),
        "n_correct": int(correct.sum()),
        "layers": layers,
        "flow": {"stats": flow_stats, "best_successors": carried},
        "ablations": ablations,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    print(f"wrote {args.json} and {args.figures}/sae_rollout_flow.png, sae_rollout_ablation.png")


if __name__ == "__main__":
    main()
