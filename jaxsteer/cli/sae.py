"""`jaxsteer sae train CONFIG.yaml [key=value ...]` and `jaxsteer sae eval RUN_DIR`: sparse autoencoders."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub) -> None:
    """Register `sae train` and `sae eval`."""
    p = sub.add_parser("sae", help="sparse autoencoders: train from a YAML config, evaluate a run")
    ss = p.add_subparsers(dest="sae_command", required=True)
    t = ss.add_parser("train", help="train (or resume) an SAE on activations computed on the fly")
    t.add_argument("config", help="YAML config (see experiments/sae_*.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. steps=100")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="deprecated: write KEY=VALUE without --set, as for the other commands",
    )
    t.add_argument("--resume", action="store_true", help="continue from the run directory's latest checkpoint")
    t.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this many steps")
    t.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_train)
    e = ss.add_parser("eval", help="explained variance, L0, dead latents, CE with the SAE spliced in")
    e.add_argument("run_dir", help="an SAE run directory written by `jaxsteer sae train`")
    e.add_argument(
        "--contexts", type=int, default=None, help="evaluation windows (default: the config's eval.contexts)"
    )
    e.set_defaults(func=cmd_eval)


def cmd_train(args: argparse.Namespace) -> None:
    """Train (or resume) an SAE, evaluate it, print what to run next."""
    from ..train.lock import RunLock
    from ..train.sae.config import load_run_config
    from ..train.sae.run import eval_run, load_model, train_sae

    if args.set:
        print(
            "jaxsteer sae train: --set KEY=VALUE is deprecated; write KEY=VALUE (as for `jaxsteer train`)",
            file=sys.stderr,
        )
    cfg = load_run_config(args.config, list(args.overrides) + list(args.set))
    RunLock(cfg.output_dir).check_free()  # a busy run directory is refused before the model loads
    model, tok = load_model(cfg)
    out = train_sae(
        cfg, model=model, tokenizer=tok, resume=args.resume, stop_after=args.stop_after, progress=not args.no_progress
    )
    if not args.no_eval and (args.stop_after is None or args.stop_after >= cfg.steps):
        eval_run(out, model=model, tokenizer=tok)
    print(
        f"\nnext:\n  jaxsteer sae eval {out}                 # explained variance, L0, dead latents, CE spliced in\n"
        f"  python -c \"from jaxsteer import sae; s = sae.load_saelens('{out}/sae')\""
        "   # use it (sae.Splice, feature_acts)"
    )


def cmd_eval(args: argparse.Namespace) -> None:
    """Evaluate an SAE run directory (its results print as JSON)."""
    from ..train.sae.run import eval_run

    eval_run(args.run_dir, contexts=args.contexts)


__all__ = ["add_parsers", "cmd_train", "cmd_eval"]
