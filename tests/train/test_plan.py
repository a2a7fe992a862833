"""`jaxsteer plan`: the memory plan against XLA's own accounting of the compiled RL step, and a
paper-scale (7B) plan that allocates no weights."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxsteer.models.decoder import default_positions, embed, run_layers, unembed
from jaxsteer.models.generate import kv_cache
from jaxsteer.models.interventions import Steer
from jaxsteer.train.config import config_from_dict, load_config
from jaxsteer.train.plan import (
    DEVICES,
    abstract_model,
    activation_bytes,
    device_bytes,
    kv_cache_bytes,
    model_config,
    plan,
)
from jaxsteer.train.rl.learner import step_spec
from jaxsteer.train.rl.step import train_step
from jaxsteer.train.scoring import token_logprobs
from jaxsteer.train.state import init_state, make_optimizer
from jaxsteer.train.trainable import init_trainable
from tests import ROOT

TINY = dict(
    vocab_size=512, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, d_mlp=128, max_position_embeddings=512
)
S = jax.ShapeDtypeStruct


def tiny_config(kind="steering", rows=16, group=4, prompt=8, new=8, **model):
    return config_from_dict(
        {
            "model": {"spec": "random", "random": {**TINY, **model}},
            "trainable": {"kind": kind},
            # group 1 (every row scored whole) is only valid for expert iteration, which scores the same way
            "algorithm": {
                "name": "grpo" if group > 1 else "expert_iteration",
                "group_size": group,
                "prompts_per_step": rows // group,
            },
            "sampling": {"max_new_tokens": new},
        }
    )


def xla_step_memory(cfg, prompt: int) -> dict:
    """XLA's memory analysis of the RL step (`train_step`) compiled for `cfg` on abstract inputs."""
    c = model_config(cfg.model)
    model = abstract_model(c, jnp.float32)
    tx, _ = make_optimizer(cfg.optimizer.lr, cfg.steps)
    state = jax.eval_shape(lambda m: init_state(init_trainable(m, cfg.trainable, jax.random.PRNGKey(0)), tx), model)
    B, T, N = cfg.rollouts_per_step, prompt + cfg.sampling.max_new_tokens, cfg.sampling.max_new_tokens
    batch = {
        "tokens": S((1, B, T), jnp.int32),
        "mask": S((1, B, T), jnp.int32),
        "old_logp": S((1, B, N), jnp.float32),
        "advantages": S((1, B), jnp.float32),
        "rewards": S((1, B), jnp.float32),
    }
    fn = jax.jit(functools.partial(train_step, spec=step_spec(cfg), tx=tx, prompt_width=prompt), donate_argnums=(1,))
    ma = fn.lower(model, state, batch).compile().memory_analysis()
    return {
        "arg": ma.argument_size_in_bytes,
        "total": ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + ma.temp_size_in_bytes,
        "temp": ma.temp_size_in_bytes,
    }


def close(a, b, tol=0.15):
    return abs(a / b - 1) <= tol


@pytest.mark.parametrize(
    "kind, group, prompt, new, model",
    [
        ("steering", 4, 8, 8, {}),  # grouped scoring (prompt once per group)
        ("steering", 1, 8, 16, {}),  # every row scored whole
        ("steering", 8, 12, 20, dict(vocab_size=2048, d_model=96, d_mlp=256, n_heads=6)),
        ("lora", 4, 8, 8, {}),
        ("full", 4, 8, 8, {}),
    ],
)
def test_plan_matches_xla_memory_analysis(kind, group, prompt, new, model):
    cfg = tiny_config(kind, rows=16 if group < 8 else 24, group=group, prompt=prompt, new=new, **model)
    p = plan(cfg, data=1, fsdp=1, prompt_len=prompt)
    xla = xla_step_memory(cfg, prompt)
    parts = p.parts
    temp = parts["gradients"] + parts["activations, no remat"] + parts["logits / log-softmax (float32)"]
    assert close(temp, xla["temp"]), (temp, xla["temp"])
    state = parts["trainable state"] + parts["optimizer moments"]
    if kind == "full":  # the step never reads the frozen base (no KL term): XLA drops that argument
        assert close(state + parts["update batch"], xla["arg"]), (state, xla["arg"])
    else:
        assert close(p.peaks["update, no remat"], xla["total"]), (p.peaks, xla)


def scoring_loss(vectors, model, tokens, mask, adv, prompt, remat):
    """The step's ungrouped scoring (`sequence_logprobs`) with the layer scan optionally rematerialised."""
    positions = default_positions(tokens, mask)
    k_pos = jnp.where(mask.astype(bool), positions, -1)
    h, _, _ = run_layers(
        model, embed(model, tokens), positions, k_pos, (Steer(vectors, site="resid_post"),), frozenset(), remat=remat
    )
    logp, _ = token_logprobs(unembed(model, h[:, prompt - 1 : -1]), tokens[:, prompt:], mask[:, prompt:])
    return -jnp.sum(logp * adv[:, None])


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.parametrize("rows, prompt, new, model", [(16, 8, 8, {}), (8, 16, 16, dict(d_mlp=512, vocab_size=2048))])
def test_activations_with_and_without_remat_match_xla(remat, rows, prompt, new, model):
    c = model_config(tiny_config(**model).model)
    args = (
        S((c.n_layers, c.d_model), jnp.float32),
        abstract_model(c, jnp.float32),
        S((rows, prompt + new), jnp.int32),
        S((rows, prompt + new), jnp.int32),
        S((rows,), jnp.float32),
    )
    grad = jax.jit(jax.grad(functools.partial(scoring_loss, prompt=prompt, remat=remat)))
    temp = grad.lower(*args).compile().memory_analysis().temp_size_in_bytes
    est = activation_bytes(c, rows, group=1, prompt=prompt, new=new, act_bytes=4, remat=remat)["total"]
    assert close(est, temp), (est, temp)


