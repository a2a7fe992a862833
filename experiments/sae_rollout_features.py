"""Which SAE features differ between correct and incorrect rollouts (arXiv 2509.06608's SAE study).

    python experiments/sae_rollout_features.py --sae runs/sae_topk [--steer vectors.npy] \
        [--problems 32] [--samples 4] [--top 15] [--out runs/sae_rollout_features.json]

Samples `--samples` completions for each of `--problems` held-out 2-digit arithmetic problems from
SmolLM2-135M-Instruct (steered by `--steer`, a `[L, d]` or `[d]` .npy of steering vectors, e.g. a
trained RL run's export; unsteered without it), scores them with the library's correctness
reward, re-runs each prompt + completion with the same steering and records the SAE's latents at
its layer. Per rollout, a feature's activation is its mean over the completion tokens. Reported
per feature: mean over correct and over incorrect rollouts, the difference, and Cohen's d; the
top features each way, with their top-activating completion contexts.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import jaxsteer
from jaxsteer.train.data import arithmetic_problems
from jaxsteer.train.rewards import correctness_reward
from jaxsteer.train.sae.run import load_sae


def rollouts(model, tok, problems, samples, steer, max_new_tokens):
    interventions = [steer] if steer is not None else []
    out = jaxsteer.generate(
        model,
        [p.prompt for p in problems],
        tokenizer=tok,
        max_new_tokens=max_new_tokens,
        samples_per_prompt=samples,
        seed=0,
        interventions=interventions,
    )
    refs = [p.answer for p in problems for _ in range(samples)]
    prompts = [p.prompt for p in problems for _ in range(samples)]
    correct = np.array([correctness_reward(p, t, r) > 0 for p, t, r in zip(prompts, out.texts, refs, strict=True)])
    return out, correct


def completion_features(model, sae, out, steer, batch=8):
    """Mean SAE latents over each rollout's completion tokens: `[N, d_sae]`."""
    toks = np.concatenate([out.prompt_tokens, out.tokens], axis=1)
    P = out.prompt_tokens.shape[1]
    mask = np.concatenate([out.prompt_mask, np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]], axis=1)
    comp = np.zeros_like(mask, dtype=np.float32)
    comp[:, P:] = mask[:, P:]
    interventions = [steer] if steer is not None else []

    @jax.jit
    def feats(t, m, c):
        _, trace = jaxsteer.forward(
            model, t, attention_mask=m, interventions=interventions, record=(sae.config.site,), return_logits=False
        )
        z = jaxsteer.sae.encode(sae, trace[sae.config.site][sae.config.layer])
        return jnp.sum(z * c[..., None], axis=1) / jnp.maximum(jnp.sum(c, axis=1, keepdims=True), 1)

    rows = [
        np.asarray(
            feats(
                jnp.asarray(toks[i : i + batch]),
                jnp.asarray(mask[i : i + batch].astype(np.int32)),
                jnp.asarray(comp[i : i + batch]),
            )
        )
        for i in range(0, len(toks), batch)
    ]
    return np.concatenate(rows)


def compare(f: np.ndarray, correct: np.ndarray, top: int) -> dict:
    a, b = f[correct], f[~correct]
    diff = a.mean(0) - b.mean(0)
    pooled = np.sqrt((a.var(0, ddof=1) * (len(a) - 1) + b.var(0, ddof=1) * (len(b) - 1)) / max(len(a) + len(b) - 2, 1))
    d = np.where(pooled > 0, diff / np.maximum(pooled, 1e-12), 0.0)
    order = np.argsort(-d)
    pick = lambda idx: [
        {
            "feature": int(i),
            "cohens_d": float(d[i]),
            "mean_correct": float(a[:, i].mean()),
            "mean_incorrect": float(b[:, i].mean()),
        }
        for i in idx
    ]
    return {"more_in_correct": pick(order[:top]), "more_in_incorrect": pick(order[::-1][:top])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", required=True, help="SAE run directory or SAELens directory")
    ap.add_argument("--steer", help=".npy steering vectors ([L, d] or [d]) added after each layer's MLP")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--out", default="runs/sae_rollout_features.json")
    args = ap.parse_args()
    model, tok = jaxsteer.load("smollm2-135m-instruct")
    sae = load_sae(args.sae)
    steer = jaxsteer.Steer(jnp.asarray(np.load(args.steer), jnp.float32)) if args.steer else None
    problems = arithmetic_problems(args.problems, seed=1, split="test")
    out, correct = rollouts(model, tok, problems, args.samples, steer, args.max_new_tokens)
    print(f"{int(correct.sum())} correct / {len(correct)} rollouts")
    if correct.all() or not correct.any():
        raise SystemExit("need both correct and incorrect rollouts to compare; raise --problems / --samples")
    f = completion_features(model, sae, out, steer)
    res = {"n_correct": int(correct.sum()), "n_rollouts": int(len(correct)), **compare(f, correct, args.top)}
    texts = np.array(out.texts, dtype=object)
    for side in ("more_in_correct", "more_in_incorrect"):
        for row in res[side]:
            best = np.argsort(-f[:, row["feature"]])[:3]
            row["top_completions"] = [str(texts[i])[:80] for i in best]
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)
    for side in ("more_in_correct", "more_in_incorrect"):
        print(side)
        for row in res[side][:8]:
            print(
                f"  #{row['feature']:>5} d={row['cohens_d']:+.2f} correct {row['mean_correct']:.3f} "
                f"incorrect {row['mean_incorrect']:.3f}  e.g. {row['top_completions'][0]!r}"
            )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
