"""The reproduction report's protocol (experiments/reproduction/protocol.py) without training anything:
the plateau rule and seed intervals on known curves, and every run the convergence, per-layer and
efficiency parts would start is a config the loader accepts (a misspelt key would otherwise surface
hours into the report)."""

from __future__ import annotations

import os
import sys

import pytest

from tests import ROOT

sys.path.insert(0, f"{ROOT}/experiments/reproduction")

import common  # noqa: E402
import convergence  # noqa: E402
import efficiency  # noqa: E402
import per_layer  # noqa: E402
import protocol  # noqa: E402

from jaxsteer.train import load_config  # noqa: E402
from jaxsteer.train.data import load_dataset  # noqa: E402


def test_plateau_rule_and_final_score_on_known_curves():
    flat = {"steps": [10, 20, 30, 40], "acc": [0.30, 0.50, 0.51, 0.515]}
    rising = {"steps": [10, 20, 30, 40], "acc": [0.30, 0.40, 0.45, 0.50]}
    assert protocol.plateaued(flat) is True  # +1.5 points over the last quarter (steps 30-40)
    assert protocol.plateaued(rising) is False  # +5 points
    assert protocol.plateaued({"steps": [10, 20], "acc": [0.1, 0.2]}) is None
    assert protocol.final_score(rising) == pytest.approx(0.475)
    m, lo, hi = protocol.seed_interval([0.4, 0.5, 0.6])
    assert m == pytest.approx(0.5) and lo == pytest.approx(0.5 - 4.303 * 0.1 / 3**0.5)
    assert hi == pytest.approx(0.5 + 4.303 * 0.1 / 3**0.5) and protocol.seed_interval([0.3]) == (0.3, 0.3, 0.3)


def test_convergence_refuses_an_unknown_row_before_any_work():
    ctx = common.Context(quick=True, methods=["steering", "lorra"])
    with pytest.raises(ValueError, match="lorra"):
        convergence.run(ctx)


def test_protocol_splits_are_disjoint():
    train = {e.prompt for e in load_dataset(protocol.TRAIN)}
    val = {e.prompt for e in load_dataset(protocol.VAL)}
    test = {e.prompt for e in load_dataset(protocol.TEST)}
    assert len(val) == 100 and not train & val and not train & test and not val & test


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_run_is_a_valid_config(quick, tmp_path, monkeypatch):
    """The overrides each part would train with load (and the warm starts point where the part puts them)."""
    monkeypatch.setattr(common, "ROOT", tmp_path)  # the context makes its folders under ROOT
    ctx = common.Context(quick=quick)
    runs = []
    for m in convergence.METHODS:
        for size in m.step_sizes:
            extra = [f"{m.step_key}={size}"] + ([f"model.init_from={tmp_path}"] if m.start_from else [])
            runs.append((m.config, [*m.overrides, *protocol.data_overrides(ctx, m), *extra]))
    layer = per_layer.layer_method(29, 36.0, per_layer.SCALES)
    runs += [(layer.config, [*layer.overrides, *protocol.data_overrides(ctx, layer), f"optimizer.lr={lr}"])
             for lr in layer.step_sizes]  # fmt: skip
    runs += [(common.STEERING_CONFIG, [*efficiency.COMMON, *o]) for _, o in efficiency.ALGOS]
    for config, overrides in runs:
        extra = (common.QUICK_OVERRIDES if quick else []) + ["seed=1", "progress=false"]
        cfg = load_config(os.path.join(ROOT, config), [*overrides, *extra])
        assert cfg.steps >= 1
    assert len(runs) == 3 * len(convergence.METHODS) + 3 + len(efficiency.ALGOS)
