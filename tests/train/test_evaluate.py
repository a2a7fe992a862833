"""Evaluation statistics (jaxsteer.train.evaluate): the Wilson interval against known values and its
bounds at 0 and n, and the mean's confidence interval."""

from __future__ import annotations

import pytest

from jaxsteer.train.evaluate import mean_ci, wilson_interval


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
