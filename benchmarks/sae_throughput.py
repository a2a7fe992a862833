"""SAE training throughput, jaxsteer vs SAELens, on the same cached activations, same process.

    python -m benchmarks.sae_throughput [--batch 4096] [--expansion 16] [--k 32] [--rounds 6]
    python -m benchmarks.sae_throughput --quick     # batch 1024, 3 rounds

Activations: SmolLM2-135M-Instruct, residual stream after layer 15 (d = 576), from the on-disk
cache that `experiments/sae_topk.yaml` builds (or harvested here with jaxsteer when missing).
Every side trains a TopK SAE (d_sae = 16 x 576 = 9216, k = 32) with Adam, gradient-norm clipping
at 1 and AuxK on dead latents (k_aux = d/2, coefficient 1/32), with the dead window at both
libraries' default of 1000 batches. So that AuxK runs in a short benchmark, both start from the
same dead-latent counters: a random `--dead-fraction` (default 0.1) of the latents has not fired
for 1000 batches (what a run some way into training looks like); the counters then evolve as in
training on each side.

- jaxsteer: `jaxsteer.train.sae.make_step` (one jitted step: sparse decoder and encoder-gradient
  scatter, unit-norm decoder rows after each update, no activation rescaling).
- SAELens, the body of its `SAETrainer._train_step` (`TopKTrainingSAE.training_forward_pass` +
  backward + `clip_grad_norm_` + Adam + fired-latent bookkeeping), in two configurations, both
  reported: `sae_lens_sparse` (the headline peer, its fastest like-for-like setting:
  `use_sparse_activations=True`, and `rescale_acts_by_decoder_norm=False` to match jaxsteer, which
  keeps decoder rows at unit norm instead) and `sae_lens_default` (its training defaults: dense
  activations, `rescale_acts_by_decoder_norm=True`).

Steps interleave across the sides together with each framework's float32 matmul reference
(jnp.dot for jaxsteer, torch.mm for SAELens, `--peak-n`), timed by wall clock and process CPU
time (OMP_WAIT_POLICY=PASSIVE, see `benchmarks.common`). MFU = model FLOPs / time / that
framework's matmul rate in the same rounds, checked against the rate it measured idle before the
rounds (`benchmarks.common.MatmulReference`). Model FLOPs per step, one count for every side:
2 B d F (the encoder forward) + 6 B k d (decoder forward and its two gradients over the k active
latents) + 6 B k_aux d when latents are dead (AuxK's decode); the encoder's weight gradient is
counted as the O(B k d) scatter it needs to be, so a dense implementation's extra work shows as
lower MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (  # noqa: E402  (sets OMP_WAIT_POLICY before torch loads)
    MatmulReference,
    interleaved_times,
    log,
    machine_info,
    matmul_peak_call,
    mfu_entry,
    package_version,
    thread_policy,
    torch_matmul_call,
)

CACHE = "runs/sae_cache/smollm2_l15_resid_post_general.npy"
DEAD_WINDOW = 1000  # batches; SAELens's dead_feature_window and jaxsteer's dead_batches default


def activations(n_min: int) -> np.ndarray:
    if os.path.exists(CACHE) and len(np.load(CACHE, mmap_mode="r")) >= n_min:
        return np.load(CACHE, mmap_mode="r")
    import jaxsteer
    from jaxsteer.train.sae.activations import ActivationStream, cache_activations, pack_tokens, read_texts

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    w = pack_tokens(read_texts("py:jaxsteer.train.sae.corpora:general_text"), tok, 128, tok.bos_token_id)
    stream = ActivationStream(model, w, site="resid_post", layer=15, batch_size=1024, buffer_batches=16)
    os.makedirs(os.path.dirname(CACHE), exist_ok=True)
    cache_activations(stream, -(-n_min // 1024), CACHE)
    return np.load(CACHE, mmap_mode="r")


def jax_stepper(d, F, k, lr, since0):
    import jax
    import jax.numpy as jnp

    from jaxsteer import sae
    from jaxsteer.train.sae.step import StepConfig, init_state, make_optimizer, make_step

    cfg = sae.SAEConfig(kind="topk", d_in=d, d_sae=F, k=k)
    scfg = StepConfig(lr=lr, total_steps=10**6, grad_clip=1.0, k_aux=d // 2, aux_coef=1 / 32, dead_batches=DEAD_WINDOW)
    tx = make_optimizer(scfg)
    step = make_step(cfg, scfg, tx)
    state = init_state(sae.init_sae(cfg, jax.random.PRNGKey(0)), tx)
    state = [dict(state, since_fired=jnp.asarray(since0, jnp.int32))]

    def run(x):
        state[0], m = step(state[0], jnp.asarray(x))
        jax.block_until_ready(m["loss"])
        return {"fvu": float(m["fvu"]), "dead_fraction": float(m["dead_fraction"])}

    return run


def torch_stepper(d, F, k, lr, since0, sparse: bool, rescale: bool):
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d,
            d_sae=F,
            k=k,
            aux_loss_coefficient=1 / 32,
            use_sparse_activations=sparse,
            rescale_acts_by_decoder_norm=rescale,
        )
    )
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    since = torch.as_tensor(np.asarray(since0), dtype=torch.float32).clone()
    n = [0]

    def run(x):
        xt = torch.from_numpy(np.ascontiguousarray(x))
        coeffs = (
            {name: c.value for name, c in sae.get_coefficients().items()} if hasattr(sae, "get_coefficients") else {}
        )
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=xt,
                coefficients=coeffs,
                dead_neuron_mask=since >= DEAD_WINDOW,
                n_training_steps=n[0],
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            acts = out.feature_acts.to_dense() if out.feature_acts.is_sparse else out.feature_acts
            fired = acts.bool().float().sum(-2).bool()
            since.add_(1)
            since[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        n[0] += 1
        with torch.no_grad():
            fvu = float(((out.sae_out - xt) ** 2).sum() / ((xt - xt.mean(0)) ** 2).sum())
        return {"fvu": fvu, "dead_fraction": float((since >= DEAD_WINDOW).float().mean())}

    return run


def model_flops(B: int, d: int, F: int, k: int, dead: bool) -> float:
    """One count for every side (see the module docstring)."""
    return 2.0 * B * d * F + 6.0 * B * k * d + (6.0 * B * (d // 2) * d if dead else 0.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument(
        "--dead-fraction", type=float, default=0.1, help="latents dead (for DEAD_WINDOW batches) at the start"
    )
    ap.add_argument("--peak-n", type=int, default=1024, help="size of the square matmul each side's MFU divides by")
    ap.add_argument("--quick", action="store_true", help="batch 1024, 3 rounds")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.rounds = 1024, 3
    acts = activations(args.batch * (args.rounds + 2))
    d = acts.shape[1]
    F, B = args.expansion * d, args.batch
    batches = [np.asarray(acts[i * B : (i + 1) * B], np.float32) for i in range(min(len(acts) // B, args.rounds + 2))]
    rng = np.random.RandomState(0)
    since0 = np.where(rng.rand(F) < args.dead_fraction, DEAD_WINDOW, 0).astype(np.int32)
    log(
        f"{len(acts)} cached activations, d={d}, d_sae={F}, k={args.k}, batch={B}, "
        f"dead at start {np.mean(since0 > 0):.2f}"
    )
    runners = {
        "jaxsteer": jax_stepper(d, F, args.k, args.lr, since0),
        "sae_lens_sparse": torch_stepper(d, F, args.k, args.lr, since0, sparse=True, rescale=False),
        "sae_lens_default": torch_stepper(d, F, args.k, args.lr, since0, sparse=False, rescale=True),
    }
    refs = {
        "jax": MatmulReference("jnp.dot", *matmul_peak_call(args.peak_n)).idle(),
        "torch": MatmulReference("torch.mm", *torch_matmul_call(args.peak_n)).idle(),
    }
    info = {name: run(batches[0]) for name, run in runners.items()}  # warm-up (jit compile) + first step
    it = {name: iter(batches[1:] * 10) for name in runners}
    calls = {name: (lambda r=run, n=name: info.__setitem__(n, r(next(it[n])))) for name, run in runners.items()}
    calls.update({f"matmul_{k}": ref.call for k, ref in refs.items()})
    wall, cpu = interleaved_times(
        calls, args.rounds, on_result=lambda k, w, c: log(f"{k}: {w:.3f} s wall, {c:.3f} s cpu")
    )
    ref_reports = {k: ref.report(wall[f"matmul_{k}"], cpu[f"matmul_{k}"]) for k, ref in refs.items()}
    flops = model_flops(B, d, F, args.k, dead=args.dead_fraction > 0)
    res: dict = {
        "peer": "SAELens " + package_version("sae-lens") + " TopKTrainingSAE: sae_lens_sparse (headline: "
        "use_sparse_activations=True, rescale_acts_by_decoder_norm=False, matching jaxsteer) and "
        "sae_lens_default (dense, rescale_acts_by_decoder_norm=True); AuxK on both sides, dead window "
        f"{DEAD_WINDOW} batches, {args.dead_fraction:.0%} of latents dead at the start"
    }
    for name in runners:
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        ref = ref_reports["jax" if name == "jaxsteer" else "torch"]
        res[name] = {
            "step_s": w,
            "cpu_s": c,
            "activations_per_s": B / w,
            "mfu": mfu_entry(flops, w, c, ref),
            **info[name],
        }
    for peer in ("sae_lens_sparse", "sae_lens_default"):
        res[f"ratio_wall_{peer}"] = res[peer]["step_s"] / res["jaxsteer"]["step_s"]
        res[f"ratio_cpu_{peer}"] = res[peer]["cpu_s"] / res["jaxsteer"]["cpu_s"]
    res.update(
        matmul_references=ref_reports,
        model_flops_per_step=flops,
        setup={
            "d": d,
            "d_sae": F,
            "k": args.k,
            "batch": B,
            "rounds": args.rounds,
            "dead_window": DEAD_WINDOW,
            "dead_fraction_at_start": args.dead_fraction,
        },
        thread_policy=thread_policy(),
        machine=machine_info(),
        command="python -m benchmarks.sae_throughput " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    j = res["jaxsteer"]
    for peer in ("sae_lens_sparse", "sae_lens_default"):
        s_ = res[peer]
        log(
            f"jaxsteer {j['activations_per_s']:.0f} act/s vs {peer} {s_['activations_per_s']:.0f} act/s: "
            f"{res[f'ratio_wall_{peer}']:.2f}x wall, {res[f'ratio_cpu_{peer}']:.2f}x CPU time"
        )
    return res


if __name__ == "__main__":
    main()
