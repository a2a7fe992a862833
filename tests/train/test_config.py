"""Training config: YAML + dotted overrides, type conversion, unknown keys named in the error."""

from __future__ import annotations

import glob
import os

import pytest

from jaxsteer.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from tests import ROOT


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_overrides(tmp_path):
    path = _write(tmp_path, "steps: 7\ntrainable:\n  kind: steering\n  layers: [1, 2]\nalgorithm:\n  group_size: 4\n")
    cfg = load_config(
        path,
        [
            "trainable.kind=lora",
            "trainable.layers=null",
            "optimizer.lr=1e-4",
            "rl.loss.clip_eps_low=0.2",
            "rl.dash=true",
            "data.system=null",
            "mesh.fsdp=2",
        ],
    )
    assert cfg.steps == 7
    assert cfg.trainable.kind == "lora" and cfg.trainable.layers is None
    assert cfg.optimizer.lr == 1e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.rl.loss.clip_eps_low == 0.2
    assert cfg.rl.group_size == 4 and cfg.rl.dash is True
    assert cfg.mesh.fsdp == 2
    assert load_config(path, ["trainable.layers=[3, 4]"]).trainable.layers == (3, 4)
    assert load_config(path, ["trainable.layers=5"]).trainable.layers == (5,)


def test_round_trip():
    cfg = config_from_dict({"trainable": {"kind": "steering", "layers": [0, 3], "rank": 2}, "steps": 3})
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg
    assert config_from_dict({}) == TrainConfig()


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainable.knd=lora", "'trainable.knd'"),
        ("learning_rate=1", "'learning_rate'"),
        ("optim.lr=1", "'optim.lr'"),
        ("a.b.c=1", "'a.b.c'"),
        ("trainable=3", "'trainable'"),
    ],
)
def test_unknown_override_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, [override])


def test_unknown_yaml_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'rl\.groupsize'"):
        load_config(_write(tmp_path, "rl:\n  groupsize: 4\n"))
    with pytest.raises(ConfigError, match=r"'rl\.loss\.clip_eps'"):
        load_config(_write(tmp_path, "rl:\n  loss:\n    clip_eps: 0.2\n"))
    with pytest.raises(ConfigError, match=r"'stepz'"):
        load_config(_write(tmp_path, "stepz: 4\n"))


@pytest.mark.parametrize(
    "override, needle",
    [
        ("steps=many", "steps: expected an integer"),
        ("optimizer.lr=fast", "lr: expected a number"),
        ("rl.dash=maybe", "rl.dash: expected true or false"),
        ("trainable.kind=adapter", "unknown trainable kind"),
        ("algorithm=a2c", "algorithm"),
        ("optimizer.lr=-1", "lr must be >= 0"),
        ("rl.loss.aggregation=sum", "unknown aggregation"),
        ("optimizer.micro_batches=5", "split into"),
        ("novalue", "not key=value"),
    ],
)
def test_bad_values(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_shipped_experiments_parse():
    paths = sorted(
        p for p in glob.glob(os.path.join(ROOT, "experiments", "*.yaml")) if not os.path.basename(p).startswith("sae_")
    )  # `jaxsteer sae` configs have their own schema
    assert paths, "no experiment configs"
    for p in paths:
        load_config(p)


def test_overrides_do_not_mutate_input():
    data = {"trainable": {"kind": "steering"}}
    out = apply_overrides(data, ["trainable.kind=full"])
    assert data["trainable"]["kind"] == "steering" and out["trainable"]["kind"] == "full"


def test_resume_accepts_fields_added_after_a_run_was_written():
    """A run directory's config.yaml written before a field existed still resumes (the field takes
    its default); a real change is still refused."""
    import dataclasses

    from jaxsteer.train.config import TrainConfig, config_to_dict
    from jaxsteer.train.run import resume_conflicts

    cfg = TrainConfig()
    old = config_to_dict(cfg)
    del old["rl"]["log_kl"]  # as if written before `log_kl` was added
    assert resume_conflicts(old, cfg) == []
    assert resume_conflicts(old, dataclasses.replace(cfg, seed=1)) == ["seed: 0 -> 1"]
    assert resume_conflicts(old, dataclasses.replace(cfg, steps=1000)) == []  # a resumed run may run longer
