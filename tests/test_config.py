"""jaxsteer.config, the one loader of every run kind: renamed keys (old configs and run directories
keep loading, with one deprecation warning per key naming the new key), overrides at any depth,
which learner reads which field, the resume diff, and round trips of the training and SAE configs."""

from __future__ import annotations

import warnings

import pytest

from jaxsteer.config import (
    ConfigDeprecationWarning,
    ConfigError,
    config_diff,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from jaxsteer.train.config import TrainConfig
from jaxsteer.train.sae.config import SAERunConfig

# every renamed training key, old spelling -> today's
OLD_TRAIN = {
    "algorithm": {
        "name": "grpo",
        "advantage": "grpo",
        "group_size": 4,
        "prompts_per_step": 6,
        "micro_batches": 2,
        "log_kl": True,
    },
    "loss": {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "kl_coef": 0.01},
    "lr": 0.02,
    "warmup_frac": 0.1,
    "schedule": "cosine",
    "weight_decay": 0.01,
    "b1": 0.8,
    "b2": 0.99,
    "adam_eps": 1e-6,
    "grad_clip": 1.0,
}
NEW_TRAIN = {
    "algorithm": "grpo",
    "prompts_per_step": 6,
    "rl": {
        "advantage": "grpo",
        "group_size": 4,
        "log_kl": True,
        "loss": {"clip_eps_low": 0.2, "clip_eps_high": 0.28, "kl_coef": 0.01},
    },
    "optimizer": {
        "lr": 0.02,
        "warmup_frac": 0.1,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "b1": 0.8,
        "b2": 0.99,
        "eps": 1e-6,
        "grad_clip": 1.0,
        "micro_batches": 2,
    },
}
OLD_SAE = {
    "model": "some-model",
    "model_dtype": "bf16",
    "out_dir": "runs/x",
    "save_every": 7,
    "keep": 3,
    "train": {"steps": 11, "lr": 0.001, "warmup_steps": 2, "decay_start": 0.5, "grad_clip": 1.0, "batch_size": 64},
}
NEW_SAE = {
    "model": {"spec": "some-model", "dtype": "bfloat16"},
    "output_dir": "runs/x",
    "steps": 11,
    "checkpoint": {"every": 7, "keep": 3},
    "optimizer": {"lr": 0.001, "warmup_steps": 2, "decay_start": 0.5, "grad_clip": 1.0},
    "train": {"batch_size": 64},
}


@pytest.mark.parametrize(
    "cls, old, new, n_renamed",
    [(TrainConfig, OLD_TRAIN, NEW_TRAIN, 17), (SAERunConfig, OLD_SAE, NEW_SAE, 10)],
    ids=["train", "sae"],
)
def test_old_keys_load_as_the_new_ones_with_one_warning_each(cls, old, new, n_renamed):
    with pytest.warns(ConfigDeprecationWarning) as caught:
        migrated = config_from_dict(cls, old)
    assert len(caught) == n_renamed
    assert all("is now" in str(w.message) and "write" in str(w.message) for w in caught)
    assert "config key 'lr' is now 'optimizer.lr'" in " ".join(str(w.message) for w in caught) or cls is SAERunConfig
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        assert migrated == config_from_dict(cls, new)  # today's spelling warns nothing
        assert config_from_dict(cls, old, warn=False) == migrated  # a run directory's saved config: silent


def test_old_and_new_key_together_is_an_error_unless_they_agree():
    with pytest.raises(ConfigError, match=r"lr is the old name of optimizer.lr, and both are given"):
        config_from_dict(TrainConfig, {"lr": 0.1, "optimizer": {"lr": 0.2}}, warn=False)
    # a full saved config of the first release had both es.warm_start and model.init_from (one null)
    both = {"algorithm": "essa", "es": {"warm_start": "runs/sft"}, "model": {"init_from": None}}
    assert config_from_dict(TrainConfig, both, warn=False).model.init_from == "runs/sft"
    assert config_from_dict(TrainConfig, {"optimizer": {"lr": 0.1}, "lr": 0.1}, warn=False).optimizer.lr == 0.1


def test_overrides_at_any_depth_and_renamed_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: grpo\nrl:\n  group_size: 4\n")
    cfg = load_config(TrainConfig, str(path), ["rl.loss.clip_eps_low=0.2", "optimizer.lr=3e-4"])
    assert cfg.rl.loss.clip_eps_low == 0.2 and cfg.optimizer.lr == 3e-4 and cfg.rl.group_size == 4
    with pytest.warns(ConfigDeprecationWarning, match=r"'loss.kl_coef' is now 'rl.loss.kl_coef'"):
        assert load_config(TrainConfig, str(path), ["loss.kl_coef=0.5"]).rl.loss.kl_coef == 0.5
    with pytest.raises(ConfigError, match=r"unknown config key 'rl.loss.clip'; valid in rl.loss keys: clip_eps_low"):
        load_config(TrainConfig, str(path), ["rl.loss.clip=0.2"])
    with pytest.raises(ConfigError, match=r"'rl.loss' is a section"):
        load_config(TrainConfig, None, ["rl.loss=1"])
    with pytest.raises(ConfigError, match=r"optimizer.lr=nan: must be a finite number"):
        load_config(TrainConfig, None, ["optimizer.lr=nan"])


def test_old_sft_configs_drop_their_group_size_of_one():
    """SFT ran as an RL algorithm and had to say `algorithm.group_size: 1`; SFT does not read `rl`."""
    cfg = config_from_dict(TrainConfig, {"algorithm": {"name": "sft", "group_size": 1}}, warn=False)
    assert cfg.algorithm == "sft" and cfg.rl == TrainConfig().rl and cfg.group_size == 1


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"algorithm": "es", "rl": {"group_size": 4}}, r"rl.group_size: not used by evolution strategies"),
        ({"algorithm": "es", "optimizer": {"lr": 0.1}}, r"optimizer.lr: not used by evolution strategies"),
        ({"algorithm": "essa", "model": {"remat": True}}, r"model.remat: not used by evolution strategies"),
        ({"algorithm": "grpo", "es": {"population": 4}}, r"es.population: not used by the RL learner"),
        ({"algorithm": "grpo", "optimizer": {"value_lr": 0.1}}, r"optimizer.value_lr: not used by the RL learner"),
        ({"algorithm": "grpo", "rl": {"gamma": 0.9}}, r"rl.gamma: not used by the RL learner"),
        ({"algorithm": "sft", "rl": {"loss": {"kl_coef": 0.1}}}, r"rl.loss.kl_coef: not used by the SFT learner"),
    ],
)
def test_a_field_the_learner_does_not_read_is_named(data, needle):
    with pytest.raises(ConfigError, match=needle):
        config_from_dict(TrainConfig, data)


