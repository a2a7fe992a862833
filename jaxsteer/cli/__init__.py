"""jaxsteer: steer, probe and RL-train language models in JAX.

commands:
  info      architecture, sizes and dtype of a model (JSON)
  generate  sample completions, optionally steered, or as a trained run (--run DIR)
  demo      contrastive steering vectors on the default model, with and without steering
  train     RL (GRPO family) or evolution-strategies training from a YAML config
  eval      held-out accuracy of a trained run, with and without its trained part
  plan      will a config fit on a device mesh? (memory per device, largest micro-batch)
  lens      logit lens of steering vectors
  patch     activation patching sweep for a clean / corrupted prompt pair
  sae       sparse autoencoders: sae train CONFIG, sae eval RUN_DIR
  steer     steering vectors: extract, apply, evaluate, export to llama.cpp / import

`jaxsteer COMMAND --help` lists a command's options.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from ..errors import InputError, JaxsteerError, NotFoundError
from . import analysis, models, plan, sae, steer, train
from .train import next_steps

# the command groups, in the order `jaxsteer --help` lists them
GROUPS = (models, train, analysis, sae, steer, plan)


def build_parser() -> argparse.ArgumentParser:
    """The `jaxsteer` argument parser, every command registered."""
    parser = argparse.ArgumentParser(
        prog="jaxsteer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed; `key=value` overrides may come before or after the --flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after --flags; anything else is an error as before
        if not hasattr(args, "overrides") or not all(_OVERRIDE.match(x) for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


def quiet_absl() -> None:
    """Silence absl's INFO / WARNING lines (Orbax logs through absl) on the command line."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> None:
    """Run one command. A `JaxsteerError` (what jaxsteer refuses on purpose) or an `OSError` (what
    the operating system refused: a missing file, a full disk) ends as one line on stderr,
    `jaxsteer COMMAND: message`, with exit status 1; anything else is a bug and keeps its
    traceback. JAXSTEER_TRACEBACK=1 shows the traceback of the one-line errors too."""
    quiet_absl()
    args = parse_args(argv)
    show_deprecations_as_lines()
    command = " ".join(
        filter(
            None, ("jaxsteer", args.command, getattr(args, "sae_command", None), getattr(args, "steer_command", None))
        )
    )
    try:
        args.func(args)
    except (JaxsteerError, OSError) as err:
        if os.environ.get("JAXSTEER_TRACEBACK"):
            raise
        raise SystemExit(describe_error(command, err)) from None


def show_deprecations_as_lines() -> None:
    """Print each renamed config key as one line on stderr (`jaxsteer: config key 'lr' is now
    'optimizer.lr'; write optimizer.lr`) instead of Python's two-line warning with a source line."""
    import warnings

    from ..config import ConfigDeprecationWarning

    default = warnings.showwarning
    if getattr(default, "jaxsteer_lines", False):  # installed by an earlier call
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigDeprecationWarning):
            print(f"jaxsteer: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.jaxsteer_lines = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def describe_error(command: str, err: BaseException) -> str:
    """One line for a failure: `command: message` for an `InputError` or `NotFoundError` (their
    messages name the culprit), `command: Type: message` for the others. An OSError with an errno
    anywhere in the chain of causes wins, with its path and errno (a disk-full write that made
    TensorBoard's writer fail afterwards is reported as the disk being full, not as the writer's
    closed handle)."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ if seen.__cause__ is not None else None if seen.__suppress_context__ else seen.__context__
    os_err = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
    if os_err is not None and os_err.errno is not None:
        code = errno.errorcode.get(os_err.errno, str(os_err.errno))
        where = f"{os_err.filename}: " if os_err.filename else ""
        return f"{command}: {type(os_err).__name__}: {where}{os_err.strerror or os_err} ({code})"
    text = " ".join(str(err).split())
    if type(err) in (InputError, NotFoundError) or text.startswith(type(err).__name__):
        return f"{command}: {text}"
    return f"{command}: {type(err).__name__}: {text}"


__all__ = ["build_parser", "parse_args", "main", "describe_error", "quiet_absl", "next_steps"]
