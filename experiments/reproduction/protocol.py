"""The convergence protocol of issue 18, shared by the parts that train to a plateau.

- Splits: training problems from the train split with a validation split carved out of it
  (`val_fraction`), step sizes chosen and learning curves drawn on the validation split, the
  reported numbers on the untouched test split (`jaxsteer.train.data.problem_split`).
- Step size: every method's step size (`optimizer.lr`, or `es.lr` / `es.sigma` for ES) is swept over
  at least 3 log-spaced values on seed 0; the one with the best final validation accuracy (mean of
  the last two validation evaluations) is kept and run with further seeds.
- Plateau rule: a run has plateaued when its validation accuracy gained less than `PLATEAU_POINTS`
  over the last quarter of its steps (best of the last quarter minus the value at its start); runs
  stop at a stated cap of steps either way, and the report says which held.
- Test evaluation: greedy accuracy and sampled accuracy at temperature 1 (mean over `k` samples
  per problem, with pass@k) of each chosen run's final policy, cached beside the run.
"""

from __future__ import annotations

import dataclasses
import json
import math

import common
import numpy as np

VAL_FRACTION = 0.1
TRAIN = f"arithmetic:n=4000,digits=2,seed=0,split=train,val_fraction={VAL_FRACTION}"
VAL = f"arithmetic:n=100,digits=2,seed=2,split=val,val_fraction={VAL_FRACTION}"
TEST = "arithmetic:n=200,digits=2,seed=1,split=test"  # the test split does not depend on val_fraction
PLATEAU_POINTS = 2.0


@dataclasses.dataclass(frozen=True)
class Method:
    """One trained row: a shipped config, the knob its step size is, the swept values, its budget."""

    key: str
    label: str
    config: str
    step_key: str  # "optimizer.lr", "es.lr" or "es.sigma"
    step_sizes: tuple[float, ...]
    steps: int  # the cap of training steps (RL / SFT steps or ES generations)
    eval_every: int
    overrides: tuple[str, ...] = ()
    start_from: str | None = None  # the key of a method whose chosen seed-0 run is this one's model.init_from


def run_name(m: Method, step_size: float, seed: int) -> str:
    """The run directory's name under the reproduction runs folder."""
    return f"conv_{m.key}_{step_size:g}_s{seed}"


def data_overrides(ctx: common.Context, m: Method) -> list[str]:
    """Train on the train split minus validation, evaluate during training on validation."""
    n_val = ctx.scale(100, 20)
    return [
        f"data.train={TRAIN}",
        f"data.eval={VAL.replace('n=100', f'n={n_val}')}",
        f"eval.n={n_val}",
        f"eval.batch_size={n_val}",
        "eval.before=false",
        "eval.samples=0",
        f"eval.every={ctx.scale(m.eval_every, 1)}",
        f"steps={ctx.scale(m.steps, 2)}",
        "checkpoint.every=0",
    ]


def train(ctx: common.Context, m: Method, step_size: float, seed: int, chosen: dict) -> dict | None:
    """Train (or reuse) one run of method `m`; `chosen` maps method keys to their chosen runs (warm starts)."""
    extra = [f"{m.step_key}={step_size}"]
    if m.start_from:
        extra.append(f"model.init_from={ctx.runs_dir / chosen[m.start_from]}")
    overrides = [*m.overrides, *data_overrides(ctx, m), *extra]
    return ctx.train_or_load(run_name(m, step_size, seed), m.config, overrides, stamp=True, seed=seed)


def val_curve(ctx: common.Context, name: str, per_step: float) -> dict:
    """A run's validation curve: steps, rollouts, CPU seconds and greedy accuracy at each evaluation
    (the final one included)."""
    evals = [r for r in ctx.metrics(name) if r.get("kind") == "eval" and "greedy_acc" in r]
    timing = json.loads((ctx.runs_dir / name / "repro_timing.json").read_text())
    cpu_at = {s["step"]: s["cpu_s"] for s in timing.get("stamps") or [] if s.get("kind") == "eval"}
    steps = [int(r["step"]) for r in evals]
    return {
        "steps": steps,
        "rollouts": [s * per_step for s in steps],
        "cpu_s": [cpu_at.get(s) for s in steps],
        "acc": [float(r.get("greedy_acc_lenient", r["greedy_acc"])) for r in evals],
    }


