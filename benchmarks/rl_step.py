"""One RL step (rollouts + update), jaxsteer vs TRL's GRPOTrainer, side by side in one run.

    python -m benchmarks.rl_step                   # 4 prompts x G=8; 12, 128 and 256 new tokens; 5 timed rounds
    python -m benchmarks.rl_step --quick           # 2 prompts x G=4, 12 new tokens, 2 timed rounds, no RSS
    python -m benchmarks.rl_step --no-trl --json out.json
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m benchmarks.rl_step --no-trl --no-rss --devices 1,2

Pairs, like for like: jaxsteer LoRA vs TRL + PEFT LoRA (the headline: the same rank, alpha and
target projections, `LoraConfig(r=8, lora_alpha=16, target_modules=q,k,v,o,gate,up,down)`), and
jaxsteer full fine-tuning vs TRL full fine-tuning; jaxsteer's steering vectors are a third
jaxsteer row (TRL has no steering mode). All sides use SmolLM2-135M-Instruct dequantised to float32
from the same GGUF file (jaxsteer's loader / transformers' GGUF loader), the same 2-digit addition
prompts and chat format, the same batch (P prompts x G completions) and exactly the same
completion length (stop tokens off: every row generates `--new-tokens` tokens; the default runs
12, 128 and 256, since short completions favour jaxsteer's shared-prefix scoring), temperature 1,
no KL (beta 0), no reference model, one optimizer step per batch, AdamW, gradient clipping.

TRL runs at its defaults for a CPU (vLLM and Liger kernels need a GPU; `torch_compile` is off by
default and its generation is eager), transformers' sdpa attention, no gradient checkpointing
(jaxsteer does not rematerialise either). Each side does one untimed warm-up step (jaxsteer's
compile, torch's first-call overheads), then the sides take turns step by step (`--steps`
rounds, interleaved: TRL's trainer runs in a thread that a callback holds between steps), with
each framework's float32 matmul reference (jnp.dot / torch.mm, `--peak-n`) timed in the same
rounds. Medians of wall time and of process CPU time (all threads; OMP_WAIT_POLICY=PASSIVE,
see `benchmarks.common`). Also reported: rollout vs update share, and the peak RSS of a
steering and a full fine-tuning process (each measured in its own subprocess).

MFU (model FLOPs utilisation) of each side's rollout, update and whole step: model FLOPs per
second over its own framework's matmul rate in the same rounds, checked against the rate
measured idle (`benchmarks.common.MatmulReference`: flagged below 70% or when MFU > 1), by wall
and by CPU time. Model FLOPs (`benchmarks.common.FLOP_COUNT`), one count for both frameworks:
rollout = each prompt's prefill once (its real tokens) + one forward per further completion
token per row (`generate_flops`); update = the same forward x 2 for steering vectors and LoRA
(the backward needs activation gradients only; LoRA's own weight gradients are negligible) or
x 3 for full fine-tuning (weight gradients too); step = rollout + update.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

from .common import (
    MatmulReference,
    generate_flops,
    interleaved_times,
    log,
    machine_info,
    matmul_peak_call,
    mfu_entry,
    package_version,
    thread_policy,
    torch_matmul_call,
)

LORA = {"rank": 8, "alpha": 16.0}  # jaxsteer's TrainableConfig defaults; TRL's LoraConfig gets the same

TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def _problems(n: int):
    from jaxsteer.train.data import arithmetic_problems

    return arithmetic_problems(n, digits=2, seed=0, split="train")


# --------------------------------------------------------------------------- jaxsteer


class JaxsteerSide:
    """jaxsteer's RL step with its own learner pieces (rl.rollout.collect + the jitted step),
    rollouts and update data-parallel over the first `devices` devices; `step()` runs one and
    returns its times and model FLOPs."""

    def __init__(self, kind: str, prompts: int, group: int, new_tokens: int, steps: int, model, tok, devices: int = 1):
        import jax

        from jaxsteer.train.config import config_from_dict
        from jaxsteer.train.rl.learner import setup_training
        from jaxsteer.train.rl.step import compile_step
        from jaxsteer.train.sharding import make_mesh, replicated

        self.kind, self.group, self.prompts, self.new_tokens, self.tok, self.model = (
            kind,
            group,
            prompts,
            new_tokens,
            tok,
            model,
        )
        trainable = {
            "kind": kind,
            **({"lora_rank": LORA["rank"], "lora_alpha": LORA["alpha"]} if kind == "lora" else {}),
        }
        self.cfg = config_from_dict(
            {
                "trainable": trainable,
                "algorithm": {"group_size": group, "prompts_per_step": prompts},
                "sampling": {"max_new_tokens": new_tokens, "bucket": 1},
                "lr": {"full": 1e-6, "lora": 1e-4}.get(kind, 1e-2),
                "steps": steps + 1,
            }
        )
        self.mesh = make_mesh(devices=jax.devices()[:devices])
        self.setup = setup_training(self.cfg, model, self.mesh)
        self.step_fn = compile_step(
            self.setup.spec,
            self.setup.tx,
            base_shardings=self.setup.base_shardings,
            state_shardings=self.setup.state_shardings,
            batch_shardings=self.setup.batch_shardings,
            metric_sharding=replicated(self.mesh),
        )
        self.state = self.setup.state
        self.problems = _problems(prompts * (steps + 1))
        self.i = 0

    def step(self) -> dict[str, float]:
        import jax

        from jaxsteer.train.build import encode_prompt
        from jaxsteer.train.rewards import correctness_reward
        from jaxsteer.train.rl.losses import group_advantages
        from jaxsteer.train.rl.rollout import collect
        from jaxsteer.train.sharding import global_batch
        from jaxsteer.train.trainable import build_policy

        i, group = self.i, self.group
        exs = self.problems[(i * self.prompts) % len(self.problems) :][: self.prompts]
        t0, c0 = time.perf_counter(), time.process_time()
        ids = [encode_prompt(e, self.tok, TEMPLATE) for e in exs]
        m, ivs = build_policy(self.setup.model, self.state["trainable"], self.cfg.trainable)
        batch = collect(
            m,
            ivs,
            exs,
            ids,
            group_size=group,
            calls=1,
            tokenizer=self.tok,
            key=jax.random.PRNGKey(i),
            reward_fn=correctness_reward,
            advantage_fn=lambda r: np.asarray(group_advantages(r, group, "rloo")),
            sampling=self.cfg.sampling,
            stop_tokens=(),
            mesh=self.mesh,
        )
        t1, c1 = time.perf_counter(), time.process_time()
        local = {
            "tokens": batch.tokens,
            "mask": batch.mask,
            "old_logp": batch.old_logp,
            "advantages": batch.advantages,
            "rewards": batch.rewards,
        }
        garr = {k: global_batch(v[None], self.mesh) for k, v in local.items()}
        self.state, _ = self.step_fn(self.setup.model, self.state, garr, batch.prompt_width)
        jax.block_until_ready(self.state)
        t2, c2 = time.perf_counter(), time.process_time()
        assert int(batch.lengths.min()) == self.new_tokens, batch.lengths
        self.i += 1
        return {
            "rollout_s": t1 - t0,
            "update_s": t2 - t1,
            "step_s": t2 - t0,
            "rollout_cpu_s": c1 - c0,
            "update_cpu_s": c2 - c1,
            "step_cpu_s": c2 - c0,
            **step_flops(self.model.config, self.kind, batch, group),
        }


def jaxsteer_steps(
    kind: str, prompts: int, group: int, new_tokens: int, steps: int, model=None, tok=None, devices: int = 1
) -> dict[str, Any]:
    """Warm-up + `steps` timed RL steps of one jaxsteer side alone (device scaling, peak RSS)."""
    import jaxsteer

    if model is None:
        model, tok = jaxsteer.load("smollm2-135m-instruct")
    side = JaxsteerSide(kind, prompts, group, new_tokens, steps, model, tok, devices)
    times = []
    for i in range(steps + 1):
        times.append(side.step())
        log(
            f"jaxsteer {kind} x{devices} device(s) step {i}{' (warm-up, compiles)' if i == 0 else ''}: "
            f"rollout {times[-1]['rollout_s']:.2f} s, update {times[-1]['update_s']:.2f} s"
        )
    return _summary(times[1:], warmup=times[0])


def step_flops(cfg, kind: str, batch, group: int) -> dict[str, float]:
    """Model FLOPs of one RL step's rollout and update (see the module docstring)."""
    prompts = len(batch.rewards) // group
    prompt_len = float(batch.mask[::group, : batch.prompt_width].sum()) / prompts  # real tokens, padding excluded
    forward = generate_flops(cfg, prompts, len(batch.rewards), prompt_len, batch.tokens.shape[1] - batch.prompt_width)
    update = forward * (3.0 if kind == "full" else 2.0)
    return {"rollout_flops": forward, "update_flops": update, "step_flops": forward + update}


