"""Advantages and policy losses against hand-computed values and hand-written gradients; GAE and the
clipped value loss (PPO) against hand computations; RAPID's estimator (importance-weighted group
advantages with clipped weights): a hand computation on a tiny batch, unbiasedness on a toy bandit,
and a run on the toy task."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.train.config import LossConfig, config_from_dict
from jaxsteer.train.rl.losses import (
    aggregate,
    expert_iteration_loss,
    gae,
    group_advantages,
    k3_kl,
    policy_loss,
    rapid_advantages,
    rapid_loss,
    terminal_rewards,
    value_loss,
    whiten,
    zero_std_fraction,
)
from jaxsteer.train.scoring import sequence_logprobs

sg = jax.lax.stop_gradient


# --------------------------------------------------------------------------- advantages


def test_grpo_advantages():
    r = jnp.array([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(r, 4, "grpo", eps=1e-6)
    std = math.sqrt(4 * 0.25 / 3)  # sample std (ddof=1) of [1, 0, 0, 1]
    a = 0.5 / (std + 1e-6)
    np.testing.assert_allclose(adv, [a, -a, -a, a, 0, 0, 0, 0], rtol=1e-6)
    adv0 = group_advantages(r, 4, "grpo", eps=0.0, std_ddof=0)
    np.testing.assert_allclose(adv0[:4], [1, -1, -1, 1], rtol=1e-6)


def test_rloo_advantages():
    adv = group_advantages(jnp.array([1.0, 2.0, 3.0, 6.0]), 4, "rloo")
    np.testing.assert_allclose(adv, [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0], rtol=1e-6, atol=1e-6)
    # +-1 rewards, G = 2: (1 - (-1)) = 2
    np.testing.assert_allclose(group_advantages(jnp.array([1.0, -1.0, 1.0, 1.0]), 2, "rloo"), [2, -2, 0, 0])


def test_mean_advantages():
    adv = group_advantages(jnp.array([1.0, 2.0, 3.0, 6.0, 0.0, 3.0]), 3, "mean")
    np.testing.assert_allclose(adv, [-1, 0, 1, 3, -3, 0], atol=1e-6)


def test_zero_std_fraction():
    r = jnp.array([1.0, 1.0, 0.0, 1.0, -1.0, -1.0])
    assert float(zero_std_fraction(r, 2)) == pytest.approx(2 / 3)
    assert float(zero_std_fraction(r, 3)) == 0.0


def test_advantage_errors():
    with pytest.raises(ValueError, match="groups"):
        group_advantages(jnp.ones(5), 2)
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(jnp.ones(4), 1, "rloo")
    with pytest.raises(ValueError, match="unknown advantage"):
        group_advantages(jnp.ones(4), 2, "ppo")
    np.testing.assert_array_equal(group_advantages(jnp.ones(3), 1, "grpo"), 0)


def test_advantages_jit():
    f = jax.jit(group_advantages, static_argnames=("group_size", "mode"))
    np.testing.assert_allclose(f(jnp.array([1.0, -1.0]), group_size=2, mode="rloo"), [2, -2])


# --------------------------------------------------------------------------- aggregation

V = jnp.array([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
M = jnp.array([[1, 1, 1], [1, 0, 0]])


def test_aggregate_modes():
    assert float(aggregate(V, M, "token_mean")) == pytest.approx(10 / 4)
    assert float(aggregate(V, M, "seq_mean_token_mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate(V, M, "seq_sum_norm")) == pytest.approx(10 / (2 * 3))
    assert float(aggregate(V, M, "seq_sum_norm", max_len=5)) == pytest.approx(10 / 10)
    assert float(aggregate(V, M, "token_mean", denominator=8.0)) == pytest.approx(10 / 8)
    # an all-masked row is not a sequence
    m3 = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    v3 = jnp.concatenate([V, jnp.full((1, 3), 100.0)])
    assert float(aggregate(v3, m3, "seq_mean_token_mean")) == pytest.approx(3.0)
    assert float(aggregate(v3, m3, "seq_sum_norm")) == pytest.approx(10 / 6)


@pytest.mark.parametrize(
    "mode, expected",
    [("token_mean", (-3 + 2) / 4), ("seq_mean_token_mean", (-1 + 2) / 2), ("seq_sum_norm", (-3 + 2) / 6)],
)
def test_policy_loss_aggregation_values(mode, expected):
    # On-policy, no clipping: every token contributes -A_i (ratio 1).
    logp = jnp.array([[-1.0, -2.0, -0.5], [-0.3, 0.0, 0.0]])
    loss, metrics = policy_loss(logp, sg(logp), None, jnp.array([1.0, -2.0]), M, LossConfig(aggregation=mode))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["n_tokens"]) == 4
    assert float(metrics["clip_fraction"]) == 0.0
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0)


def _toy_logp(theta, y):
    return jnp.take_along_axis(jax.nn.log_softmax(theta, axis=-1), y[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_sum_norm"])
def test_on_policy_gradient_is_reinforce(mode):
    """grad of the loss == grad of -sum_i A_i sum_t log pi(y_it) / normaliser, normaliser per mode."""
    rng = np.random.RandomState(0)
    B, N, Vv = 3, 4, 5
    theta = jnp.asarray(rng.normal(size=(B, N, Vv)), jnp.float32)
    y = jnp.asarray(rng.randint(0, Vv, (B, N)))
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], jnp.float32)
    adv = jnp.array([0.7, -1.3, 2.0])

    def loss_fn(th):
        lp = _toy_logp(th, y)
        return policy_loss(lp, sg(lp), None, adv, mask, LossConfig(aggregation=mode))[0]

    n_i = mask.sum(1)

    def reference(th):
        seq = jnp.sum(_toy_logp(th, y) * mask, axis=1)  # sum_t log pi
        if mode == "token_mean":
            return -jnp.sum(adv * seq) / jnp.sum(mask)
        if mode == "seq_mean_token_mean":
            return -jnp.mean(adv * seq / n_i)
        return -jnp.sum(adv * seq) / (B * N)

    np.testing.assert_allclose(jax.grad(loss_fn)(theta), jax.grad(reference)(theta), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- clipping


def test_clipping_values_fraction_and_zero_grads():
    ratios = jnp.array([1.5, 0.5, 1.1, 0.9, 0.5, 1.5])
    adv = jnp.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    old = jnp.full((6, 1), -1.0)
    logp = old + jnp.log(ratios)[:, None]
    mask = jnp.ones((6, 1))
    cfg = LossConfig(clip_eps_low=0.2, clip_eps_high=0.28)

    loss, metrics = policy_loss(logp, old, None, adv, mask, cfg)
    # min(rho A, clip(rho, 0.8, 1.28) A) per row, by hand:
    objective = [1.28, -0.8, 1.1, -0.9, 0.5, -1.5]
    assert float(loss) == pytest.approx(-sum(objective) / 6, rel=1e-5)
    assert float(metrics["clip_fraction"]) == pytest.approx(2 / 6)
    assert float(metrics["clip_high_fraction"]) == pytest.approx(1 / 6)
    assert float(metrics["clip_low_fraction"]) == pytest.approx(1 / 6)
    assert float(metrics["ratio_max"]) == pytest.approx(1.5, rel=1e-5)
    assert float(metrics["ratio_min"]) == pytest.approx(0.5, rel=1e-5)

    grad = jax.grad(lambda lp: policy_loss(lp, old, None, adv, mask, cfg)[0])(logp)[:, 0]
    expected = -adv * ratios / 6  # d(-rho A)/d logp = -rho A, divided by 6 tokens
    expected = expected.at[jnp.array([0, 1])].set(0.0)  # clipped rows give no gradient
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-8)


def test_symmetric_clip_and_config_errors():
    cfg = LossConfig(clip_eps_low=0.2)
    logp = jnp.log(jnp.array([[1.25]]))
    _, metrics = policy_loss(logp, jnp.zeros((1, 1)), None, jnp.array([1.0]), jnp.ones((1, 1)), cfg)
    assert float(metrics["clip_fraction"]) == 1.0  # 1.25 > 1.2
    with pytest.raises(ValueError, match="clip_eps_high"):
        LossConfig(clip_eps_high=0.28)
    with pytest.raises(ValueError, match="aggregation"):
        LossConfig(aggregation="sum")
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp, None, jnp.array([1.0]), jnp.ones((1, 1)), LossConfig(kl_coef=0.1))


# --------------------------------------------------------------------------- KL


def test_k3_kl_value_and_gradient():
    logp = jnp.array([[-1.0, -0.5, -3.0]])
    ref = jnp.array([[-2.0, -0.5, -1.0]])
    mask = jnp.ones((1, 3))
    d = np.array([-1.0, 0.0, 2.0])
    k3 = np.exp(d) - d - 1
    np.testing.assert_allclose(k3_kl(logp, ref)[0], k3, rtol=1e-6)
    assert np.all(np.asarray(k3_kl(logp, ref)) >= 0)

    cfg = LossConfig(kl_coef=0.1)
    adv = jnp.zeros(1)  # isolate the KL term
    loss, metrics = policy_loss(logp, sg(logp), ref, adv, mask, cfg)
    assert float(loss) == pytest.approx(0.1 * k3.mean(), rel=1e-6)
    assert float(metrics["kl"]) == pytest.approx(k3.mean(), rel=1e-6)
    grad = jax.grad(lambda lp: policy_loss(lp, sg(lp), ref, adv, mask, cfg)[0])(logp)
    np.testing.assert_allclose(grad[0], 0.1 * (1 - np.exp(d)) / 3, rtol=1e-5)


# --------------------------------------------------------------------------- DASH, importance weights


def test_dash_filtering():
    adv = jnp.array([0.05, -0.5, 0.0, 1.0])
    logp = jnp.array([[-1.0, -1.0], [-2.0, -2.0], [-1.0, -1.0], [-0.5, 0.0]])
    mask = jnp.array([[1, 1], [1, 1], [1, 0], [1, 0]])
    cfg = LossConfig(dash_tau=0.1)
    loss, metrics = policy_loss(logp, sg(logp), None, adv, mask, cfg)
    assert float(metrics["kept_fraction"]) == 0.5
    assert float(metrics["n_tokens"]) == 3  # rows 1 (2 tokens) and 3 (1 token)
    assert float(loss) == pytest.approx((2 * 0.5 - 1.0) / 3)
    grad = jax.grad(lambda lp: policy_loss(lp, sg(lp), None, adv, mask, cfg)[0])(logp)
    np.testing.assert_array_equal(grad[0], 0)
    np.testing.assert_array_equal(grad[2], 0)
    np.testing.assert_allclose(grad[1], [0.5 / 3, 0.5 / 3])
    # tau = 0 is off: zero-advantage samples stay in the denominator
    _, m0 = policy_loss(logp, sg(logp), None, adv, mask, LossConfig())
    assert float(m0["kept_fraction"]) == 1.0 and float(m0["n_tokens"]) == 6


def test_importance_cap_token_level():
    old = jnp.full((2, 1), -2.0)
    ratios = jnp.array([3.0, 0.5])
    logp = old + jnp.log(ratios)[:, None]
    adv = jnp.array([1.0, 1.0])
    mask = jnp.ones((2, 1))
    cfg = LossConfig(importance_cap=2.0)
    loss, metrics = policy_loss(logp, old, None, adv, mask, cfg)
    assert float(loss) == pytest.approx(-(2.0 + 0.5) / 2, rel=1e-5)
    assert float(metrics["importance_capped_fraction"]) == 0.5
    grad = jax.grad(lambda lp: policy_loss(lp, old, None, adv, mask, cfg)[0])(logp)[:, 0]
    np.testing.assert_allclose(grad, [-2.0 / 2, -0.5 / 2], rtol=1e-5)
    # Without the cap the weight is the raw ratio.
    grad_raw = jax.grad(lambda lp: policy_loss(lp, old, None, adv, mask, LossConfig())[0])(logp)[:, 0]
    np.testing.assert_allclose(grad_raw, [-3.0 / 2, -0.5 / 2], rtol=1e-5)


def test_importance_cap_sequence_level():
    old = jnp.full((2, 2), -1.0)
    ratios = jnp.array([[3.0, 0.5], [3.0, 2.0]])  # sequence ratios 1.5 and 6
    logp = old + jnp.log(ratios)
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones((2, 2))
    cfg = LossConfig(importance_cap=2.0, importance_level="sequence")
    grad = jax.grad(lambda lp: policy_loss(lp, old, None, adv, mask, cfg)[0])(logp)
    np.testing.assert_allclose(grad, [[-1.5 / 4, -1.5 / 4], [2.0 / 4, 2.0 / 4]], rtol=1e-5)
    _, metrics = policy_loss(logp, old, None, adv, mask, cfg)
    assert float(metrics["importance_capped_fraction"]) == 0.5


def test_importance_cap_with_clipping():
    # Clipped tokens still get no gradient; unclipped ones use the capped weight.
    old = jnp.zeros((3, 1))
    logp = jnp.log(jnp.array([[3.0], [1.1], [3.0]]))
    adv = jnp.array([1.0, 1.0, -1.0])
    cfg = LossConfig(clip_eps_low=0.2, importance_cap=2.0)
    grad = jax.grad(lambda lp: policy_loss(lp, old, None, adv, jnp.ones((3, 1)), cfg)[0])(logp)[:, 0]
    np.testing.assert_allclose(grad, [0.0, -1.1 / 3, 2.0 / 3], rtol=1e-5)


def test_policy_loss_jit_and_padding_garbage():
    """Huge garbage values on padding never leak into the loss (no inf * 0)."""
    logp = jnp.array([[-1.0, 50.0], [-2.0, -1e4]])
    old = jnp.array([[-1.0, -50.0], [-2.0, 0.0]])
    ref = jnp.array([[-1.5, 1e4], [-2.0, -3e4]])
    mask = jnp.array([[1, 0], [1, 0]])
    cfg = LossConfig(clip_eps_low=0.2, kl_coef=0.05, importance_cap=2.0)
    f = jax.jit(policy_loss, static_argnames="cfg")
    loss, metrics = f(logp, old, ref, jnp.array([1.0, -1.0]), mask, cfg=cfg)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    g = jax.grad(lambda lp: f(lp, old, ref, jnp.array([1.0, -1.0]), mask, cfg=cfg)[0])(logp)
    assert np.all(np.isfinite(np.asarray(g))) and float(g[0, 1]) == 0.0


# --------------------------------------------------------------------------- expert iteration


def test_expert_iteration_loss():
    logp = jnp.array([[-1.0, -2.0], [-3.0, -4.0], [-0.5, -0.5]])
    mask = jnp.array([[1, 1], [1, 0], [1, 0]])
    assert float(expert_iteration_loss(logp, jnp.array([1.0, -1.0, 1.0]), mask)) == pytest.approx((1 + 2 + 0.5) / 3)
    assert float(expert_iteration_loss(logp, jnp.array([1.0, 1.0, 0.0]), mask, threshold=0.5)) == pytest.approx(6 / 3)
    assert float(expert_iteration_loss(logp, -jnp.ones(3), mask)) == 0.0


# --------------------------------------------------------------------------- sequence log-probs


def test_sequence_logprobs_matches_forward(tiny_model):
    tiny = tiny_model
    L, V = tiny.config.n_layers, tiny.config.vocab_size
    rng = np.random.RandomState(1)
    B, P, N = 3, 5, 4
    tokens = jnp.asarray(rng.randint(0, V, (B, P + N)))
    prompt_mask = np.ones((B, P), np.int32)
    prompt_mask[1, :2] = 0  # left padding
    comp_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], np.int32)
    mask = jnp.asarray(np.concatenate([prompt_mask, comp_mask], 1))
    steer = jaxsteer.Steer(jnp.asarray(rng.normal(size=(L, 32)), jnp.float32))

    for ivs, temp in (((steer,), 0.7),):  # one compile: interventions and temperature together
        logp, ent = sequence_logprobs(tiny, tokens, mask, ivs, completion_start=P, temperature=temp)
        logits, _ = jaxsteer.forward(tiny, tokens, attention_mask=mask, interventions=ivs)
        logz = jax.nn.log_softmax(logits[:, P - 1 : -1] / temp, axis=-1)
        want = np.take_along_axis(np.asarray(logz), np.asarray(tokens[:, P:])[..., None], -1)[..., 0]
        want_ent = -np.sum(np.exp(logz) * logz, -1)
        np.testing.assert_allclose(logp, want * comp_mask, atol=1e-5)
        np.testing.assert_allclose(ent, want_ent * comp_mask, atol=1e-5)
        assert np.all(np.asarray(ent) >= 0) and np.all(np.asarray(logp) <= 0)

    # Gradients reach interventions through it, and the whole thing jits.
    def f(vec):
        lp, _ = sequence_logprobs(tiny, tokens, mask, (jaxsteer.Steer(vec),), completion_start=P)
        return jnp.sum(lp)

    g = jax.jit(jax.grad(f))(steer.vector)
    assert g.shape == (L, 32) and float(jnp.abs(g).sum()) > 0
    with pytest.raises(ValueError, match="completion_start"):
        sequence_logprobs(tiny, tokens, mask, completion_start=0)


def test_dr_grpo_per_token_weight_is_constant_across_batches():
    """Dr. GRPO's normaliser is a constant (sampling.max_new_tokens), not the batch's trimmed width:
    the gradient weight of one token is the same in two batches whose longest completions differ."""
    from jaxsteer.train.config import config_from_dict
    from jaxsteer.train.rl.learner import step_spec
    from jaxsteer.train.rl.step import global_denominator

    cfg = config_from_dict(
        {
            "loss": {"aggregation": "seq_sum_norm"},
            "sampling": {"max_new_tokens": 24},
            "algorithm": {"advantage": "mean", "group_size": 2, "prompts_per_step": 1},
        }
    )
    spec = step_spec(cfg)
    assert spec.loss.max_len == 24
    adv = jnp.array([1.0, -1.0])

    def token_weight(width, long_len):
        mask = jnp.zeros((2, width)).at[0, :3].set(1.0).at[1, :long_len].set(1.0)
        logp = jnp.full((2, width), -1.0)
        den = global_denominator(mask[None], adv[None], spec.loss)
        grad = jax.grad(lambda lp: policy_loss(lp, sg(lp), None, adv, mask, spec.loss, denominator=den)[0])(logp)
        return float(grad[0, 0])

    short, long = token_weight(8, 5), token_weight(16, 13)  # trimmed widths 8 and 16
    assert short == long == pytest.approx(-1.0 / (2 * 24))


# --------------------------------------------------------------------------- clip-higher (DAPO)


def test_clip_higher_changes_the_update_only_outside_the_symmetric_range():
    """Hand-made ratios and advantages: inside [1 - 0.2, 1 + 0.2] symmetric clipping (GRPO's 0.2 / 0.2)
    and clip-higher (DAPO's 0.2 / 0.28) give the same gradient; at ratio 1.25 with A > 0 the symmetric
    clip zeroes the token's gradient and clip-higher keeps it (-A rho / N); beyond 1.28 both clip."""
    ratios = np.array([1.0, 1.1, 1.25, 1.35, 0.9, 0.75], np.float32)
    adv = np.array([1.0, 1.0, 1.0, 1.0, -1.0, -1.0], np.float32)
    old = np.full((6, 1), -2.0, np.float32)
    logp = old + np.log(ratios)[:, None]
    mask = np.ones((6, 1), np.float32)

    def grad(cfg):
        return np.asarray(jax.grad(lambda lp: policy_loss(lp, old, None, adv, mask, cfg)[0])(logp))[:, 0]

    symmetric, higher = (
        grad(LossConfig(clip_eps_low=0.2, clip_eps_high=0.2)),
        grad(LossConfig(clip_eps_low=0.2, clip_eps_high=0.28)),
    )
    unclipped = -adv * ratios / 6  # token_mean over 6 tokens: d(-rho A)/d logp = -rho A / 6
    np.testing.assert_allclose(symmetric, [*unclipped[:2], 0.0, 0.0, unclipped[4], 0.0], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(higher, [*unclipped[:3], 0.0, unclipped[4], 0.0], rtol=1e-6, atol=1e-9)
    differs = np.flatnonzero(~np.isclose(symmetric, higher))
    assert differs.tolist() == [2]  # only the token whose ratio sits in (1.2, 1.28]


# --------------------------------------------------------------------------- GAE and the value loss (PPO)


def _gae_by_hand(rewards, values, gamma, lam):
    """The textbook recursion over one episode (lists, plain Python floats)."""
    n = len(rewards)
    adv = [0.0] * n
    nxt = 0.0
    for t in reversed(range(n)):
        v_next = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * v_next - values[t]
        nxt = delta + gamma * lam * nxt
        adv[t] = nxt
    return adv, [a + v for a, v in zip(adv, values, strict=False)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8), (1.0, 0.0), (0.5, 0.95)])
def test_gae_equals_a_hand_computation(gamma, lam):
    values = np.array([[0.5, -0.25, 1.0, 0.0], [0.2, 0.4, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], np.float32)
    seq_rewards = np.array([1.0, -1.0, 2.0], np.float32)
    r = terminal_rewards(seq_rewards, mask)
    np.testing.assert_array_equal(r, [[0, 0, 0, 1], [0, -1, 0, 0], [2, 0, 0, 0]])
    adv, ret = gae(r, values, mask, gamma, lam)
    for i, n in enumerate(mask.sum(1).astype(int)):
        a, g = _gae_by_hand(list(r[i, :n]), list(values[i, :n]), gamma, lam)
        np.testing.assert_allclose(adv[i, :n], a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ret[i, :n], g, rtol=1e-6, atol=1e-6)
        assert np.all(adv[i, n:] == 0) and np.all(ret[i, n:] == 0)


def test_gae_one_one_is_monte_carlo():
    """gamma = lambda = 1: the return of every token is the sequence reward; A = R - V."""
    values = np.array([[0.3, 0.1, -0.2], [0.7, 0.0, 0.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 0]], np.float32)
    adv, ret = gae(terminal_rewards(np.array([1.0, -1.0]), mask), values, mask, 1.0, 1.0)
    np.testing.assert_allclose(ret, [[1, 1, 1], [-1, 0, 0]], atol=1e-7)
    np.testing.assert_allclose(adv, [[0.7, 0.9, 1.2], [-1.7, 0, 0]], atol=1e-6)
    # known answer with discounting: gamma 0.5, lambda 1, three tokens, reward 1, V = 0 -> 0.25, 0.5, 1
    _, ret = gae(terminal_rewards(np.array([1.0]), np.ones((1, 3))), np.zeros((1, 3)), np.ones((1, 3)), 0.5, 1.0)
    np.testing.assert_allclose(ret, [[0.25, 0.5, 1.0]], atol=1e-7)


def test_whiten_and_value_loss_known_answers():
    x = np.array([[1.0, 3.0, 100.0]], np.float32)
    m = np.array([[1, 1, 0]], np.float32)
    np.testing.assert_allclose(whiten(x, m), [[-1.0, 1.0, 0.0]], atol=1e-4)
    v, old, ret = np.array([[0.5, 0.0]]), np.array([[0.0, 0.0]]), np.array([[1.0, -1.0]])
    ones = np.ones((1, 2))
    # unclipped: 0.5 * mean((0.5 - 1)^2, (0 + 1)^2) = 0.5 * (0.25 + 1) / 2
    loss, _ = value_loss(v, old, ret, ones, None)
    assert float(loss) == pytest.approx(0.3125)
    # clip 0.2: token 0's clipped value is 0.2, error 0.64 > 0.25 (the max wins); token 1 unchanged
    loss, metrics = value_loss(v, old, ret, ones, 0.2)
    assert float(loss) == pytest.approx(0.5 * (0.64 + 1.0) / 2)
    assert float(metrics["value_clip_fraction"]) == pytest.approx(0.5)


def test_per_token_advantages_in_the_policy_loss():
    """Advantages [B, N] with equal columns give the same loss as the per-sequence [B] ones."""
    rng = np.random.RandomState(0)
    logp, old = -rng.rand(3, 4).astype(np.float32), -rng.rand(3, 4).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], np.float32)
    adv = rng.randn(3).astype(np.float32)
    cfg = LossConfig(clip_eps_low=0.2)
    a, _ = policy_loss(logp, old, None, adv, mask, cfg)
    b, _ = policy_loss(logp, old, None, np.repeat(adv[:, None], 4, 1), mask, cfg)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


# --------------------------------------------------------------------------- RAPID


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

    flags = {**T.LEARN, "rl.advantage": "rapid", "rl.updates_per_batch": 2, "rl.loss.importance_cap": 2.0, "lr": 0.3}
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
