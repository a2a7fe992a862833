"""Fault injection (issue 20): damaged checkpoints resume to the same result as an undamaged run,
for RL and SAE runs, one test per kind of damage. Tiny random models, 4-step toy runs."""

from __future__ import annotations

import glob
import os
import shutil
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as T
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxsteer
from jaxsteer import Steer
from jaxsteer.train import train
from jaxsteer.train.checkpoint import Checkpointer
from jaxsteer.train.config import config_from_dict
from tests import ROOT, TESTS


def _truncate_an_array_file(step_dir):
    files = sorted(
        f
        for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True)
        if os.path.isfile(f) and os.path.getsize(f) > 64 and "metadata" not in os.path.basename(f).lower()
    )
    assert files, os.listdir(step_dir)
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


DAMAGE = {
    "truncated array file": _truncate_an_array_file,
    "state/_METADATA deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "state/ deleted": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "meta/metadata deleted": lambda d: os.remove(os.path.join(d, "meta", "metadata")),
}


def _rl_cfg(out):
    return config_from_dict(
        T.config_dict(
            str(out),
            **{
                "model.random_scale": 0.2,
                "sampling.max_new_tokens": 2,
                "steps": 4,
                "checkpoint.every": 2,
                "checkpoint.keep": 3,
            },
        )
    )


@pytest.fixture(scope="module")
def undamaged(tmp_path_factory):
    out = tmp_path_factory.mktemp("undamaged")
    result = train(_rl_cfg(out))
    return out, np.asarray(result.trainable["vectors"])


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_after_a_damaged_latest_checkpoint_finishes_equal_to_an_undamaged_run(undamaged, tmp_path, kind):
    reference_dir, reference = undamaged
    run = tmp_path / "run"
    shutil.copytree(reference_dir, run)
    for name in ("steering_vectors.npy", "steering_vectors.safetensors", "summary.json"):
        if (run / name).exists():
            os.remove(run / name)
    DAMAGE[kind](str(run / "checkpoints" / "4"))
    with pytest.warns(UserWarning, match=r"step 4.*moved to .*damaged-4.*resuming from .*step 2"):
        result = train(_rl_cfg(run), resume=True)
    got = np.asarray(result.trainable["vectors"])
    np.testing.assert_allclose(got, reference, atol=1e-6)
    assert (run / "checkpoints" / "damaged-4").is_dir()
    assert Checkpointer(str(run / "checkpoints")).all_steps() == [2, 4]
    assert os.path.isfile(run / "steering_vectors.npy")
    with warnings.catch_warnings():  # a later --resume finds the re-saved step 4 intact
        warnings.simplefilter("error", UserWarning)
        again = train(_rl_cfg(run), resume=True)
    np.testing.assert_allclose(np.asarray(again.trainable["vectors"]), reference, atol=1e-6)


@pytest.fixture(scope="module")
def sae_undamaged(tmp_path_factory):
    from jaxsteer.train.sae.run import train_sae
    from tests.train.sae.test_run import CharTokenizer, run_cfg, tiny_sae_model

    root = tmp_path_factory.mktemp("sae")
    text = root / "corpus.txt"
    words = np.array(["alpha", "beta", "gamma", "one", "two", "plus", "equals", "the"])
    text.write_text("\n\n".join(" ".join(np.random.default_rng(i).choice(words, 30)) for i in range(40)))
    model = tiny_sae_model()
    cfg = lambda out: run_cfg(str(text), out, **{"steps": 4, "checkpoint.every": 2, "checkpoint.keep": 3})  # noqa: E731
    straight = train_sae(cfg(root / "a"), model=model, tokenizer=CharTokenizer(), progress=False)
    return cfg, model, CharTokenizer(), straight


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_sae_resume_after_a_damaged_latest_checkpoint_equals_an_undamaged_run(sae_undamaged, tmp_path, kind):
    from jaxsteer.train.sae.run import load_sae, train_sae

    cfg, model, tok, straight = sae_undamaged
    run = tmp_path / "b"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "sae")
    DAMAGE[kind](str(run / "checkpoints" / "4"))
    with pytest.warns(UserWarning, match=r"step 4.*moved to .*damaged-4.*resuming from .*step 2"):
        train_sae(cfg(run), model=model, tokenizer=tok, resume=True, progress=False)
    a, b = load_sae(straight), load_sae(str(run))
    for k in a.params:
        np.testing.assert_array_equal(np.asarray(a.params[k]), np.asarray(b.params[k]))
    assert Checkpointer(str(run / "checkpoints")).all_steps() == [2, 4]


