"""The refill sampler (`jaxsteer.models.refill`): the same rows as the static sampler for the same
key, row by row, while finished rows hand their slot to waiting ones; refused settings are clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Steer
from jaxsteer.errors import InputError
from jaxsteer.models.controls import Conditional, OnTokens, RowSteer
from jaxsteer.models.generate import SamplingConfig, prepare_prompts, sample_tokens

STOP = list(range(1, 8))  # ~1 in 8 draws of the tiny model stops a row: lengths spread over 1..16


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.RandomState(0)
    return [rng.randint(2, 53, n).tolist() for n in rng.randint(2, 12, 7)]


def _same_rows(static, refill):
    np.testing.assert_array_equal(refill.tokens, static.tokens)
    np.testing.assert_array_equal(refill.lengths, static.lengths)
    np.testing.assert_allclose(refill.logprobs, static.logprobs, rtol=0, atol=2e-5)
    np.testing.assert_array_equal(refill.prompt_tokens, static.prompt_tokens)


@pytest.mark.parametrize(
    "kw",
    [
        # G = 3 samples per prompt (21 rows) through 4 slots: groups straddle refills, stages of 2 prompts
        dict(samples_per_prompt=3, temperature=0.8, top_p=0.9, seed=3),
        # greedy, one row per prompt through 3 slots, steered on the first 2 generated tokens of each row
        dict(greedy=True, seed=0, refill_slots=3, steer=True),
    ],
    ids=["sampled-groups", "greedy-steered"],
)
def test_refill_equals_static_row_by_row(tiny_model, prompts, kw):
    """Tokens, lengths and log-probabilities per row equal the static sampler's for the same key,
    with rows finishing at different steps and more rows than slots."""
    kw = dict(kw)
    slots = kw.pop("refill_slots", 4)
    if kw.pop("steer", False):
        vec = jnp.asarray(np.random.RandomState(1).normal(0, 2.0, tiny_model.config.d_model), jnp.float32)
        kw["interventions"] = OnTokens(Steer(vec), first=2)
    common = dict(max_new_tokens=16, stop_tokens=STOP, **kw)
    static = jaxsteer.generate(tiny_model, prompts, **common)
    refill = jaxsteer.generate(tiny_model, prompts, refill_slots=slots, **common)
    assert len(np.unique(static.lengths)) >= 3 and static.lengths.max() == 16  # rows really finish apart
    assert len(static.tokens) > slots
    _same_rows(static, refill)
    if "interventions" in kw:  # the steering really acts
        plain = jaxsteer.generate(tiny_model, prompts, max_new_tokens=16, stop_tokens=STOP, greedy=True)
        assert not np.array_equal(plain.tokens, refill.tokens)


def test_refill_refuses_per_row_controls_and_runs(tiny_model, prompts):
    d = tiny_model.config.d_model
    vec = jnp.ones((d,), jnp.float32)
    with pytest.raises(InputError, match="RowSteer.*static sampler"):
        rows = OnTokens(RowSteer(jnp.ones((len(prompts), d))), first=2)
        jaxsteer.generate(tiny_model, prompts, refill_slots=2, interventions=rows)
    with pytest.raises(InputError, match="Conditional.*static sampler"):
        cond = Conditional(OnTokens(Steer(vec)), condition=vec, layer=1, threshold=0.0)
        jaxsteer.generate(tiny_model, prompts, refill_slots=2, interventions=cond)
    with pytest.raises(InputError, match="runs=1"):
        jaxsteer.generate(tiny_model, prompts, refill_slots=2, runs=2)
    with pytest.raises(InputError, match="refill_slots"):
        jaxsteer.generate(tiny_model, prompts, refill_slots=-1)


def test_static_sampler_in_calls_with_row_offset_equals_one_call(tiny_model, prompts):
    """Row keys are global: a batch sampled in two calls (`row_offset`) draws as one call."""
    prepared = prepare_prompts(tiny_model, prompts[:6], max_new_tokens=8, stop_tokens=STOP, bucket=8)
    sampling = SamplingConfig(8, 0.8, samples_per_prompt=2)
    key = jax.random.PRNGKey(3)
    one = sample_tokens(tiny_model, *prepared.args, key, (), sampling)
    prompt, mask, stop_ids, pad_id = prepared.args
    halves = [
        sample_tokens(tiny_model, prompt[i : i + 3], mask[i : i + 3], stop_ids, pad_id, key, (), sampling, 2 * i)
        for i in (0, 3)
    ]
    tokens, logprobs, lengths = (np.concatenate([np.asarray(h[k]) for h in halves]) for k in range(3))
    np.testing.assert_array_equal(tokens, one[0])
    np.testing.assert_array_equal(lengths, one[2])
    np.testing.assert_allclose(logprobs, one[1], rtol=0, atol=2e-5)  # float rounding differs with the batch
    unshifted = sample_tokens(tiny_model, prompt[3:], mask[3:], stop_ids, pad_id, key, (), sampling)
    assert not np.array_equal(np.asarray(unshifted[0]), np.asarray(one[0])[6:])  # the offset matters
