"""Held-out evaluation with confidence intervals.

- greedy accuracy: fraction of problems whose greedy completion earns a positive reward, with a
  95% Wilson score interval;
- sampled pass@1 over k samples: per problem the fraction of its k samples that are correct,
  averaged over problems, with mean +- 1.96 standard errors over problems (clipped to [0, 1]);
- for the correctness reward, both under its strict and its lenient answer extraction.

`evaluate_policy` runs both for one policy (the trained part on or off); `HeldOut` is a run's
held-out set with its settings (from the config's `eval` section), evaluated before, during and
after training through the `Run` (the "before" result persists in checkpoints).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from ..models.generate import Generation, SamplingConfig, decode_completions, left_pad, prepare_prompts
from ..models.params import Model
from .config import EvalSpec, TrainConfig
from .distributed import gather_rows
from .rewards import score_completions
from .sharding import make_mesh, sample_on_mesh

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion.

    Args:
        successes: successes k.
        n: trials.
        z: the normal quantile (default: 95%).

    Returns:
        `(low, high)` (`(0, 1)` when n = 0).
    """
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    # exact at the ends (0 and n successes), where rounding would otherwise put p just outside
    return (min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half)))


def mean_ci(values: Sequence[float] | np.ndarray, z: float = Z95) -> tuple[float, tuple[float, float]]:
    """Mean and mean +- z * standard error (sample std, ddof=1), clipped to [0, 1].

    Args:
        values: per-problem scores in [0, 1].
        z: the normal quantile (default: 95%).

    Returns:
        `(mean, (low, high))`.
    """
    v = np.asarray(values, np.float64)
    m = float(v.mean()) if len(v) else 0.0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return m, (max(0.0, m - z * se), min(1.0, m + z * se))


