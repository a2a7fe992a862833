"""ES strategies (jaxsteer.train.es.strategies): fitness shaping and gradient estimates by hand, and
known-answer optimisation of quadratics (OpenAI-ES, CMA-ES, Sep-CMA-ES; EGGROLL's low-rank noise)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.train.es.spaces import EggrollSpace, TrainableSpace, normal_like
from jaxsteer.train.es.strategies import CMAES, OpenES, SepCMAES, centered_ranks, noise_key, shape_fitness, zscore
from tests.train.es.conftest import KEY

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
    want = sum(zi * e for zi, e in zip(z, eps, strict=False)) / 3
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
    [
        OpenES(population=16, sigma=0.1, lr=0.1, optimizer="adam"),
        CMAES(population=12, sigma=0.5),
        SepCMAES(population=12, sigma=0.5),
    ],
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
