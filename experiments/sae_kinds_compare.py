"""EV-vs-L0 of every trainable SAE kind at an equal training budget, on the same activations.

    python experiments/sae_kinds_compare.py                       # the short run in docs/sae.md
    python experiments/sae_kinds_compare.py --windows 880 --steps 2000 --batch 1024 --d-sae 4608 \
        --ce-windows 48 --out docs/figures/sae_ev_vs_l0_long.png  # a longer one (hours on 2 CPU cores)

SmolLM2-135M-Instruct, residual stream after layer 15; the training text is
`jaxsteer.train.sae.corpora.general_text` packed into 128-token windows (BOS skipped). The activations
of the first `--windows` windows are harvested once (cached in `--cache`), the last
`--eval-windows` of them are held out. Every kind trains with `jaxsteer.train.sae.fit` on the same batches in
the same order (Adam, `--lr`, `--steps` x `--batch`): TopK, HierarchicalTopK, BatchTopK,
Matryoshka BatchTopK (prefixes d/8, d/4, d/2, d), KronSAE (same d_sae, fewer encoder FLOPs) at
k = `--k`, and JumpReLU at each L0 penalty of `--l0-coefs` (thresholds starting at
`--jumprelu-init-threshold` x the RMS activation). Held-out explained variance and L0
per kind, plus the nested curves (HierarchicalTopK run at every budget j; Matryoshka cut to each
prefix; TopK run at smaller k), go to a table and an EV-vs-L0 plot; with `--ce-windows` also the
fraction of next-token loss recovered with the SAE spliced in.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax.numpy as jnp
import numpy as np


def harvest(args) -> np.ndarray:
    """`[windows * (context - 1), d]` layer activations of the first `--windows` windows."""
    from jaxsteer.sae.splice import site_activations

    if os.path.exists(args.cache):
        return np.load(args.cache, mmap_mode="r")
    model, windows = load(args)
    out = [
        np.asarray(site_activations(model, windows[i : i + 8], "resid_post", (args.layer,))[0][:, 1:], np.float32)
        for i in range(0, len(windows), 8)
    ]
    acts = np.concatenate(out).reshape(-1, model.config.d_model)
    os.makedirs(os.path.dirname(os.path.abspath(args.cache)), exist_ok=True)
    np.save(args.cache, acts)
    return acts


def load(args):
    import jaxsteer
    from jaxsteer.train.sae.activations import pack_tokens
    from jaxsteer.train.sae.corpora import general_text

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    windows = pack_tokens(general_text(), tok, args.context, tok.bos_token_id)[: args.windows]
    return model, windows


def configs(args, d: int) -> dict:
    from jaxsteer import sae

    f, k = args.d_sae, args.k
    base = dict(d_in=d, d_sae=f, site="resid_post", layer=args.layer)
    out = {
        "topk": sae.SAEConfig(kind="topk", k=k, **base),
        "htopk": sae.SAEConfig(kind="htopk", k=k, **base),
        "batchtopk": sae.SAEConfig(kind="batchtopk", k=k, **base),
        "matryoshka": sae.SAEConfig(kind="matryoshka", k=k, matryoshka_widths=(f // 8, f // 4, f // 2, f), **base),
        "kron": sae.SAEConfig(kind="kron", k=k, kron_heads=f // 72, kron_m=6, kron_n=12, **base),
    }
    for lam in args.l0_coefs:
        out[f"jumprelu l0_coef={lam:g}"] = sae.SAEConfig(kind="jumprelu", **base)
    if args.kinds:
        unknown = set(args.kinds) - {name.split(" ")[0] for name in out}
        if unknown:
            raise SystemExit(
                f"--kinds: unknown {sorted(unknown)}; choose from topk htopk batchtopk matryoshka kron jumprelu"
            )
        out = {name: c for name, c in out.items() if name.split(" ")[0] in args.kinds}
    return out


def batches(acts: np.ndarray, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(acts))
        for i in range(0, len(acts) - batch + 1, batch):
            yield np.asarray(acts[np.sort(order[i : i + batch])], np.float32)


def ev_l0(s, x: jnp.ndarray, z=None) -> tuple[float, float]:
    from jaxsteer import sae

    z = sae.encode(s, x) if z is None else z
    x_hat = sae.decode(s, z)
    fvu = float(jnp.sum((x - x_hat) ** 2) / jnp.sum((x - x.mean(0)) ** 2))
    return 1 - fvu, float(jnp.mean(jnp.sum(z > 0, -1)))


def kernel_hits(s, x: jnp.ndarray, eps: float, batch: int) -> float:
    """Mean over latents of the expected number of a batch's pre-activations inside the
    pseudo-derivative's window |pre - theta| < eps / 2: how often a threshold gets any gradient."""
    from jaxsteer import sae

    inside = jnp.abs(sae.pre_acts(s, x) - s.params["threshold"]) < eps / 2
    return float(jnp.mean(inside) * batch)


