"""One RL step (rollouts + update), jaxsteer vs TRL's GRPOTrainer, side by side in one run.

    python -m benchmarks.rl_step                   # 4 prompts x G=8, 12 new tokens, 3 timed steps
    python -m benchmarks.rl_step --no-trl --json out.json
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.rl_step --no-trl --no-rss --devices 1,2

Both sides use SmolLM2-135M-Instruct dequantised to float32 from the same GGUF file (jaxsteer's
loader / transformers' GGUF loader), the same 2-digit addition prompts and chat format, the same
batch (P prompts x G completions) and exactly the same completion length (stop tokens off on
both sides: every row generates `--new-tokens` tokens), temperature 1, no KL (beta 0), no
reference model, one optimizer step per batch, AdamW, gradient clipping. A step is timed from
taking the prompts to the updated parameters, after one warm-up step on each side (jaxsteer's
compile, torch's first-call overheads); medians of wall time and of process CPU time (all
threads; less sensitive than wall time to other work on a shared machine). TRL trains the full model (it has no steering-vector
mode); jaxsteer is timed for steering vectors (the library's purpose) and for full fine-tuning
(like for like). Also reported: rollout vs update share, and the peak RSS of a steering and a
full fine-tuning process (each measured in its own subprocess).

MFU (model FLOPs utilisation) of jaxsteer's rollout, update and whole step: model FLOPs per
second over the rate of a large matmul (`n x n`, `--peak-n`, in the model's dtype) timed once
per step in the same loop, so both see the same load; by wall time and by process CPU time (the
CPU-time figure is the robust one on a shared machine). Model FLOPs (`benchmarks.common.FLOP_COUNT`):
rollout = each prompt's prefill once (its real tokens) + one forward per further completion
token per row (`generate_flops`); update = the same forward (grouped scoring runs each prompt
once) x 2 for steering vectors and LoRA (the backward needs activation gradients only; LoRA's
own weight gradients are negligible) or x 3 for full fine-tuning (weight gradients too);
step = rollout + update. Rewards, the optimizer and (with remat) recomputation are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from .common import generate_flops, log, machine_info, matmul_peak_call, mfu

TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def _problems(n: int):
    from jaxsteer.train.data import arithmetic_problems

    return arithmetic_problems(n, digits=2, seed=0, split="train")


# --------------------------------------------------------------------------- jaxsteer


def jaxsteer_steps(kind: str, prompts: int, group: int, new_tokens: int, steps: int, model=None, tok=None,
                   devices: int = 1, peak_n: int = 1024) -> dict[str, Any]:
    """Warm-up + `steps` timed RL steps with jaxsteer's own learner pieces (rl.rollout.collect + the jitted step),
    rollouts and update data-parallel over the first `devices` devices; with each step's model FLOPs
    and a `peak_n`-sized matmul timed after it, and the phases' MFU (`out["mfu"]`)."""
    import jax

    import jaxsteer
    from jaxsteer.train.build import encode_prompt
    from jaxsteer.train.config import config_from_dict
    from jaxsteer.train.rewards import correctness_reward
    from jaxsteer.train.rl.learner import setup_training
    from jaxsteer.train.rl.losses import group_advantages
    from jaxsteer.train.rl.rollout import collect
    from jaxsteer.train.rl.step import compile_step
    from jaxsteer.train.sharding import global_batch, make_mesh, replicated
    from jaxsteer.train.trainable import build_policy

    if model is None:
        model, tok = jaxsteer.load("smollm2-135m-instruct")
    cfg = config_from_dict({
        "trainable": {"kind": kind},
        "algorithm": {"group_size": group, "prompts_per_step": prompts},
        "sampling": {"max_new_tokens": new_tokens, "bucket": 1},
        "lr": 1e-6 if kind == "full" else 1e-2,
        "steps": steps + 1,
    })
    mesh = make_mesh(devices=jax.devices()[:devices])
    setup = setup_training(cfg, model, mesh)
    step_fn = compile_step(setup.spec, setup.tx, base_shardings=setup.base_shardings,
                           state_shardings=setup.state_shardings, batch_shardings=setup.batch_shardings,
                           metric_sharding=replicated(mesh))
    state = setup.state
    problems = _problems(prompts * (steps + 1))
    peak_call, peak_flops = matmul_peak_call(peak_n, str(model.params["embed"].dtype))
    times = []
    for i in range(steps + 1):
        exs = problems[i * prompts:(i + 1) * prompts]
        t0, c0 = time.perf_counter(), time.process_time()
        ids = [encode_prompt(e, tok, TEMPLATE) for e in exs]
        m, ivs = build_policy(setup.model, state["trainable"], cfg.trainable)
        batch = collect(m, ivs, exs, ids, group_size=group, calls=1, tokenizer=tok, key=jax.random.PRNGKey(i),
                        reward_fn=correctness_reward, advantage_fn=lambda r: np.asarray(group_advantages(r, group, "rloo")),
                        sampling=cfg.sampling, stop_tokens=(), mesh=mesh)
        t1, c1 = time.perf_counter(), time.process_time()
        local = {"tokens": batch.tokens, "mask": batch.mask, "old_logp": batch.old_logp,
                 "advantages": batch.advantages, "rewards": batch.rewards}
        garr = {k: global_batch(v[None], mesh) for k, v in local.items()}
        state, metrics = step_fn(setup.model, state, garr, batch.prompt_width)
        jax.block_until_ready(state)
        t2, c2 = time.perf_counter(), time.process_time()
        assert int(batch.lengths.min()) == new_tokens, batch.lengths
        t3, c3 = time.perf_counter(), time.process_time()
        peak_call()  # the large-matmul rate, under the same load as this step
        times.append({"rollout_s": t1 - t0, "update_s": t2 - t1, "step_s": t2 - t0,
                      "rollout_cpu_s": c1 - c0, "update_cpu_s": c2 - c1, "step_cpu_s": c2 - c0,
                      "peak_flops_per_s": peak_flops / (time.perf_counter() - t3),
                      "peak_flops_per_cpu_s": peak_flops / (time.process_time() - c3),
                      **step_flops(model.config, kind, batch, group)})
        log(f"jaxsteer {kind} x{devices} device(s) step {i}{' (warm-up, compiles)' if i == 0 else ''}: "
            f"rollout {t1 - t0:.2f} s, update {t2 - t1:.2f} s")
    return _with_mfu(_summary(times[1:], warmup=times[0]))


