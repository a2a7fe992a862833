"""`jaxsteer steer extract | apply | eval | export | import`: steering vectors from the command line.

jaxsteer steer extract --task sentiment --method pca --out pca.npy
jaxsteer steer apply --vectors pca.npy --layer 8 --scale 4 --select generated --prompt "Describe your morning."
jaxsteer steer eval --task sentiment --methods mean_difference,pca,probe --layers 6,10,14 --scales 2,4,8 --out sweep/
jaxsteer steer export --vectors pca.npy --layers 8 --out pca.gguf        # llama.cpp --control-vector
jaxsteer steer import repeng.gguf --out repeng.npy
"""

from __future__ import annotations

import argparse
import json
import os

from ..errors import InputError
from .common import DEFAULT_MODEL

MODEL_HELP = "model alias, GGUF file or HF directory (default: %(default)s)"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _read(text: str) -> str | int:
    return int(text) if text.isdigit() else text


def add_parsers(sub) -> None:
    """Register `steer extract | apply | eval | export | import`."""
    p = sub.add_parser("steer", help="steering vectors: extract, apply, evaluate, export to llama.cpp")
    ss = p.add_subparsers(dest="steer_command", required=True)

    e = ss.add_parser("extract", help="extract [L, d] vectors from a task's contrastive pairs")
    e.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias, GGUF file or HF directory (default: %(default)s)"
    )
    e.add_argument("--task", default="sentiment", help="shipped task name (sentiment, arithmetic) or a task JSON")
    e.add_argument("--method", default="mean_difference", help="mean_difference | pca | probe | supervised | sae")
    e.add_argument("--read", type=_read, default="mean", help="last | mean | k (last k tokens)")
    e.add_argument("--site", default="resid_post", help="site the activations are read at (default resid_post)")
    e.add_argument("--layers", type=_ints, help="supervised: layers to train (default all); sae: its layer")
    e.add_argument("--sae", help="sae: a SAELens directory (or jaxsteer SAE export)")
    e.add_argument("--top", type=int, default=1, help="sae: latents chosen by activation difference")
    e.add_argument("--out", required=True, help=".npy file for the [L, d] vectors")
    e.set_defaults(func=cmd_extract)

    a = ss.add_parser("apply", help="generate with a steering vector and controls, next to the unsteered model")
    a.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias, GGUF file or HF directory (default: %(default)s)"
    )
    a.add_argument("--vectors", required=True, help=".npy [L, d] (or [d]) or a llama.cpp control vector .gguf")
    a.add_argument("--layer", type=int, action="append", help="layers to steer (default: all non-zero)")
    a.add_argument("--scale", type=float, default=1.0, help="multiplier of the vectors (default 1)")
    a.add_argument(
        "--select", default="all", choices=("all", "prompt", "generated"), help="which tokens are steered (default all)"
    )
    a.add_argument("--first", type=int, help="steer only the first k generated tokens")
    a.add_argument("--prompt", action="append", required=True, help="prompt (repeat for a batch)")
    a.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate per prompt (default 48)")
    a.set_defaults(func=cmd_apply)
    add_eval_parser(ss)
    add_llamacpp_parsers(ss)


