"""DASH's gradient filtering drops the filtered samples before the update: fewer rows run forward
and backward (counted), and the update equals masking them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import train_toy as T

from jaxsteer.train.build import build_model
from jaxsteer.train.config import config_from_dict
from jaxsteer.train.rl.dash import pack_kept, packs_dash
from jaxsteer.train.rl.learner import setup_training, update
from jaxsteer.train.rl.rollout import RolloutBatch
from jaxsteer.train.rl.step import compile_step
from jaxsteer.train.sharding import make_mesh


def _rollout(rng, rows, P, N, G=4) -> RolloutBatch:
    tokens = rng.randint(2, T.VOCAB, size=(rows, P + N)).astype(np.int32)
    mask = np.ones_like(tokens)
    for g in range(0, rows, G):
        tokens[g : g + G, :P] = tokens[g, :P]
    for i in range(rows):
        mask[i, P + rng.randint(1, N + 1) :] = 0
    adv = rng.randn(rows).astype(np.float32)
    adv[rng.rand(rows) < 0.6] = 0.0  # most samples carry no signal (e.g. groups that all agree)
    return RolloutBatch(
        tokens=tokens,
        mask=mask,
        old_logp=-rng.rand(rows, N).astype(np.float32),
        rewards=np.sign(adv).astype(np.float32),
        advantages=adv,
        lengths=mask[:, P:].sum(1),
        prompt_width=P,
        texts=None,
        sample_seconds=0.0,
    )


def test_dash_drops_filtered_rows_before_the_update_and_matches_masking(tmp_path):
    cfg = config_from_dict(
        T.config_dict(
            str(tmp_path),
            **{"prompts_per_step": 8, "optimizer.micro_batches": 4, "rl.loss.dash_tau": 0.1, "model.random_scale": 0.2},
        )
    )
    assert packs_dash(cfg.algorithm, cfg.rl)
    model, _ = build_model(cfg.model)
    mesh = make_mesh(devices=jax.devices()[:1])
    setup = setup_training(cfg, model, mesh)
    assert setup.spec.shared_prompts == 1  # packed rows are not in groups any more
    step = compile_step(setup.spec, setup.tx, donate=False)
    batch = _rollout(np.random.RandomState(0), 32, 6, 4)
    kept = int((np.abs(batch.advantages) > 0.1).sum())
    assert 0 < kept <= 16

    rows_seen = []

    def counting_step(base, state, b, prompt_width):
        rows_seen.append(b["tokens"].shape[0] * b["tokens"].shape[1])
        return step(base, state, b, prompt_width)

    packed_state, m = update(counting_step, setup, setup.state, batch, cfg, mesh)
    assert rows_seen == [-(-kept // 8) * 8] and rows_seen[0] < 32  # 8 rows per micro-batch, fewer micro-batches
    assert m["update_rows"] == rows_seen[0] and m["kept_fraction"] == kept / 32

    full = {
        k: jnp.asarray(getattr(batch, k).reshape(4, 8, *getattr(batch, k).shape[1:]))
        for k in ("tokens", "mask", "old_logp", "advantages", "rewards")
    }
    masked_state, mm = step(setup.model, setup.state, full, 6)  # all 32 rows, filtered ones masked
    np.testing.assert_allclose(
        packed_state["trainable"]["vectors"], masked_state["trainable"]["vectors"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(m["loss"], mm["loss"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m["grad_norm"], mm["grad_norm"], rtol=1e-5, atol=1e-7)


def test_pack_kept_layout():
    local = {
        "tokens": np.arange(10)[:, None] * np.ones((1, 5), np.int32),
        "mask": np.ones((10, 5), np.int32),
        "old_logp": np.zeros((10, 3)),
        "advantages": np.array([0, 1, 0, -2, 0, 0, 3, 0, 0, 0.05]),
        "rewards": np.ones(10),
    }
    packed, kept = pack_kept(local, 2, 0.1, prompt_width=2)
    assert kept == 3 and packed["tokens"].shape == (2, 2, 5)
    np.testing.assert_array_equal(packed["tokens"][:, :, 0].reshape(-1)[:3], [1, 3, 6])
    assert packed["mask"][1, 1, 2:].sum() == 0 and packed["mask"][1, 1, :2].sum() == 2  # padding row
    assert packed["advantages"][1, 1] == 0 and packed["rewards"][1, 1] == 0
    none, kept0 = pack_kept({**local, "advantages": np.zeros(10)}, 2, 0.1, prompt_width=2)
    assert kept0 == 0 and none["tokens"].shape == (1, 2, 5) and none["mask"][..., 2:].sum() == 0