def step_flops(cfg, kind: str, batch, group: int) -> dict[str, float]:
    """Model FLOPs of one RL step's rollout and update (see the module docstring)."""
    prompts = len(batch.rewards) // group
    prompt_len = float(batch.mask[::group, :batch.prompt_width].sum()) / prompts  # real tokens, padding excluded
    forward = generate_flops(cfg, prompts, len(batch.rewards), prompt_len, batch.tokens.shape[1] - batch.prompt_width)
    update = forward * (3.0 if kind == "full" else 2.0)
    return {"rollout_flops": forward, "update_flops": update, "step_flops": forward + update}


def _with_mfu(out: dict[str, Any]) -> dict[str, Any]:
    """MFU of each phase (median time and FLOPs) by wall and by CPU time, in `out["mfu"]`."""
    out["mfu"] = {f"{phase}{suffix}": mfu(out[f"{phase}_flops"], out[f"{phase}{t}"], out[f"peak_flops_per{p}"])
                  for phase in ("rollout", "update", "step")
                  for suffix, t, p in (("", "_s", "_s"), ("_cpu_time", "_cpu_s", "_cpu_s"))}
    return out


def _summary(times: list[dict], warmup: dict | None = None) -> dict[str, Any]:
    out = {k: statistics.median(t[k] for t in times) for k in times[0]}  # per-key medians
    out["rollout_share"] = out["rollout_s"] / (out["rollout_s"] + out["update_s"])
    out["all_steps"] = times
    if warmup is not None:
        out["warmup_step"] = warmup
    return out


# --------------------------------------------------------------------------- TRL


