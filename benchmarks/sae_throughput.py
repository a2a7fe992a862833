"""SAE training throughput, jaxsteer vs SAELens, on the same cached activations, same process.

    python benchmarks/sae_throughput.py [--batch 4096] [--expansion 16] [--k 32] [--rounds 6]

Activations: SmolLM2-135M-Instruct, residual stream after layer 15 (d = 576), from the on-disk
cache that `experiments/sae_topk.yaml` builds (or harvested here with jaxsteer when missing).
Both sides train a TopK SAE (d_sae = 16 x 576 = 9216, k = 32) with Adam, AuxK on dead latents
(k_aux = d/2) and gradient-norm clipping at 1: SAELens through `TopKTrainingSAE.training_forward_pass`
+ backward + `clip_grad_norm_` + Adam step + fired-latent bookkeeping, i.e. the body of its
`SAETrainer._train_step`; jaxsteer through `jaxsteer.sae.make_step` (one jitted step, which also
renormalises decoder rows). Steps alternate between the two (interleaved rounds), each timed by
wall clock and by process CPU time. Prints activations/s, the ratios, and MFU: executed matmul
FLOPs / time / 170 GFLOP/s (this 2-core CPU's float32 matmul peak; `mfu_cpu` divides by CPU
seconds and the per-core peak, 85 GFLOP/s, so it is meaningful when other processes share the
cores). Executed FLOPs per step: SAELens (dense) 10 B d F (encoder forward, decoder forward,
decoder weight and input gradients, encoder weight gradient); jaxsteer 2 B d F (the encoder
forward; the decoder gathers k rows per example and the encoder's weight gradient is a
scatter of the k selected entries per row, both O(B k d)).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import interleaved_times, log  # noqa: E402

PEAK = 170e9
CACHE = "runs/sae_cache/smollm2_l15_resid_post_general.npy"


def activations(n_min: int) -> np.ndarray:
    if os.path.exists(CACHE):
        return np.load(CACHE, mmap_mode="r")
    import jaxsteer
    from jaxsteer.sae.activations import ActivationStream, cache_activations, pack_tokens, read_texts

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    w = pack_tokens(read_texts("py:jaxsteer.sae.corpora:general_text"), tok, 128, tok.bos_token_id)
    stream = ActivationStream(model, w, site="resid_post", layer=15, batch_size=1024, buffer_batches=16)
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    cache_activations(stream, max(1, n_min // 1024), CACHE)
    return np.load(CACHE, mmap_mode="r")


def jax_stepper(d, F, k, batch, lr):
    import jax
    import jax.numpy as jnp

    from jaxsteer import sae

    cfg = sae.SAEConfig(kind="topk", d_in=d, d_sae=F, k=k)
    scfg = sae.StepConfig(lr=lr, total_steps=10**6, grad_clip=1.0, k_aux=d // 2, aux_coef=1 / 32, dead_batches=10**6)
    from jaxsteer.sae.train import init_state, make_optimizer

    tx = make_optimizer(scfg)
    step = sae.make_step(cfg, scfg, tx)
    state = [init_state(sae.init_sae(cfg, jax.random.PRNGKey(0)), tx)]

    def run(x):
        state[0], m = step(state[0], jnp.asarray(x))
        jax.block_until_ready(m["loss"])
        return float(m["fvu"])

    return run


def torch_stepper(d, F, k, batch, lr):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=F, k=k, aux_loss_coefficient=1 / 32))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since = torch.zeros(F)
    n = [0]

    def run(x):
        xt = torch.from_numpy(np.ascontiguousarray(x))
        coeffs = {name: c.value for name, c in sae.get_coefficients().items()} if hasattr(sae, "get_coefficients") else {}
        out = sae.training_forward_pass(TrainStepInput(sae_in=xt, coefficients=coeffs, dead_neuron_mask=since > 10**6,
                                                       n_training_steps=n[0], is_logging_step=False))
        with torch.no_grad():
            fired = out.feature_acts.bool().float().sum(-2).bool()
            since.add_(1)
            since[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        n[0] += 1
        with torch.no_grad():
            return float(((out.sae_out - xt) ** 2).sum() / ((xt - xt.mean(0)) ** 2).sum())

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()
    acts = activations(args.batch * (args.rounds + 2))
    d = acts.shape[1]
    F, B = args.expansion * d, args.batch
    batches = [np.asarray(acts[i * B:(i + 1) * B], np.float32) for i in range(min(len(acts) // B, args.rounds + 2))]
    log(f"{len(acts)} cached activations, d={d}, d_sae={F}, k={args.k}, batch={B}")
    runners = {"jaxsteer": jax_stepper(d, F, args.k, B, args.lr), "sae_lens": torch_stepper(d, F, args.k, B, args.lr)}
    fvu = {name: run(batches[0]) for name, run in runners.items()}  # warm-up (jit compile) + first step
    it = {name: iter(batches[1:] * 10) for name in runners}
    wall, cpu = interleaved_times({name: (lambda r=run, n=name: fvu.__setitem__(n, r(next(it[n])))) for name, run in runners.items()},
                                  args.rounds, on_result=lambda k, w, c: log(f"{k}: {w:.3f} s wall, {c:.3f} s cpu"))
    flops = {"jaxsteer": 2 * B * d * F, "sae_lens": 10 * B * d * F}
    res = {}
    for name in runners:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        res[name] = {"step_s": w, "cpu_s": c, "activations_per_s": B / w, "mfu": flops[name] / w / PEAK,
                     "mfu_cpu": flops[name] / c / (PEAK / 2), "last_fvu": fvu[name]}
    res["ratio_wall"] = res["sae_lens"]["step_s"] / res["jaxsteer"]["step_s"]
    res["ratio_cpu"] = res["sae_lens"]["cpu_s"] / res["jaxsteer"]["cpu_s"]
    res["setup"] = {"d": d, "d_sae": F, "k": args.k, "batch": B, "rounds": args.rounds}
    print(json.dumps(res, indent=1))
    j, s = res["jaxsteer"], res["sae_lens"]
    print(f"jaxsteer {j['activations_per_s']:.0f} act/s (MFU {j['mfu']:.2f} wall, {j['mfu_cpu']:.2f} per CPU-second), "
          f"SAELens {s['activations_per_s']:.0f} act/s (MFU {s['mfu']:.2f} wall, {s['mfu_cpu']:.2f} per CPU-second): "
          f"{res['ratio_wall']:.2f}x wall, {res['ratio_cpu']:.2f}x CPU time")


if __name__ == "__main__":
    main()