def final_score(curve: dict) -> float:
    """What the sweep ranks by: the mean of the last two validation accuracies (one when only one)."""
    acc = curve["acc"]
    return float(np.mean(acc[-2:])) if acc else float("nan")


def plateaued(curve: dict, points: float = PLATEAU_POINTS) -> bool | None:
    """Whether the validation accuracy gained less than `points` over the last quarter of the steps
    (None with fewer than three evaluations)."""
    steps, acc = curve["steps"], curve["acc"]
    if len(acc) < 3:
        return None
    start = steps[-1] - (steps[-1] - steps[0]) / 4
    first = next(i for i, s in enumerate(steps) if s >= start)
    base = acc[max(first - 1, 0)]
    return 100 * (max(acc[first:]) - base) < points


def _test_overrides(n: int, samples: int) -> list[str]:
    """A config's held-out evaluation pointed at the test split: `n` problems, greedy and `samples` draws each."""
    return [f"data.eval={TEST}", f"eval.n={n}", f"eval.samples={samples}", f"eval.batch_size={max(n, 8 * samples)}"]


def _cached(path, key: dict, compute) -> dict:
    """`compute()`'s result, stored at `path` beside `key`; reused while the stored key is the same."""
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return cached["result"]
    result = compute()
    result.pop("examples", None)
    path.write_text(json.dumps({"key": key, "result": result}, indent=1, default=float))
    return result


def evaluate_on_test(ctx: common.Context, name: str, samples: int) -> dict:
    """Greedy and sampled (temperature 1, `samples` per problem, pass@k) accuracy of a finished
    run's final policy on the test split; cached as <run>/test_eval.json."""
    n = ctx.scale(200, 20)

    def compute() -> dict:
        from jaxsteer.train import evaluate_run, load_config

        cfg = load_config(str(ctx.runs_dir / name / "config.yaml"), _test_overrides(n, samples), warn=False)
        model, tok = ctx.model()
        return evaluate_run(cfg, base=False, model=model, tokenizer=tok)["trained"]

    return _cached(ctx.runs_dir / name / "test_eval.json", {"test": TEST, "samples": samples, "n": n}, compute)


def base_on_test(ctx: common.Context, samples: int) -> dict:
    """The base model's greedy accuracy and pass@k (k = 1..samples) on the test split; cached."""
    n = ctx.scale(200, 20)

    def compute() -> dict:
        from jaxsteer.train import load_config
        from jaxsteer.train.build import PromptEncoder, load_examples
        from jaxsteer.train.evaluate import HeldOut
        from jaxsteer.train.rewards import get_reward_fn

        cfg = load_config(str(common.ROOT / common.STEERING_CONFIG), _test_overrides(n, samples))
        model, tok = ctx.model()
        examples = list(load_examples(cfg.data.eval))[:n]
        encode = PromptEncoder(tok, cfg.data.prompt_template, cfg.data.system)
        return HeldOut.from_config(cfg, examples, encode, tok, get_reward_fn(cfg.data.reward))(model, ())

    return _cached(ctx.runs_dir / "conv_base_test_eval.json", {"test": TEST, "samples": samples, "n": n}, compute)


def sweep_edge(chosen: float, swept) -> str | None:
    """ "smallest" / "largest" when `chosen` is at that end of a sweep of at least 3 values (a better
    step size may lie beyond it), else None."""
    values = [float(v) for v in swept]
    if len(values) < 3:
        return None
    return "smallest" if chosen == min(values) else "largest" if chosen == max(values) else None


def seed_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval over seeds ((mean, mean) with one seed)."""
    v = np.asarray(values, np.float64)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(v), 2.0)
    half = t * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, m - half, m + half