# --------------------------------------------------------------------------- bad inputs to generate / forward


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(temperature=float("nan")), r"temperature is nan; it must be finite"),
        (dict(temperature=float("inf")), r"temperature is inf; it must be finite"),
        (dict(top_p=float("nan")), r"top_p is nan"),
        (dict(top_k=2.5), r"top_k must be an integer, got 2.5"),
        (dict(top_k=float("inf")), r"top_k must be an integer"),
        (dict(max_new_tokens=2.0), r"max_new_tokens must be an integer"),
        (dict(bucket=0), r"bucket must be >= 1, got 0"),
        (dict(greedy="yes"), r"greedy must be True or False"),
        (dict(prompts=np.array([[3.5, 4.0]])), r"prompts: token ids must be integers, got dtype float64"),
        (dict(prompts=[[3.0, 4.0]]), r"prompt 0: token ids must be integers, got dtype float64"),
        (
            dict(prompts=np.array([[3, 4]]), prompt_mask=np.ones((1, 3))),
            r"prompt_mask has shape \(1, 3\); the prompts have shape \(1, 2\)",
        ),
        (
            dict(interventions=Steer(np.ones(32) * (1 + 1j))),
            r"Steer at 'resid_post': vector must hold real numbers, got dtype complex128",
        ),
        (dict(interventions=Steer(np.array([object()] * 32))), r"vector must hold real numbers, got dtype object"),
        (
            dict(interventions=Steer(np.ones(32, np.float32), scale=1e38)),
            r"\|scale\| x \|vector\| x 3 layers reaches 3e\+38.*overflow",
        ),
    ],
)
def test_generate_refuses_silent_wrong_inputs_by_name(tiny_model, kwargs, needle):
    """Each used to give NaN log-probs / empty text, a silent cast, or an IndexError / ZeroDivisionError."""
    args = dict(prompts=[[3, 4, 5]], max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        jaxsteer.generate(tiny_model, args.pop("prompts"), **args)


def test_forward_refuses_complex_and_overflowing_steers(tiny_model):
    toks = jnp.asarray([[3, 4, 5]])
    with pytest.raises(ValueError, match="vector must hold real numbers, got dtype complex64"):
        jaxsteer.forward(tiny_model, toks, interventions=Steer(jnp.ones(32, jnp.complex64)))
    with pytest.raises(ValueError, match=r"x 3 layers reaches 3e\+38"):
        jaxsteer.forward(tiny_model, toks, interventions=Steer(jnp.ones(32), scale=1e38))


SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-3, 60),
    st.sampled_from([True, "1", None, 1 + 1j]),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    temperature=SCALARS,
    top_p=SCALARS,
    top_k=SCALARS,
    greedy=st.booleans(),
    token=st.one_of(st.integers(-2, 60), st.floats(-2, 60)),
    scale=st.floats(allow_nan=True, allow_infinity=True),
)
def test_generate_returns_finite_results_or_a_named_error(tiny_model, temperature, top_p, top_k, greedy, token, scale):
    args = dict(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        max_new_tokens=2,
        interventions=Steer(np.ones(32, np.float32), scale=scale, layers=(1,)),
    )
    try:
        out = jaxsteer.generate(tiny_model, [[3, token, 5]], **args)
    except ValueError as err:
        names = ("temperature", "top_p", "top_k", "greedy", "prompt 0", "scale")
        assert any(n in str(err) for n in names), err
        return
    assert np.isfinite(out.logprobs).all() and ((out.tokens >= 0) & (out.tokens < 53)).all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(["int32", "int64", "float32", "bool", "complex64", "uint8"]),
    token=st.integers(-3, 60),
    scale=st.floats(allow_nan=True, allow_infinity=True),
    vector_dtype=st.sampled_from(["float32", "float16", "complex64", "int32"]),
)
def test_forward_returns_finite_logits_or_a_named_error(tiny_model, dtype, token, scale, vector_dtype):
    toks = np.array([[3, token % 256 if dtype == "uint8" else token, 5]]).astype(dtype)
    steer = Steer(np.ones(32).astype(vector_dtype), scale=scale)
    try:
        logits, _ = jaxsteer.forward(tiny_model, toks, interventions=steer)
    except ValueError as err:
        assert any(n in str(err) for n in ("tokens", "scale", "vector")), err
        return
    assert np.isfinite(np.asarray(logits)).all()


# --------------------------------------------------------------------------- configs