def nested_curves(models: dict, x: jnp.ndarray, k: int) -> dict[str, list[tuple[float, float]]]:
    """(L0, EV) curves: HierarchicalTopK and TopK run at j <= k; Matryoshka cut to each prefix."""
    from jaxsteer import sae

    out = {}
    for name in ("htopk", "topk"):
        if name in models:
            js = [j for j in (1, 2, 4, 8, 16, 32, 64) if j <= k]
            out[name + " at k=j"] = [ev_l0(models[name], x, sae.encode(models[name], x, k=j))[::-1] for j in js]
    if "matryoshka" in models:
        m = models["matryoshka"]
        z = sae.encode(m, x)
        cols = jnp.arange(m.config.d_sae)
        out["matryoshka prefixes"] = [ev_l0(m, x, jnp.where(cols < w, z, 0))[::-1] for w in m.config.matryoshka_widths]
    return out


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--d-sae", type=int, default=1152)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--l0-coefs", type=float, nargs="*", default=[1e-3, 1e-2])
    ap.add_argument(
        "--jumprelu-init-threshold",
        type=float,
        default=1.0,
        help="in RMS units; Gemma Scope's 0.001 needs far longer runs for the thresholds to rise",
    )
    ap.add_argument("--bandwidth", type=float, default=0.001, help="JumpReLU bandwidth in RMS units (Gemma Scope)")
    ap.add_argument(
        "--ce-windows", type=int, default=0, help="held-out windows for the loss-recovered metric (0: skip)"
    )
    ap.add_argument("--kinds", nargs="*", help="train only these kinds (default: all), e.g. --kinds jumprelu")
    ap.add_argument("--cache", default="runs/sae_cache/compare_l15_resid_post.npy")
    ap.add_argument("--out", default="docs/figures/sae_ev_vs_l0.png")
    ap.add_argument("--json", default="runs/sae_kinds_compare.json")
    return ap.parse_args()


def jumprelu_diagnostics(model, train, held, args) -> dict:
    """Where training left a JumpReLU SAE's thresholds (in RMS units of the first batch, the run's
    act_scale) and how many pre-activations per batch fall inside the bandwidth window."""
    unit = float(np.sqrt(np.mean(np.square(next(batches(train, args.batch, seed=0))))))
    theta = np.asarray(model.params["threshold"]) / unit
    return {
        "threshold_rms": {
            "start": args.jumprelu_init_threshold,
            "mean": float(theta.mean()),
            "p10": float(np.quantile(theta, 0.1)),
            "p90": float(np.quantile(theta, 0.9)),
        },
        "kernel_hits_per_batch": kernel_hits(model, held, args.bandwidth * unit, args.batch),
    }


def main() -> None:
    """Harvest, train every SAE kind on the same activations, compare EV / L0 / nested curves, plot."""
    args = parse_args()
    from jaxsteer import sae
    from jaxsteer.train.sae.step import StepConfig, fit

    acts = harvest(args)
    n_eval = args.eval_windows * (args.context - 1)
    train, held = acts[: len(acts) - n_eval], jnp.asarray(acts[len(acts) - n_eval :])
    print(f"{len(train)} training / {len(held)} held-out activations; {args.steps} steps x {args.batch}")
    step = StepConfig(
        lr=args.lr,
        total_steps=args.steps,
        warmup_steps=args.steps // 25,
        decay_start=0.8,
        k_aux=held.shape[1] // 2,
        dead_batches=max(1, 200_000 // args.batch),
        l0_warmup_steps=args.steps // 10,
        jumprelu_bandwidth=args.bandwidth,
    )
    models, rows = {}, []
    for name, cfg in configs(args, held.shape[1]).items():
        t0 = time.perf_counter()
        lam = float(name.split("=")[1]) if cfg.kind == "jumprelu" else 0.0
        models[name], _ = fit(
            cfg,
            batches(train, args.batch, seed=0),
            StepConfig(**dict(step.__dict__, l0_coef=lam)),
            jumprelu_init_threshold=args.jumprelu_init_threshold,
        )
        ev, l0 = ev_l0(models[name], held)
        row = {
            "kind": name,
            "encoder_mflop": sae.encoder_flops(cfg) / 1e6,
            "ev": ev,
            "l0": l0,
            "seconds": time.perf_counter() - t0,
        }
        if cfg.kind == "jumprelu":
            row.update(jumprelu_diagnostics(models[name], train, held, args))
        rows.append(row)
        print(json.dumps(row))
    if args.ce_windows:
        from jaxsteer.sae import evaluate_sae

        model, windows = load(args)
        for row in rows:
            r = evaluate_sae(model, models[row["kind"]], windows[len(windows) - args.ce_windows :], batch=8)
            row["loss_recovered"] = r["loss_recovered"]
    curves = nested_curves(models, held, args.k)
    report(rows, curves, args)


def report(rows, curves, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    print("| SAE | encoder MFLOP/token | EV | L0 |" + (" loss recovered |" if args.ce_windows else ""))
    print("| --- | --- | --- | --- |" + (" --- |" if args.ce_windows else ""))
    for r in rows:
        print(
            f"| {r['kind']} | {r['encoder_mflop']:.2f} | {r['ev']:.3f} | {r['l0']:.1f} |"
            + (f" {r['loss_recovered']:.3f} |" if args.ce_windows else "")
        )
    for name, c in curves.items():
        print(f"{name}: " + ", ".join(f"L0 {l0:.1f} EV {ev:.3f}" for l0, ev in c))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, c in curves.items():
        ax.plot([p[0] for p in c], [p[1] for p in c], marker=".", label=name)
    for r in rows:
        ax.scatter([r["l0"]], [r["ev"]], marker="x", s=60, zorder=3, label=r["kind"])
    ax.set_xscale("log")
    ax.set_xlabel("L0 (active latents per token, held out)")
    ax.set_ylabel("explained variance (held out)")
    ax.set_title(
        f"SmolLM2-135M-Instruct L{args.layer} resid_post, d_sae={args.d_sae}, {args.steps}x{args.batch}", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"rows": rows, "curves": curves, "args": vars(args)}, f, indent=1)
    print(f"wrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
