"""The reproduction report's protocol (experiments/reproduction/protocol.py) without training anything:
the plateau rule and seed intervals on known curves, and every run the convergence, per-layer and
efficiency parts would start is a config the loader accepts (a misspelt key would otherwise surface
hours into the report)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from tests import ROOT

sys.path.insert(0, f"{ROOT}/experiments/reproduction")

import common  # noqa: E402
import convergence  # noqa: E402
import efficiency  # noqa: E402
import essa_signal  # noqa: E402
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
    assert protocol.sweep_edge(0.003, ["0.003", "0.01", "0.03"]) == "smallest"
    assert protocol.sweep_edge(0.03, [0.003, 0.01, 0.03]) == "largest"
    assert protocol.sweep_edge(0.01, [0.003, 0.01, 0.03]) is None and protocol.sweep_edge(0.03, [0.01, 0.03]) is None


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


def test_convergence_section_compares_with_the_papers_from_the_numbers():
    def seeds(greedy, sampled):
        curve = {"steps": [10, 20], "rollouts": [320, 640], "cpu_s": [1.0, 2.0], "acc": [0.5, 0.6]}
        return [
            {"seed": i, "greedy": g, "sampled": s, "curve": curve, "plateau": True, "rollouts": 640, "cpu_s": 9.0}
            for i, (g, s) in enumerate(zip(greedy, sampled, strict=True))
        ]

    def row(key, greedy, sampled):
        sweep = {f"{v:g}": {"val": 0.6, "plateau": True, "curve": {}} for v in (0.003, 0.01, 0.03)}
        return {"key": key, "label": key, "step_key": "optimizer.lr", "chosen": 0.01, "sweep": sweep,
                "seeds": seeds(greedy, sampled)}  # fmt: skip

    rows = [
        row("steering", [0.70, 0.72, 0.74], [0.5, 0.5, 0.5]),
        row("full", [0.70, 0.80, 0.90], [0.6, 0.6, 0.6]),
        row("lora", [0.50, 0.51, 0.52], [0.4, 0.4, 0.4]),
        row("rl_from_sft", [0.60], [0.45]),
        row("essa", [0.65], [0.40]),
        {"key": "es", "label": "es", "missing": True},
    ]
    base = {"greedy_acc": 0.175, "pass1": 0.025, "pass_at_k": [0.025 * k for k in range(1, 17)]}
    result = {"rows": rows, "base": base, "samples": 8, "plateau_points": 2.0,
              "figures": {"curves": "c.png", "sweeps": "s.png", "pass_at_k": "p.png"}}  # fmt: skip
    result["gaps"] = convergence._gaps({r["key"]: r for r in rows})
    text = convergence.section(result)
    assert result["gaps"]["full"]["mean"] == pytest.approx(-8.0) and result["gaps"]["lora"]["mean"] == pytest.approx(
        21.0
    )
    assert (
        "minus full (test greedy, paired by seed, n = 3): -8.0 points" in text
        and "-6.6, which this interval contains" in text
    )
    assert "minus lora" in text and "-5.5, which this interval excludes" in text
    assert "ESSA minus RL LoRA from the same SFT LoRA (seed 0): greedy +5.0, sampled -5.0 points" in text
    assert "pass@8) and once in 16 on 40.0%; the best trained row (full) answers 60.0%" in text
    assert "| es | not run |" in text
    assert "Chosen at an end of its sweep" not in text and "sweep unfinished" not in text
    rows[3]["sweep_unfinished"] = ["0.0015"]
    assert "(sweep unfinished: 0.0015 not run)" in convergence.section(result)
    rows[0]["chosen"] = 0.003
    assert "Chosen at an end of its sweep (a better step size may lie beyond it): steering (0.003, smallest)." in (
        convergence.section(result)
    )


def test_efficiency_section_reads_the_throughput_grid_and_names_missing_runs():
    rates = {(8, 16): 50.0, (32, 16): 100.0, (128, 16): 125.0, (8, 128): 40.0, (32, 128): 80.0, (128, 128): 100.0}
    grid = [{"batch": b, "new_tokens": n, "tok_per_cpu_s": r, "tok_s": r} for (b, n), r in rates.items()]
    text = efficiency.section({"grid": grid, "algos": [], "threshold": 0.3, "figure": "e.png"})
    assert "128 rows per call give 2.5x at 16 tokens, 2.5x at 128 tokens the tokens per CPU-second of 8 rows" in text
    assert "128 rows give 1.25x those of 32 at 16 tokens" in text
    assert "a 128-token completion costs 1.25x as much per token as a 16-token one (attention reads" in text
    assert "| 128 | 125 / 125 | 100 / 100 |" in text
    assert "- DASH: the paper reports" in text and "not run yet" in text and "not measurable" not in text


def test_share_runs_skips_a_run_another_live_process_trains_and_waits_outside(tmp_path, monkeypatch):
    """Two processes of one part split its runs: inside share_runs a run with a live other trainer is
    left to it (None at once, nothing trained); outside, the same call waits for that trainer."""
    import subprocess

    monkeypatch.setattr(common, "ROOT", tmp_path)
    ctx = common.Context(quick=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = ctx.runs_dir / "busy_run"
        out.mkdir(parents=True)
        (out / "repro_training.pid").write_text(str(other.pid))
        results = []
        ctx.share_runs(lambda: results.append(ctx.train_or_load("busy_run", common.STEERING_CONFIG)) for _ in [0])
        assert results == [None] and (out / "repro_training.pid").read_text() == str(other.pid)
        assert ctx._skip_busy is False  # only inside share_runs
        waits = []
        monkeypatch.setattr(common.time, "sleep", lambda s: (waits.append(s), other.kill(), other.wait()))
        assert ctx._wait_for_other(out) is True and waits  # outside it waits until the trainer is gone
    finally:
        other.kill()
        other.wait()
    assert common.Context._other_trainer(out) is None  # a dead trainer's directory is retrained


def test_essa_signal_statistics_on_known_populations():
    """A member-specific skill that holds on every mini-batch reads as signal (r = 1, a held-out gain);
    members that only differ from the centre on different prompts per mini-batch read as noise."""
    m, batches, per = 8, 3, 8
    skill = np.zeros((m, batches, per), bool)
    for i in range(m):
        skill[i, :, :i] = True  # member i answers the first i prompts of every mini-batch
    centre = np.zeros(batches * per, bool)
    s = essa_signal.signal(skill.reshape(m, -1), centre, batches)
    assert s["split_half_r"] == pytest.approx(1.0) and s["top_half_gain"] == pytest.approx(0.5)
    assert s["best_member_gain"] == pytest.approx(7 / 8) and s["members_above_centre"] == m - 1
    assert s["changed_answers"] == pytest.approx(3 * np.arange(m).mean())
    rng = np.random.default_rng(0)
    noise = rng.random((200, batches * 32)) < 0.5
    n = essa_signal.signal(noise, np.zeros(batches * 32, bool), batches)
    assert abs(n["split_half_r"]) < 0.2 and abs(n["top_half_gain"]) < 0.03
    same = essa_signal.signal(np.zeros((m, 24), bool), np.zeros(24, bool), batches)
    assert same["split_half_r"] is None and same["changed_answers"] == 0.0
    assert "no ranking" in essa_signal.reading([same]) and "noise" in essa_signal.reading([{**n, "sigma": 0.1}])
    assert "sigma 0.1 the ranking" in essa_signal.reading([{**s, "sigma": 0.1}])


def test_a_methods_run_keeps_the_other_rows_and_parts_find_the_chosen_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ROOT", tmp_path)
    ctx = common.Context(quick=True, methods=["es"])
    old = [{"key": "steering", "v": 1}, {"key": "es", "v": 1}, {"key": "lora", "v": 1}]
    (ctx.out_dir / "convergence.json").write_text(json.dumps({"rows": old}))
    rows = convergence.kept_rows(ctx, [{"key": "es", "v": 2}])
    assert [(r["key"], r["v"]) for r in rows] == [("steering", 1), ("lora", 1), ("es", 2)]  # METHODS order
    (ctx.out_dir / "convergence.json").unlink()
    assert convergence.kept_rows(ctx, [{"key": "es", "v": 2}]) == [{"key": "es", "v": 2}]
    (ctx.out_dir / "convergence.json").write_text(json.dumps({"rows": [{"key": "steering", "chosen": 0.003}]}))
    assert convergence.chosen_run(ctx, "steering", seed=1) == str(ctx.runs_dir / "conv_steering_0.003_s1")
    with pytest.raises(RuntimeError, match="no chosen sft_lora run"):
        convergence.chosen_run(ctx, "sft_lora")


def test_sae_features_reading_compares_each_top_set_with_its_mass_matched_controls():
    import sae_features

    def row(condition, acc, p=0.5):
        return {"condition": condition, "acc": acc, "mcnemar_p_vs_steered": p}

    ablations = [row("steered (no ablation)", 0.75, 1.0), row("ablate top 10 more-in-correct", 0.60, 0.001),
                 row("ablate top 10 more-in-incorrect", 0.30, 0.001), row("ablate 10 random live #1", 0.74),
                 row("ablate 10 random live #2", 0.20, 0.001),
                 row("ablate 10 mass-matched to more-in-correct #1", 0.70),
                 row("ablate 10 mass-matched to more-in-incorrect #1", 0.25, 0.001)]  # fmt: skip
    text = sae_features.reading(ablations)
    assert "more-in-correct latents costs +15.0 points (McNemar p 0.001; mass-matched controls: +5.0), beyond" in text
    assert "rank test cannot go below p = 0.50" in text and "lowers accuracy instead of raising it" in text
    assert "more-in-incorrect latents costs +45.0 points (McNemar p 0.001; mass-matched controls: +50.0), not" in text
    uniform_only = sae_features.reading(ablations[:5])  # no matched controls: the uniform ones, worst 20%
    assert "random controls: +1.0, +55.0), not separated from the random controls" in uniform_only