from jaxsteer.errors import JaxsteerError  # noqa: E402
from jaxsteer.train.config import ConfigError, load_config  # noqa: E402
from jaxsteer.train.sae.config import load_run_config  # noqa: E402

BAD_YAML = {
    "duplicate key": ("lr: 0.01\nsteps: 3\nlr: 5.0\n", r"x.yaml:3: duplicate key 'lr' \(first given on line 1\)"),
    "nested duplicate": (
        "algorithm:\n  group_size: 2\n  group_size: 3\n",
        r"x.yaml:3: duplicate key 'group_size' \(first given on line 2\)",
    ),
    "syntax error": ("lr: 0.01\nalgorithm: {group_size: 2\n", r"x.yaml:3:1: YAML syntax error: expected ',' or '}'"),
    "bad indentation": ("lr: 1\n  steps: 2\n", r"x.yaml:2:8: YAML syntax error: mapping values are not allowed here"),
    "empty file": ("# nothing here\n", r"x.yaml is empty: it would run on every default setting"),
    "a list": ("- lr: 1\n", r"x.yaml: the top level must be a mapping of settings, got list"),
}


@pytest.mark.parametrize("case", list(BAD_YAML))
@pytest.mark.parametrize("loader", [load_config, load_run_config], ids=["train", "sae"])
def test_bad_yaml_is_one_config_error_with_file_line_col(tmp_path, case, loader):
    text, needle = BAD_YAML[case]
    path = tmp_path / "x.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle) as info:
        loader(str(path))
    assert "\n" not in str(info.value) and isinstance(info.value, JaxsteerError)


