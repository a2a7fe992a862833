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
import json
import os
import re
import sys
import time

import numpy as np

from .errors import JaxsteerError

DEFAULT_MODEL = "smollm2-135m-instruct"


def _dtype(name: str):
    import jax.numpy as jnp

    try:
        return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "f32": jnp.float32}[name]
    except KeyError:
        raise SystemExit(f"unknown dtype {name!r}; use float32 or bfloat16") from None


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (so `--n 0` or `--n -5` is refused, not sliced)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {n}")
    return n


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


def read_vectors(path: str, flag: str = "--steer", command: str = "jaxsteer generate") -> np.ndarray:
    """A `[d]` or `[L, d]` array of real, finite numbers from a `.npy` file (or a `.safetensors`
    file holding one tensor, e.g. a run's `steering_vectors.safetensors`), read before any model
    loads; SystemExit naming the file and what is wrong with it."""
    from .models.validation import check_finite

    try:
        if path.endswith(".safetensors"):
            from safetensors.numpy import load_file

            tensors = load_file(path)
            if len(tensors) != 1:
                raise ValueError(f"holds {len(tensors)} tensors ({', '.join(sorted(tensors)[:4])}); expected one")
            vec = next(iter(tensors.values()))
        else:
            vec = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # missing, truncated, text, empty, pickled objects, ...
        raise SystemExit(f"{command}: {flag} {path}: not a readable array file ({' '.join(str(err).split())})") from None
    if not isinstance(vec, np.ndarray):
        raise SystemExit(f"{command}: {flag} {path}: an .npz archive, not one array; save one [d] or [L, d] array with np.save")
    if vec.ndim not in (1, 2) or vec.size == 0:
        raise SystemExit(f"{command}: {flag} {path}: expected a [d] or [L, d] array, got shape {vec.shape}")
    try:
        check_finite(vec, f"{flag} {path}")
    except ValueError as err:
        raise SystemExit(f"{command}: {err}") from None
    return vec


def _steer_from_file(vec: np.ndarray, path: str, scale: float, layers: list[int] | None, site: str, n_layers: int):
    import jax.numpy as jnp

    from .models.interventions import Steer

    if vec.ndim == 2 and vec.shape[0] != n_layers:
        raise SystemExit(f"{path}: {vec.shape[0]} layer vectors for a model with {n_layers} layers")
    return Steer(jnp.asarray(vec, jnp.float32), scale=scale, site=site, layers=tuple(layers) if layers else None)


def cmd_generate(args) -> None:
    from .models.generate import generate
    from .models.loading import load

    from .models.generate import check_sampling_args

    try:  # before the model loads
        check_sampling_args(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, greedy=args.greedy)
    except ValueError as e:
        raise SystemExit(f"jaxsteer generate: {e}") from None
    steer = read_vectors(args.steer) if args.steer else None
    run = None
    if args.run:
        if args.no_chat:
            raise SystemExit("jaxsteer generate: --no-chat does not apply with --run (prompts are formatted as the run trained)")
        from .train import load_run

        try:
            run = load_run(args.run)
        except (FileNotFoundError, ValueError) + _run_errors() as e:
            raise SystemExit(f"jaxsteer generate: {e}") from None
        model, tok = run.model, run.tokenizer
        print(f"[{run!r}]", file=sys.stderr)
    else:
        model, tok = load(args.model, dtype=_dtype(args.dtype))
    interventions = []
    if args.steer:
        interventions.append(_steer_from_file(steer, args.steer, args.scale, args.layers, args.site, model.config.n_layers))
    t0 = time.perf_counter()
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
              greedy=args.greedy, seed=args.seed, interventions=interventions)
    try:
        if run is not None:
            out = run.generate(args.prompt, **kw)
        else:
            out = generate(model, args.prompt, tokenizer=tok, chat=not args.no_chat, **kw)
    except ValueError as e:  # bad settings or inputs (e.g. a non-finite --steer vector): one line, exit 1
        raise SystemExit(f"jaxsteer generate: {e}") from None
    dt = time.perf_counter() - t0
    for prompt, text in zip(args.prompt, out.texts):
        print(f">>> {prompt}\n{text}\n")
    print(f"[{int(out.lengths.sum())} tokens in {dt:.1f} s, compile included]", file=sys.stderr)


def cmd_demo(args) -> None:
    """Load the default model; generate with and without a contrastive steering vector."""
    import jax.numpy as jnp

    from .steering.extract import contrast_vector
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
        print(f"\nnext:\n  jaxsteer generate --prompt \"Tell me a joke.\" --steer {args.save} --layers {layer} "
              f"--scale {args.scale} --greedy\n  jaxsteer lens --vectors {args.save}")
    else:
        print("\nnext: `jaxsteer demo --save vectors.npy` keeps the vectors; "
              "`jaxsteer train experiments/smollm2_arithmetic_steering.yaml` RL-trains them")


