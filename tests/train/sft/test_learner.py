"""The SFT learner (jaxsteer.train.sft): SFT on reference answers lowers their NLL (steering, LoRA,
full), ESSA's starting centre built from an SFT LoRA is that policy, an RL run starts from it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import train_toy as T

from jaxsteer.train import train
from jaxsteer.train.config import ConfigError, config_from_dict
from jaxsteer.train.data import Example
from jaxsteer.train.scoring import sequence_logprobs
from jaxsteer.train.sft.batches import reference_batch
from jaxsteer.train.sft.learner import sft_spec
from jaxsteer.train.trainable import build_policy

KINDS = {"steering": {"lr": 0.3}, "lora": {"lr": 0.05, "trainable.lora_rank": 4}, "full": {"lr": 0.01}}


def _examples(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return [
        Example(f"s{i}", "t", {"prompt_ids": rng.randint(2, T.VOCAB, 5).tolist(), "target_ids": [9, 12, 1]})
        for i in range(n)
    ]  # the same answer, then EOS


def _sft(tmp_path, kind, **kw):
    flags = {
        "algorithm": "sft",
        "optimizer.micro_batches": 1,
        "steps": 4,
        "checkpoint.every": 0,
        "model.random_scale": 0.2,
        "trainable.kind": kind,
        **KINDS[kind],
        **kw,
    }
    cfg = config_from_dict(T.config_dict(str(tmp_path / kind), **flags))
    return cfg, train(cfg, train_examples=_examples(), eval_examples=_examples(4, seed=1))


def _nll(model, trainable, cfg, examples):
    batch = reference_batch(
        examples,
        [e.meta["prompt_ids"] for e in examples],
        tokenizer=None,
        pad_id=0,
        eos_id=1,
        max_new_tokens=cfg.sampling.max_new_tokens,
        bucket=1,
    )
    policy, ivs = build_policy(model, trainable, cfg.trainable) if trainable is not None else (model, ())
    logp, _ = sequence_logprobs(policy, batch.tokens, batch.mask, ivs, completion_start=batch.prompt_width)
    return -float(np.sum(logp) / batch.completion_mask.sum())


@pytest.mark.parametrize("kind", list(KINDS))
def test_sft_lowers_the_nll_of_its_targets(tmp_path, kind):
    cfg, result = _sft(tmp_path, kind)
    held = _examples(8, seed=2)
    before, after = _nll(result.model, None, cfg, held), _nll(result.model, result.trainable, cfg, held)
    assert after < before - 0.1, (before, after)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory):
    """A trained SFT LoRA run (rank 4, all projections), shared by the warm-start tests."""
    return _sft(tmp_path_factory.mktemp("sft"), "lora")


def test_essa_centre_reproduces_the_sft_lora_policy(sft_lora):
    from jaxsteer.train.es.spaces import ESSASpace, essa_space

    cfg, result = sft_lora
    space = essa_space(result.model, result.trainable, cfg.trainable, alpha=0.5)
    centre = space.perturb(space.init(result.model), jax.random.PRNGKey(0), 0.0)
    essa_model, essa_ivs = space.apply(result.model, centre)
    lora_model, lora_ivs = build_policy(result.model, result.trainable, cfg.trainable)
    ex = _examples(4, seed=3)
    batch = reference_batch(
        ex, [e.meta["prompt_ids"] for e in ex], tokenizer=None, pad_id=0, eos_id=1, max_new_tokens=4, bucket=1
    )
    a, _ = sequence_logprobs(essa_model, batch.tokens, batch.mask, essa_ivs, completion_start=batch.prompt_width)
    b, _ = sequence_logprobs(lora_model, batch.tokens, batch.mask, lora_ivs, completion_start=batch.prompt_width)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert isinstance(space, ESSASpace) and set(space.s_a) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert _nll(result.model, result.trainable, cfg, ex) < _nll(result.model, None, cfg, ex)


def test_rl_starts_from_the_sft_lora_run(sft_lora, tmp_path):
    """`model.init_from: <run dir>`: an RL LoRA run's step-0 trainable is the SFT run's trained
    adapters, so its log-probs equal the SFT LoRA's; a trainable section that disagrees is an error."""
    from jaxsteer.train.rl.learner import setup_training
    from jaxsteer.train.sharding import make_mesh

    cfg, result = sft_lora
    rl = config_from_dict(
        T.config_dict(
            str(tmp_path / "rl"),
            **{
                "model.random_scale": 0.2,
                "trainable.kind": "lora",
                "trainable.lora_rank": 4,
                "model.init_from": cfg.output_dir,
            },
        )
    )
    setup = setup_training(rl, result.model, make_mesh(1, 1, jax.devices()[:1]))
    start = jax.device_get(setup.state["trainable"])
    for a, b in zip(jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(result.trainable), strict=False):
        np.testing.assert_array_equal(a, np.asarray(b))
    ex = _examples(4, seed=3)
    batch = reference_batch(
        ex, [e.meta["prompt_ids"] for e in ex], tokenizer=None, pad_id=0, eos_id=1, max_new_tokens=4, bucket=1
    )

    def logp(trainable):
        policy, ivs = build_policy(result.model, trainable, rl.trainable)
        return sequence_logprobs(policy, batch.tokens, batch.mask, ivs, completion_start=batch.prompt_width)[0]

    np.testing.assert_allclose(logp(start), logp(result.trainable), atol=1e-6)
    assert not np.allclose(
        logp(start),
        sequence_logprobs(result.model, batch.tokens, batch.mask, completion_start=batch.prompt_width)[0],
        atol=1e-3,
    )
    bad = config_from_dict(
        T.config_dict(
            str(tmp_path / "bad"),
            **{"trainable.kind": "lora", "trainable.lora_rank": 8, "model.init_from": cfg.output_dir},
        )
    )
    with pytest.raises(ConfigError, match="must agree"):
        setup_training(bad, result.model, make_mesh(1, 1, jax.devices()[:1]))
    with pytest.raises(ConfigError, match="not a run directory"):
        setup_training(
            config_from_dict(T.config_dict(str(tmp_path / "x"), **{"model.init_from": str(tmp_path)})),
            result.model,
            make_mesh(1, 1, jax.devices()[:1]),
        )


