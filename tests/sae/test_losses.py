"""SAE losses (jaxsteer.sae.losses): the sparse top-k and its gradient, the HTopK loss against an
explicit loop; JumpReLU training (straight-through threshold gradient, L0 penalty) and Matryoshka
BatchTopK (nested prefix losses): known answers for the estimators and the loss, and learning against
an lr=0 run on the same seed and data."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from jaxsteer import sae
from jaxsteer.sae.arch import batch_topk, topk_mask
from jaxsteer.sae.losses import (
    batch_topk_codes,
    gather_decode,
    jumprelu_ste,
    matryoshka_errors,
    sparse_topk,
    step_ste,
    total_variance,
    train_forward,
)
from jaxsteer.train.sae.step import StepConfig, fit
from tests.sae.planted import batches, planted, recovered_fraction


def test_pseudo_derivatives_are_the_rectangle_kernel_estimates():
    """With pre ~ N(0, 1): d/dtheta E[1{pre > theta}] = -phi(theta) and d/dtheta E[pre 1{pre > theta}]
    = -theta phi(theta); the straight-through estimates average to these, and pre gets the plain
    JumpReLU gradient (step: none)."""
    pre = jax.random.normal(jax.random.PRNGKey(0), (400_000, 2))
    theta, eps = jnp.asarray([0.5, 1.2]), jnp.asarray(0.05)
    g_step = jax.grad(lambda t: jnp.mean(jnp.sum(step_ste(pre, t, eps), -1)))(theta)
    g_jump = jax.grad(lambda t: jnp.mean(jnp.sum(jumprelu_ste(pre, t, eps), -1)))(theta)
    np.testing.assert_allclose(np.asarray(g_step), -norm.pdf([0.5, 1.2]), rtol=0.03)
    np.testing.assert_allclose(np.asarray(g_jump), -np.array([0.5, 1.2]) * norm.pdf([0.5, 1.2]), rtol=0.03)
    w = jax.random.normal(jax.random.PRNGKey(1), pre.shape)
    g_pre = jax.grad(lambda p: jnp.sum(w * jumprelu_ste(p, theta, eps)))(pre)
    np.testing.assert_array_equal(np.asarray(g_pre), np.asarray(w * (pre > theta)))
    assert not np.any(np.asarray(jax.grad(lambda p: jnp.sum(step_ste(p, theta, eps)))(pre)))


def _ev(model, x):
    x_hat = np.asarray(sae.reconstruct(model, x))
    return 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()


def _l0(model, x):
    return float(jnp.mean(jnp.sum(sae.encode(model, x) > 0, -1)))


def test_jumprelu_learns_a_planted_dictionary_and_the_l0_penalty_sets_sparsity():
    x, atoms = planted(8192)
    cfg = sae.SAEConfig(kind="jumprelu", d_in=16, d_sae=64)
    runs = {}
    for name, lr, l0_coef in [("trained", 3e-3, 0.1), ("null", 0.0, 0.1), ("no_penalty", 3e-3, 0.0)]:
        step = StepConfig(lr=lr, total_steps=800, l0_coef=l0_coef, l0_warmup_steps=100, jumprelu_bandwidth=0.05)
        runs[name], _ = fit(cfg, batches(x, 256), step, seed=1)
    held = x[:2048]
    trained, null, free = runs["trained"], runs["null"], runs["no_penalty"]
    assert _ev(trained, held) > 0.7 and _ev(null, held) < 0  # null: thresholds at init, every latent fires
    assert _l0(trained, held) < 4 < 25 < _l0(null, held)
    assert _l0(free, held) > 3 * _l0(trained, held)  # the L0 penalty is what makes the codes sparse
    assert recovered_fraction(trained.params["W_dec"], atoms) >= 0.75 > recovered_fraction(null.params["W_dec"], atoms)
    assert float(jnp.min(trained.params["threshold"])) >= 0 and float(jnp.mean(trained.params["threshold"])) > 0.05


def test_matryoshka_loss_equals_explicit_loop_over_prefixes():
    cfg = sae.SAEConfig(kind="matryoshka", d_in=8, d_sae=24, k=3, matryoshka_widths=(4, 10, 24))
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s = sae.SAE(dict(s.params, b_dec=0.1 * jnp.arange(8.0), b_enc=0.05 * jnp.ones(24)), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 8))

    def explicit(params):
        m = sae.SAE(params, cfg)
        z = batch_topk(sae.pre_acts(m, x), cfg.k)
        errs = [jnp.sum((x - (z[:, :w] @ params["W_dec"][:w] + params["b_dec"])) ** 2) for w in cfg.matryoshka_widths]
        return jnp.stack(errs)

    def fast(params):
        m = sae.SAE(params, cfg)
        return matryoshka_errors(m, x, *batch_topk_codes(m, sae.pre_acts(m, x)))

    np.testing.assert_allclose(np.asarray(fast(s.params)), np.asarray(explicit(s.params)), rtol=1e-5)
    g_fast = jax.grad(lambda p: jnp.sum(fast(p)))(s.params)
    g_ref = jax.grad(lambda p: jnp.sum(explicit(p)))(s.params)
    for k in ("W_enc", "W_dec", "b_enc", "b_dec"):
        np.testing.assert_allclose(np.asarray(g_fast[k]), np.asarray(g_ref[k]), rtol=1e-4, atol=1e-5, err_msg=k)
    loss, info = train_forward(s, x, None)  # the training loss is the prefix mean over the variance
    var = jnp.sum((x - x.mean(0)) ** 2)
    np.testing.assert_allclose(float(loss), float(jnp.mean(explicit(s.params)) / var), rtol=1e-5)
    np.testing.assert_allclose(float(info["fvu"]), float(explicit(s.params)[-1] / var), rtol=1e-5)


def test_matryoshka_learns_and_its_first_prefix_reconstructs_alone():
    x, atoms = planted(8192)
    held = x[:2048]
    step = StepConfig(lr=3e-3, total_steps=800, k_aux=8, dead_batches=50)
    models = {}
    for name, kind, lr in [
        ("matryoshka", "matryoshka", 3e-3),
        ("null", "matryoshka", 0.0),
        ("batchtopk", "batchtopk", 3e-3),
    ]:
        cfg = sae.SAEConfig(
            kind=kind, d_in=16, d_sae=64, k=3, matryoshka_widths=(8, 32, 64) if kind == "matryoshka" else ()
        )
        models[name], _ = fit(cfg, batches(x, 256), StepConfig(**dict(step.__dict__, lr=lr)), seed=1)

    def prefix_ev(model, width=8):
        z = np.array(sae.encode(model, held))
        z[:, width:] = 0
        x_hat = np.asarray(sae.decode(model, z))
        return 1 - ((held - x_hat) ** 2).sum() / ((held - held.mean(0)) ** 2).sum()

    m = models["matryoshka"]
    assert _ev(m, held) > 0.75 and _ev(models["null"], held) < 0.5
    assert 1.5 < _l0(m, held) < 6  # the learned global threshold keeps about k latents at inference
    assert prefix_ev(m) > prefix_ev(models["batchtopk"]) + 0.15  # the first 8 latents work on their own


def test_sparse_topk_is_sorted_and_relu():
    vals, idx = sparse_topk(jnp.array([[0.5, -2.0, 3.0, 1.0]]), 3)
    np.testing.assert_allclose(np.asarray(vals), [[3.0, 1.0, 0.5]])
    np.testing.assert_array_equal(np.asarray(idx), [[2, 3, 0]])


def test_htopk_loss_equals_explicit_loop_over_k():
    cfg = sae.SAEConfig(kind="htopk", d_in=12, d_sae=48, k=6)
    s = sae.init_sae(cfg, jax.random.PRNGKey(3))
    s = sae.SAE(dict(s.params, b_dec=jnp.full((12,), 0.1), b_enc=jnp.full((48,), 0.05)), cfg)
    x = jax.random.normal(jax.random.PRNGKey(4), (10, 12))
    var = float(jnp.sum((x - x.mean(0)) ** 2))

    @jax.jit
    def loop_errors(params):  # the explicit loop: encode with budget j, decode densely
        t = sae.SAE(params, cfg)
        return [jnp.sum((x - sae.decode(t, topk_mask(sae.pre_acts(t, x), j))) ** 2) for j in range(1, 7)]

    errs = [float(e) for e in loop_errors(s.params)]
    hl = jax.jit(sae.htopk_loss, static_argnums=2)
    np.testing.assert_allclose(float(hl(s, x, None)), np.mean(errs) / var, rtol=1e-5)
    np.testing.assert_allclose(float(hl(s, x, (2, 5))), (errs[1] + errs[4]) / 2 / var, rtol=1e-5)
    # and its gradient equals the loop's gradient
    g1 = jax.jit(jax.grad(lambda p: sae.htopk_loss(sae.SAE(p, cfg), x)))(s.params)
    g2 = jax.jit(jax.grad(lambda p: sum(loop_errors(p)) / 6 / var))(s.params)
    for k in g1:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g2[k]), atol=1e-5)


def test_sparse_encoder_gradient_equals_autodiff():
    cfg = sae.SAEConfig(kind="topk", d_in=12, d_sae=48, k=5)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s = sae.SAE(dict(s.params, b_dec=jnp.full((12,), 0.3), b_enc=jnp.linspace(-0.1, 0.1, 48)), cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 12))

    def reference(params):  # plain autodiff through top_k
        t = sae.SAE(params, cfg)
        vals, idx = sparse_topk(sae.pre_acts(t, x), cfg.k)
        return jnp.sum((x - gather_decode(t, vals, idx)) ** 2) / total_variance(x)

    g_ref = jax.jit(jax.grad(reference))(s.params)
    g_new = jax.jit(jax.grad(lambda p: sae.train_forward(sae.SAE(p, cfg), x, None)[0]))(s.params)
    for k in g_ref:
        np.testing.assert_allclose(np.asarray(g_new[k]), np.asarray(g_ref[k]), rtol=1e-4, atol=1e-6)


def test_jumprelu_bandwidth_is_a_run_constant_not_the_batch_rms():
    """One massive-activation row (residual streams have them) must not widen every other row's
    pseudo-derivative window: the L0 term's threshold gradient from the ordinary rows is the same
    with and without it. With SGD at lr 1 the threshold moves by exactly minus its gradient, and
    the difference of runs with and without the penalty isolates the L0 term. Before, eps was
    bandwidth x the batch's RMS, which the outlier raises ~6x."""
    import optax

    from jaxsteer.train.sae.step import StepConfig, init_state, make_step

    cfg = sae.SAEConfig(kind="jumprelu", d_in=16, d_sae=64)
    s = sae.init_sae(cfg, jax.random.PRNGKey(0))
    s = sae.SAE(dict(s.params, threshold=jnp.full((64,), 0.5)), cfg)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (256, 16)))
    outlier = 400 * np.asarray(jax.random.normal(jax.random.PRNGKey(2), (1, 16))) / 4
    tx = optax.sgd(1.0)

    def l0_move(batch):
        moved = []
        for coef in (1.0, 0.0):
            step = make_step(cfg, StepConfig(l0_coef=coef, jumprelu_bandwidth=0.05), tx)
            fresh = sae.SAE(jax.tree_util.tree_map(jnp.array, s.params), cfg)  # the step donates its state
            state, _ = step(init_state(fresh, tx, act_scale=1.0), jnp.asarray(batch))
            moved.append(np.asarray(state["sae"]["threshold"]))
        return (moved[0] - moved[1]) * len(batch)  # the L0 term's push, summed over rows

    plain, with_outlier = l0_move(x), l0_move(np.concatenate([x, outlier]))
    assert plain.max() > 0  # some rows fall in the window: the penalty raises thresholds
    far = np.abs(np.asarray(sae.pre_acts(s, jnp.asarray(outlier)))[0] - 0.5) > 1  # the outlier's own rows are far
    np.testing.assert_allclose(with_outlier[far], plain[far], rtol=1e-4, atol=1e-6)