def _run_errors() -> tuple[type, ...]:
    """The errors a run reports as one line instead of a traceback."""
    from .models.gguf_file import GGUFError
    from .train.checkpoint import CheckpointError
    from .train.config import ConfigError
    from .train.data import DatasetError
    from .train.lock import RunLockedError
    from .train.run import NonFiniteError

    return ConfigError, DatasetError, CheckpointError, RunLockedError, NonFiniteError, GGUFError, FileNotFoundError


def cmd_train(args) -> None:
    """RL or ES training from a YAML config plus dotted overrides; prints held-out accuracy before/after."""
    import os

    from .train.config import ConfigError, load_config
    from .train import print_logit_lens, train
    from .train.distributed import initialize

    try:  # before any other JAX call
        initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed,
                   timeout=args.startup_timeout)
    except ValueError as e:
        raise SystemExit(f"jaxsteer train: {e}") from None
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"jaxsteer train: {e}") from None
    t0 = time.perf_counter()
    try:
        result = train(cfg, resume=args.resume)
    except _run_errors() as e:  # a bad config, a busy or damaged run directory, a diverged run: one line
        raise SystemExit(f"jaxsteer train: {type(e).__name__}: {e}") from None
    import jax

    if jax.process_index() != 0:
        return
    print(f"\ntraining finished in {time.perf_counter() - t0:.0f} s; run directory {os.path.abspath(cfg.output_dir)}")
    before, after = result.eval_before, result.eval_after
    if before and after and "greedy_acc" in before and "greedy_acc" in after:
        (bl, bh), (al, ah) = before["greedy_ci"], after["greedy_ci"]
        print(f"held-out greedy accuracy on {after['n']} problems: base {100 * before['greedy_acc']:.1f}% "
              f"[{100 * bl:.1f}, {100 * bh:.1f}] -> trained {100 * after['greedy_acc']:.1f}% [{100 * al:.1f}, {100 * ah:.1f}]")
    for name, path in result.files.items():
        print(f"  {name:20s} {path}")
    if "vectors_npy" in result.files and result.tokenizer is not None and args.logit_lens:
        print("\nlogit lens of the trained steering vectors (W_U @ s_l, no final norm): top / bottom tokens per layer")
        print_logit_lens(result.model, result.tokenizer, np.load(result.files["vectors_npy"]), k=args.logit_lens)
    print(next_steps(cfg.output_dir, has_vectors="vectors_npy" in result.files))


def next_steps(run_dir: str, *, has_vectors: bool) -> str:
    """The "next:" lines printed after training: evaluate, generate with, inspect the run."""
    lines = [f"\nnext:\n  jaxsteer eval {run_dir}                        # held-out accuracy with / without the trained part",
             f"  jaxsteer generate --run {run_dir} --prompt \"What is 17 + 25?\" --greedy   # generate as trained",
             f"  python -c \"import jaxsteer; run = jaxsteer.load_run('{run_dir}')\"   # the same from Python"]
    if has_vectors:
        lines.append(f"  jaxsteer lens --vectors {run_dir}/steering_vectors.npy   # logit lens of the vectors")
    return "\n".join(lines)


