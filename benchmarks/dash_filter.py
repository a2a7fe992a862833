"""DASH gradient filtering: the update with the filtered samples masked vs dropped before it.

    python -m benchmarks.dash_filter                 # SmolLM2-135M, 32 rows of 25 + 12 tokens
    python -m benchmarks.dash_filter --kept 8 --kind lora

One jitted RL update (steering vectors by default) on a batch of `--rows` rollouts in 4
micro-batches, of which `--kept` have |A| > tau. "masked" runs all rows forward and backward with
the filtered ones masked out of the loss (the old behaviour); "packed" is `rl.learner.update`,
which packs the kept rows into fewer micro-batches (`rl.dash.pack_kept`). Both give the same
parameters (checked here, and in tests/train/rl/test_dash.py). Medians of wall and process CPU time over
`--repeats` updates after one warm-up (compile) each, in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from .common import thread_policy


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--kept", type=int, default=12)
    ap.add_argument("--kind", default="steering", choices=["steering", "lora", "full"])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from jaxsteer.train.build import build_model
    from jaxsteer.train.config import load_config
    from jaxsteer.train.rl.learner import setup_training, update
    from jaxsteer.train.rl.rollout import RolloutBatch
    from jaxsteer.train.rl.step import compile_step
    from jaxsteer.train.sharding import make_mesh

    cfg = load_config(
        "experiments/smollm2_arithmetic_steering.yaml",
        [
            f"trainable.kind={args.kind}",
            "optimizer.micro_batches=4",
            "rl.loss.dash_tau=0.1",
            "optimizer.lr=1e-4",
            f"prompts_per_step={args.rows // 8}",
        ],
    )
    model, _ = build_model(cfg.model)
    mesh = make_mesh(devices=jax.devices()[:1])
    setup = setup_training(cfg, model, mesh)
    step = compile_step(setup.spec, setup.tx, donate=False)
    rng = np.random.RandomState(0)
    P, N, V = 25, 12, model.config.vocab_size
    tokens = rng.randint(0, V, size=(args.rows, P + N)).astype(np.int32)
    adv = np.zeros(args.rows, np.float32)
    adv[rng.choice(args.rows, args.kept, replace=False)] = rng.choice([-1.0, 1.0], args.kept)
    batch = RolloutBatch(
        tokens=tokens,
        mask=np.ones_like(tokens),
        old_logp=np.zeros((args.rows, N), np.float32),
        rewards=adv,
        advantages=adv,
        lengths=np.full(args.rows, N),
        prompt_width=P,
        texts=None,
        sample_seconds=0.0,
    )
    full = {
        k: jnp.asarray(getattr(batch, k).reshape(4, -1, *getattr(batch, k).shape[1:]))
        for k in ("tokens", "mask", "old_logp", "advantages", "rewards")
    }

    def masked():
        return jax.block_until_ready(step(setup.model, setup.state, full, P))[0]

    def packed():
        return jax.block_until_ready(update(step, setup, setup.state, batch, cfg, mesh))[0]

    out = {}
    for name, fn in (("masked", masked), ("packed", packed)):
        state = fn()  # warm-up: compile
        walls, cpus = [], []
        for _ in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            state = fn()
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
        out[name] = {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus), "state": state}
    diff = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree_util.tree_leaves(out["masked"]["state"]["trainable"]),
            jax.tree_util.tree_leaves(out["packed"]["state"]["trainable"]),
            strict=True,
        )
    )
    m, p = out["masked"], out["packed"]
    print(f"peer: jaxsteer's own masked update (no other library implements DASH); threads: {thread_policy()}")
    print(f"{args.kind}, {args.rows} rows ({args.kept} kept), 4 micro-batches of {args.rows // 4}:")
    print(f"  masked (all rows forward + backward): {m['wall_s']:.2f} s wall, {m['cpu_s']:.2f} s CPU")
    print(f"  packed (kept rows only):              {p['wall_s']:.2f} s wall, {p['cpu_s']:.2f} s CPU")
    print(
        f"  saved: {100 * (1 - p['wall_s'] / m['wall_s']):.0f}% wall, {100 * (1 - p['cpu_s'] / m['cpu_s']):.0f}% CPU; "
        f"max |param difference| {diff:.1e}"
    )
    return {k: {kk: vv for kk, vv in v.items() if kk != "state"} for k, v in out.items()}


if __name__ == "__main__":
    main()
