"""Evaluation statistics (jaxsteer.train.evaluate): the Wilson interval against known values and its
bounds at 0 and n, the mean's confidence interval, and pass@k (known answers, brute force, recounted
from the sampler)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from jaxsteer.train.evaluate import mean_ci, pass_at_k, wilson_interval


def test_wilson_and_mean_ci():
    lo, hi = wilson_interval(35, 200)
    assert lo == pytest.approx(0.1286, abs=1e-3) and hi == pytest.approx(0.2336, abs=1e-3)
    assert wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0, abs=1e-12)
    for n in (1, 7, 64, 200):  # the interval holds its estimate exactly, also at 0 and n (plots use p - lo)
        for k in (0, 1, n - 1, n):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, lo, hi)
    m, (lo, hi) = mean_ci([0.0, 0.5, 1.0, 0.5])
    assert m == 0.5 and lo < 0.5 < hi


def test_pass_at_k_known_answers_and_brute_force():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0 and pass_at_k(5, 3, 3) == 1.0
    for n, c, k in [(6, 2, 3), (8, 3, 2), (5, 1, 4)]:  # the fraction of k-subsets holding a correct sample
        subsets = list(itertools.combinations(range(n), k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(min(s) < c for s in subsets) / len(subsets))
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)


def test_sampled_pass_at_k_counts_the_sampled_completions(tiny_model):
    """pass@k comes from the same completions as pass@1: recount them from the sampler by hand."""
    import jax

    from jaxsteer.models.generate import SamplingConfig
    from jaxsteer.train.data import Example
    from jaxsteer.train.evaluate import sample_batch, sampled_scores
    from jaxsteer.train.rewards import score_completions, token_reward

    even_first = token_reward(lambda p, c, r: 1.0 if c and c[0] % 2 == 0 else 0.0)
    examples = [Example(f"e{i}", "x", {}) for i in range(5)]
    ids = [[3 + i, 7, 9] for i in range(5)]
    sampling, key = SamplingConfig(2, 1.0, samples_per_prompt=6), jax.random.PRNGKey(3)
    r = sampled_scores(
        tiny_model, (), examples, ids, {"": even_first}, 6, sampling,
        key=key, tokenizer=None, batch_size=18, bucket=1, success=lambda x: x > 0,
    )  # fmt: skip
    counts = []
    for s in (0, 3):  # batch_size // samples = 3 problems per sampler call
        gen = sample_batch(tiny_model, (), ids[s : s + 3], jax.random.fold_in(key, s), sampling, bucket=1)
        ok = score_completions(even_first, examples[s : s + 3], ids[s : s + 3], gen, repeats=6) > 0
        counts += ok.reshape(-1, 6).sum(axis=1).tolist()
    assert 0 < sum(counts) < 30  # a mix of solved and unsolved samples, so the curve is not flat
    assert r["pass1"] == pytest.approx(np.mean(counts) / 6)
    assert r["pass_at_k"][0] == pytest.approx(r["pass1"])
    assert r["pass_at_k"][-1] == pytest.approx(np.mean([c > 0 for c in counts]))
    assert np.all(np.diff(r["pass_at_k"]) >= -1e-12) and len(r["pass_at_k"]) == 6
