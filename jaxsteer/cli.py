"""Command line: `jaxsteer info | generate | demo`."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

DEFAULT_MODEL = "smollm2-135m-instruct"


def _dtype(name: str):
    import jax.numpy as jnp

    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "f32": jnp.float32}[name]
    except KeyError:
        raise SystemExit(f"unknown dtype {name!r}; use float32 or bfloat16") from None


def cmd_info(args) -> None:
    from .models.loading import load

    model, tok = load(args.model, dtype=_dtype(args.dtype), tokenizer=False)
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


def _steer_from_file(path: str, scale: float, layers: list[int] | None, site: str, n_layers: int):
    import jax.numpy as jnp

    from .models.interventions import Steer

    vec = np.load(path)
    if vec.ndim not in (1, 2):
        raise SystemExit(f"{path}: expected a [d] or [L, d] array, got shape {vec.shape}")
    if vec.ndim == 2 and vec.shape[0] != n_layers:
        raise SystemExit(f"{path}: {vec.shape[0]} layer vectors for a model with {n_layers} layers")
    return Steer(jnp.asarray(vec, jnp.float32), scale=scale, site=site, layers=tuple(layers) if layers else None)


def cmd_generate(args) -> None:
    from .models.generate import generate
    from .models.loading import load

    model, tok = load(args.model, dtype=_dtype(args.dtype))
    interventions = []
    if args.steer:
        interventions.append(_steer_from_file(args.steer, args.scale, args.layers, args.site, model.config.n_layers))
    t0 = time.perf_counter()
    out = generate(
        model,
        args.prompt,
        tokenizer=tok,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        greedy=args.greedy,
        seed=args.seed,
        interventions=interventions,
        chat=not args.no_chat,
    )
    dt = time.perf_counter() - t0
    for prompt, text in zip(args.prompt, out.texts):
        print(f">>> {prompt}\n{text}\n")
    print(f"[{int(out.lengths.sum())} tokens in {dt:.1f} s, compile included]", file=sys.stderr)


def cmd_demo(args) -> None:
    """Load the default model; generate with and without a contrastive steering vector."""
    import jax.numpy as jnp

    from .analysis.vectors import contrast_vector
    from .models.generate import generate
    from .models.interventions import Steer
    from .models.loading import load

    t0 = time.perf_counter()
    model, tok = load(args.model)
    c = model.config
    print(f"loaded {args.model}: {c.architecture}, {c.n_layers} layers, d={c.d_model}, "
          f"{c.n_params() / 1e6:.0f}M parameters ({time.perf_counter() - t0:.1f} s)")
    positive = [
        "I love this, it is wonderful and makes me so happy!",
        "What a beautiful, joyful, delightful day.",
        "Everything is great, I feel fantastic and grateful.",
        "This is the best news ever, I am thrilled!",
    ]
    negative = [
        "I hate this, it is awful and makes me so sad.",
        "What a miserable, gloomy, terrible day.",
        "Everything is bad, I feel horrible and bitter.",
        "This is the worst news ever, I am devastated.",
    ]
    vectors = contrast_vector(model, tok, positive, negative, chat=False)
    layer = args.layer if args.layer is not None else c.n_layers // 3
    steer = Steer(jnp.asarray(vectors[layer]), scale=args.scale, layers=(layer,))
    print(f"steering vector: happy minus sad, resid_post of layer {layer}, "
          f"norm {float(np.linalg.norm(vectors[layer])):.2f}, scale {args.scale}")
    prompts = args.prompt or ["Describe your morning in two sentences.", "How do you feel about Mondays?"]
    runs = (
        ("unsteered", []),
        (f"steered +{args.scale} x (happy - sad) at layer {layer}", [steer]),
        (f"steered -{args.scale} x (happy - sad) at layer {layer}", [steer.replace(scale=-args.scale)]),
    )
    for label, ivs in runs:
        t = time.perf_counter()
        out = generate(model, prompts, tokenizer=tok, max_new_tokens=args.max_new_tokens, greedy=True, interventions=ivs)
        print(f"\n=== {label}  [{time.perf_counter() - t:.1f} s, compile included]")
        for p, text in zip(prompts, out.texts):
            print(f">>> {p}\n{text.strip()}")
    if args.save:
        np.save(args.save, vectors)
        print(f"\nsaved the [L, d] contrast vectors to {args.save}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jaxsteer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture, sizes and dtype of a model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="hub id, HF directory, .gguf file or alias")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="sample completions, optionally steered")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--steer", help=".npy file with a [d] or [L, d] steering vector")
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--layers", type=int, nargs="*", help="layers to steer (default: all)")
    p.add_argument("--site", default="resid_post")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("demo", help="the main job: load the default model, generate with and without steering")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompt", action="append")
    p.add_argument("--layer", type=int)
    p.add_argument("--scale", type=float, default=1.5)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--save", help="write the contrast vectors [L, d] to this .npy file")
    p.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
