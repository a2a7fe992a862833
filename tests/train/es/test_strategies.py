"""Evolution strategies: fitness shaping and gradient estimates by hand, known-answer optimisation,
EGGROLL's low-rank forward, ESSA's SVD reparameterisation, the batched population against a loop,
planted rewards on a tiny model, exact resume, and one whole generation (population, rewards,
update) sharded over 8 virtual devices equal to one device for steering, EGGROLL and ESSA."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from conftest import TINY_CONFIG, random_model
from jaxsteer.train.config import ConfigError
from tests import TESTS
from virtual_devices import device_env
from jaxsteer.models.params import param_shapes
from jaxsteer.train.data import Example
from jaxsteer.train.es import (
    ESConfig,
    ESLoopSpec,
    update_strategy,
    build_es,
    center_member,
    population_generate,
    run_es,
    score_population,
)
from jaxsteer.train.es.strategies import (
    CMAES,
    OpenES,
    SepCMAES,
    centered_ranks,
    noise_key,
    sampling_key,
    shape_fitness,
    zscore,
)
from jaxsteer.train.es.spaces import (EggrollSpace, ESSASpace, FullSpace, SteeringSpace, TrainableSpace, essa_product_space,
                                     essa_space, n_evolving, normal_like)
from jaxsteer.train.rewards import get_reward_fn
from jaxsteer.train.trainable import TrainableConfig, apply_trainable

CFG = TINY_CONFIG
PROMPTS = [[5, 6, 7], [8, 9, 10, 11]]
N_NEW = 4
KEY = jax.random.PRNGKey(0)

# One strategy per space, shared by the loop-equality, planted-reward and resume tests so that each
# compiled population program is built once.
STEER = (SteeringSpace(), OpenES(population=16, sigma=1.0, lr=4.0))
EGG = (EggrollSpace(rank=1), OpenES(population=16, sigma=0.05, lr=0.01))


@pytest.fixture(scope="module", autouse=True)
def sharded_run():
    """The 8-virtual-device check runs in a subprocess started with the module's first test (it
    compiles in parallel with the rest); `test_sharded_population_equals_one_device` collects it."""
    proc = subprocess.Popen([sys.executable, "-c", SHARDED.format(tests=TESTS)], env=device_env(8), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def essa(model):
    return essa_product_space(model, rank=4, seed=0), CMAES(population=16, sigma=1.0)


def low_tokens(prompt_ids, completion, reference) -> float:
    """Planted reward on token ids: the fraction of generated tokens with id < 20."""
    return float(np.mean(np.asarray(completion) < 20)) if len(completion) else 0.0


low_tokens.uses_tokens = True


# --------------------------------------------------------------------------- shaping and gradients


def test_fitness_shaping_hand_values():
    f = jnp.array([3.0, 1.0, 2.0, 2.0])
    np.testing.assert_allclose(centered_ranks(f), [0.5, -0.5, 0.0, 0.0], atol=1e-7)  # ties share ranks
    np.testing.assert_allclose(centered_ranks(jnp.array([0.1, 5.0, -2.0])), [0.0, 0.5, -0.5], atol=1e-7)
    s = math.sqrt(0.5)
    np.testing.assert_allclose(zscore(f), [1 / s, -1 / s, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(zscore(jnp.ones(4)), 0.0)
    r = jnp.array([[1.0, 0.0], [0.0, 0.0], [1.0, 4.0], [0.0, 2.0]])  # [M=4, B=2]
    per = (np.array([1, -1, 1, -1]) + (np.array([0, 0, 4, 2]) - 1.5) / np.std([0, 0, 4, 2])) / 2
    np.testing.assert_allclose(shape_fitness(r, "zscore_per_prompt"), per, rtol=1e-6)
    np.testing.assert_allclose(shape_fitness(r, "centered_rank"), centered_ranks(jnp.array([0.5, 0.0, 2.5, 1.0])))


def test_antithetic_members_and_gradient_by_hand():
    space = TrainableSpace()
    theta = {"x": jnp.array([0.5, -1.0, 2.0])}
    es = OpenES(population=4, sigma=0.1, lr=0.3)
    state = es.init(theta, KEY)
    nk = noise_key(state)
    eps = [normal_like(theta, jax.random.fold_in(nk, i))["x"] for i in range(2)]
    for m in range(4):
        sign = 1 if m % 2 == 0 else -1
        np.testing.assert_allclose(es.member(space, state, m)["x"], theta["x"] + sign * 0.1 * eps[m // 2], rtol=1e-6)
    rewards = jnp.array([1.0, 3.0, 2.0, 0.0])
    ranks = np.array([-1 / 6, 0.5, 1 / 6, -0.5])  # centered ranks of [1, 3, 2, 0]
    want = ((ranks[0] - ranks[1]) * eps[0] + (ranks[2] - ranks[3]) * eps[1]) / (4 * 0.1)
    np.testing.assert_allclose(es.gradient(space, state, rewards)["x"], want, rtol=1e-5, atol=1e-7)
    new, metrics = es.update(space, state, rewards)
    np.testing.assert_allclose(new["theta"]["x"], theta["x"] + 0.3 * want, rtol=1e-5)
    assert int(new["generation"]) == 1 and float(metrics["fitness_max"]) == 3.0 and int(metrics["best_member"]) == 1
    np.testing.assert_allclose(metrics["update_norm"], 0.3 * np.linalg.norm(want), rtol=1e-5)

    # Qiu et al.: no antithetic pairs, z-scored rewards, theta += alpha * mean(z_n eps_n).
    qiu = OpenES(population=3, sigma=0.1, lr=0.3, antithetic=False, shaping="zscore", divide_by_sigma=False)
    st = qiu.init(theta, KEY)
    eps = [normal_like(theta, jax.random.fold_in(noise_key(st), m))["x"] for m in range(3)]
    z = (np.array([1.0, 4.0, 0.0]) - 5 / 3) / np.std([1.0, 4.0, 0.0])
    want = sum(zi * e for zi, e in zip(z, eps)) / 3
    np.testing.assert_allclose(qiu.gradient(space, st, jnp.array([1.0, 4.0, 0.0]))["x"], want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- known answers


def _quadratic_run(strategy, space, theta, fitness_fn, generations):
    state = strategy.init(theta, KEY)

    @jax.jit
    def gen(strategy, state):
        members = jax.vmap(lambda m: strategy.member(space, state, m))(jnp.arange(strategy.population))
        return strategy.update(space, state, jax.vmap(fitness_fn)(members))

    for _ in range(generations):
        state, _ = gen(strategy, state)
    return state


@pytest.mark.parametrize(
    "strategy",
    [OpenES(population=16, sigma=0.1, lr=0.1, optimizer="adam"), CMAES(population=12, sigma=0.5), SepCMAES(population=12, sigma=0.5)],
    ids=["openai_es", "cma_es", "sep_cma_es"],
)
def test_quadratic_improves(strategy):
    target = jnp.linspace(-1.0, 1.0, 8)
    f = lambda member: -jnp.sum((member["x"] - target) ** 2)
    theta = {"x": jnp.zeros(8)}
    state = _quadratic_run(strategy, TrainableSpace(), theta, f, 25)
    assert -f(state["theta"]) < 0.25 * -f(theta)


def test_eggroll_quadratic_improves():
    """Low-rank noise, full-rank update: W moves towards a target matrix."""
    space = EggrollSpace(targets=("q_proj",), rank=1, chunk=5)
    target = jnp.asarray(np.random.RandomState(0).normal(size=(2, 6, 5)), jnp.float32)

    def f(member):
        ab = member["lora"]["q_proj"]
        w = member["w"]["q_proj"] + jnp.einsum("lir,lro->lio", ab["a"], ab["b"])
        return -jnp.sum((w - target) ** 2)

    theta = {"q_proj": jnp.zeros((2, 6, 5))}
    state = _quadratic_run(OpenES(population=32, sigma=0.1, lr=0.05), space, theta, f, 20)
    assert float(jnp.sum((state["theta"]["q_proj"] - target) ** 2)) < 0.6 * float(jnp.sum(target**2))


# --------------------------------------------------------------------------- EGGROLL and ESSA exactness


def test_eggroll_forward_equals_materialised_weights(model):
    space = EggrollSpace(targets=("q_proj", "down_proj"), rank=2)
    theta = space.init(model)
    k, sigma = jax.random.PRNGKey(3), 0.7
    keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(5))
    w = jnp.array([0.5, -1.0, 0.25, 2.0, -0.75])

    @jax.jit
    def pieces(theta):
        factors = space.factors(theta, k)
        merged = {p: theta[p] + sigma * jnp.einsum("lir,lor->lio", A, B) / math.sqrt(2) for p, (A, B) in factors.items()}
        got = EggrollSpace(targets=("q_proj", "down_proj"), rank=2, chunk=2).noise_sum(theta, keys, w)
        noise = jax.vmap(space.noise, in_axes=(None, 0))(theta, keys)
        want = {p: jnp.einsum("k,klio->lio", w, n) for p, n in noise.items()}
        return space.perturb(theta, k, sigma), merged, got, want

    member, merged, got, want = pieces(theta)
    run, ivs = space.apply(model, member)
    assert ivs == () and set(run.params["layers"]["lora"]) == {"q_proj", "down_proj"}
    # the merged weights, with all-zero adapters so that both runs share one compiled forward
    zero = jax.tree_util.tree_map(jnp.zeros_like, run.params["layers"]["lora"])
    merged = model.replace(params={**model.params, "layers": {**model.params["layers"], **merged, "lora": zero}})
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    np.testing.assert_allclose(jaxsteer.forward(run, tokens)[0], jaxsteer.forward(merged, tokens)[0], atol=2e-5)
    # noise_sum (chunked factor contraction, with a padded last chunk) equals the sum of materialised E's
    for p in theta:
        np.testing.assert_allclose(got[p], want[p], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def lora(model):
    return random_lora(model)


def random_lora(model):
    """A trained-looking LoRA (random a and b) on q, v and down projections: `(trainable, cfg)`."""
    cfg = TrainableConfig(kind="lora", lora_rank=4, lora_alpha=8.0, lora_targets=("q_proj", "v_proj", "down_proj"))
    rng = np.random.RandomState(5)
    trainable = {}
    for p in cfg.lora_targets:
        L, d_in, d_out = model.params["layers"][p].shape
        trainable[p] = {"a": jnp.asarray(rng.normal(size=(L, d_in, 4)) * 0.3, jnp.float32),
                        "b": jnp.asarray(rng.normal(size=(L, 4, d_out)) * 0.3, jnp.float32)}
    return trainable, cfg


def test_essa_product_svd_reproduces_lora_and_only_singular_values_evolve(model, lora):
    trainable, cfg = lora
    space = essa_product_space(model, trainable, cfg, alpha=0.5)
    assert space.n_active == 2
    theta = space.init(model)
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    lora_model, _ = apply_trainable(model, trainable, cfg)
    want, _ = jaxsteer.forward(lora_model, tokens)
    run, _ = space.apply(model, center_member(space, theta))
    got, _ = jaxsteer.forward(run, tokens)
    np.testing.assert_allclose(got, want, atol=1e-5)
    s0 = {p: np.asarray(v) for p, v in space.s0.items()}
    for p in s0:
        assert np.all(np.diff(s0[p], axis=-1) <= 1e-6)  # descending
        np.testing.assert_allclose(np.asarray(space.u[p]).swapaxes(-1, -2) @ np.asarray(space.u[p]), np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-5)

    es = OpenES(population=8, sigma=0.3, lr=0.5)
    state = es.init(theta, KEY)
    new, _ = es.update(space, state, jnp.arange(8.0))
    s_new = space.singular_values(new["theta"])
    for p in s0:
        assert new["theta"][p].shape == (3, 2)
        np.testing.assert_array_equal(np.asarray(s_new[p])[:, 2:], s0[p][:, 2:])  # outside the top p%: fixed
        assert not np.allclose(np.asarray(s_new[p])[:, :2], s0[p][:, :2])
    # The evolved adapter is U diag(s') V^T with the frozen U, V; to_lora gives the same model.
    run, _ = space.apply(model, new["theta"])
    for p in s0:
        usv = run.params["layers"]["lora"][p]
        np.testing.assert_array_equal(usv["a"], space.u[p])  # U, V^T frozen
        np.testing.assert_array_equal(usv["b"], space.vt[p])
        np.testing.assert_array_equal(usv["s"], s_new[p])
    via_lora, _ = apply_trainable(model, space.to_lora(new["theta"], cfg), cfg)
    np.testing.assert_allclose(jaxsteer.forward(via_lora, tokens)[0], jaxsteer.forward(run, tokens)[0], atol=1e-5)


def test_essa_factorwise_svd_is_the_papers_space(model, lora):
    """ESSA as its paper defines it: each LoRA factor decomposed separately (2r values per adapted
    matrix), U and V frozen, zero offsets = the LoRA itself, the top floor(alpha r) values evolving."""
    trainable, cfg = lora
    space = essa_space(model, trainable, cfg, alpha=1.0, targets=("q_proj", "v_proj"))
    L = CFG.n_layers
    theta = space.init(model)
    assert set(theta) == {"q_proj", "v_proj"} and set(space.frozen) == {"down_proj"}
    for p in theta:  # 2r = 8 values per adapted matrix (r for a, r for b), all zero offsets
        assert theta[p]["a"].shape == (L, 4) and theta[p]["b"].shape == (L, 4)
        assert sum(x.size for x in jax.tree_util.tree_leaves(theta[p])) == 2 * 4 * L
        assert float(jnp.abs(theta[p]["a"]).max()) == 0.0
        for u in (space.u_a[p], space.u_b[p], jnp.swapaxes(space.vt_a[p], -1, -2), jnp.swapaxes(space.vt_b[p], -1, -2)):
            np.testing.assert_allclose(jnp.swapaxes(u, -1, -2) @ u, np.broadcast_to(np.eye(4), (L, 4, 4)), atol=1e-5)
        # each factor's own singular values (not those of the product)
        np.testing.assert_allclose(space.s_a[p], np.linalg.svd(np.asarray(trainable[p]["a"]), compute_uv=False), rtol=1e-5)
        np.testing.assert_allclose(space.s_b[p], np.linalg.svd(np.asarray(trainable[p]["b"]), compute_uv=False), rtol=1e-5)
    tokens = jnp.asarray([[3, 4, 5, 6, 7], [9, 8, 7, 6, 5]])
    want, _ = jaxsteer.forward(apply_trainable(model, trainable, cfg)[0], tokens)
    got, _ = jaxsteer.forward(space.apply(model, center_member(space, theta))[0], tokens)
    np.testing.assert_allclose(got, want, atol=2e-5)  # zero offsets reproduce the LoRA (frozen down_proj included)

    half = essa_space(model, trainable, cfg, alpha=0.6)  # floor(0.6 * 4) = 2 per factor (ceil would give 3)
    assert half.n_a == half.n_b == 2 and set(half.s_a) == {"q_proj", "v_proj"}  # the fixture's attention adapters
    es = OpenES(population=8, sigma=0.3, lr=0.5)
    new = es.update(half, es.init(half.init(model), KEY), jnp.arange(8.0))[0]["theta"]
    s_new = half.singular_values(new)
    for p, (sa, sb) in s_new.items():
        for s, s0 in ((sa, half.s_a[p]), (sb, half.s_b[p])):
            np.testing.assert_array_equal(np.asarray(s)[:, 2:], np.asarray(s0)[:, 2:])  # outside the top alpha: fixed
            assert not np.allclose(np.asarray(s)[:, :2], np.asarray(s0)[:, :2])
    run, _ = half.apply(model, new)
    adapter = run.params["layers"]["lora"]["q_proj"]
    np.testing.assert_array_equal(adapter["a"], half.u_a["q_proj"])  # U_a frozen; only s, s_out move
    np.testing.assert_array_equal(adapter["s_out"], s_new["q_proj"][1])
    via_lora, _ = apply_trainable(model, half.to_lora(new, cfg), cfg)  # the evolved factors as a plain LoRA
    np.testing.assert_allclose(jaxsteer.forward(via_lora, tokens)[0], jaxsteer.forward(run, tokens)[0], atol=2e-5)


def test_essa_alpha_rounds_down():
    """The paper rounds the top-alpha count down; a fraction that leaves no value is an error."""
    assert [n_evolving(a, 8) for a in (0.2, 0.4, 0.6, 0.8, 1.0)] == [1, 3, 4, 6, 8]
    assert n_evolving(0.25, 4) == 1 and n_evolving(0.3, 10) == 3
    with pytest.raises(ValueError, match="rounds down to 0"):
        n_evolving(0.1, 8)  # the paper's empty cell: rank 8, alpha 0.1
    with pytest.raises(ValueError, match="alpha"):
        n_evolving(0.0, 8)


def test_essa_members_of_a_generation_share_one_prompt_batch(model, lora):
    """Every member of a generation is scored on the same prompt mini-batch; the next generation
    draws a new one."""
    trainable, cfg = lora
    space, strategy = essa_space(model, trainable, cfg, targets=("q_proj",)), CMAES(population=4, sigma=0.1)
    seen = []

    def record(prompt_ids, completion, reference):
        seen.append(tuple(prompt_ids))
        return float(len(completion))

    record.uses_tokens = True
    examples = [Example(f"p{i}", "", {"prompt_ids": [3 + i, 4, 5 + i]}) for i in range(6)]
    spec = ESLoopSpec(generations=2, prompts_per_generation=3, max_new_tokens=2, stop_tokens=(), seed=1)
    run_es(model, space, strategy, examples, record, spec, log=None)
    assert len(seen) == 2 * 4 * 3  # generations x members x prompts
    batches = [[seen[g * 12 + m * 3: g * 12 + m * 3 + 3] for m in range(4)] for g in range(2)]
    for members in batches:
        assert all(b == members[0] for b in members) and len(set(members[0])) == 3
    assert set(batches[0][0]) != set(batches[1][0])


# --------------------------------------------------------------------------- population evaluation


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
        ref = jaxsteer.generate(run, PROMPTS, interventions=ivs, greedy=True, max_new_tokens=N_NEW, stop_tokens=[1], bucket=8)
        np.testing.assert_array_equal(out.tokens[m], ref.tokens)
        np.testing.assert_array_equal(out.lengths[m], ref.lengths)
        np.testing.assert_allclose(out.logprobs[m], ref.logprobs, atol=1e-5)
    if which == "steering":  # sampled decoding shares one key; member_batch (lax.map) gives the same
        out = population_generate(model, space, strategy, state, PROMPTS, max_new_tokens=N_NEW, stop_tokens=[1],
                                  greedy=False, member_batch=4)
        for m in (0, 5):
            run, ivs = space.apply(model, strategy.member(space, state, m))
            ref = jaxsteer.generate(run, PROMPTS, interventions=ivs, max_new_tokens=N_NEW, stop_tokens=[1], bucket=8,
                                    seed=sampling_key(state))
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
    out = population_generate(model, space, strategy, state, PROMPTS, max_new_tokens=N_NEW, stop_tokens=[1],
                              tokenizer=DigitsTokenizer())
    assert out.texts[3][1] == " ".join(str(t) for t in out.tokens[3, 1, : out.lengths[3, 1]])
    last = out.tokens[0, 0, out.lengths[0, 0] - 1]
    examples = [Example("a", str(last)), Example("b", "-5")]
    rewards = score_population(get_reward_fn("correctness"), examples, PROMPTS, out)
    assert rewards.shape == (16, 2) and rewards[0, 0] == 1.0 and np.all(rewards[:, 1] == -1.0)
    want = [1.0 if out.tokens[m, 0, out.lengths[m, 0] - 1] == last else -1.0 for m in range(16)]
    np.testing.assert_array_equal(rewards[:, 0], want)


def test_full_space_perturbs_each_tensor(model):
    assert len(jax.tree_util.tree_leaves(FullSpace().init(model))) == len(param_shapes(CFG))
    space = FullSpace(paths=("layers/q_proj", "final_norm"))
    theta = space.init(model)
    run, ivs = space.apply(model, center_member(space, theta))
    assert ivs == ()
    np.testing.assert_array_equal(run.params["layers"]["q_proj"], model.params["layers"]["q_proj"])
    member = space.perturb(theta, KEY, 0.01)
    noise = np.asarray(member["layers"]["q_proj"] - theta["layers"]["q_proj"])
    assert abs(noise.std() / 0.01 - 1) < 0.1 and abs(noise.mean()) < 1e-3
    assert not np.allclose(member["final_norm"], theta["final_norm"])
    run, _ = space.apply(model, member)
    np.testing.assert_array_equal(run.params["layers"]["q_proj"], member["layers"]["q_proj"])
    assert run.params["layers"]["k_proj"] is model.params["layers"]["k_proj"]


def _examples():
    return [Example(f"p{i}", "", {"prompt_ids": p}) for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("which", ["steering", "eggroll", "essa"])
def test_planted_reward_improves(model, essa, which):
    space, strategy = {"steering": STEER, "eggroll": EGG, "essa": essa}[which]
    spec = ESLoopSpec(generations=8, prompts_per_generation=2, max_new_tokens=N_NEW, stop_tokens=())
    res = run_es(model, space, strategy, _examples(), low_tokens, spec, log=None)
    f = [h["fitness_mean"] for h in res.history]
    assert len(f) == 8 and int(res.state["generation"]) == 8
    assert np.mean(f[-2:]) > f[0] + 0.1, f


def test_resume_is_exact(model, essa, tmp_path):
    """Two generations into a `Run`, then resume it for two more == four straight."""
    from jaxsteer.train.run import Run

    space, strategy = essa
    spec = ESLoopSpec(generations=4, prompts_per_generation=2, max_new_tokens=N_NEW, stop_tokens=(), seed=3)
    straight = run_es(model, space, strategy, _examples() * 3, low_tokens, spec, log=None)
    quiet = dict(tensorboard=False, progress=False, plot=False)
    run = Run(str(tmp_path / "b"), **quiet)
    first = run_es(model, space, strategy, _examples() * 3, low_tokens, dataclasses.replace(spec, generations=2), run=run)
    run.close()
    assert int(first.state["generation"]) == 2
    run = Run(str(tmp_path / "b"), resume=True, **quiet)
    resumed = run_es(model, space, strategy, _examples() * 3, low_tokens, spec, run=run)
    run.close()
    assert len(resumed.history) == 2
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(straight.history[2:], resumed.history):
        assert a["fitness_mean"] == b["fitness_mean"] and a["update_norm"] == b["update_norm"]


def test_train_es_from_a_train_config(model, tmp_path):
    """`train` with algorithm = es runs ES over the config's trainable (steering), with the
    same run directory as RL: config, metrics, checkpoints, exported vectors, summary; and
    `evaluate_run` restores the centre from the checkpoint (= the returned one)."""
    from jaxsteer.train.config import config_from_dict
    from jaxsteer.train.evaluate import evaluate_policy
    from jaxsteer.train import evaluate_run, train
    from jaxsteer.train.metrics import read_log

    cfg = config_from_dict({  # population / sigma / lr = STEER's: the compiled program is reused
        "steps": 2, "output_dir": str(tmp_path), "algorithm": {"name": "es", "prompts_per_step": 2},
        "es": {"population": 16, "sigma": 1.0, "lr": 4.0},
        "sampling": {"max_new_tokens": N_NEW, "bucket": 8}, "eval": {"before": False, "after": False},
        "progress": False, "plot": False, "tensorboard": False,
    })
    res = train(cfg, model=model, reward_fn=low_tokens, train_examples=_examples())
    assert res.trainable["vectors"].shape == (CFG.n_layers, CFG.d_model) and np.abs(res.trainable["vectors"]).max() > 0
    assert [r["step"] for r in read_log(res.files["metrics"])] == [1, 2]
    assert os.path.isdir(res.files["checkpoints"]) and os.path.exists(tmp_path / "config.yaml")
    np.testing.assert_array_equal(np.load(res.files["vectors_npy"]), res.trainable["vectors"])
    summary = json.load(open(tmp_path / "summary.json"))
    assert summary["algorithm"] == "es" and summary["rollouts"] == 2 * 16 * 2 and summary["peak_rss_mb"] > 0
    examples = _examples()[:4]
    out = evaluate_run(cfg, model=model, eval_examples=examples, reward_fn=low_tokens)
    assert out["step"] == 2
    ids = [e.meta["prompt_ids"] for e in examples]
    steered = evaluate_policy(*apply_trainable(model, res.trainable, TrainableConfig()), examples, ids, tokenizer=None,
                              reward_fn=get_reward_fn(low_tokens), max_new_tokens=N_NEW)
    assert out["trained"]["greedy_acc"] == steered["greedy_acc"]


def test_es_config_section():
    """`es.*` keys are checked like every other config key; a field only the other learner reads
    is an error naming it (RL-only fields in an ES run, `es.*` in an RL run)."""
    from jaxsteer.train.config import ConfigError, config_from_dict, config_to_dict

    with pytest.raises(ConfigError, match=r"lr, rl.group_size: not used by evolution strategies"):
        config_from_dict({"algorithm": {"name": "essa", "group_size": 1}, "lr": 0.1})
    with pytest.raises(ConfigError, match=r"es.population: not used by the RL learner"):
        config_from_dict({"algorithm": {"name": "grpo"}, "es": {"population": 8}})
    cfg = config_from_dict({"algorithm": {"name": "essa"}, "es": {"population": 8, "targets": ["q_proj"]}})
    assert cfg.is_es and cfg.es.targets == ("q_proj",) and cfg.rollouts_per_step == 8 * cfg.prompts_per_step
    assert config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="es.strategy"):
        config_from_dict({"algorithm": {"name": "es"}, "es": {"strategy": "adam"}})
    with pytest.raises(ConfigError, match="unknown config key 'es.popsize'"):
        config_from_dict({"es": {"popsize": 8}})
    with pytest.raises(ConfigError, match="es.targets"):
        config_from_dict({"es": {"targets": ["wq"]}})
    with pytest.raises(ConfigError, match="algorithm"):
        config_from_dict({"algorithm": {"name": "a2c"}})


def test_config_builds_spaces_and_strategies(model, lora):
    trainable, cfg = lora
    space, strat = build_es(model, ESConfig(population=8), "es")
    assert isinstance(space, TrainableSpace) and isinstance(strat, OpenES)
    space, strat = build_es(model, ESConfig(rank=2, targets=("q_proj",)), "eggroll")
    assert isinstance(space, EggrollSpace) and space.rank == 2 and set(space.init(model)) == {"q_proj"}
    space, strat = build_es(model, ESConfig(alpha=0.25, space="essa_product"), "essa", cfg, trainable)
    assert isinstance(strat, CMAES) and space.n_active == 1
    space, strat = build_es(model, ESConfig(alpha=0.5, targets=("q_proj", "v_proj")), "essa", cfg, trainable)
    assert isinstance(space, ESSASpace) and set(space.s_a) == {"q_proj", "v_proj"} and set(space.frozen) == {"down_proj"}
    with pytest.raises(ConfigError, match="have no adapter"):
        build_es(model, ESConfig(targets=("k_proj",)), "essa", cfg, trainable)  # the fixture has no k_proj adapter
    space, strat = build_es(model, ESConfig(space="full", strategy="sep_cma", population=8), "es")
    assert isinstance(space, FullSpace) and isinstance(strat, SepCMAES)
    with pytest.raises(ValueError):
        OpenES(population=5)  # antithetic pairs need an even population
    with pytest.raises(ValueError, match="SepCMAES"):
        CMAES(max_dim=10).init({"x": jnp.zeros(11)}, KEY)
    with pytest.raises(TypeError):
        CMAES().member(EggrollSpace(), CMAES().init({"x": jnp.zeros(2)}, KEY), 0)


SHARDED = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from tests.train.es import test_strategies as t
    from jaxsteer.train.es import CMAES, es_generation, essa_space, member_mesh
    assert jax.device_count() == 8, jax.devices()
    model = t.random_model()
    essa = (essa_space(model, *t.random_lora(model)), CMAES(population=16, sigma=1.0))  # the paper's factor-wise ESSA
    examples = t._examples()
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
