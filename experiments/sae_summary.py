"""Table and EV-vs-k plot of the small-scale SAE reproduction (runs of experiments/sae_*.yaml).

    python experiments/sae_summary.py [--runs runs] [--out docs/figures/sae_ev_by_k.png]

Reads each run's eval.json (written by `jaxsteer sae train` / `jaxsteer sae eval`) and prints a
Markdown table. The plot: explained variance against k on the held-out windows of the general
text, for the HierarchicalTopK SAE (one model, every k <= 32) and for the TopK SAE trained at
k = 32 but run at each smaller k (`encode(..., k=j)`), which is what HierarchicalTopK fixes.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

RUNS = ("sae_topk", "sae_htopk", "sae_topk_small", "sae_kron", "sae_residual")


def table(root: str) -> str:
    from jaxsteer.sae import encoder_flops
    from jaxsteer.train.sae.run import load_sae

    head = (
        "| run | kind | d_sae | k | encoder MFLOP/token | EV | L0 | dead | CE clean | CE with SAE | CE zero-abl. "
        "| loss recovered |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    )
    rows = [head]
    for name in RUNS:
        path = os.path.join(root, name, "eval.json")
        if not os.path.exists(path):
            continue
        r = json.load(open(path))
        s = load_sae(os.path.join(root, name))
        label = name
        if "base_only" in r:
            b = r["base_only"]
            rows.append(
                f"| {name} (base alone) | topk | - | - | - | {b['explained_variance']:.3f} | {b['l0']:.1f} | "
                f"{b['dead_fraction']:.3f} | {b['ce_clean']:.3f} | {b['ce_sae']:.3f} | {b['ce_zero']:.3f} | "
                f"{b['loss_recovered']:.3f} |"
            )
            label = f"{name} (base + residual)"
        rows.append(
            f"| {label} | {r['kind']} | {r['d_sae']} | {r['k']} | {encoder_flops(s.config) / 1e6:.2f} | "
            f"{r['explained_variance']:.3f} | {r['l0']:.1f} | {r['dead_fraction']:.3f} | {r['ce_clean']:.3f} | "
            f"{r['ce_sae']:.3f} | {r['ce_zero']:.3f} | {r['loss_recovered']:.3f} |"
        )
    return "\n".join(rows)


def topk_curve(root: str, k_max: int) -> list[float]:
    """EV of the TopK run's SAE at each k <= k_max on its held-out windows."""
    from jaxsteer.sae.splice import site_activations
    from jaxsteer.train.sae.config import load_run_config
    from jaxsteer.train.sae.run import load_model, load_sae, split_windows, token_windows

    run = os.path.join(root, "sae_topk")
    cfg = load_run_config(os.path.join(run, "config.yaml"))
    model, tok = load_model(cfg)
    s = load_sae(run)
    windows = split_windows(cfg, token_windows(cfg, tok))[1][: cfg.eval.contexts]
    acts = jnp.concatenate(
        [
            site_activations(model, windows[i : i + 8], cfg.site, (cfg.layer,))[0][:, 1:].reshape(-1, s.config.d_in)
            for i in range(0, len(windows) - 7, 8)
        ]
    )
    var = float(jnp.sum((acts - acts.mean(0)) ** 2))
    rec = jax.jit(lambda x, k: jax.numpy.sum((x - jaxsteer_reconstruct(s, x, k)) ** 2), static_argnums=1)
    return [1 - float(rec(acts, j)) / var for j in range(1, k_max + 1)]


def jaxsteer_reconstruct(s, x, k):
    from jaxsteer.sae import decode, encode

    return decode(s, encode(s, x, k=k))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--out", default="docs/figures/sae_ev_by_k.png")
    args = ap.parse_args()
    print(table(args.runs))
    h = os.path.join(args.runs, "sae_htopk", "eval.json")
    if os.path.exists(h) and os.path.exists(os.path.join(args.runs, "sae_topk", "eval.json")):
        from jaxsteer.sae import plot_ev_by_k

        ht = json.load(open(h))["ev_by_k"]
        tk = topk_curve(args.runs, len(ht))
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        plot_ev_by_k(
            {"HierarchicalTopK (one SAE, run at k)": ht, "TopK trained at k=32, run at k": tk},
            args.out,
            title="SmolLM2-135M-Instruct, layer 15 resid_post, d_sae=4608",
        )
        print(
            "EV at k = 1, 4, 8, 16, 32:",
            {name: [round(c[j - 1], 3) for j in (1, 4, 8, 16, 32)] for name, c in (("htopk", ht), ("topk", tk))},
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