def add_eval_parser(ss) -> None:
    """Register `steer eval` on the `steer` subparsers."""
    v = ss.add_parser("eval", help="sweep layer x scale per method; table, plot and JSON")
    v.add_argument(
        "--model", default=DEFAULT_MODEL, help="model alias, GGUF file or HF directory (default: %(default)s)"
    )
    v.add_argument("--task", default="sentiment", help="shipped task name (sentiment, arithmetic) or a task JSON")
    v.add_argument(
        "--methods",
        default="mean_difference,pca,probe",
        help="comma-separated extraction methods (default: %(default)s)",
    )
    v.add_argument("--layers", type=_ints, default=[10], help="comma-separated layers to sweep (default 10)")
    v.add_argument(
        "--scales", type=_floats, default=[1, 2, 4, 8], help="comma-separated scales to sweep (default 1,2,4,8)"
    )
    v.add_argument(
        "--vector",
        action="append",
        default=[],
        metavar="NAME=PATH.npy",
        help="a trained [L, d] vector to compare at its own layers (e.g. rl=run/steering_vectors.npy)",
    )
    v.add_argument(
        "--trained-scales", type=_floats, default=[0.5, 1, 2], help="scales for --vector files (default 0.5,1,2)"
    )
    v.add_argument("--read", type=_read, default="mean", help="last | mean | k (last k tokens)")
    v.add_argument(
        "--supervised-steps", type=int, default=60, help="optimiser steps of the supervised method (default 60)"
    )
    v.add_argument("--max-new-tokens", type=int, default=24, help="tokens generated per prompt (default 24)")
    v.add_argument("--sae", help="method sae: a SAELens directory (or `jaxsteer sae train` output's sae/)")
    v.add_argument("--sae-layer", type=int, help="method sae: the layer the SAE reads (default: the one --layers)")
    v.add_argument("--sae-top", type=int, default=1, help="method sae: latents chosen by activation difference")
    v.add_argument(
        "--out", default="runs/steer_eval", help="output directory for the table, plot and JSON (default: %(default)s)"
    )
    v.set_defaults(func=cmd_eval)


def add_llamacpp_parsers(ss) -> None:
    """Register `steer export` and `steer import` (llama.cpp control vectors) on the `steer` subparsers."""
    x = ss.add_parser("export", help="write [L, d] resid_post vectors as a llama.cpp control vector GGUF")
    x.add_argument("--vectors", required=True, help=".npy [L, d] vectors")
    x.add_argument("--layers", type=_ints, help="layers to write (default: every non-zero layer)")
    x.add_argument("--scale", type=float, default=1.0, help="multiplier written into the file (default 1)")
    x.add_argument(
        "--model-hint", default="llama", help="llama.cpp architecture name stored in the GGUF (default llama)"
    )
    x.add_argument("--out", required=True, help="output .gguf path")
    x.set_defaults(func=cmd_export)

    i = ss.add_parser("import", help="read a llama.cpp / repeng control vector into an [L, d] .npy")
    i.add_argument("path", help="a llama.cpp / repeng control vector .gguf")
    i.add_argument("--n-layers", type=int, help="rows of the output (default: the highest layer in the file + 1)")
    i.add_argument("--out", required=True, help="output .npy path")
    i.set_defaults(func=cmd_import)


def _load_vectors(path: str, n_layers: int | None = None):
    import numpy as np

    if path.endswith(".gguf"):
        from ..steering.llamacpp import load_control_vector

        return load_control_vector(path, n_layers)[0]
    return np.load(path)


def cmd_extract(args: argparse.Namespace) -> None:
    """Extract [L, d] vectors from a task's contrastive pairs and save them as .npy."""
    import numpy as np

    from ..models.loading import load
    from ..steering.evaluate import load_task
    from ..steering.extract import contrast_data, extract

    model, tok = load(args.model)
    task = load_task(args.task)
    pairs, chat = task.extraction_pairs()
    data = contrast_data(model, tok, pairs=pairs, read=args.read, site=args.site, chat=chat)
    opts = {}
    if args.method == "supervised":
        opts = {"model": model, "layers": args.layers}
    elif args.method == "sae":
        from ..sae.saelens import load_saelens

        if not args.sae or not args.layers:
            raise InputError("--method sae needs --sae DIR and --layers L")
        opts = {"sae": load_saelens(args.sae), "layer": args.layers[0], "top": args.top}
    vectors = extract(args.method, data, **opts)
    np.save(args.out, vectors)
    norms = np.linalg.norm(vectors, axis=-1)
    print(f"{args.method} vectors {vectors.shape} -> {args.out}; norms per layer: {np.round(norms, 2).tolist()}")


