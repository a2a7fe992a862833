"""Population evaluation (jaxsteer.train.es.population): the batched population against a loop over
members, text rewards on decoded completions, and one whole generation (population, rewards,
update) sharded over 8 virtual devices equal to one device for steering, EGGROLL and ESSA."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from virtual_devices import device_env

import jaxsteer
from jaxsteer.train.data import Example
from jaxsteer.train.es import population_generate, score_population, update_strategy
from jaxsteer.train.es.strategies import sampling_key
from jaxsteer.train.rewards import get_reward_fn
from tests import TESTS
from tests.train.es.conftest import EGG, N_NEW, PROMPTS, STEER


@pytest.fixture(scope="module", autouse=True)
def sharded_run():
    """The 8-virtual-device check runs in a subprocess started with the module's first test (it
    compiles in parallel with the rest); `test_sharded_population_equals_one_device` collects it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SHARDED.format(tests=TESTS)],
        env=device_env(8),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("which", ["steering", "eggroll", "essa"])
def test_population_equals_member_loop(model, essa, which):
    space, strategy = {"steering": STEER, "eggroll": EGG, "essa": essa}[which]
    state = strategy.init(space.init(model), jax.random.PRNGKey(1))
    if which == "essa":  # move off s = 0 so members differ in more than the noise
        state = update_strategy(space, strategy, state, jnp.ones((16, 2)) * jnp.arange(16.0)[:, None])[0]
    out = population_generate(model, space, strategy, state, PROMPTS, max_new_tokens=N_NEW, stop_tokens=[1])
    assert out.tokens.shape == (16, 2, N_NEW) and out.lengths.shape == (16, 2)
    assert len({out.tokens[m].tobytes() for m in range(16)}) > 1
    for m in range(16):
        run, ivs = space.apply(model, strategy.member(space, state, m))
        ref = jaxsteer.generate(
            run, PROMPTS, interventions=ivs, greedy=True, max_new_tokens=N_NEW, stop_tokens=[1], bucket=8
        )
        np.testing.assert_array_equal(out.tokens[m], ref.tokens)
        np.testing.assert_array_equal(out.lengths[m], ref.lengths)
        np.testing.assert_allclose(out.logprobs[m], ref.logprobs, atol=1e-5)
    if which == "steering":  # sampled decoding shares one key; member_batch (lax.map) gives the same
        out = population_generate(
            model, space, strategy, state, PROMPTS, max_new_tokens=N_NEW, stop_tokens=[1], greedy=False, member_batch=4
        )
        for m in (0, 5):
            run, ivs = space.apply(model, strategy.member(space, state, m))
            ref = jaxsteer.generate(
                run,
                PROMPTS,
                interventions=ivs,
                max_new_tokens=N_NEW,
                stop_tokens=[1],
                bucket=8,
                seed=sampling_key(state),
            )
            np.testing.assert_array_equal(out.tokens[m], ref.tokens)


class DigitsTokenizer:
    """Decodes ids as space-separated numbers, so the text rewards of `jaxsteer.train.rewards` apply."""

    pad_token_id = None
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(int(i)) for i in ids)


def test_text_rewards_on_decoded_completions(model):
    space, strategy = STEER
    state = strategy.init(space.init(model), jax.random.PRNGKey(1))
    out = population_generate(
        model, space, strategy, state, PROMPTS, max_new_tokens=N_NEW, stop_tokens=[1], tokenizer=DigitsTokenizer()
    )
    assert out.texts[3][1] == " ".join(str(t) for t in out.tokens[3, 1, : out.lengths[3, 1]])
    last = out.tokens[0, 0, out.lengths[0, 0] - 1]
    examples = [Example("a", str(last)), Example("b", "-5")]
    rewards = score_population(get_reward_fn("correctness"), examples, PROMPTS, out)
    assert rewards.shape == (16, 2) and rewards[0, 0] == 1.0 and np.all(rewards[:, 1] == -1.0)
    want = [1.0 if out.tokens[m, 0, out.lengths[m, 0] - 1] == last else -1.0 for m in range(16)]
    np.testing.assert_array_equal(rewards[:, 0], want)


SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from tests.train.es import conftest as t
    from jaxsteer.train.es import CMAES, es_generation, essa_space, member_mesh
    assert jax.device_count() == 8, jax.devices()
    model = t.random_model()
    essa = (essa_space(model, *t.random_lora(model)), CMAES(population=16, sigma=1.0))  # the paper's factor-wise ESSA
    examples = t.prompt_examples()
    for name, (space, strategy) in (("steering", t.STEER), ("eggroll", t.EGG), ("essa", essa)):
        state = strategy.init(space.init(model), jax.random.PRNGKey(1))
        kw = dict(max_new_tokens=t.N_NEW, stop_tokens=[1])
        # one whole generation: population, rewards, and the strategy's update
        s1, m1, one, r1 = es_generation(model, space, strategy, state, examples, t.PROMPTS, t.low_tokens, **kw)
        s8, m8, many, r8 = es_generation(model, space, strategy, state, examples, t.PROMPTS, t.low_tokens,
                                         mesh=member_mesh(), **kw)
        np.testing.assert_array_equal(one.tokens, many.tokens, err_msg=name)
        np.testing.assert_array_equal(one.lengths, many.lengths, err_msg=name)
        np.testing.assert_allclose(one.logprobs, many.logprobs, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(r1, r8, err_msg=name)
        assert r1.std() > 0, name  # the update has something to move
        for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7, err_msg=name)
        assert m1["update_norm"] > 0 and abs(m1["update_norm"] - m8["update_norm"]) <= 1e-6 * m1["update_norm"]
    print("SHARDED-OK")
    """
)


def test_sharded_population_equals_one_device(sharded_run):
    try:
        out, err = sharded_run.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        sharded_run.kill()
        raise
    assert sharded_run.returncode == 0 and "SHARDED-OK" in out, out[-3000:] + err[-3000:]