def test_sae_config_refuses_training_only_model_fields():
    with pytest.raises(ConfigError, match=r"model.remat: not used by SAE training"):
        config_from_dict(SAERunConfig, {"model": {"remat": True}})
    with pytest.raises(ConfigError, match=r"model.init_from: not used by SAE training"):
        config_from_dict(SAERunConfig, {"model": {"init_from": "runs/x"}})


def test_config_diff_migrates_fills_defaults_and_allows_prefixes():
    saved = {"lr": 0.01, "algorithm": {"name": "grpo"}, "steps": 3}  # an old run's config.yaml (few keys)
    now = config_from_dict(TrainConfig, {"optimizer": {"lr": 0.01}, "steps": 9})
    assert config_diff(TrainConfig, saved, now, allowed=("steps",)) == []
    assert config_diff(TrainConfig, saved, now) == ["steps: 3 -> 9"]
    changed = config_from_dict(TrainConfig, {"optimizer": {"lr": 0.02}, "rl": {"group_size": 4}})
    assert config_diff(TrainConfig, saved, changed, allowed=("steps",)) == [
        "optimizer.lr: 0.01 -> 0.02",
        "rl.group_size: 8 -> 4",
    ]


@pytest.mark.parametrize("cls, data", [(TrainConfig, NEW_TRAIN), (SAERunConfig, NEW_SAE)], ids=["train", "sae"])
def test_round_trips_through_plain_data_and_yaml(cls, data, tmp_path):
    cfg = config_from_dict(cls, data)
    assert config_from_dict(cls, config_to_dict(cfg)) == cfg
    save_config(cfg, str(tmp_path / "c.yaml"))
    assert load_config(cls, str(tmp_path / "c.yaml")) == cfg


def test_shipped_configs_use_todays_keys():
    """Every shipped experiment config (training and SAE) loads without a deprecation warning."""
    import glob
    import os

    from tests import ROOT

    paths = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.yaml")))
    assert len(paths) > 10
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        for path in paths:
            cls = SAERunConfig if os.path.basename(path).startswith("sae_") else TrainConfig
            load_config(cls, path)