def _with_mfu(out: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """MFU of each phase (median time and FLOPs) by wall and CPU time against `reference` (a
    `MatmulReference.report` of the side's own framework), in `out["mfu"]`."""
    out["mfu"] = {
        phase: mfu_entry(out[f"{phase}_flops"], out[f"{phase}_s"], out[f"{phase}_cpu_s"], reference)
        for phase in ("rollout", "update", "step")
    }
    return out


def _summary(times: list[dict], warmup: dict | None = None) -> dict[str, Any]:
    out = {k: statistics.median(t[k] for t in times) for k in times[0]}  # per-key medians
    out["rollout_share"] = out["rollout_s"] / (out["rollout_s"] + out["update_s"])
    out["all_steps"] = times
    if warmup is not None:
        out["warmup_step"] = warmup
    return out


# --------------------------------------------------------------------------- TRL


def _hf_policy():
    """The GGUF model as transformers loads it (float32, sdpa attention), as a plain model: transformers
    flags a GGUF-loaded model as quantized (the Trainer then refuses full fine-tuning) although its
    weights are dequantized float32, so they are copied into a model of the same config."""
    import torch
    import transformers

    from jaxsteer.models.loading import default_model_path

    path = default_model_path()
    gguf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    )
    config = gguf.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    hf = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    hf.load_state_dict(gguf.state_dict())
    return hf


