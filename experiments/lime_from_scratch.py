"""LIMe vs a plain decoder, both trained from scratch at tiny scale on text every machine has.

    nice -n 10 python experiments/lime_from_scratch.py [--steps 300] [--layers 6] [--out docs/figures]

Corpus: the Python documentation topics CPython ships (`jaxsteer.train.sae.corpora.general_text`), as
bytes (vocabulary 256, no tokenizer), the last 5% of the documents held out. Two Llama-style models
with the same seed, shapes and data order; one with `lime=True` (Layer-Integrated Memory, arXiv
2502.09245: each layer's keys / values are a learned per-head mix of every earlier layer's, see
`jaxsteer.models.decoder.lime_mix`). LIMe adds only the routing weights (`KV^2 * L(L+1)/2` numbers)
and one small einsum per layer. Reported: training and held-out loss curves, and the
representation-collapse measure of the paper, the matrix entropy of the value vectors by depth
(Shannon entropy of the normalised eigenvalues of their Gram matrix over held-out tokens; the
paper's Renyi alpha=0.99 in the alpha -> 1 limit), plus LIMe's learned routing. Writes
`lime_from_scratch.png` and `lime_from_scratch.json` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.decoder import forward
from jaxsteer.models.params import init_params
from jaxsteer.train.sae.corpora import general_text


def byte_corpus(held_out: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) byte streams of the Python documentation topics (documents kept whole)."""
    docs = [d.encode("utf-8", "replace") for d in general_text()]
    cut = int(len(docs) * (1 - held_out))
    join = lambda ds: np.frombuffer(b"\n\n".join(ds), np.uint8).astype(np.int32)  # noqa: E731
    return join(docs[:cut]), join(docs[cut:])


def model_config(layers: int, lime: bool) -> ModelConfig:
    return ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=256,
        d_model=64,
        n_layers=layers,
        n_heads=4,
        n_kv_heads=4,
        head_dim=16,
        d_mlp=192,
        norm_eps=1e-5,
        rope_full=RopeConfig(theta=10000.0),
        tie_word_embeddings=True,
        lime=lime,
        max_position_embeddings=1024,
    )


def next_token_loss(params, config, tokens):
    from jaxsteer.models.params import Model

    logits, _ = forward(Model(params, config), tokens[:, :-1])
    logz = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logz, tokens[:, 1:, None], axis=-1))


def batches(stream: np.ndarray, batch: int, length: int, steps: int, seed: int):
    """`steps` batches of random windows `[batch, length + 1]` (the same for both models)."""
    rng = np.random.RandomState(seed)
    for _ in range(steps):
        starts = rng.randint(0, len(stream) - length - 1, size=batch)
        yield np.stack([stream[s : s + length + 1] for s in starts])


def matrix_entropy(x: np.ndarray) -> float:
    """Shannon entropy of the normalised eigenvalues of `x x^T` (= of the squared singular values of
    `x [N, D]`): log(rank) for isotropic vectors, 0 when they all lie on one line."""
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False) ** 2
    p = s / s.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def value_entropy(model, tokens: np.ndarray) -> list[float]:
    """`matrix_entropy` of the value vectors (all KV heads concatenated) per layer over `tokens`."""
    _, trace = forward(model, tokens, record=("v",), return_logits=False)
    v = np.asarray(trace.v)  # [L, B, T, KV, hd]
    return [matrix_entropy(v[l].reshape(-1, v.shape[-2] * v.shape[-1])) for l in range(v.shape[0])]


def train_one(config: ModelConfig, train: np.ndarray, test: np.ndarray, args) -> dict:
    """Train from scratch; return the loss curves, the value entropies and (LIMe) the routing."""
    model = init_params(config, jax.random.PRNGKey(args.seed), scale=0.02)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(
            optax.warmup_cosine_decay_schedule(0.0, args.lr, max(1, args.steps // 20), args.steps), weight_decay=0.1
        ),
    )
    params, opt = model.params, tx.init(model.params)

    @jax.jit
    def step(params, opt, tokens):
        loss, grads = jax.value_and_grad(next_token_loss)(params, config, tokens)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    eval_loss = jax.jit(lambda p, t: next_token_loss(p, config, t))
    held = np.stack(list(batches(test, 32, args.length, 1, seed=1234))[0])
    curve, evals, t0 = [], [], time.perf_counter()
    name = "LIMe" if config.lime else "plain"
    for i, tokens in enumerate(
        tqdm(batches(train, args.batch, args.length, args.steps, args.seed), total=args.steps, desc=name)
    ):
        params, opt, loss = step(params, opt, jnp.asarray(tokens))
        curve.append(float(loss))
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            evals.append((i + 1, float(eval_loss(params, jnp.asarray(held)))))
    seconds = time.perf_counter() - t0
    trained = model.replace(params=params)
    out = {
        "train_loss": curve,
        "eval_loss": evals,
        "seconds": seconds,
        "n_params": config.n_params(),
        "value_entropy": value_entropy(trained, held[:16, :-1]),
    }
    if config.lime:
        _, trace = forward(trained, held[:1, :8], record=("lime_route",), return_logits=False)
        out["routing"] = np.asarray(trace.lime_route).tolist()  # [L, KV, L, KV]
    return out


def figure(results: dict, path: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, r in results.items():
        curve = np.asarray(r["train_loss"])
        k = max(1, len(curve) // 30)
        smooth = np.convolve(curve, np.ones(k) / k, mode="valid")
        (line,) = axes[0].plot(np.arange(k, len(curve) + 1), smooth, label=f"{name} train")
        steps, ev = zip(*r["eval_loss"], strict=True)
        axes[0].plot(steps, ev, "o--", color=line.get_color(), label=f"{name} held-out")
        axes[1].plot(np.arange(len(r["value_entropy"])), r["value_entropy"], "o-", label=name)
    axes[0].set(xlabel="step", ylabel="next-byte loss (nats)", title="loss")
    axes[0].legend()
    axes[1].set(
        xlabel="layer",
        ylabel="matrix entropy of value vectors (nats)",
        title="value-vector entropy by depth (higher = less collapse)",
    )
    axes[1].legend()
    w = np.abs(np.asarray(results["LIMe"]["routing"]))  # [L, KV, L, KV]
    im = axes[2].imshow(w.sum(axis=(1, 3)) / w.shape[1], cmap="viridis")
    axes[2].set(
        xlabel="source layer j", ylabel="reading layer l", title="LIMe routing: mean over heads of sum |w| from layer j"
    )
    fig.colorbar(im, ax=axes[2])
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/figures")
    args = p.parse_args(argv)
    train, test = byte_corpus()
    results = {
        name: train_one(model_config(args.layers, lime), train, test, args)
        for name, lime in (("plain", False), ("LIMe", True))
    }
    os.makedirs(args.out, exist_ok=True)
    figure(results, os.path.join(args.out, "lime_from_scratch.png"))
    summary = {
        name: {
            "final_eval_loss": r["eval_loss"][-1][1],
            "train_loss_last50": float(np.mean(r["train_loss"][-50:])),
            "seconds": r["seconds"],
            "n_params": r["n_params"],
            "value_entropy": [round(x, 3) for x in r["value_entropy"]],
        }
        for name, r in results.items()
    }
    summary["args"] = vars(args)
    with open(os.path.join(args.out, "lime_from_scratch.json"), "w") as f:
        json.dump(
            {
                **summary,
                "curves": {n: {"train_loss": r["train_loss"], "eval_loss": r["eval_loss"]} for n, r in results.items()},
            },
            f,
        )
    print(json.dumps(summary, indent=1))
    return results


if __name__ == "__main__":
    main()
