"""Held-out evaluation with confidence intervals.

- greedy accuracy: fraction of problems whose greedy completion earns a positive reward, with a
  95% Wilson score interval;
- sampled pass@1 over k samples: per problem the fraction of its k samples that are correct,
  averaged over problems, with mean +- 1.96 standard errors over problems (clipped to [0, 1]).

`evaluate_policy` runs both for one policy (the trained part on or off).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ..models.params import Model
from .rollout import sample, score

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float, tuple[float, float]]:
    """Mean and mean +- z * standard error (sample std, ddof=1), clipped to [0, 1]."""
    v = np.asarray(values, np.float64)
    m = float(v.mean()) if len(v) else 0.0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return m, (max(0.0, m - z * se), min(1.0, m + z * se))


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
) -> dict:
    """Greedy accuracy (Wilson CI) and/or sampled pass@1 over `samples` draws (mean +- CI)."""
    key = jax.random.PRNGKey(0) if key is None else key
    out: dict[str, Any] = {"n": len(examples)}
    t0 = time.perf_counter()
    if greedy:
        correct = []
        texts = []
        for s in range(0, len(examples), batch_size):
            exs, ids = examples[s : s + batch_size], prompt_ids[s : s + batch_size]
            gen = sample(model, interventions, ids, tokenizer=tokenizer, key=key, max_new_tokens=max_new_tokens,
                         greedy=True, bucket=bucket)
            correct.extend(success(r) for r in score(reward_fn, exs, ids, gen))
            if gen.texts:
                texts.extend(gen.texts)
        k = int(sum(correct))
        out["greedy_acc"] = k / max(len(correct), 1)
        out["greedy_ci"] = list(wilson_interval(k, len(correct)))
        out["greedy_correct"] = k
        if keep_texts and texts:
            out["examples"] = [
                {"prompt": e.prompt, "answer": e.answer, "completion": t, "correct": bool(c)}
                for e, t, c in list(zip(examples, texts, correct))[:keep_texts]
            ]
    if samples:
        per_problem = np.zeros(len(examples))
        rows_per_call = max(1, batch_size // samples)
        for s in range(0, len(examples), rows_per_call):
            exs, ids = examples[s : s + rows_per_call], prompt_ids[s : s + rows_per_call]
            rep = [p for p in ids for _ in range(samples)]
            gen = sample(model, interventions, rep, tokenizer=tokenizer, key=jax.random.fold_in(key, s),
                         max_new_tokens=max_new_tokens, temperature=temperature, bucket=bucket)
            ok = np.array([success(r) for r in score(reward_fn, exs, ids, gen, repeats=samples)], np.float64)
            per_problem[s : s + len(exs)] = ok.reshape(len(exs), samples).mean(axis=1)
        m, ci = mean_ci(per_problem)
        out["pass1"] = m
        out["pass1_ci"] = list(ci)
        out["pass1_k"] = samples
    out["seconds"] = time.perf_counter() - t0
    return out


def format_result(label: str, r: dict) -> str:
    parts = [f"{label:>10}:"]
    if "greedy_acc" in r:
        lo, hi = r["greedy_ci"]
        parts.append(f"greedy {100 * r['greedy_acc']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({r['greedy_correct']}/{r['n']})")
    if "pass1" in r:
        lo, hi = r["pass1_ci"]
        parts.append(f"pass@1 (k={r['pass1_k']}) {100 * r['pass1']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    return "  ".join(parts)


__all__ = ["wilson_interval", "mean_ci", "evaluate_policy", "format_result"]
