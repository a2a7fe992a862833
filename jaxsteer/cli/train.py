"""`jaxsteer train` and `jaxsteer eval`: an RL / ES run from a YAML config, and its held-out accuracy."""

from __future__ import annotations

import json
import os
import shlex
import time

import numpy as np

from .common import positive_int


def add_parsers(sub) -> None:
    """Register `train` and `eval`."""
    p = sub.add_parser("train", help="RL (GRPO family) or ES (es | eggroll | essa) training from a YAML config")
    p.add_argument("config", help="YAML config (see experiments/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainable.kind=lora lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--output-dir", help="same as output_dir=DIR")
    p.add_argument("--logit-lens", type=int, default=5, help="top-k tokens per layer of the trained vectors (0 = off)")
    g = p.add_argument_group(
        "multi-process runs (jax.distributed; or JAXSTEER_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID)"
    )
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    g.add_argument(
        "--startup-timeout",
        type=float,
        metavar="SECONDS",
        help="give up (one line, exit 1) when the processes have not all joined by then "
        "(default 120; or JAXSTEER_STARTUP_TIMEOUT)",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join with JAX's cluster detection (TPU pods, SLURM, Open MPI) instead of explicit values",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out accuracy of a trained run, with and without the trained part")
    p.add_argument("run", help="a run directory (with config.yaml and checkpoints/) or a YAML config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--n", type=positive_int, help="number of held-out problems")
    p.add_argument("--samples", type=int, help="k for sampled pass@1 (0 = greedy only)")
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval)


def cmd_train(args) -> None:
    """RL or ES training from a YAML config plus dotted overrides; prints held-out accuracy before/after."""
    from ..train import train
    from ..train.config import load_config
    from ..train.distributed import initialize

    # before any other JAX call
    initialize(
        args.coordinator, args.num_processes, args.process_id, auto=args.distributed, timeout=args.startup_timeout
    )
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    t0 = time.perf_counter()
    result = train(cfg, resume=args.resume)
    import jax

    if jax.process_index() != 0:
        return
    print(f"\ntraining finished in {time.perf_counter() - t0:.0f} s; run directory {os.path.abspath(cfg.output_dir)}")
    before, after = result.eval_before, result.eval_after
    if before and after and "greedy_acc" in before and "greedy_acc" in after:
        (bl, bh), (al, ah) = before["greedy_ci"], after["greedy_ci"]
        print(
            f"held-out greedy accuracy on {after['n']} problems: base {100 * before['greedy_acc']:.1f}% "
            f"[{100 * bl:.1f}, {100 * bh:.1f}] -> trained {100 * after['greedy_acc']:.1f}% "
            f"[{100 * al:.1f}, {100 * ah:.1f}]"
        )
    for name, path in result.files.items():
        print(f"  {name:20s} {path}")
    if "vectors_npy" in result.files and result.tokenizer is not None and args.logit_lens:
        print("\nlogit lens of the trained steering vectors (W_U @ s_l, no final norm): top / bottom tokens per layer")
        print_logit_lens(result.model, result.tokenizer, np.load(result.files["vectors_npy"]), k=args.logit_lens)
    print(next_steps(cfg.output_dir, has_vectors="vectors_npy" in result.files, prompt=first_prompt(cfg)))


def print_logit_lens(model, tokenizer, vectors: np.ndarray, k: int = 5) -> None:
    """Top-k / bottom-k tokens of `W_U @ s_l` per layer (raw vector, no final norm), with the
    per-layer vector norms (`jaxsteer.analysis.lens.vector_lens`)."""
    from ..analysis.lens import vector_lens

    res = vector_lens(model, vectors, final_norm=False, k=k, tokenizer=tokenizer)
    norms = np.linalg.norm(np.asarray(vectors), axis=-1)
    print("vector norms per layer: " + " ".join(f"{n:.2f}" for n in norms))
    print(res.table())


def first_prompt(cfg) -> str | None:
    """The first held-out (else training) example's prompt of a run's config, for the "next:" hint;
    None when the data cannot be read here."""
    from ..train.build import load_examples

    for spec in (cfg.data.eval, cfg.data.train):
        try:
            examples = load_examples(spec) if spec else []
        except Exception:  # noqa: BLE001 - a hint must not fail a finished run
            continue
        for e in examples:
            return str(e.prompt)
    return None


def next_steps(run_dir: str, *, has_vectors: bool, prompt: str | None = None) -> str:
    """The "next:" lines printed after training: evaluate, generate with (on `prompt`, e.g. one of the
    run's own held-out prompts), inspect the run."""
    shown = shlex.quote(prompt if prompt else "Hello")
    lines = [
        f"\nnext:\n  jaxsteer eval {run_dir}                        "
        "# held-out accuracy with / without the trained part",
        f"  jaxsteer generate --run {run_dir} --prompt {shown} --greedy   # generate as trained",
        f"  python -c \"import jaxsteer; run = jaxsteer.load_run('{run_dir}')\"   # the same from Python",
    ]
    if has_vectors:
        lines.append(f"  jaxsteer lens --vectors {run_dir}/steering_vectors.npy   # logit lens of the vectors")
    return "\n".join(lines)


def cmd_eval(args) -> None:
    """Held-out accuracy of a trained run, with and without the trained part."""
    from ..train import evaluate_run
    from ..train.config import load_config
    from ..train.evaluate import format_result

    path = args.run
    if os.path.isdir(path):
        path = os.path.join(path, "config.yaml")
    overrides = list(args.overrides)
    if os.path.isdir(args.run):
        overrides.append(f"output_dir={args.run}")
    if args.n is not None:
        overrides.append(f"eval.n={args.n}")
    if args.samples is not None:
        overrides.append(f"eval.samples={args.samples}")
    cfg = load_config(path, overrides, warn=not os.path.isdir(args.run))  # a run directory's saved config: silent
    out = evaluate_run(cfg, step=args.step, base=not args.no_base)
    print(f"checkpoint step {out['step']}, {out['n']} held-out problems ({cfg.data.eval})")
    for label in ("base", "trained"):
        if label in out:
            print(format_result(label, out[label]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


__all__ = ["add_parsers", "cmd_train", "cmd_eval", "next_steps", "print_logit_lens"]