def cmd_apply(args: argparse.Namespace) -> None:
    """Print greedy completions unsteered and steered (optionally on some tokens only)."""
    import jax.numpy as jnp
    import numpy as np

    from ..models.controls import OnTokens
    from ..models.generate import generate
    from ..models.interventions import Steer
    from ..models.loading import load

    model, tok = load(args.model)
    v = np.asarray(_load_vectors(args.vectors, model.config.n_layers), np.float32)
    layers = tuple(args.layer) if args.layer else None
    steer = Steer(jnp.asarray(v), scale=args.scale, layers=layers)
    if args.select != "all" or args.first:
        steer = OnTokens(steer, select=args.select, first=args.first)
    for label, ivs in (("unsteered", ()), (f"steered (scale {args.scale}, layers {layers or 'all'})", steer)):
        out = generate(
            model, args.prompt, tokenizer=tok, max_new_tokens=args.max_new_tokens, greedy=True, interventions=ivs
        )
        print(f"== {label}")
        assert out.texts is not None  # generated with a tokenizer
        for p, t in zip(args.prompt, out.texts, strict=True):
            print(f">>> {p}\n{t}\n")


def cmd_eval(args: argparse.Namespace) -> None:
    """Sweep methods x layers x scales on a task; print the table, write table, plot and JSON."""
    import numpy as np

    from ..models.loading import load
    from ..steering.evaluate import load_task, sweep

    model, tok = load(args.model)
    task = load_task(args.task)
    vectors = {}
    for spec in args.vector:
        name, _, path = spec.partition("=")
        if not path:
            raise InputError(f"--vector takes NAME=PATH, got {spec!r}")
        vectors[name] = np.asarray(_load_vectors(path, model.config.n_layers), np.float32)
    methods = [m for m in args.methods.split(",") if m]
    options = {"supervised": {"steps": args.supervised_steps}}
    if "sae" in methods:
        options["sae"] = _sae_options(args)
    result = sweep(
        model,
        tok,
        task,
        methods=methods,
        layers=args.layers,
        scales=args.scales,
        vectors=vectors,
        trained_scales=args.trained_scales,
        read=args.read,
        max_new_tokens=args.max_new_tokens,
        options=options,
    )
    os.makedirs(args.out, exist_ok=True)
    result.save(os.path.join(args.out, "sweep.json"))
    result.plot(os.path.join(args.out, "sweep.png"))
    table = result.table()
    with open(os.path.join(args.out, "table.md"), "w") as fh:
        fh.write(table + "\n")
    print(table)
    print(f"-> {args.out}/sweep.json, sweep.png, table.md")


def _sae_options(args: argparse.Namespace) -> dict:
    """`extract("sae", ...)` options of `steer eval`: the SAE, its layer, how many latents."""
    from ..sae.saelens import load_saelens

    layer = args.sae_layer if args.sae_layer is not None else (args.layers[0] if len(args.layers) == 1 else None)
    if not args.sae or layer is None:
        raise InputError("--methods sae needs --sae DIR and the SAE's layer (--sae-layer L, or a single --layers L)")
    return {"sae": load_saelens(args.sae), "layer": layer, "top": args.sae_top}


def cmd_export(args: argparse.Namespace) -> None:
    """Write vectors as a llama.cpp control vector GGUF."""
    from ..steering.llamacpp import save_control_vector

    path = save_control_vector(
        args.out, _load_vectors(args.vectors), model_hint=args.model_hint, layers=args.layers, scale=args.scale
    )
    print(f"control vector -> {path} (llama-cli -m MODEL.gguf --control-vector {path})")


def cmd_import(args: argparse.Namespace) -> None:
    """Read a llama.cpp / repeng control vector GGUF into an [L, d] .npy."""
    import numpy as np

    from ..steering.llamacpp import load_control_vector

    vectors, meta = load_control_vector(args.path, args.n_layers)
    np.save(args.out, vectors)
    layers = [int(l) for l in np.flatnonzero(np.abs(vectors).sum(-1))]
    print(
        f"{args.path}: {json.dumps({k: str(v) for k, v in meta.items()})}; "
        f"layers {layers} -> {args.out} {vectors.shape}"
    )


__all__ = ["add_parsers", "cmd_extract", "cmd_apply", "cmd_eval", "cmd_export", "cmd_import"]
