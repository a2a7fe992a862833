"""Bad inputs at the API boundary fail loudly (issue 11): token ids out of range, non-binary
masks, non-finite intervention values, `jaxsteer eval --n <= 0`. Each test failed before the
checks existed (NaN logits, a silently wrapped id, empty completions, a sliced eval set)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer import Ablate, Patch, Steer
from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.params import init_params

V = 50


@pytest.fixture(scope="module")
def model():
    c = ModelConfig(
        architecture="llama",
        vocab_size=V,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_mlp=48,
        norm_eps=1e-6,
        rope_full=RopeConfig(theta=10000.0),
        eos_token_ids=(1,),
        pad_token_id=0,
    )
    return init_params(c, jax.random.PRNGKey(0), scale=0.2)


TOKENS = np.array([[3, 4, 5, 6], [7, 8, 9, 10]], np.int32)


def _bad(tokens, row, col, value):
    t = tokens.copy()
    t[row, col] = value
    return t


@pytest.mark.parametrize("bad_id", [V, V + 7, -1])
def test_forward_rejects_token_ids_outside_the_vocabulary(model, bad_id):
    # before: id == vocab gave NaN logits for the row, -1 silently read the last embedding row
    with pytest.raises(
        ValueError, match=rf"token id {bad_id} at position \[1, 2\] is outside the vocabulary \[0, {V}\)"
    ):
        jaxsteer.forward(model, _bad(TOKENS, 1, 2, bad_id))


def test_forward_checks_device_arrays_and_skips_traced_tokens(model):
    with pytest.raises(ValueError, match="token id 50"):
        jaxsteer.forward(model, jnp.asarray(_bad(TOKENS, 0, 0, V)))
    # under jit the ids are tracers: no check, no host sync, and valid ids run as before
    logits = jax.jit(lambda t: jaxsteer.forward(model, t)[0])(TOKENS)
    np.testing.assert_allclose(logits, jaxsteer.forward(model, TOKENS)[0], atol=1e-6)


def test_generate_rejects_out_of_range_prompt_ids(model):
    # before: the completion came back empty (NaN logits sample nothing useful) with no error
    with pytest.raises(ValueError, match=rf"prompt 1: token id {V} at position 2"):
        jaxsteer.generate(model, [[3, 4], [5, 6, V, 7]], max_new_tokens=2, greedy=True)
    with pytest.raises(ValueError, match="prompt 0: token id -1 at position 0"):
        jaxsteer.generate(model, np.array([[-1, 4, 5]]), max_new_tokens=2, greedy=True)


def test_masks_must_be_binary(model):
    mask = np.ones_like(TOKENS)
    mask[0, 1] = 2
    with pytest.raises(ValueError, match=r"attention_mask must be 0/1; found 2 at position \[0, 1\]"):
        jaxsteer.forward(model, TOKENS, attention_mask=mask)
    with pytest.raises(ValueError, match="prompt_mask must be 0/1"):
        jaxsteer.generate(model, TOKENS, prompt_mask=mask, max_new_tokens=2, greedy=True)
    jaxsteer.forward(model, TOKENS, attention_mask=mask.astype(bool))  # booleans are fine


def _nan_at(shape, index):
    a = np.ones(shape, np.float32)
    a[index] = np.nan
    return a


def test_non_finite_steering_vector_is_refused_by_forward_and_generate(model):
    L, d = model.config.n_layers, model.config.d_model
    steer = Steer(jnp.asarray(_nan_at((L, d), (1, 3))))
    # before: generate returned empty completions and NaN log-probs, forward NaN logits
    with pytest.raises(
        ValueError, match=r"Steer at 'resid_post': vector has a non-finite value \(nan\) at index \[1, 3\]"
    ):
        jaxsteer.forward(model, TOKENS, interventions=steer)
    with pytest.raises(ValueError, match="Steer at 'resid_post': vector has a non-finite value"):
        jaxsteer.generate(model, [[3, 4, 5]], max_new_tokens=2, greedy=True, interventions=steer)
    with pytest.raises(ValueError, match="Steer at 'resid_post': scale is inf"):
        jaxsteer.forward(model, TOKENS, interventions=Steer(jnp.ones((d,)), scale=float("inf")))


def test_non_finite_patch_and_ablation_values_are_refused(model):
    L, d = model.config.n_layers, model.config.d_model
    with pytest.raises(ValueError, match="Patch at 'resid_pre': values has a non-finite value"):
        jaxsteer.forward(model, TOKENS, interventions=Patch(_nan_at((2, 4, d), (0, 1, 2)), site="resid_pre"))
    with pytest.raises(ValueError, match="Ablate at 'mlp_out': mean values"):
        jaxsteer.forward(
            model, TOKENS, interventions=Ablate(values=_nan_at((L, d), (0, 0)), site="mlp_out", mode="mean")
        )


def test_traced_intervention_values_are_not_checked(model):
    """Inside grad / jit the vector is a tracer: the check is skipped and the gradient flows."""
    d = model.config.d_model

    def loss(v):
        return jaxsteer.forward(model, TOKENS, interventions=Steer(v))[0].sum()

    g = jax.jit(jax.grad(loss))(jnp.zeros((d,)))
    assert g.shape == (d,) and bool(jnp.isfinite(g).all())


def test_analysis_entry_points_check_tokens(model):
    from jaxsteer.analysis.patching import activation_patching

    with pytest.raises(ValueError, match="token id 50"):
        activation_patching(model, _bad(TOKENS, 0, 3, V), TOKENS, answers=(3, 4))


def test_cli_generate_with_a_nan_steering_file_exits_with_a_message(model, tmp_path, monkeypatch, capsys):
    import jaxsteer.models.loading as loading
    from jaxsteer import cli

    path = tmp_path / "nan.npy"
    np.save(path, _nan_at((model.config.d_model,), (5,)))
    monkeypatch.setattr(loading, "load", lambda *a, **k: (model, None))
    # before: empty completions and exit code 0
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--prompt", "hi", "--steer", str(path), "--greedy", "--max-new-tokens", "2"])
    assert f"jaxsteer generate: --steer {path} has a non-finite value (nan) at index 5" in str(exc.value.code)


@pytest.mark.parametrize("n", ["-5", "0"])
def test_cli_eval_rejects_non_positive_n(n, capsys):
    from jaxsteer import cli

    # before: -5 evaluated 195 problems (a Python slice) and 0 reported 0/0 with exit 0
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "no-such-run", "--n", n])
    assert exc.value.code == 2
    assert f"argument --n: must be a positive integer, got {n}" in capsys.readouterr().err


def test_duck_typed_interventions_refuse_non_finite_values(model):
    """Splice (an SAE) and AdaptiveSteer check their own arrays like Steer does."""
    from jaxsteer import sae
    from jaxsteer.analysis.studies import AdaptiveSteer

    L, d = model.config.n_layers, model.config.d_model
    s = sae.init_sae(sae.SAEConfig(kind="topk", d_in=d, d_sae=64, k=4, layer=1), jax.random.PRNGKey(0))
    jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(s)])  # finite: fine
    bad = s.replace(params={**s.params, "b_enc": s.params["b_enc"].at[3].set(jnp.nan)})
    with pytest.raises(ValueError, match=r"Splice: SAE parameter \['b_enc'\].*non-finite"):
        jaxsteer.forward(model, TOKENS, interventions=[sae.Splice(bad)])
    gate = AdaptiveSteer(vector=jnp.ones((L, d)), w=jnp.zeros((L, d)).at[0, 5].set(jnp.inf), b=jnp.zeros(()))
    with pytest.raises(ValueError, match=r"AdaptiveSteer.w.*non-finite"):
        jaxsteer.forward(model, TOKENS, interventions=[gate])