def cmd_eval(args) -> None:
    """Held-out accuracy of a trained run, with and without the trained part."""
    import os

    from .train.config import ConfigError, load_config
    from .train.evaluate import format_result
    from .train import evaluate_run

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
    try:
        cfg = load_config(path, overrides)
    except (ConfigError, FileNotFoundError) as e:
        raise SystemExit(f"jaxsteer eval: {e}") from None
    try:
        out = evaluate_run(cfg, step=args.step, base=not args.no_base)
    except _run_errors() as e:
        raise SystemExit(f"jaxsteer eval: {type(e).__name__}: {e}") from None
    print(f"checkpoint step {out['step']}, {out['n']} held-out problems ({cfg.data.eval})")
    for label in ("base", "trained"):
        if label in out:
            print(format_result(label, out[label]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


def cmd_lens(args) -> None:
    """Logit lens of steering vectors: print the top / bottom tokens per layer, write a PNG."""
    from .analysis.lens import vector_lens
    from .models.loading import load

    vec = read_vectors(args.vectors, "--vectors", "jaxsteer lens")  # before the model loads
    model, tok = load(args.model, dtype=_dtype(args.dtype))
    d, L = model.config.d_model, model.config.n_layers
    if vec.ndim not in (1, 2) or vec.shape[-1] != d or (vec.ndim == 2 and vec.shape[0] != L):
        raise SystemExit(f"{args.vectors}: expected a [d={d}] or [L={L}, d] array, got shape {vec.shape}")
    res = vector_lens(model, vec, final_norm=args.final_norm, k=args.top_k, tokenizer=tok)
    print(res.table())
    if args.out:
        print(f"wrote {res.plot(args.out)}", file=sys.stderr)


def cmd_patch(args) -> None:
    """Activation patching sweep of one site for a clean / corrupted prompt pair: heatmap PNG + JSON."""
    import os

    from .analysis import single_token_ids, tokenize_pair
    from .analysis.patching import activation_patching
    from .models.loading import load

    model, tok = load(args.model, dtype=_dtype(args.dtype))
    if tok is None:
        raise SystemExit(f"{args.model} has no tokenizer; jaxsteer patch needs one for the prompts")
    try:
        clean, corrupt = tokenize_pair(tok, args.clean, args.corrupt)
        answers = single_token_ids(tok, args.answers)
    except ValueError as e:
        raise SystemExit(f"jaxsteer patch: {e}") from None
    t0 = time.perf_counter()
    res = activation_patching(model, clean, corrupt, site=args.site, answers=answers, tokenizer=tok,
                              direction=args.direction, batch_size=args.batch_size)
    dt = time.perf_counter() - t0
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"patching_{args.site}")
    res.save_json(stem + ".json")
    res.plot(stem + ".png")
    labels = res.labels(res.axes[1]) if len(res.axes) > 1 else ["all"]
    print(f"{args.site} patching ({args.direction}), metric logit({args.answers[0]!r}) - logit({args.answers[1]!r}): "
          f"clean {res.clean_metric:.3f}, corrupted {res.corrupt_metric:.3f}; normalised values (0 = corrupted, 1 = clean)")
    print(f"columns ({res.axes[1] if len(res.axes) > 1 else 'all positions at once'}): " + ", ".join(labels))
    print("layer " + " ".join(f"{i:>8}" for i in range(len(labels))))
    for i, layer in enumerate(res.layers):
        row = np.atleast_1d(res.values[i])
        print(f"{layer:>5} " + " ".join(f"{v:>8.3f}" for v in row))
    print(f"wrote {stem}.png and {stem}.json [{dt:.1f} s, compile included]", file=sys.stderr)
    if args.compare:
        _compare_estimates(model, tok, clean, corrupt, answers, res, args.out)


def _compare_estimates(model, tok, clean, corrupt, answers, actual, out_dir) -> None:
    """Attribution and relevance patching (RelP) of the same sweep, each scored against `actual`."""
    import os

    from .analysis.patching import attribution_patching, compare_attribution, relevance_patching

    kw = dict(sites=(actual.site,), answers=answers, tokenizer=tok, direction=actual.direction, over=actual.axes)
    for name, fn in (("attribution", attribution_patching), ("relevance", relevance_patching)):
        t0 = time.perf_counter()
        est = fn(model, clean, corrupt, **kw)[actual.site]
        dt = time.perf_counter() - t0
        stem = os.path.join(out_dir, f"{name}_{actual.site}")
        est.save_json(stem + ".json")
        est.plot(stem + ".png")
        r = compare_attribution(est, actual)
        print(f"{name} patching vs activation patching ({actual.site}, {r['n']} entries): Pearson {r['pearson']:.3f}, "
              f"max |diff| {r['max_abs_diff']:.3f} [{dt:.1f} s, compile included]")


MODEL_HELP = "model: alias, GGUF file, HF directory or hub id (default: %(default)s)"
DTYPE_HELP = "weights' dtype: float32 (default) or bfloat16"


def quiet_absl() -> None:
    """Silence absl's INFO / WARNING lines (Orbax logs through absl) on the command line."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def build_parser() -> argparse.ArgumentParser:
    """The `jaxsteer` argument parser, every command registered."""
    parser = argparse.ArgumentParser(prog="jaxsteer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="architecture, sizes and dtype of a model")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="hub id, HF directory, .gguf file or alias")
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="sample completions, optionally steered")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--run", metavar="DIR", help="a trained run directory: its model, trained part and prompt format "
                                                "(as in training) replace --model and the chat template")
    p.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    p.add_argument("--steer", help=".npy file with a [d] or [L, d] steering vector")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier of the --steer vector (default 1)")
    p.add_argument("--layers", type=int, nargs="*", help="layers to steer (default: all)")
    p.add_argument("--site", default="resid_post", help="site the --steer vector is added at (default resid_post; "
                                                        "TransformerLens names work too)")
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
    p.add_argument("--prompt", action="append", help="prompt to generate for (repeat for several; default: three built in)")
    p.add_argument("--layer", type=int, help="layer to steer at (default: the middle layer)")
    p.add_argument("--scale", type=float, default=1.5, help="multiplier of the contrast vector (default 1.5)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens to generate per prompt (default 48)")
    p.add_argument("--save", help="write the contrast vectors [L, d] to this .npy file")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="RL (GRPO family) or ES (es | eggroll | essa) training from a YAML config")
    p.add_argument("config", help="YAML config (see experiments/)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainable.kind=lora lr=1e-4")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    p.add_argument("--output-dir", help="same as output_dir=DIR")
    p.add_argument("--logit-lens", type=int, default=5, help="top-k tokens per layer of the trained vectors (0 = off)")
    g = p.add_argument_group("multi-process runs (jax.distributed; or JAXSTEER_COORDINATOR / _NUM_PROCESSES / _PROCESS_ID)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, metavar="N", help="number of processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    g.add_argument("--startup-timeout", type=float, metavar="SECONDS",
                   help="give up (one line, exit 1) when the processes have not all joined by then "
                        "(default 120; or JAXSTEER_STARTUP_TIMEOUT)")
    g.add_argument("--distributed", action="store_true",
                   help="join with JAX's cluster detection (TPU pods, SLURM, Open MPI) instead of explicit values")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out accuracy of a trained run, with and without the trained part")
    p.add_argument("run", help="a run directory (with config.yaml and checkpoints/) or a YAML config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    p.add_argument("--n", type=_positive_int, help="number of held-out problems")
    p.add_argument("--samples", type=int, help="k for sampled pass@1 (0 = greedy only)")
    p.add_argument("--no-base", action="store_true", help="skip the base model")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_eval)

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
    p.add_argument("--answers", nargs=2, required=True, metavar=("CORRECT", "WRONG"),
                   help="single-token answers, e.g. ' Paris' ' Rome'; metric = logit difference at the last position")
    p.add_argument("--site", default="resid_pre", help="site to patch (default resid_pre; TransformerLens names work too)")
    p.add_argument("--direction", default="denoise", choices=("denoise", "noise"),
                   help="denoise: clean values into the corrupted run (default); noise: the reverse")
    p.add_argument("--batch-size", type=int, default=32, help="patched runs per vmapped chunk (default 32)")
    p.add_argument("--compare", action="store_true",
                   help="also run attribution and relevance patching (RelP) and print each one's Pearson r against it")
    p.add_argument("--out", default="runs/patching", help="output directory for the PNG and JSON (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help=DTYPE_HELP)
    p.set_defaults(func=cmd_patch)

    from .sae.commands import add_parser as add_sae_parser

    add_sae_parser(sub)  # jaxsteer sae train | eval

    from .steering.commands import add_parser as add_steer_parser

    add_steer_parser(sub)  # jaxsteer steer extract | apply | eval | export | import

    from .train.plan import add_parser as add_plan_parser

    add_plan_parser(sub)  # jaxsteer plan CONFIG --mesh ... --device ...
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run one command; every expected failure ends as one line and exit status 1 (set
    JAXSTEER_TRACEBACK=1 for the traceback)."""
    quiet_absl()
    args = parse_args(argv)
    command = " ".join(filter(None, ("jaxsteer", args.command, getattr(args, "sae_command", None),
                                     getattr(args, "steer_command", None))))
    try:
        args.func(args)
    except (JaxsteerError, OSError, ValueError) as err:
        if os.environ.get("JAXSTEER_TRACEBACK"):
            raise
        raise SystemExit(describe_error(command, err)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed; `key=value` overrides may come before or after the --flags."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides after --flags; anything else is an error as before
        if not hasattr(args, "overrides") or not all(_OVERRIDE.match(x) for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    return args


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def describe_error(command: str, err: BaseException) -> str:
    """One line for a failure: `command: Type: message`. An OSError anywhere in the chain of
    causes wins, with its path and errno (a disk-full write that made TensorBoard's writer fail
    afterwards is reported as the disk being full, not as the writer's closed handle)."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ if seen.__cause__ is not None else None if seen.__suppress_context__ else seen.__context__
    os_err = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
    if os_err is not None:
        code = errno.errorcode.get(os_err.errno, str(os_err.errno))
        where = f"{os_err.filename}: " if os_err.filename else ""
        return f"{command}: {type(os_err).__name__}: {where}{os_err.strerror or os_err} ({code})"
    text = " ".join(str(err).split())
    return f"{command}: {text}" if text.startswith(type(err).__name__) else f"{command}: {type(err).__name__}: {text}"


if __name__ == "__main__":
    main()