class TRLSide:
    """TRL's GRPOTrainer (full, or LoRA through PEFT) on the GGUF model, stepped from outside:
    `trainer.train()` runs in a thread; a callback holds it before each step until `step()` lets
    it go and hands back that step's times (so TRL steps interleave with the other sides')."""

    def __init__(self, kind: str, prompts: int, group: int, new_tokens: int, steps: int, tok):
        import datasets
        import transformers
        from trl import GRPOConfig, GRPOTrainer

        from jaxsteer.models.decoder import PROJECTIONS
        from jaxsteer.train.rewards import correctness_reward

        self.new_tokens = new_tokens
        ds = datasets.Dataset.from_list(
            [{"prompt": TEMPLATE.format(prompt=e.prompt), "answer": e.answer} for e in _problems(prompts * (steps + 1))]
        )

        def reward(prompts, completions, answer, **kw):
            return [correctness_reward(p, c, a) for p, c, a in zip(prompts, completions, answer, strict=True)]

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
            learning_rate=1e-6 if kind == "full" else 1e-4,
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
        peft_config = None
        if kind == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(
                r=LORA["rank"],
                lora_alpha=LORA["alpha"],
                lora_dropout=0.0,
                target_modules=list(PROJECTIONS),
                task_type="CAUSAL_LM",
            )
        self.trainer = GRPOTrainer(
            model=_hf_policy(),
            reward_funcs=reward,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            peft_config=peft_config,
        )
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.times: list[dict] = []
        self.error: BaseException | None = None
        gen = {"t": 0.0, "c": 0.0}
        original = self.trainer._generate_and_score_completions

        def timed_generate(*a, **kw):
            t, c = time.perf_counter(), time.process_time()
            out = original(*a, **kw)
            gen["t"] += time.perf_counter() - t
            gen["c"] += time.process_time() - c
            lengths = out["completion_mask"].sum(1)
            assert int(lengths.min()) == new_tokens, lengths
            return out

        self.trainer._generate_and_score_completions = timed_generate
        side = self

        class Stepper(transformers.TrainerCallback):
            def on_step_begin(self, *a, **k):
                side.go.acquire()
                gen["t"] = gen["c"] = 0.0
                self.t, self.c = time.perf_counter(), time.process_time()

            def on_step_end(self, *a, **k):
                total, cpu = time.perf_counter() - self.t, time.process_time() - self.c
                side.times.append(
                    {
                        "rollout_s": gen["t"],
                        "update_s": total - gen["t"],
                        "step_s": total,
                        "rollout_cpu_s": gen["c"],
                        "update_cpu_s": cpu - gen["c"],
                        "step_cpu_s": cpu,
                    }
                )
                side.done.release()

        self.trainer.add_callback(Stepper())
        self.thread = threading.Thread(target=self._train, daemon=True)
        self.thread.start()

    def _train(self):
        try:
            self.trainer.train()
        except BaseException as e:  # noqa: BLE001 - handed to the caller of step()
            self.error = e
        finally:
            self.done.release()

    def step(self) -> dict[str, float]:
        n = len(self.times)
        self.go.release()
        self.done.acquire()
        if self.error is not None or len(self.times) == n:
            raise RuntimeError(f"TRL stopped: {self.error!r}")
        return self.times[-1]


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
        [
            sys.executable,
            "-m",
            "benchmarks.rl_step",
            "--rss-child",
            kind,
            "--prompts",
            str(prompts),
            "--group",
            str(group),
            "--new-tokens",
            str(new_tokens),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RSS_MIB"):
            after_load, train_peak, hwm = map(float, line.split()[1:])
            return {
                "after_load": after_load,
                "training_peak": train_peak,
                "training_extra": train_peak - after_load,
                "process_high_water": hwm,
            }
    log(f"peak RSS child ({kind}) failed:\n{proc.stderr[-2000:]}")
    return None


# --------------------------------------------------------------------------- main


def _device_scaling(result: dict, counts: list[int], args, model, tok) -> dict[str, Any]:
    """jaxsteer's RL step (steering, full) on each device count: wall time, process CPU time and
    CPU time per device."""
    print(
        f"\nOne RL step on 1..N devices: {args.prompts} prompts x G={args.group}, {args.new_tokens} new tokens, "
        f"median of {args.steps} steps"
    )
    print(f"{'':30s} {'step s':>8s} {'rollout s':>10s} {'update s':>9s} {'CPU s':>7s} {'CPU s / device':>15s}")
    for kind in ("steering", "full"):
        for n in counts:
            r = result[f"jaxsteer_{kind}_x{n}"] = jaxsteer_steps(
                kind, args.prompts, args.group, args.new_tokens, args.steps, model, tok, devices=n
            )
            print(
                f"{kind + f' on {n} device(s)':30s} {r['step_s']:8.2f} {r['rollout_s']:10.2f} {r['update_s']:9.2f} "
                f"{r['step_cpu_s']:7.2f} {r['step_cpu_s'] / n:15.2f}"
            )
    result["loadavg_end"] = list(os.getloadavg())
    print(f"load average at start / end: {result['loadavg_start'][0]:.1f} / {result['loadavg_end'][0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result


PAIRS = (("lora", "jaxsteer_lora", "trl_lora"), ("full", "jaxsteer_full", "trl_full"))
LABELS = {
    "jaxsteer_lora": "jaxsteer LoRA",
    "trl_lora": "TRL + PEFT LoRA",
    "jaxsteer_full": "jaxsteer full fine-tuning",
    "trl_full": "TRL full fine-tuning",
    "jaxsteer_steering": "jaxsteer steering vectors",
}


def run_length(new_tokens: int, args, model, tok) -> dict[str, Any]:
    """Every side at one completion length: warm-up steps, then `args.steps` interleaved rounds
    with both matmul references; per side the medians, rollout share and MFU, and the pair ratios."""
    sides: dict[str, Any] = {}
    for kind in args.kinds:
        if not args.only_trl:
            sides[f"jaxsteer_{kind}"] = JaxsteerSide(kind, args.prompts, args.group, new_tokens, args.steps, model, tok)
        if not args.no_trl and kind != "steering":
            try:
                sides[f"trl_{kind}"] = TRLSide(kind, args.prompts, args.group, new_tokens, args.steps, tok)
            except Exception as e:  # noqa: BLE001 - report why TRL could not run, keep our own numbers
                log(f"TRL {kind} could not start: {type(e).__name__}: {e}")
    refs = {
        "jax": MatmulReference("jnp.dot", *matmul_peak_call(args.peak_n)).idle(),
        "torch": MatmulReference("torch.mm", *torch_matmul_call(args.peak_n)).idle(),
    }
    warm = {}
    for name, side in sides.items():
        warm[name] = side.step()
        log(f"{new_tokens} tokens, {name} warm-up step: {warm[name]['step_s']:.2f} s")
    times: dict[str, list] = {name: [] for name in sides}
    calls = {name: (lambda n=name: times[n].append(sides[n].step())) for name in sides}
    calls.update({f"matmul_{k}": ref.call for k, ref in refs.items()})
    wall, cpu = interleaved_times(
        calls, args.steps, on_result=lambda k, w, c: log(f"{new_tokens} tokens, {k}: {w:.2f} s")
    )
    reports = {k: ref.report(wall[f"matmul_{k}"], cpu[f"matmul_{k}"]) for k, ref in refs.items()}
    out: dict[str, Any] = {"matmul_references": reports}
    for name in sides:
        summary = _summary(times[name], warmup=warm[name])
        if name.startswith("trl"):  # the same model FLOPs as jaxsteer's side of the pair
            flops = step_flops_for(model.config, name.split("_")[1], args.prompts, args.group, new_tokens)
            summary.update(flops)
        out[name] = _with_mfu(summary, reports["jax" if name.startswith("jaxsteer") else "torch"])
    for kind, ours, theirs in PAIRS:
        if ours in out and theirs in out:
            out[f"speedup_{kind}"] = {
                "wall": out[theirs]["step_s"] / out[ours]["step_s"],
                "cpu_time": out[theirs]["step_cpu_s"] / out[ours]["step_cpu_s"],
            }
    for side in sides.values():
        if isinstance(side, TRLSide):
            side.thread.join(timeout=60)
    return out


def step_flops_for(cfg, kind: str, prompts: int, group: int, new_tokens: int) -> dict[str, float]:
    """`step_flops` from the sizes alone (a prompt of the benchmark's 25 tokens)."""
    forward = generate_flops(cfg, prompts, prompts * group, 25, new_tokens)
    update = forward * (3.0 if kind == "full" else 2.0)
    return {"rollout_flops": forward, "update_flops": update, "step_flops": forward + update}


def print_table(result: dict[str, Any], args) -> None:
    """Per completion length: step times, rollout share, MFU by CPU time, and the pair ratios."""
    for n, run in result["runs"].items():
        print(
            f"\nOne RL step: {args.prompts} prompts x G={args.group} = {args.prompts * args.group} rollouts of {n} "
            f"tokens (25-token prompts), SmolLM2-135M float32, CPU, median of {args.steps} interleaved rounds"
        )
        print(f"{'':28s} {'step s':>8s} {'CPU s':>8s} {'rollout share':>14s} {'MFU wall':>9s} {'MFU CPU':>8s}  flags")
        for name, label in LABELS.items():
            r = run.get(name)
            if r:
                m = r["mfu"]["step"]
                print(
                    f"{label:28s} {r['step_s']:8.2f} {r['step_cpu_s']:8.2f} {100 * r['rollout_share']:13.0f}% "
                    f"{m['mfu_wall']:9.3f} {m['mfu_cpu_time']:8.3f}  {'; '.join(m['flags']) or '-'}"
                )
        for kind, ours, theirs in PAIRS:
            sp = run.get(f"speedup_{kind}")
            if sp:
                print(f"{LABELS[theirs]} / {LABELS[ours]}: {sp['wall']:.2f}x wall, {sp['cpu_time']:.2f}x CPU time")
    if result.get("peak_rss_mib"):
        for k, r in result["peak_rss_mib"].items():
            if r:
                print(
                    f"memory, {k}: RSS {r['after_load']:.0f} MiB after loading the model, "
                    f"peak {r['training_peak']:.0f} MiB while training (+{r['training_extra']:.0f} MiB), "
                    f"process high-water mark {r['process_high_water']:.0f} MiB"
                )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", default="12,128,256", help="comma-separated completion lengths")
    p.add_argument("--steps", type=int, default=5, help="timed interleaved rounds per side (after one warm-up step)")
    p.add_argument(
        "--kinds",
        default="lora,full,steering",
        help="trainable kinds to time (lora and full on both sides, steering on jaxsteer only)",
    )
    p.add_argument("--no-trl", action="store_true")
    p.add_argument("--only-trl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-rss", action="store_true")
    p.add_argument(
        "--quick", action="store_true", help="2 prompts x G=4, 12 new tokens, 2 rounds, no peak-RSS subprocesses"
    )
    p.add_argument("--peak-n", type=int, default=1024, help="size of the square matmul whose rate MFU divides by")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--devices",
        default="1",
        help="comma-separated device counts for jaxsteer's mesh (virtual CPU "
        "devices: set XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
    p.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.new_tokens, args.steps, args.no_rss = 2, 4, "12", 2, True
    lengths = [int(n) for n in str(args.new_tokens).split(",")]
    args.kinds = [k for k in args.kinds.split(",") if k]
    if not set(args.kinds) <= {"lora", "full", "steering"}:
        p.error(f"--kinds: lora, full, steering; got {args.kinds}")
    if args.rss_child:
        _rss_child(args.rss_child, args.prompts, args.group, lengths[0])
        return {}

    import jaxsteer

    result: dict[str, Any] = {
        "peer": (
            f"TRL GRPOTrainer (trl {package_version('trl')}, peft {package_version('peft')}) at its CPU defaults, "
            "transformers sdpa attention, float32, no gradient checkpointing; trl_lora: PEFT "
            f"LoraConfig(r={LORA['rank']}, lora_alpha={LORA['alpha']:g}, all 7 projections), the headline pair with "
            "jaxsteer LoRA of the same rank, alpha and targets; trl_full vs jaxsteer full fine-tuning"
        ),
        "thread_policy": thread_policy(),
        "machine": machine_info(),
        "loadavg_start": list(os.getloadavg()),
        "setup": {
            "prompts": args.prompts,
            "group": args.group,
            "rollouts": args.prompts * args.group,
            "new_tokens": lengths,
            "prompt_tokens": 25,
            "timed_rounds": args.steps,
        },
        "command": "python -m benchmarks.rl_step " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    model, tok = jaxsteer.load("smollm2-135m-instruct")
    counts = [int(c) for c in args.devices.split(",")]
    if not args.only_trl and counts != [1]:
        args.new_tokens = lengths[0]
        return _device_scaling(result, counts, args, model, tok)
    result["runs"] = {str(n): run_length(n, args, model, tok) for n in lengths}
    if not args.no_rss:
        result["peak_rss_mib"] = {k: peak_rss(k, args.prompts, args.group, lengths[0]) for k in ("steering", "full")}
    result["loadavg_end"] = list(os.getloadavg())
    print_table(result, args)
    print(
        f"load average at start / end: {result['loadavg_start'][0]:.1f} / {result['loadavg_end'][0]:.1f} "
        f"({result['machine']['cores']} cores; other work on the machine skews absolute times, not the "
        "interleaved ratios)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result


if __name__ == "__main__":
    main()