def sample_batch(
    model, interventions, ids: Sequence, key, sampling: SamplingConfig, *, mesh=None, tokenizer=None, bucket: int = 8
) -> Generation:
    """Completions for a batch of prompt ids, sampled on `mesh`; every process gets the whole batch.

    Each process samples its share (the last prompt repeated where the batch does not divide), each
    device its slice of that (`sharding.sample_on_mesh`).

    Args:
        model: the decoder.
        interventions: the policy's interventions.
        ids: the prompts' token ids.
        key: the sampling key.
        sampling: the sampler's settings.
        mesh: the devices (of every process) that sample (default: one).
        tokenizer: decodes the completions (None: no texts).
        bucket: prompt lengths are padded to a multiple of this.

    Returns:
        The batch's `Generation`.
    """
    mesh = make_mesh(1, 1, jax.devices()[:1]) if mesh is None else mesh
    n, nproc = len(ids), jax.process_count()
    per = -(-n // nproc)
    local = list(ids[jax.process_index() * per :][:per]) or [ids[-1]]
    local += [local[-1]] * (per - len(local))
    prepared = prepare_prompts(model, local, tokenizer=tokenizer, max_new_tokens=sampling.max_new_tokens, bucket=bucket)
    gen = sample_on_mesh(model, prepared, key, interventions, sampling, mesh)
    rows = n * sampling.samples_per_prompt
    tokens, logprobs, lengths = (gather_rows(x)[:rows] for x in (gen.tokens, gen.logprobs, gen.lengths))
    ptoks, pmask = (
        np.repeat(x, sampling.samples_per_prompt, axis=0) for x in left_pad([list(i) for i in ids], prepared.pad_id)
    )
    return Generation(tokens, logprobs, lengths, ptoks, pmask, decode_completions(tokenizer, tokens, lengths))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from `n` samples of which `c` are correct: the probability
    that at least one of `k` samples drawn without replacement from the `n` is correct,
    `1 - C(n - c, k) / C(n, k)` (Chen et al. 2021).

    Args:
        n: samples drawn for the problem.
        c: correct ones among them.
        k: the budget, `1 <= k <= n`.

    Returns:
        The estimate in [0, 1].
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def sampled_scores(
    model,
    interventions,
    examples,
    prompt_ids,
    reward_fns: dict,
    samples: int,
    sampling: SamplingConfig,
    *,
    key,
    tokenizer,
    batch_size: int,
    bucket: int,
    success: Callable,
    mesh=None,
) -> dict:
    """Sampled accuracy over `samples` draws per problem, for each reward in `reward_fns`
    ({suffix: fn}): `pass1<suffix>` (mean per-problem fraction correct), `pass1_ci<suffix>`,
    `pass_at_k<suffix>` ([pass@1, ..., pass@samples], unbiased estimates averaged over problems),
    and `pass1_k` (= samples)."""
    correct = {m: np.zeros(len(examples), np.int64) for m in reward_fns}
    rows_per_call = max(1, batch_size // samples)
    for s in range(0, len(examples), rows_per_call):
        exs, ids = examples[s : s + rows_per_call], prompt_ids[s : s + rows_per_call]
        gen = sample_batch(
            model,
            interventions,
            ids,
            jax.random.fold_in(key, s),
            sampling,
            mesh=mesh,
            tokenizer=tokenizer,
            bucket=bucket,
        )
        for m, fn in reward_fns.items():
            rewards = score_completions(fn, exs, ids, gen, repeats=samples).tolist()
            ok = np.array([success(r) for r in rewards], np.int64).reshape(len(exs), samples)
            correct[m][s : s + len(exs)] = ok.sum(axis=1)
    out: dict[str, Any] = {"pass1_k": samples}
    for m, c in correct.items():
        out[f"pass1{m}"], ci = mean_ci(c / samples)
        out[f"pass1_ci{m}"] = list(ci)
        out[f"pass_at_k{m}"] = [
            float(np.mean([pass_at_k(samples, int(x), k) for x in c])) for k in range(1, samples + 1)
        ]
    return out


def evaluate_policy(
    model: Model,
    interventions: tuple,
    examples: Sequence,
    prompt_ids: Sequence[Sequence[int]],
    *,
    tokenizer: Any,
    reward_fn: Callable,
    max_new_tokens: int,
    greedy: bool = True,
    samples: int = 0,
    temperature: float = 1.0,
    batch_size: int = 200,
    bucket: int = 8,
    key: jax.Array | None = None,
    success: Callable[[float], bool] = lambda r: r > 0,
    keep_texts: int = 0,
    modes: dict[str, Callable] | None = None,
    mesh=None,
    refill_slots: int = 0,
) -> dict:
    """Greedy accuracy (Wilson CI) and/or sampled pass@1 and pass@k over `samples` draws (mean +- CI).

    Args:
        model: the base decoder.
        interventions: the policy's interventions on `model`.
        examples: the held-out examples.
        prompt_ids: their encoded prompts.
        tokenizer: decodes completions (text rewards, `keep_texts`).
        reward_fn: scores a completion against the example's answer.
        max_new_tokens: tokens per completion.
        greedy: report greedy accuracy (`greedy_acc`, `greedy_ci`).
        samples: k draws per problem for pass@1 (0: skip).
        temperature: pass@1's sampling temperature.
        batch_size: completions per sampler call.
        bucket: prompt lengths are padded to a multiple of this.
        key: the sampling key (default `PRNGKey(0)`).
        success: whether a reward counts as solved.
        keep_texts: greedy completions kept under "examples" (0: none).
        modes: {name: reward_fn} scored on the same completions (e.g. the correctness reward's strict
            and lenient answer extraction): `greedy_acc_<name>`, `greedy_ci_<name>`, `pass1_<name>`.
        mesh: the devices (of every process) that sample each batch (`sample_batch`; default: one).
        refill_slots: sample with the refill sampler, this many rows in flight per device (0: static).

    Returns:
        The metrics: "n", "seconds", the greedy entries above, and with `samples` those of
        `sampled_scores` (pass@1 with its interval, the pass@k curve for k = 1..samples).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    modes = dict(modes or {})
    out: dict[str, Any] = {"n": len(examples)}
    t0 = time.perf_counter()
    if greedy:
        correct, by_mode = [], {m: [] for m in modes}
        texts = []
        for s in range(0, len(examples), batch_size):
            exs, ids = examples[s : s + batch_size], prompt_ids[s : s + batch_size]
            gen = sample_batch(
                model,
                interventions,
                ids,
                key,
                SamplingConfig(max_new_tokens, greedy=True, refill_slots=refill_slots),
                mesh=mesh,
                tokenizer=tokenizer,
                bucket=bucket,
            )
            correct.extend(success(r) for r in score_completions(reward_fn, exs, ids, gen).tolist())
            for m, fn in modes.items():
                by_mode[m].extend(success(r) for r in score_completions(fn, exs, ids, gen).tolist())
            if gen.texts:
                texts.extend(gen.texts)
        k = int(sum(correct))
        out["greedy_acc"] = k / max(len(correct), 1)
        out["greedy_ci"] = list(wilson_interval(k, len(correct)))
        out["greedy_correct"] = k
        for m, c in by_mode.items():
            out[f"greedy_acc_{m}"] = sum(c) / max(len(c), 1)
            out[f"greedy_ci_{m}"] = list(wilson_interval(int(sum(c)), len(c)))
        if keep_texts and texts:
            out["examples"] = [
                {"prompt": e.prompt, "answer": e.answer, "completion": t, "correct": bool(c)}
                for e, t, c in list(zip(examples, texts, correct, strict=True))[:keep_texts]
            ]
    if samples:
        out.update(
            sampled_scores(
                model,
                interventions,
                examples,
                prompt_ids,
                {"": reward_fn, **{f"_{m}": fn for m, fn in modes.items()}},
                samples,
                SamplingConfig(
                    max_new_tokens, float(temperature), samples_per_prompt=samples, refill_slots=refill_slots
                ),
                key=key,
                tokenizer=tokenizer,
                batch_size=batch_size,
                bucket=bucket,
                success=success,
                mesh=mesh,
            )
        )
    out["seconds"] = time.perf_counter() - t0
    return out


def format_result(label: str, r: dict) -> str:
    """One line: greedy accuracy and / or pass@1 with their 95% intervals."""
    parts = [f"{label:>10}:"]
    if "greedy_acc" in r:
        lo, hi = r["greedy_ci"]
        parts.append(
            f"greedy {100 * r['greedy_acc']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['greedy_correct']}/{r['n']})"
        )
    if "pass1" in r:
        lo, hi = r["pass1_ci"]
        parts.append(f"pass@1 (k={r['pass1_k']}) {100 * r['pass1']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    for key in sorted(k for k in r if k.startswith("greedy_acc_")):  # other answer-extraction modes
        lo, hi = r["greedy_ci_" + key[len("greedy_acc_") :]]
        parts.append(f"{key[len('greedy_acc_') :]} {100 * r[key]:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    return "  ".join(parts)


@dataclasses.dataclass
class HeldOut:
    """A run's held-out set and the settings of its evaluation.

    `policy` arguments of the methods are callables returning `(model, interventions)`, called only
    when an evaluation is due.

    Attributes:
        spec: the `eval` section of the config.
        steps: the run's steps (no "during" evaluation at the last one).
        examples: the held-out examples.
        prompt_ids: their encoded prompts.
        settings: keyword arguments of `evaluate_policy`.
    """

    spec: EvalSpec
    steps: int
    examples: list
    prompt_ids: list
    settings: dict

    @classmethod
    def from_config(
        cls, cfg: TrainConfig, examples: Sequence, encode: Callable, tokenizer: Any, reward_fn: Callable, mesh=None
    ) -> HeldOut:
        """The held-out evaluation of a run config.

        Args:
            cfg: the run config (its `eval`, `sampling`, `steps` and `seed`).
            examples: the held-out examples.
            encode: example -> prompt ids.
            tokenizer: decodes completions for text rewards.
            reward_fn: the reward (its `extraction_modes`, if any, are scored too).
            mesh: the devices that sample (`evaluate_policy`).

        Returns:
            The `HeldOut`.
        """
        settings = dict(
            tokenizer=tokenizer,
            reward_fn=reward_fn,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.sampling.max_new_tokens,
            greedy=cfg.eval.greedy,
            samples=cfg.eval.samples,
            temperature=cfg.eval.temperature,
            batch_size=cfg.eval.batch_size,
            bucket=cfg.sampling.bucket,
            refill_slots=cfg.sampling.refill_slots,
            key=jax.random.PRNGKey(cfg.seed + 1),
            modes=getattr(reward_fn, "extraction_modes", None),  # strict and lenient for the correctness reward
            mesh=mesh,
        )
        return cls(cfg.eval, cfg.steps, list(examples), [encode(e) for e in examples], settings)

    def __call__(self, model: Model, interventions: tuple = (), **kw) -> dict:
        """`evaluate_policy` of one policy on the held-out set."""
        return evaluate_policy(model, interventions, self.examples, self.prompt_ids, **{**self.settings, **kw})

    def _run(self, run, label: str, policy: Callable) -> Callable[[], dict]:
        def go():
            r = self(*policy(), keep_texts=3)
            run.say(format_result(label, r) + f"  [{r['seconds']:.0f} s]")
            return r

        return go

    def before(self, run, base: Model) -> dict | None:
        """The base model's result (persisted in checkpoints; a resumed run reuses it)."""
        if not (self.examples and self.spec.before):
            return None
        if "before" not in run.evals:
            run.say(f"held-out evaluation on {len(self.examples)} problems (before training: the base model)")
        return run.evaluate("before", 0, self._run(run, "base", lambda: (base, ())), persist=True, prefix="base_")

    def during(self, run, done: int, policy: Callable) -> None:
        """Evaluate after step `done` when `eval.every` divides it (not at the last step)."""
        every = self.spec.every
        if self.examples and every and done % every == 0 and done < self.steps:
            run.evaluate(f"step {done}", done, self._run(run, f"step {done}", policy))

    def after(self, run, policy: Callable) -> dict | None:
        """The trained policy's result at the end (printed under the base result)."""
        if not (self.examples and self.spec.after):
            return None
        run.say(f"held-out evaluation on {len(self.examples)} problems (after {self.steps} steps)")
        if run.evals.get("before") is not None:
            run.say(format_result("base", run.evals["before"]))
        return run.evaluate("after", self.steps, self._run(run, "trained", policy))


__all__ = [
    "wilson_interval",
    "mean_ci",
    "pass_at_k",
    "sample_batch",
    "sampled_scores",
    "evaluate_policy",
    "format_result",
    "HeldOut",
]