def trl_steps(prompts: int, group: int, new_tokens: int, steps: int, tok) -> dict[str, Any]:
    """Warm-up + `steps` timed GRPOTrainer steps on the GGUF model loaded by transformers (float32)."""
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from jaxsteer.models.loading import default_model_path
    from jaxsteer.train.rewards import correctness_reward

    path = default_model_path()
    t0 = time.perf_counter()
    gguf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # transformers flags a GGUF-loaded model as quantized (the Trainer then refuses full fine-tuning)
    # although its weights are dequantized float32: copy them into a plain model of the same config.
    config = gguf.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    hf.load_state_dict(gguf.state_dict())
    del gguf
    log(f"TRL: transformers loaded the GGUF in {time.perf_counter() - t0:.1f} s")
    problems = _problems(prompts * (steps + 1))
    ds = datasets.Dataset.from_list([{"prompt": TEMPLATE.format(prompt=e.prompt), "answer": e.answer} for e in problems])

    def reward(prompts, completions, answer, **kw):
        return [correctness_reward(p, c, a) for p, c, a in zip(prompts, completions, answer)]

    args = GRPOConfig(
        output_dir="/tmp/jaxsteer-bench-trl",
        per_device_train_batch_size=prompts * group,
        num_generations=group,
        gradient_accumulation_steps=1,
        max_completion_length=new_tokens,
        generation_kwargs={"min_new_tokens": new_tokens},
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        loss_type="dapo",  # token mean over the batch, like jaxsteer's token_mean
        scale_rewards="none",
        num_iterations=1,
        learning_rate=1e-6,
        max_grad_norm=2.0,
        max_steps=steps + 1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        shuffle_dataset=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        gradient_checkpointing=False,  # jaxsteer does not rematerialise either
    )
    trainer = GRPOTrainer(model=hf, reward_funcs=reward, args=args, train_dataset=ds, processing_class=tok)
    times: list[dict] = []
    gen_time = {"t": 0.0, "c": 0.0}
    original = trainer._generate_and_score_completions

    def timed_generate(*a, **kw):
        t, c = time.perf_counter(), time.process_time()
        out = original(*a, **kw)
        gen_time["t"] += time.perf_counter() - t
        gen_time["c"] += time.process_time() - c
        lengths = out["completion_mask"].sum(1)
        assert int(lengths.min()) == new_tokens, lengths
        return out

    trainer._generate_and_score_completions = timed_generate

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            gen_time["t"] = gen_time["c"] = 0.0
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            total, cpu = time.perf_counter() - self.t, time.process_time() - self.c
            times.append({"rollout_s": gen_time["t"], "update_s": total - gen_time["t"], "step_s": total,
                          "rollout_cpu_s": gen_time["c"], "update_cpu_s": cpu - gen_time["c"], "step_cpu_s": cpu})
            log(f"TRL step {len(times) - 1}{' (warm-up)' if len(times) == 1 else ''}: rollout {gen_time['t']:.2f} s, "
                f"update {total - gen_time['t']:.2f} s")

    trainer.add_callback(Timer())
    trainer.train()
    return _summary(times[1:], warmup=times[0])


# --------------------------------------------------------------------------- peak memory