PAPER_SCRIPT = r"""
import json, resource, sys
import jax
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
jax.numpy.zeros(1).block_until_ready()  # the backend's own footprint is not the plan's
before = rss()
import jaxsteer.train.plan as P
from jaxsteer.train.config import load_config
from jaxsteer.cli import main
main(["plan", sys.argv[1], "--mesh", "data=8,fsdp=8", "--device", "v5e", "--prompt-len", "512"])
out = {}
for path in sys.argv[2:]:
    p = P.plan(load_config(path), data=8, fsdp=1, capacity=P.DEVICES["h100"])
    out[path] = {"peaks": p.peaks, "params": p.model.n_params()}
print(json.dumps({"grew": rss() - before, "peak": rss(), "plans": out}))
"""


def test_paper_scale_plans_allocate_no_weights():
    """7B-8B configs plan from their shipped HF config values in a fresh process whose peak RSS grows
    by a few hundred MB at most past a started JAX, jaxsteer's imports included (a bfloat16 7B alone
    would be 15 GB)."""
    paths = sorted(
        os.path.join(ROOT, "experiments", f)
        for f in os.listdir(os.path.join(ROOT, "experiments"))
        if f.startswith("paper_") and f.endswith(".yaml")
    )
    assert len(paths) == 4
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-c", PAPER_SCRIPT, paths[-1], *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    text, last = res.stdout.rsplit("\n", 2)[0], json.loads(res.stdout.strip().splitlines()[-1])
    assert last["grew"] < 400 * 2**20, last["grew"]
    assert "per device:" in text and "largest update micro-batch" in text
    params = {os.path.basename(k): v["params"] for k, v in last["plans"].items()}
    assert round(params["paper_qwen2.5_math_7b_steering.yaml"] / 1e9, 2) == 7.62
    assert round(params["paper_qwen2.5_math_1.5b_steering.yaml"] / 1e9, 2) == 1.54
    assert round(params["paper_llama3.1_8b_instruct_steering.yaml"] / 1e9, 2) == 8.03
    for k, v in last["plans"].items():
        assert all(x > 0 for x in v["peaks"].values()), k


def test_hf_config_from_a_config_json(tmp_path):
    cfg_7b = load_config(os.path.join(ROOT, "experiments", "paper_qwen2.5_math_7b_steering.yaml"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg_7b.model.hf_config))
    cfg = load_config(
        os.path.join(ROOT, "experiments", "paper_qwen2.5_math_7b_steering.yaml"), [f"model.hf_config={path}"]
    )
    assert model_config(cfg.model) == model_config(cfg_7b.model)


def test_sizes_follow_the_allocators_and_shardings():
    """The K/V cache is what the sampler's allocator makes; fsdp splits the 7B base 8 ways."""
    cfg = load_config(os.path.join(ROOT, "experiments", "paper_qwen2.5_math_7b_steering.yaml"))
    c = model_config(cfg.model)
    model = abstract_model(c, jnp.bfloat16)
    cache = jax.eval_shape(lambda m: kv_cache(m, 3, 100), model)
    assert kv_cache_bytes(c, 3, 100, 2) == sum(x.size * x.dtype.itemsize for x in cache)
    whole = device_bytes(model)
    assert whole == 2 * c.n_params()
    assert whole / 8 <= device_bytes(model, fsdp=8, shard=True) < whole / 8 * 1.001


def test_roofline_known_answer_on_a_tiny_config():
    """`roofline` against hand-counted FLOPs and bytes: a 2-layer d=32 model (untied, 20,640
    parameters, 19,616 of them in matmuls), 16 rollouts of 8 prompt + 4 new tokens on one device, bf16."""
    import math

    import train_toy as T

    from jaxsteer.train.plan import PEAKS, plan, roofline

    cfg = config_from_dict(T.config_dict("/tmp/unused", **{"sampling.max_new_tokens": 4}))
    p = plan(cfg, data=1, fsdp=1, capacity=DEVICES["h100"], prompt_len=8, backend="gpu")
    assert p.dtype == "bfloat16" and p.model.n_params() == 20640
    r = roofline(p, "h100")
    n_mm, attn, kv_token, weights = 19616, 4 * 2 * 4 * 8, 2 * 2 * 2 * 8 * 2, 20640 * 2
    rows, P, N = 16, 8, 4
    calls = math.ceil(rows / p.rollout_rows)
    f, b = r.phases["rollout prefill"]
    assert f == rows * (2 * n_mm * P + attn * P * P / 2) and b == calls * weights + rows * P * kv_token
    f, b_decode = r.phases["rollout decode"]
    assert (
        f == rows * N * (2 * n_mm + attn * (P + N / 2))
        and b_decode == calls * N * weights + rows * N * (P + N / 2) * kv_token
    )
    f, _ = r.phases["update"]
    assert f == 2 * (2 * n_mm * rows * (P + N) + attn * rows * (P + N) ** 2 / 2)  # steering: forward + activation grads
    peak, bw = PEAKS["h100"]
    assert r.step_seconds == pytest.approx(sum(max(f / peak, b / bw) for f, b in r.phases.values()))
    assert r.seconds["rollout decode"] == b_decode / bw and 0 < r.mfu_bound < 1  # decoding 16 rows is memory-bound
    with pytest.raises(ValueError, match="no peak figures"):
        roofline(p, "cpu")
