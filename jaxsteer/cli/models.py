"""`jaxsteer info`, `generate` and `demo`: a model's shape, its completions, steered or not."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np

from ..errors import InputError
from .common import DEFAULT_MODEL, DTYPE_HELP, MODEL_HELP, dtype, read_vectors


def add_parsers(sub) -> None:
    """Register `info`, `generate` and `demo`."""
    p = sub.add_parser("info", help="architecture, sizes and dtype of a model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="hub id, HF directory, .gguf file or alias")
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="sample completions, optionally steered")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument(
        "--run",
        metavar="DIR",
        help="a trained run directory: its model, trained part and prompt format "
        "(as in training) replace --model and the chat template",
    )
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--steer", help=".npy file with a [d] or [L, d] steering vector")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier of the --steer vector (default 1)")
    p.add_argument("--layers", type=int, nargs="*", help="layers to steer (default: all)")
    p.add_argument(
        "--site",
        default="resid_post",
        help="site the --steer vector is added at (default resid_post; TransformerLens names work too)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate per prompt (default 64)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0 = off)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the main job: load the default model, generate with and without steering")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument(
        "--prompt", action="append", help="prompt to generate for (repeat for several; default: three built in)"
    )
    p.add_argument("--layer", type=int, help="layer to steer at (default: the middle layer)")
    p.add_argument("--scale", type=float, default=1.5, help="multiplier of the contrast vector (default 1.5)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate per prompt (default 48)")
    p.add_argument("--save", help="write the contrast vectors [L, d] to this .npy file")
    p.set_defaults(func=cmd_demo)


def cmd_info(args) -> None:
    """Print the model's architecture and sizes as JSON."""
    from ..models.loading import load

    model, _ = load(args.model, dtype=dtype(args.dtype), tokenizer=False)
    c = model.config
    info = {
        "architecture": c.architecture,
        "layers": c.n_layers,
        "d_model": c.d_model,
        "heads": c.n_heads,
        "kv_heads": c.n_kv_heads,
        "head_dim": c.head_dim,
        "d_mlp": c.d_mlp,
        "vocab_size": c.vocab_size,
        "tied_embeddings": c.tie_word_embeddings,
        "sliding_layers": sum(t == "sliding_attention" for t in c.layer_types),
        "parameters": c.n_params(),
        "dtype": str(model.dtype),
    }
    print(json.dumps(info, indent=2))


def steer_from_file(vec: np.ndarray, path: str, scale: float, layers: list[int] | None, site: str, n_layers: int):
    """A `Steer` of the `--steer` file's vectors (one per layer, or one for all layers)."""
    import jax.numpy as jnp

    from ..models.interventions import Steer

    if vec.ndim == 2 and vec.shape[0] != n_layers:
        raise InputError(f"{path}: {vec.shape[0]} layer vectors for a model with {n_layers} layers")
    return Steer(jnp.asarray(vec, jnp.float32), scale=scale, site=site, layers=tuple(layers) if layers else None)


def cmd_generate(args) -> None:
    """Print completions of `--prompt`s by a model or a trained run, optionally steered."""
    from ..models.generate import check_sampling_args, generate
    from ..models.loading import load

    # the flags and the --steer file are checked before the model loads
    check_sampling_args(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        greedy=args.greedy,
    )
    steer = read_vectors(args.steer) if args.steer else None
    run = None
    if args.run:
        if args.no_chat:
            raise InputError("--no-chat does not apply with --run (prompts are formatted as the run trained)")
        from ..train import load_run

        run = load_run(args.run)
        model, tok = run.model, run.tokenizer
        print(f"[{run!r}]", file=sys.stderr)
    else:
        model, tok = load(args.model, dtype=dtype(args.dtype))
    interventions = []
    if steer is not None:
        interventions.append(
            steer_from_file(steer, args.steer, args.scale, args.layers, args.site, model.config.n_layers)
        )
    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        greedy=args.greedy,
        seed=args.seed,
        interventions=interventions,
    )
    if run is not None:
        out = run.generate(args.prompt, **kw)
    else:
        out = generate(model, args.prompt, tokenizer=tok, chat=not args.no_chat, **kw)
    dt = time.perf_counter() - t0
    assert out.texts is not None  # generated with a tokenizer
    for prompt, text in zip(args.prompt, out.texts, strict=True):
        print(f">>> {prompt}\n{text}\n")
    print(f"[{int(out.lengths.sum())} tokens in {dt:.1f} s, compile included]", file=sys.stderr)


POSITIVE = [
    "I love this, it is wonderful and makes me so happy!",
    "What a beautiful, joyful, delightful day.",
    "Everything is great, I feel fantastic and grateful.",
    "This is the best news ever, I am thrilled!",
]
NEGATIVE = [
    "I hate this, it is awful and makes me so sad.",
    "What a miserable, gloomy, terrible day.",
    "Everything is bad, I feel horrible and bitter.",
    "This is the worst news ever, I am devastated.",
]


def cmd_demo(args) -> None:
    """Load the default model; generate with and without a contrastive steering vector."""
    import jax.numpy as jnp

    from ..models.generate import generate
    from ..models.interventions import Steer
    from ..models.loading import load
    from ..steering.extract import contrast_vector

    t0 = time.perf_counter()
    model, tok = load(args.model)
    c = model.config
    print(
        f"loaded {args.model}: {c.architecture}, {c.n_layers} layers, d={c.d_model}, "
        f"{c.n_params() / 1e6:.0f}M parameters ({time.perf_counter() - t0:.1f} s)"
    )
    vectors = contrast_vector(model, tok, POSITIVE, NEGATIVE, chat=False)
    layer = args.layer if args.layer is not None else c.n_layers // 3
    steer = Steer(jnp.asarray(vectors[layer]), scale=args.scale, layers=(layer,))
    print(
        f"steering vector: happy minus sad, resid_post of layer {layer}, "
        f"norm {float(np.linalg.norm(vectors[layer])):.2f}, scale {args.scale}"
    )
    prompts = args.prompt or ["Describe your morning in two sentences.", "How do you feel about Mondays?"]
    runs = (
        ("unsteered", []),
        (f"steered +{args.scale} x (happy - sad) at layer {layer}", [steer]),
        (f"steered -{args.scale} x (happy - sad) at layer {layer}", [dataclasses.replace(steer, scale=-args.scale)]),
    )
    for label, ivs in runs:
        t = time.perf_counter()
        out = generate(
            model, prompts, tokenizer=tok, max_new_tokens=args.max_new_tokens, greedy=True, interventions=ivs
        )
        print(f"\n=== {label}  [{time.perf_counter() - t:.1f} s, compile included]")
        assert out.texts is not None  # generated with a tokenizer
        for p, text in zip(prompts, out.texts, strict=True):
            print(f">>> {p}\n{text.strip()}")
    if args.save:
        np.save(args.save, vectors)
        print(f"\nsaved the [L, d] contrast vectors to {args.save}")
        print(
            f'\nnext:\n  jaxsteer generate --prompt "Tell me a joke." --steer {args.save} --layers {layer} '
            f"--scale {args.scale} --greedy\n  jaxsteer lens --vectors {args.save}"
        )
    else:
        print(
            "\nnext: `jaxsteer demo --save vectors.npy` keeps the vectors; "
            "`jaxsteer train experiments/smollm2_arithmetic_steering.yaml` RL-trains them"
        )


__all__ = ["add_parsers", "cmd_info", "cmd_generate", "cmd_demo", "steer_from_file"]
