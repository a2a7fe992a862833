"""metrics.jsonl: non-finite values are visible as strings; a kill mid-write does not break resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from jaxsteer.train.metrics import RunLogger, as_number, plot_curves, read_log


def test_non_finite_metrics_are_written_as_strings_not_null(tmp_path):
    log = RunLogger(str(tmp_path), tensorboard=False)
    log.log(1, {"loss": float("nan"), "grad_norm": np.float32(np.inf), "kl": -math.inf, "reward_mean": 0.5})
    log.close()
    raw = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (raw["loss"], raw["grad_norm"], raw["kl"], raw["reward_mean"]) == ("nan", "inf", "-inf", 0.5)
    assert math.isnan(as_number(raw["loss"])) and as_number(raw["grad_norm"]) == math.inf
    assert as_number("abc") is None and as_number(True) is None


def test_truncated_last_line_is_dropped_on_resume(tmp_path):
    log = RunLogger(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3):
        log.log(step, {"reward_mean": float(step)})
    log.close()
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 4, "kind": "train", "rew')  # killed during a write
    with pytest.warns(UserWarning, match="truncated last line"):
        assert [r["step"] for r in read_log(str(path))] == [1, 2, 3]
    with pytest.warns(UserWarning, match="truncated last line"):
        resumed = RunLogger(str(tmp_path), tensorboard=False, resume_step=2)
    resumed.log(3, {"reward_mean": 30.0})
    resumed.close()
    assert [(r["step"], r["reward_mean"]) for r in read_log(str(path))] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_damaged_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_log(str(path))


def test_curves_plot_with_non_finite_values(tmp_path):
    log = RunLogger(str(tmp_path), tensorboard=False)
    for step, v in enumerate([0.1, float("nan"), 0.3, float("inf"), 0.5, 0.6], 1):
        log.log(step, {"reward_mean": v})
    log.close()
    out = plot_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "curves.png"))
    assert out and (tmp_path / "curves.png").stat().st_size > 1000
