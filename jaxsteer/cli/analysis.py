"""`jaxsteer lens` and `jaxsteer patch`: the logit lens of steering vectors and activation patching."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

from ..errors import InputError
from .common import DEFAULT_MODEL, DTYPE_HELP, MODEL_HELP, dtype, read_vectors


def add_parsers(sub) -> None:
    """Register `lens` and `patch`."""
    p = sub.add_parser("lens", help="logit lens of steering vectors (top / bottom tokens per layer)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--vectors", required=True, help=".npy file with a [d] or [L, d] array")
    p.add_argument("--top-k", type=int, default=10, help="tokens listed per layer (default 10)")
    p.add_argument("--final-norm", action="store_true", help="apply the final norm first (default: raw W_U s)")
    p.add_argument("--out", help="write a PNG here")
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_lens)

    p = sub.add_parser("patch", help="activation patching sweep (layers x positions, or x heads) for a prompt pair")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--clean", required=True, help="clean prompt (raw text, no chat template)")
    p.add_argument("--corrupt", required=True, help="corrupted prompt; must tokenize to the same length")
    p.add_argument(
        "--answers",
        nargs=2,
        required=True,
        metavar=("CORRECT", "WRONG"),
        help="single-token answers, e.g. ' Paris' ' Rome'; metric = logit difference at the last position",
    )
    p.add_argument(
        "--site", default="resid_pre", help="site to patch (default resid_pre; TransformerLens names work too)"
    )
    p.add_argument(
        "--direction",
        default="denoise",
        choices=("denoise", "noise"),
        help="denoise: clean values into the corrupted run (default); noise: the reverse",
    )
    p.add_argument("--batch-size", type=int, default=32, help="patched runs per vmapped chunk (default 32)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also run attribution and relevance patching (RelP) and print each one's Pearson r against it",
    )
    p.add_argument(
        "--out", default="runs/patching", help="output directory for the PNG and JSON (default: %(default)s)"
    )
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_patch)


def cmd_lens(args) -> None:
    """Logit lens of steering vectors: print the top / bottom tokens per layer, write a PNG."""
    from ..analysis.lens import vector_lens
    from ..models.loading import load

    vec = read_vectors(args.vectors, "--vectors")  # before the model loads
    model, tok = load(args.model, dtype=dtype(args.dtype))
    d, L = model.config.d_model, model.config.n_layers
    if vec.ndim not in (1, 2) or vec.shape[-1] != d or (vec.ndim == 2 and vec.shape[0] != L):
        raise InputError(f"{args.vectors}: expected a [d={d}] or [L={L}, d] array, got shape {vec.shape}")
    res = vector_lens(model, vec, final_norm=args.final_norm, k=args.top_k, tokenizer=tok)
    print(res.table())
    if args.out:
        print(f"wrote {res.plot(args.out)}", file=sys.stderr)


def cmd_patch(args) -> None:
    """Activation patching sweep of one site for a clean / corrupted prompt pair: heatmap PNG + JSON."""
    from ..analysis import single_token_ids, tokenize_pair
    from ..analysis.patching import activation_patching
    from ..models.loading import load

    model, tok = load(args.model, dtype=dtype(args.dtype))
    if tok is None:
        raise InputError(f"{args.model} has no tokenizer; jaxsteer patch needs one for the prompts")
    clean, corrupt = tokenize_pair(tok, args.clean, args.corrupt)
    answers = single_token_ids(tok, args.answers)
    t0 = time.perf_counter()
    res = activation_patching(
        model,
        clean,
        corrupt,
        site=args.site,
        answers=answers,
        tokenizer=tok,
        direction=args.direction,
        batch_size=args.batch_size,
    )
    dt = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"patching_{args.site}")
    res.save_json(stem + ".json")
    res.plot(stem + ".png")
    print_patching(res, args.site, args.direction, args.answers)
    print(f"wrote {stem}.png and {stem}.json [{dt:.1f} s, compile included]", file=sys.stderr)
    if args.compare:
        compare_estimates(model, tok, clean, corrupt, answers, res, args.out)


def print_patching(res, site: str, direction: str, answers: list[str]) -> None:
    """The sweep as a table: one row per layer, one column per position (or head)."""
    labels = res.labels(res.axes[1]) if len(res.axes) > 1 else ["all"]
    print(
        f"{site} patching ({direction}), metric logit({answers[0]!r}) - logit({answers[1]!r}): "
        f"clean {res.clean_metric:.3f}, corrupted {res.corrupt_metric:.3f}; "
        "normalised values (0 = corrupted, 1 = clean)"
    )
    print(f"columns ({res.axes[1] if len(res.axes) > 1 else 'all positions at once'}): " + ", ".join(labels))
    print("layer " + " ".join(f"{i:>8}" for i in range(len(labels))))
    for i, layer in enumerate(res.layers):
        row = np.atleast_1d(res.values[i])
        print(f"{layer:>5} " + " ".join(f"{v:>8.3f}" for v in row))


def compare_estimates(model, tok, clean, corrupt, answers, actual, out_dir) -> None:
    """Attribution and relevance patching (RelP) of the same sweep, each scored against `actual`."""
    from ..analysis.patching import attribution_patching, compare_attribution, relevance_patching

    kw: dict[str, Any] = dict(
        sites=(actual.site,), answers=answers, tokenizer=tok, direction=actual.direction, over=actual.axes
    )
    for name, fn in (("attribution", attribution_patching), ("relevance", relevance_patching)):
        t0 = time.perf_counter()
        est = fn(model, clean, corrupt, **kw)[actual.site]
        dt = time.perf_counter() - t0
        stem = os.path.join(out_dir, f"{name}_{actual.site}")
        est.save_json(stem + ".json")
        est.plot(stem + ".png")
        r = compare_attribution(est, actual)
        print(
            f"{name} patching vs activation patching ({actual.site}, {r['n']} entries): Pearson {r['pearson']:.3f}, "
            f"max |diff| {r['max_abs_diff']:.3f} [{dt:.1f} s, compile included]"
        )


__all__ = ["add_parsers", "cmd_lens", "cmd_patch", "print_patching", "compare_estimates"]