def _rss_now_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_child(kind: str, prompts: int, group: int, new_tokens: int) -> None:
    """Load the model, then poll the resident set size while two RL steps (compile included) run."""
    import threading

    import jaxsteer

    model, tok = jaxsteer.load("smollm2-135m-instruct")
    after_load = _rss_now_mib()
    peak = [after_load]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_now_mib())
            time.sleep(0.02)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    jaxsteer_steps(kind, prompts, group, new_tokens, steps=1, model=model, tok=tok)
    done.set()
    t.join()
    print("RSS_MIB", after_load, peak[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, flush=True)


def peak_rss(kind: str, prompts: int, group: int, new_tokens: int) -> dict | None:
    """RSS (MiB) of a fresh process training `kind`: after loading the model, peak while training
    (polled every 20 ms), and the process high-water mark (loading included)."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.rl_step", "--rss-child", kind, "--prompts", str(prompts),
         "--group", str(group), "--new-tokens", str(new_tokens)],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_MIB"):
            after_load, train_peak, hwm = map(float, line.split()[1:])
            return {"after_load": after_load, "training_peak": train_peak, "training_extra": train_peak - after_load,
                    "process_high_water": hwm}
    log(f"peak RSS child ({kind}) failed:\n{proc.stderr[-2000:]}")
    return None


# --------------------------------------------------------------------------- main


def _device_scaling(result: dict, counts: list[int], args, model, tok) -> dict[str, Any]:
    """jaxsteer's RL step (steering, full) on each device count: wall time, process CPU time and
    CPU time per device."""
    print(f"\nOne RL step on 1..N devices: {args.prompts} prompts x G={args.group}, {args.new_tokens} new tokens, "
          f"median of {args.steps} steps")
    print(f"{'':30s} {'step s':>8s} {'rollout s':>10s} {'update s':>9s} {'CPU s':>7s} {'CPU s / device':>15s}")
    for kind in ("steering", "full"):
        for n in counts:
            r = result[f"jaxsteer_{kind}_x{n}"] = jaxsteer_steps(kind, args.prompts, args.group, args.new_tokens,
                                                                 args.steps, model, tok, devices=n)
            print(f"{kind + f' on {n} device(s)':30s} {r['step_s']:8.2f} {r['rollout_s']:10.2f} {r['update_s']:9.2f} "
                  f"{r['step_cpu_s']:7.2f} {r['step_cpu_s'] / n:15.2f}")
    result["loadavg_end"] = list(os.getloadavg())
    print(f"load average at start / end: {result['loadavg_start'][0]:.1f} / {result['loadavg_end'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result


def print_table(result: dict[str, Any], args) -> None:
    """The step-time table, MFU per phase, the ratios to TRL and peak memory (fills `speedup_vs_trl`)."""
    print(f"\nOne RL step: {args.prompts} prompts x G={args.group} = {args.prompts * args.group} rollouts of "
          f"{args.new_tokens} tokens (25-token prompts), SmolLM2-135M float32, CPU, median of {args.steps} steps")
    print(f"{'':28s} {'step s':>8s} {'rollout s':>10s} {'update s':>9s} {'rollout share':>14s} {'step CPU s':>11s}")
    rows = [("jaxsteer steering vectors", "jaxsteer_steering"), ("jaxsteer full fine-tuning", "jaxsteer_full"),
            ("TRL GRPOTrainer (full)", "trl_full")]
    for label, key in rows:
        r = result.get(key)
        if r:
            print(f"{label:28s} {r['step_s']:8.2f} {r['rollout_s']:10.2f} {r['update_s']:9.2f} {100 * r['rollout_share']:13.0f}%"
                  f" {r['step_cpu_s']:11.2f}")
    print_mfu(result)
    if "trl_full" in result and "jaxsteer_full" in result:
        trl = result["trl_full"]["step_s"]
        trl_cpu = result["trl_full"]["step_cpu_s"]
        result["speedup_vs_trl"] = {
            "steering": trl / result["jaxsteer_steering"]["step_s"],
            "full": trl / result["jaxsteer_full"]["step_s"],
            "steering_cpu": trl_cpu / result["jaxsteer_steering"]["step_cpu_s"],
            "full_cpu": trl_cpu / result["jaxsteer_full"]["step_cpu_s"],
        }
        sp = result["speedup_vs_trl"]
        print(f"speed-up over TRL (wall time): steering {sp['steering']:.1f}x, full fine-tuning {sp['full']:.1f}x; "
              f"(process CPU time): steering {sp['steering_cpu']:.1f}x, full fine-tuning {sp['full_cpu']:.1f}x")
    elif "trl_error" in result:
        print(f"TRL did not run: {result['trl_error']}")
    if result.get("peak_rss_mib"):
        for k, r in result["peak_rss_mib"].items():
            if r:
                print(f"memory, {k}: RSS {r['after_load']:.0f} MiB after loading the model, peak {r['training_peak']:.0f} MiB "
                      f"while training (+{r['training_extra']:.0f} MiB), process high-water mark {r['process_high_water']:.0f} MiB")


def print_mfu(result: dict[str, Any]) -> None:
    """MFU of jaxsteer's rollout, update and whole step (and TRL's, with the same FLOPs and the
    matmul rate measured during jaxsteer's full fine-tuning steps)."""
    rows = [("jaxsteer steering vectors", result.get("jaxsteer_steering")),
            ("jaxsteer full fine-tuning", result.get("jaxsteer_full"))]
    full, trl = result.get("jaxsteer_full"), result.get("trl_full")
    if full and trl:
        trl.update({k: full[k] for k in ("rollout_flops", "update_flops", "step_flops", "peak_flops_per_s",
                                         "peak_flops_per_cpu_s")})
        rows.append(("TRL GRPOTrainer (full)", _with_mfu(trl)))
    rows = [(label, r) for label, r in rows if r and "mfu" in r]
    if not rows:
        return
    peak = rows[0][1]
    print(f"MFU = model FLOPs per second / large-matmul rate ({peak['peak_flops_per_s'] / 1e9:.0f} GFLOP/s wall, "
          f"{peak['peak_flops_per_cpu_s'] / 1e9:.0f} GFLOP per CPU-s; FLOPs: see the module docstring)")
    print(f"{'':28s} {'rollout':>8s} {'update':>8s} {'step':>8s}   {'by CPU time: rollout':>20s} {'update':>7s} {'step':>7s}")
    for label, r in rows:
        m = r["mfu"]
        print(f"{label:28s} {m['rollout']:8.3f} {m['update']:8.3f} {m['step']:8.3f}   {m['rollout_cpu_time']:20.3f} "
              f"{m['update_cpu_time']:7.3f} {m['step_cpu_time']:7.3f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=12)
    p.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--only-trl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--quick", action="store_true", help="1 timed step, no TRL, no peak-RSS subprocesses")
    p.add_argument("--peak-n", type=int, default=1024, help="size of the square matmul whose rate MFU divides by")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--devices", default="1", help="comma-separated device counts for jaxsteer's mesh (virtual CPU "
                   "devices: set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.no_trl, args.no_rss = 1, True, True
    if args.rss_child:
        _rss_child(args.rss_child, args.prompts, args.group, args.new_tokens)
        return {}

    import jaxsteer

    result: dict[str, Any] = {
        "machine": machine_info(),
        "loadavg_start": list(os.getloadavg()),
        "setup": {"prompts": args.prompts, "group": args.group, "rollouts": args.prompts * args.group,
                  "new_tokens": args.new_tokens, "prompt_tokens": 25, "timed_steps": args.steps},
    }
    model, tok = jaxsteer.load("smollm2-135m-instruct")
    counts = [int(c) for c in args.devices.split(",")]
    if not args.only_trl and counts != [1]:
        return _device_scaling(result, counts, args, model, tok)
    if not args.only_trl:
        result["jaxsteer_steering"] = jaxsteer_steps("steering", args.prompts, args.group, args.new_tokens, args.steps, model, tok,
                                                    peak_n=args.peak_n)
        result["jaxsteer_full"] = jaxsteer_steps("full", args.prompts, args.group, args.new_tokens, args.steps, model, tok,
                                                peak_n=args.peak_n)
    del model
    if not args.no_trl:
        try:
            result["trl_full"] = trl_steps(args.prompts, args.group, args.new_tokens, args.steps, tok)
        except Exception as e:  # noqa: BLE001 - report why TRL could not run, keep our own numbers
            result["trl_error"] = f"{type(e).__name__}: {e}"
            log(f"TRL could not run: {result['trl_error']}")
    if not args.no_rss:
        result["peak_rss_mib"] = {k: peak_rss(k, args.prompts, args.group, args.new_tokens) for k in ("steering", "full")}
    result["loadavg_end"] = list(os.getloadavg())

    print_table(result, args)
    print(f"load average at start / end: {result['loadavg_start'][0]:.1f} / {result['loadavg_end'][0]:.1f} "
          f"({result['machine']['cores']} cores; other work on the machine skews absolute times)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result


if __name__ == "__main__":
    main()
