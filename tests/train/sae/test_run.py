"""SAE training runs (jaxsteer.train.sae.run) on a tiny random model: exact resume, evaluation, the
locked run directory, the config keys reaching the step, the latent axis sharded from the config."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsteer
from jaxsteer.models.config import ModelConfig, RopeConfig
from jaxsteer.models.params import param_shapes, unflatten
from jaxsteer.train.metrics import read_log
from jaxsteer.train.sae.config import load_run_config
from jaxsteer.train.sae.run import eval_run, load_sae, train_sae

V, D = 40, 16


class CharTokenizer:
    bos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % (V - 2) for c in text]}

    def decode(self, ids):
        return "".join(chr(97 + int(i) % 26) for i in ids)


def tiny_sae_model():
    """A 3-layer random Llama (vocab 40, d_model 16) for the SAE runs."""
    cfg = ModelConfig(
        architecture="LlamaForCausalLM",
        vocab_size=V,
        d_model=D,
        n_layers=3,
        n_heads=2,
        n_kv_heads=1,
        head_dim=8,
        d_mlp=24,
        norm_eps=1e-6,
        rope_full=RopeConfig(10000.0),
    )
    rng = np.random.RandomState(0)
    flat = {
        p: ((1.0 if p.endswith("norm") else 0.0) + rng.normal(0, 0.1 if p.endswith("norm") else 0.3, s)).astype(
            np.float32
        )
        for p, s in sorted(param_shapes(cfg).items())
    }
    return jaxsteer.Model(params=jax.tree_util.tree_map(jnp.asarray, unflatten(flat)), config=cfg)


@pytest.fixture(scope="module")
def model():
    return tiny_sae_model()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "one", "two", "three", "plus", "equals", "the", "cat"]
    docs = [" ".join(rng.choice(words, 30)) for _ in range(60)]
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(docs))
    return str(path)


def run_cfg(text_file, out_dir, kind="topk", overrides=(), **extra):
    sets = [
        f"text={text_file}",
        f"output_dir={out_dir}",
        "layer=1",
        "context=16",
        f"sae.kind={kind}",
        "sae.d_sae=32",
        "sae.k=4",
        "train.batch_size=60",
        "steps=6",
        "optimizer.lr=0.003",
        "train.dead_tokens=120",
        "checkpoint.every=3",
        "log_every=1",
        "buffer.contexts_per_forward=4",
        "buffer.buffer_batches=2",
        "eval.contexts=8",
        "eval.fraction=0.2",
    ]
    return load_run_config(None, sets + list(overrides) + [f"{k}={v}" for k, v in extra.items()])


def test_resume_reproduces_an_uninterrupted_run(model, text_file, tmp_path):
    tok = CharTokenizer()
    straight = train_sae(run_cfg(text_file, tmp_path / "a"), model=model, tokenizer=tok, progress=False)
    cfg_b = run_cfg(text_file, tmp_path / "b")
    train_sae(cfg_b, model=model, tokenizer=tok, stop_after=3, progress=False)
    assert not os.path.exists(tmp_path / "b" / "sae")
    train_sae(cfg_b, model=model, tokenizer=tok, resume=True, progress=False)
    a, b = load_sae(straight), load_sae(str(tmp_path / "b"))
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
    la = [r["loss"] for r in read_log(str(tmp_path / "a" / "metrics.jsonl"))]
    lb = [r["loss"] for r in read_log(str(tmp_path / "b" / "metrics.jsonl"))]
    assert la == lb and len(la) == 6


def drop_act_scale(run_dir):
    """Rewrite a run's latest checkpoint as jaxsteer wrote it before commit f46034b (no act_scale)."""
    import shutil

    from jaxsteer.sae.arch import init_sae
    from jaxsteer.train.checkpoint import Checkpointer
    from jaxsteer.train.sae.run import sae_config, step_config
    from jaxsteer.train.sae.step import init_state, make_optimizer

    cfg = load_run_config(os.path.join(run_dir, "config.yaml"), warn=False)
    template = init_state(init_sae(sae_config(cfg, 16), jax.random.PRNGKey(0)), make_optimizer(step_config(cfg, 16)))
    ck = Checkpointer(os.path.join(run_dir, "checkpoints"))
    step, meta = ck.read_meta()
    state, _ = ck.restore(template, identity=meta["model"], trainable_config=meta["trainable"])
    shutil.rmtree(os.path.join(ck.directory, str(step)))
    ck.manager.reload()
    keep = {k: v for k, v in meta.items() if k not in ("tree", "fingerprint", "format", "step")}
    ck.save(step, {k: v for k, v in state.items() if k != "act_scale"}, keep)
    ck.close()


def test_resume_migrates_a_checkpoint_without_act_scale(model, text_file, tmp_path, capsys):
    """A checkpoint from before act_scale resumes with act_scale = 1 (what that code used; a TopK
    run never reads it) and ends bit for bit as an uninterrupted run. The old code refused it
    ("different state structure: missing ['act_scale']")."""
    tok = CharTokenizer()
    cfg = run_cfg(text_file, tmp_path / "old")
    train_sae(cfg, model=model, tokenizer=tok, stop_after=3, progress=False)
    drop_act_scale(str(tmp_path / "old"))
    capsys.readouterr()
    train_sae(cfg, model=model, tokenizer=tok, resume=True, progress=False)
    assert "act_scale = 1" in capsys.readouterr().out
    straight = load_sae(train_sae(run_cfg(text_file, tmp_path / "new"), model=model, tokenizer=tok, progress=False))
    for k, v in straight.params.items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(load_sae(str(tmp_path / "old")).params[k]))


