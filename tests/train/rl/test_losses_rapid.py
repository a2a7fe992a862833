"""RAPID's estimator (importance-weighted group advantages with clipped weights): a hand computation
on a tiny batch, unbiasedness on a toy bandit, and a run on the toy task."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsteer.train.config import LossConfig, config_from_dict
from jaxsteer.train.rl.losses import group_advantages, rapid_advantages, rapid_loss

sg = jax.lax.stop_gradient


def test_rapid_loss_equals_a_hand_computation():
    # One group of G=3 completions of 2 tokens; the last token of row 2 is padding.
    logp = jnp.array([[-1.0, -0.5], [-2.0, -1.0], [-0.2, 0.0]])
    old = jnp.array([[-1.5, -0.5], [-1.0, -1.0], [-0.2, 0.0]])
    mask = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    r = jnp.array([1.0, -1.0, 1.0])
    cap = 1.5
    # By hand: sequence log-ratios 0.5, -1, 0 -> weights min(e^0.5, 1.5) = 1.5, e^-1, 1.
    w = np.array([1.5, np.exp(-1.0), 1.0])
    b = np.array([(w[1] * -1 + w[2] * 1) / 2, (w[0] * 1 + w[2] * 1) / 2, (w[0] * 1 + w[1] * -1) / 2])
    A = w * (np.array([1.0, -1.0, 1.0]) - b)
    adv, weights = rapid_advantages(r, jnp.array([0.5, -1.0, 0.0]), 3, cap)
    np.testing.assert_allclose(weights, w, rtol=1e-6)
    np.testing.assert_allclose(adv, A, rtol=1e-6)
    cfg = LossConfig(importance_cap=cap)  # token_mean over the 5 completion tokens
    grad = jax.grad(lambda lp: rapid_loss(lp, old, None, r, mask, 3, cfg)[0])(logp)
    np.testing.assert_allclose(grad, -A[:, None] * np.asarray(mask) / 5.0, rtol=1e-5)
    loss, metrics = rapid_loss(logp, old, None, r, mask, 3, cfg)
    assert float(metrics["importance_capped_fraction"]) == pytest.approx(1 / 3)
    assert float(metrics["ratio_max"]) == pytest.approx(np.exp(0.5), rel=1e-6)


def test_rapid_is_rloo_on_policy():
    r = jnp.array([1.0, -1.0, 0.5, 0.0, 2.0, 1.0])
    adv, _ = rapid_advantages(r, jnp.zeros(6), 3)
    np.testing.assert_allclose(adv, group_advantages(r, 3, "rloo"), rtol=1e-6)
    np.testing.assert_allclose(group_advantages(r, 3, "rapid"), group_advantages(r, 3, "rloo"))


def test_rapid_is_unbiased_on_a_toy_bandit():
    """Groups sampled from pi_old; the mean of many estimates `mean_i A_i grad log pi_theta(y_i)`
    matches the on-policy gradient grad E_{pi_theta}[r] (within 4 standard errors); clipping the
    weights hard makes it biased, as it should."""
    K, G, M = 4, 4, 100_000
    theta = jnp.array([0.5, -0.3, 0.2, 0.0])
    theta_old = jnp.array([0.0, 0.1, -0.2, 0.3])
    reward = jnp.array([1.0, -1.0, 0.5, 2.0])
    exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * reward))(theta)
    y = jax.random.categorical(jax.random.PRNGKey(0), theta_old, shape=(M, G))
    log_ratio = jax.nn.log_softmax(theta)[y] - jax.nn.log_softmax(theta_old)[y]

    def estimates(cap):
        adv, _ = jax.vmap(lambda lr, yy: rapid_advantages(reward[yy], lr, G, cap))(log_ratio, y)
        score = jax.nn.one_hot(y, K) - jax.nn.softmax(theta)  # grad_theta log pi_theta(y)
        return jnp.mean(adv[..., None] * score, axis=1)  # [M, K]: one estimate per group

    est = estimates(None)
    se = jnp.std(est, axis=0) / np.sqrt(M)
    assert np.all(np.abs(jnp.mean(est, axis=0) - exact) < 4 * se + 1e-6), (jnp.mean(est, axis=0), exact, se)
    clipped = jnp.mean(estimates(0.5), axis=0)
    assert np.max(np.abs(clipped - exact)) > 10 * float(jnp.max(se))


def test_rapid_run_on_the_toy_task(tmp_path):
    import train_toy as T
    from jaxsteer.train import train

    flags = {**T.LEARN, "algorithm.advantage": "rapid", "algorithm.updates_per_batch": 2,
             "loss.importance_cap": 2.0, "lr": 0.3}
    result = train(config_from_dict(T.config_dict(str(tmp_path / "rapid"), **flags)))
    T.assert_learns(result)  # untrained / lr 1e-12: 0.253
    h = result.history[-1]
    assert np.isfinite(h["loss"]) and h["grad_norm"] > 0


def test_rapid_config_errors():
    from jaxsteer.train.config import ConfigError
    from jaxsteer.train.rl.learner import step_spec

    base = {"algorithm": {"advantage": "rapid", "group_size": 4, "prompts_per_step": 2}}
    assert step_spec(config_from_dict(base)).rapid_group == 4
    with pytest.raises(ConfigError, match="rapid"):
        step_spec(config_from_dict({**base, "loss": {"dash_tau": 0.1}}))
    with pytest.raises(ConfigError, match="rapid"):
        step_spec(config_from_dict({"algorithm": {**base["algorithm"], "micro_batches": 4}}))
