"""Does llama.cpp steer as jaxsteer does? Greedy continuations with an exported control vector.

    python -m benchmarks.llamacpp_steering                    # 24 prompts, 24 new tokens
    python -m benchmarks.llamacpp_steering --prompts 8 --new-tokens 12 --out cv.json

Writes an f32 GGUF of the default model (the Q4_1 weights dequantised: exactly the weights
jaxsteer loads, so quantisation does not decide the result) and a control vector (the sentiment
task's mean difference at one layer, exported with `save_control_vector`). llama-cpp-python loads
both: the vector file is read back with `load_control_vector` and laid out as llama.cpp's own
loader does (`control_vector_data`), then applied with `llama_apply_adapter_cvec`. Both sides
decode greedily from the same prompt token ids (SmolLM2's chat template); the report gives, per
prompt, whether the continuations agree token for token and where they first differ, with and
without the vector. Needs `pip install llama-cpp-python` (builds llama.cpp from source).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import tempfile

import numpy as np

from benchmarks.common import log


def sentiment_vector(model, tok, layer: int, scale: float) -> np.ndarray:
    """`scale *` the unit mean-difference direction (positive minus negative answers of the
    sentiment task, mean over the completion) at `layer`, zeros elsewhere: `[L, d]`."""
    from jaxsteer.steering import contrast_data, extract
    from jaxsteer.steering.evaluate import load_task

    task = load_task("sentiment")
    data = contrast_data(model, tok, pairs=task.pairs[:16], read="mean")
    md = extract("mean_difference", data)
    out = np.zeros_like(md)
    out[layer] = scale * md[layer] / np.linalg.norm(md[layer])
    return out


def _llama_greedy(llm, llama_cpp, prompt: list[int], n: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        t = int(np.argmax(logits))
        out.append(t)
        llm.eval([t])
    return out


def _apply_cvec(llm, llama_cpp, data: np.ndarray | None, n_embd: int, n_layers: int) -> None:
    apply = getattr(llama_cpp, "llama_apply_adapter_cvec", None) or llama_cpp.llama_control_vector_apply
    if data is None:
        rc = apply(llm.ctx, None, 0, n_embd, -1, -1)
    else:
        buf = np.ascontiguousarray(data, np.float32)
        rc = apply(llm.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), buf.size, n_embd, 1, n_layers - 1)
    if rc != 0:
        raise RuntimeError(f"llama.cpp refused the control vector (return code {rc})")


def compare(
    model,
    tok,
    vectors: np.ndarray,
    prompts: list[str],
    *,
    max_new_tokens: int = 24,
    workdir: str | None = None,
    threads: int = 2,
) -> dict:
    """Greedy continuations of `prompts` in jaxsteer and llama.cpp, with and without `vectors`."""
    import jax.numpy as jnp
    import llama_cpp

    import jaxsteer
    from jaxsteer.models.generate import tokenize_prompts
    from jaxsteer.models.loading import default_model_path
    from jaxsteer.steering.llamacpp import (
        control_vector_data,
        load_control_vector,
        save_control_vector,
        write_unquantized_gguf,
    )

    c = model.config
    workdir = workdir or tempfile.mkdtemp(prefix="cvec-")
    f32 = os.path.join(workdir, "smollm2-135m-instruct-f32.gguf")
    if not os.path.exists(f32):
        log("writing", f32)
        write_unquantized_gguf(str(default_model_path()), f32, "f32")
    cv_path = save_control_vector(os.path.join(workdir, "sentiment.gguf"), vectors, model_hint="llama")
    loaded, _ = load_control_vector(cv_path, n_layers=c.n_layers)
    ids = tokenize_prompts(tok, prompts)
    llm = llama_cpp.Llama(
        model_path=f32,
        n_ctx=max(map(len, ids)) + max_new_tokens + 8,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )
    rows = []
    for label, vec in (("unsteered", None), ("steered", loaded)):
        ivs = () if vec is None else jaxsteer.Steer(jnp.asarray(vec))
        ours = jaxsteer.generate(
            model, ids, max_new_tokens=max_new_tokens, greedy=True, stop_tokens=(), interventions=ivs
        ).tokens
        _apply_cvec(llm, llama_cpp, None if vec is None else control_vector_data(vec), c.d_model, c.n_layers)
        for i, p in enumerate(ids):
            theirs = _llama_greedy(llm, llama_cpp, p, max_new_tokens)
            same = [a == b for a, b in zip(ours[i].tolist(), theirs, strict=True)]
            first = same.index(False) if False in same else max_new_tokens
            rows.append(
                {
                    "run": label,
                    "prompt": prompts[i],
                    "jaxsteer": tok.decode(ours[i]),
                    "llama_cpp": tok.decode(theirs),
                    "exact": all(same),
                    "first_difference": first,
                    "agreement": float(np.mean(same)),
                    "llama_tokens": theirs,
                }
            )
            log(f"{label} {i}: exact={all(same)} first_diff={first}")
    steered = [r for r in rows if r["run"] == "steered"]
    plain = {r["prompt"]: r for r in rows if r["run"] == "unsteered"}
    return {
        "prompts": len(prompts),
        "new_tokens": max_new_tokens,
        "layer_norms": np.linalg.norm(vectors, axis=-1).tolist(),
        "exact_match": sum(r["exact"] for r in steered),
        "token_agreement": float(np.mean([r["agreement"] for r in steered])),
        "unsteered_exact_match": sum(r["exact"] for r in plain.values()),
        "steered_changed": sum(r["llama_tokens"] != plain[r["prompt"]]["llama_tokens"] for r in steered),
        "rows": [{k: v for k, v in r.items() if k != "llama_tokens"} for r in rows],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--scale", type=float, default=4.0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import jaxsteer
    from jaxsteer.steering.evaluate import load_task

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    task = load_task("sentiment")
    prompts = (task.test + task.validation)[: args.prompts]
    vectors = sentiment_vector(model, tok, args.layer, args.scale)
    result = compare(model, tok, vectors, prompts, max_new_tokens=args.new_tokens, workdir=args.workdir)
    result.update(layer=args.layer, scale=args.scale)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    log(
        f"steered: {result['exact_match']}/{result['prompts']} identical continuations, token agreement "
        f"{result['token_agreement']:.3f}; unsteered: {result['unsteered_exact_match']}/{result['prompts']}"
    )


if __name__ == "__main__":
    sys.exit(main())