def test_eval_reports_metrics_and_htopk_curve(model, text_file, tmp_path):
    tok = CharTokenizer()
    fast = {"steps": 20, "optimizer.lr": 0.01}
    out = train_sae(
        run_cfg(text_file, tmp_path / "h", kind="htopk", **fast), model=model, tokenizer=tok, progress=False
    )
    res = eval_run(out, model=model, tokenizer=tok, say=lambda *a: None)
    # the null run: the same seed, data and init (b_dec at the geometric median) at lr 1e-12
    out0 = train_sae(
        run_cfg(text_file, tmp_path / "null", kind="htopk", **{**fast, "optimizer.lr": 1e-12}),
        model=model,
        tokenizer=tok,
        progress=False,
    )
    null = eval_run(out0, model=model, tokenizer=tok, say=lambda *a: None)
    # null: EV 0.320, loss recovered 0.913; trained (20 steps): EV 0.728, loss recovered 1.04
    assert res["explained_variance"] > null["explained_variance"] + 0.25, (
        res["explained_variance"],
        null["explained_variance"],
    )
    assert res["loss_recovered"] > null["loss_recovered"] + 0.05, (res["loss_recovered"], null["loss_recovered"])
    for key in ("explained_variance", "fvu", "l0", "dead_fraction", "ce_clean", "ce_sae", "ce_zero", "loss_recovered"):
        assert np.isfinite(res[key]), key
    assert abs(res["explained_variance"] + res["fvu"] - 1) < 1e-9
    assert 0 < res["l0"] <= 4
    assert len(res["ev_by_k"]) == 4 and res["ev_by_k"][-1] >= res["ev_by_k"][0]
    np.testing.assert_allclose(res["ev_by_k"][-1], res["explained_variance"], atol=1e-4)
    assert os.path.exists(os.path.join(out, "ev_by_k.png")) and os.path.exists(os.path.join(out, "eval.json"))


def test_a_locked_run_directory_is_refused(model, text_file, tmp_path):
    from jaxsteer.train.lock import RunLock, RunLockedError

    cfg = run_cfg(text_file, tmp_path / "locked")
    os.makedirs(cfg.output_dir, exist_ok=True)
    with RunLock(cfg.output_dir):
        with pytest.raises(RunLockedError):
            train_sae(cfg, model=model, tokenizer=CharTokenizer(), progress=False)


def test_jumprelu_matryoshka_and_z_runs_from_the_config(model, text_file, tmp_path):
    """The config keys reach the step: a JumpReLU run trains its thresholds under the L0 penalty,
    a Matryoshka run keeps its prefixes, a z-site run reads the heads flattened; each exports and
    loads back."""
    tok = CharTokenizer()
    cases = {
        "jumprelu": ["train.l0_coef=0.01", "train.jumprelu_bandwidth=0.05"],
        "matryoshka": ["sae.matryoshka_widths=[8,32]"],
        "topk": ["site=z"],
    }
    for kind, extra in cases.items():
        out = train_sae(run_cfg(text_file, tmp_path / kind, kind, extra), model=model, tokenizer=tok, progress=False)
        s = load_sae(out)
        assert s.config.kind == kind
        if kind == "jumprelu":
            assert float(jnp.std(s.params["threshold"])) > 0  # per-latent thresholds moved from their common init
        if kind == "matryoshka":
            assert s.config.matryoshka_widths == (8, 32) and float(s.params["threshold"]) > 0
        if kind == "topk":
            assert (s.config.site, s.config.d_in) == ("z", model.config.n_heads * model.config.head_dim)


SHARDED_RUN = """
import json, os, tempfile
import jax, numpy as np
from tests.train.sae.test_run import CharTokenizer, run_cfg, tiny_sae_model
from jaxsteer import sae
from jaxsteer.train.sae.run import load_sae, place_state, train_sae
from jaxsteer.train.sae.step import StepConfig, init_state, make_optimizer

tmp = tempfile.mkdtemp()
rng = np.random.default_rng(0)
words = ["alpha", "beta", "gamma", "delta", "one", "two", "plus", "the", "cat"]
text = os.path.join(tmp, "corpus.txt")
open(text, "w").write("\\n\\n".join(" ".join(rng.choice(words, 30)) for _ in range(60)))
model, tok = tiny_sae_model(), CharTokenizer()
out = {}
for n in (1, 4):
    cfg = run_cfg(text, os.path.join(tmp, f"n{n}"), "topk", [f"shard_latents={n}"])
    out[n] = load_sae(train_sae(cfg, model=model, tokenizer=tok, progress=False)).params
diff = max(float(np.max(np.abs(np.asarray(out[1][k]) - np.asarray(out[4][k])))) for k in out[1])
state = init_state(sae.init_sae(sae.SAEConfig(kind="topk", d_in=16, d_sae=32, k=4), jax.random.PRNGKey(0)),
                   make_optimizer(StepConfig()))
spec = list(place_state(state, cfg, 32)["sae"]["W_enc"].sharding.spec)
print("RESULT" + json.dumps({"diff": diff, "devices": len(jax.devices()), "spec": spec}))
"""


def test_sae_train_shards_the_latent_axis_from_the_config():
    """`shard_latents: 4` on 4 virtual devices: the state's latent axis is split and the run ends
    with the same SAE as on one device."""
    from virtual_devices import run_script

    r = run_script(SHARDED_RUN, devices=4, timeout=600)
    assert r["devices"] == 4 and r["spec"] == [None, "model"]
    assert r["diff"] < 1e-5