def test_sft_reads_no_rl_settings():
    """SFT trains on one reference per prompt: `rl.*` (group size, advantages, losses) is refused by
    name; old configs' `algorithm.group_size: 1` (required when SFT was an RL algorithm) still loads."""
    with pytest.raises(ConfigError, match="rl.group_size: not used by the SFT learner"):
        config_from_dict({"algorithm": "sft", "rl": {"group_size": 4}})
    cfg = config_from_dict({"algorithm": {"name": "sft", "group_size": 1}}, warn=False)
    assert cfg.group_size == 1 and cfg.rollouts_per_step == cfg.prompts_per_step
    assert sft_spec(cfg).temperature == cfg.sampling.temperature


def test_essa_needs_trained_adapters_and_the_fresh_start_has_its_own_name(tiny_model):
    from jaxsteer.train.config import ESConfig
    from jaxsteer.train.es.learner import build_es
    from jaxsteer.train.es.spaces import ESSAProductSpace

    with pytest.raises(ConfigError, match="random_subspace"):
        build_es(tiny_model, ESConfig(), "essa")  # no warm start: not ESSA
    space, _ = build_es(tiny_model, ESConfig(space="random_subspace", essa_rank=2, targets=("q_proj",)), "essa")
    assert isinstance(space, ESSAProductSpace) and set(space.s0) == {"q_proj"}
    assert float(np.abs(space.s0["q_proj"]).max()) == 0.0  # random orthonormal U, V with s = 0
    cfg = config_from_dict({"algorithm": {"name": "essa"}, "es": {"space": "random_subspace"}})
    assert cfg.es.space_for("essa") == "random_subspace"