def _toy(out, **kw):
    return config_from_dict(T.config_dict(str(out), **kw))


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (
            {"eval.greedy": False, "eval.samples": 0, "eval.after": True},
            r"eval.greedy=false with eval.samples=0 evaluates nothing",
        ),
        (
            {"sampling.max_new_tokens": 200},
            r"sampling.bucket \(8, the shortest padded prompt\) \+ max_new_tokens \(200\) "
            r"exceeds the context length of random \(128 tokens\)",
        ),
        ({"eval.max_new_tokens": 130, "eval.after": True}, r"max_new_tokens \(130\) exceeds the context length"),
        (
            {"rl.group_size": 10**7},
            r"planned memory: the update, no remat needs .* GiB per device .*group_size=10000000",
        ),
    ],
)
def test_settings_that_do_nothing_or_cannot_fit_are_refused_before_the_model_loads(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        train(_toy(tmp_path / "run", **overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the run directory was touched


def test_a_dataset_smaller_than_a_step_is_refused_by_name(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"train_examples has 1 example\(s\), fewer than "
        r"prompts_per_step=4",
    ):
        train(_toy(tmp_path / "run"), train_examples=T.examples(1))


# --------------------------------------------------------------------------- multi-process start-up

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from jaxsteer.train.distributed import cluster_args  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args, needle",
    [
        (("127.0.0.1:99999", 2, 0), r"--coordinator '127.0.0.1:99999': expected HOST:PORT with a port in 1..65535"),
        (("127.0.0.1", 2, 1), r"expected HOST:PORT"),
        (("no-such-host.invalid:1234", 2, 1), r"cannot resolve host 'no-such-host.invalid'"),
        (("127.0.0.1:1234", 0, 0), r"--num-processes must be >= 1, got 0"),
    ],
)
def test_bad_cluster_flags_are_refused_by_name(args, needle):
    with pytest.raises(ValueError, match=needle):
        cluster_args(*args)


def test_a_busy_coordinator_port_is_refused_for_process_0():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"process 0 cannot serve on port {port}"):
            cluster_args(f"127.0.0.1:{port}", 2, 0)


def test_a_lone_process_of_two_exits_with_one_line_within_the_timeout(tmp_path):
    """It used to print nothing for 300 s and then abort with a C++ stack (exit 134)."""
    port = _free_port()
    config = tmp_path / "c.yaml"
    config.write_text("steps: 1\n")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxsteer.cli",
            "train",
            str(config),
            "--coordinator",
            f"127.0.0.1:{port}",
            "--num-processes",
            "2",
            "--process-id",
            "0",
            "--startup-timeout",
            "4",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and time.monotonic() - t0 < 90, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert any(f"waiting for 2 processes at coordinator 127.0.0.1:{port}" in line for line in lines), lines
    assert lines[-1].startswith(
        f"jaxsteer: start-up timed out after 4 s at coordinator 127.0.0.1:{port}: "
        "process 1 never joined (this is process 0)"
    ), lines


# --------------------------------------------------------------------------- the CLI: one line per failure

import errno  # noqa: E402

import yaml  # noqa: E402

from jaxsteer import cli  # noqa: E402
from jaxsteer.train import metrics as metrics_module  # noqa: E402
from jaxsteer.train.lock import RunLock  # noqa: E402


def _cli_line(argv) -> str:
    """The one line a failing command prints (its SystemExit message), checked to be one line."""
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    message = str(info.value.code)
    assert info.value.code not in (0, None) and "\n" not in message and "Traceback" not in message, message
    return message


def _npy_bytes(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones(8, np.float32))
    return (tmp_path / "ok.npy").read_bytes()


STEER_FILES = {
    "missing": (None, r"--steer .*absent.npy: not a readable array file \(.*No such file"),
    "truncated": (lambda d: _npy_bytes(d)[:60], r"--steer .*bad: not a readable array file"),
    "text": (lambda d: b"1 2 3\n", r"--steer .*bad: not a readable array file"),
    "empty": (lambda d: b"", r"--steer .*bad: not a readable array file"),
    "object array": ("object", r"--steer .*bad.npy: not a readable array file \(.*pickle"),
    "safetensors with two tensors": (
        "safetensors",
        r"--steer .*bad.safetensors: not a readable array file \(holds 2 tensors",
    ),
    "nan": ("nan", r"--steer .*bad.npy has a non-finite value"),
}


@pytest.mark.parametrize("case", list(STEER_FILES))
def test_bad_steer_files_are_one_line_before_the_model_loads(tmp_path, case):
    make, needle = STEER_FILES[case]
    path = tmp_path / "absent.npy"
    if make == "object":
        path = tmp_path / "bad.npy"
        np.save(path, np.array([object(), 1], dtype=object), allow_pickle=True)
    elif make == "safetensors":
        from safetensors.numpy import save_file

        path = tmp_path / "bad.safetensors"
        save_file({"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, str(path))
    elif make == "nan":
        path = tmp_path / "bad.npy"
        np.save(path, np.array([1.0, np.nan], np.float32))
    elif make is not None:
        path = tmp_path / "bad"
        path.write_bytes(make(tmp_path))
    # the model does not exist: reaching it would be a different error, so the file was checked first
    line = _cli_line(["generate", "--model", tmp_path / "no-model", "--prompt", "hi", "--steer", path])
    assert re.search(needle, line), line


import re  # noqa: E402


def _toy_yaml(tmp_path, out="run", **overrides):
    data = T.config_dict(
        str(tmp_path / out), **{"sampling.max_new_tokens": 2, "steps": 2, "checkpoint.every": 1, **overrides}
    )
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "{bad}"], r"^jaxsteer train: .*x.yaml:3: duplicate key 'lr'"),
        (["eval", "{bad}"], r"^jaxsteer eval: .*x.yaml:3: duplicate key 'lr'"),
        (["plan", "{bad}"], r"^jaxsteer plan: .*x.yaml:3: duplicate key 'lr'"),
        (["sae", "train", "{bad}"], r"^jaxsteer sae train: ConfigError: .*x.yaml:3: duplicate key 'lr'"),
        (["train", "{missing}"], r"^jaxsteer train: .*No such file"),
        (
            ["sae", "train", "{missing}"],
            r"^jaxsteer sae train: FileNotFoundError: .*nope.yaml: No such file or directory \(ENOENT\)",
        ),
        (["sae", "eval", "{missing}"], r"^jaxsteer sae eval: .*nope.yaml"),
        (["lens", "--vectors", "{missing}"], r"^jaxsteer lens: --vectors .*nope.yaml: not a readable array file"),
    ],
)
def test_config_and_file_errors_are_one_line_for_every_command(tmp_path, argv, needle):
    bad = tmp_path / "x.yaml"
    bad.write_text("lr: 0.01\nsteps: 3\nlr: 5.0\n")
    names = {"{bad}": str(bad), "{missing}": str(tmp_path / "nope.yaml")}
    assert re.search(needle, _cli_line([names.get(a, a) for a in argv]))


def test_overrides_after_flags_and_the_sae_set_flag(tmp_path, capsys):
    args = cli.parse_args(["train", "c.yaml", "--resume", "optimizer.lr=1", "--logit-lens", "0", "steps=2"])
    assert args.overrides == ["optimizer.lr=1", "steps=2"] and args.resume
    args = cli.parse_args(["sae", "train", "c.yaml", "--no-progress", "steps=3", "--set", "layer=1"])
    assert args.overrides == ["steps=3"] and args.set == ["layer=1"]
    with pytest.raises(SystemExit):
        cli.parse_args(["train", "c.yaml", "--resume", "not-an-override"])
    path = _toy_yaml(tmp_path)
    cli.main(["plan", str(path), "--prompt-len", "8", "rl.group_size=2", "optimizer.micro_batches=1"])
    assert "4 prompts x 2 = 8 rollouts per step" in capsys.readouterr().out


def test_a_locked_sae_run_directory_is_one_line_before_the_model_loads(tmp_path):
    out = tmp_path / "sae-run"
    config = tmp_path / "sae.yaml"
    config.write_text(f"model: {{spec: {tmp_path / 'no-such-model'}}}\noutput_dir: {out}\n")
    with RunLock(out):
        line = _cli_line(["sae", "train", config, "--set", "steps=2"])
    assert line.startswith("jaxsteer sae train: RunLockedError: run directory") and "is in use by process" in line


def test_output_dir_naming_a_file_is_one_line(tmp_path):
    path = _toy_yaml(tmp_path, out="a-file")
    (tmp_path / "a-file").write_text("not a directory")
    line = _cli_line(["train", path, "--logit-lens", "0"])
    assert "a-file" in line and ("(EEXIST)" in line or "(ENOTDIR)" in line), line


def test_disk_full_reports_the_real_errno_even_when_tensorboard_fails_first(tmp_path, monkeypatch):
    """The run's last line used to be tensorboardX's 'handle is closed', hiding ENOSPC."""
    real_open = open

    def full_disk_open(path, mode="r", *a, **kw):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *a, **kw)

    class BrokenWriter:  # tensorboardX's writer thread died on the full disk first
        def __init__(self, *a, **kw):
            pass

        def add_scalar(self, *a, **kw):
            pass

        def close(self):
            raise ValueError("I/O operation on closed file: the handle is closed")

    import tensorboardX

    monkeypatch.setattr(metrics_module, "open", full_disk_open, raising=False)
    monkeypatch.setattr(tensorboardX, "SummaryWriter", BrokenWriter)
    path = _toy_yaml(tmp_path, tensorboard=True)
    with pytest.warns(UserWarning, match="TensorBoard writer failed to close"):
        line = _cli_line(["train", path, "--logit-lens", "0"])
    assert line.startswith("jaxsteer train: OSError: ") and "metrics.jsonl: No space left on device (ENOSPC)" in line, (
        line
    )


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--temperature", "nan"], "jaxsteer generate: temperature is nan; it must be finite"),
        (["--top-p", "inf"], "jaxsteer generate: top_p is inf; it must be finite"),
        (["--top-k", "-1"], "jaxsteer generate: top_k must be >= 0, got -1"),
    ],
)
def test_cli_generate_sampling_flags_are_checked_before_the_model_loads(tmp_path, flags, needle):
    """`--temperature nan` used to print an empty completion with exit 0."""
    assert _cli_line(["generate", "--model", tmp_path / "no-model", "--prompt", "hi", *flags]) == needle


# --------------------------------------------------------------------------- a kill at a random point

import signal  # noqa: E402


@pytest.mark.parametrize("seed", [0])
def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(undamaged, tmp_path, seed):
    """`kill -9` a CLI run at a random moment after its first checkpoint (inside a step, a
    checkpoint write or a metrics write), `--resume` it: the vectors equal an uninterrupted run's."""
    reference = undamaged[1]  # the same run with checkpoints every 2 steps (checkpointing changes no result)
    path = tmp_path / "killed.yaml"
    path.write_text(
        yaml.safe_dump(
            T.config_dict(
                str(tmp_path / "killed"),
                **{
                    "model.random_scale": 0.2,
                    "sampling.max_new_tokens": 2,
                    "steps": 4,
                    "checkpoint.every": 1,
                    "checkpoint.keep": 5,
                },
            )
        )
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]), JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "jaxsteer.cli", "train", str(path), "--logit-lens", "0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # The moment is drawn in steps, not seconds (a fixed delay outlived the whole run on an idle
    # machine): just after checkpoint k of 4 lands, plus a few milliseconds, i.e. inside step k + 1.
    rng = np.random.RandomState(seed)
    landed = tmp_path / "killed" / "checkpoints" / str(rng.randint(1, 3))
    deadline = time.monotonic() + 600
    while not landed.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 0.01))
    assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: the kill lands mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = subprocess.run(cmd + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "killed" / "steering_vectors.npy"), reference, atol=1e-6)
