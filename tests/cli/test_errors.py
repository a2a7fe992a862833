"""One error type (issue 19): what jaxsteer refuses on purpose is a `JaxsteerError` (and still the
builtin it always was), the CLI prints it, or an OSError, as one line `jaxsteer COMMAND: ...` with
exit status 1, and any other exception is a bug that keeps its traceback."""

from __future__ import annotations

import errno
import os

import pytest

import jaxsteer
from jaxsteer import cli
from jaxsteer.errors import InputError, JaxsteerError, NotFoundError
from jaxsteer.models.config import UnsupportedConfigError
from jaxsteer.models.generate import check_sampling_args
from jaxsteer.models.gguf_file import GGUFError
from jaxsteer.train.checkpoint import CheckpointError
from jaxsteer.train.config import ConfigError
from jaxsteer.train.data import DatasetError
from jaxsteer.train.lock import RunLockedError
from jaxsteer.train.run import NonFiniteError


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (InputError, ValueError),
        (NotFoundError, FileNotFoundError),
        (ConfigError, ValueError),
        (DatasetError, ValueError),
        (GGUFError, ValueError),
        (UnsupportedConfigError, ValueError),
        (CheckpointError, RuntimeError),
        (RunLockedError, RuntimeError),
        (NonFiniteError, RuntimeError),
    ],
)
def test_every_error_the_cli_reports_is_a_jaxsteer_error_and_its_builtin(cls, builtin):
    assert issubclass(cls, JaxsteerError) and issubclass(cls, builtin)


def test_library_checks_of_user_input_raise_jaxsteer_errors(tmp_path):
    with pytest.raises(InputError, match="temperature is nan"):
        check_sampling_args(max_new_tokens=4, temperature=float("nan"), top_p=1.0, top_k=0, greedy=False)
    with pytest.raises(NotFoundError, match="is not a run directory"):
        jaxsteer.load_run(str(tmp_path))
    with pytest.raises(InputError, match="is not a file, directory, alias or hub id"):
        jaxsteer.load(str(tmp_path / "no-such-model.gguf"))


def _line(argv, monkeypatch, raised: BaseException) -> str:
    """The one line `main` ends with when the command raises `raised`."""

    def command(args):
        raise raised

    monkeypatch.setattr(cli.models, "cmd_info", command)
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert isinstance(info.value.code, str) and "\n" not in info.value.code  # a str code: printed, exit status 1
    return info.value.code


def test_one_line_per_error_kind(monkeypatch):
    assert (
        _line(["info"], monkeypatch, InputError("--dtype: unknown\n  dtype 'f8'"))
        == "jaxsteer info: --dtype: unknown dtype 'f8'"
    )
    assert (
        _line(["info"], monkeypatch, NotFoundError("m.gguf does not exist")) == "jaxsteer info: m.gguf does not exist"
    )
    assert _line(["info"], monkeypatch, ConfigError("x.yaml: bad")) == "jaxsteer info: ConfigError: x.yaml: bad"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/x/metrics.jsonl")
    try:  # an OSError among the causes is what the line reports, with its path and errno
        try:
            raise full
        except OSError as err:
            raise CheckpointError("could not write the checkpoint") from err
    except CheckpointError as err:
        chained = err
    assert (
        _line(["info"], monkeypatch, chained)
        == "jaxsteer info: OSError: runs/x/metrics.jsonl: No space left on device (ENOSPC)"
    )


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("a bug, not a refusal")

    monkeypatch.setattr(cli.models, "cmd_info", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["info"])


def test_jaxsteer_traceback_shows_the_one_line_errors_traceback(monkeypatch):
    def refuses(args):
        raise InputError("bad flag")

    monkeypatch.setattr(cli.models, "cmd_info", refuses)
    monkeypatch.setenv("JAXSTEER_TRACEBACK", "1")
    with pytest.raises(InputError, match="bad flag"):
        cli.main(["info"])


def test_renamed_config_keys_print_one_line_each(tmp_path, capsys):
    """An old-vocabulary config on the command line: each renamed key is one stderr line naming
    the new key (then the run fails here on its bad dataset, before any model loads)."""
    import warnings

    cfg = tmp_path / "old.yaml"
    cfg.write_text("lr: 0.01\nalgorithm:\n  name: grpo\ndata:\n  train: 'arithmetic:n=abc'\n")
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exit_info:
        warnings.simplefilter("default")
        cli.main(["train", str(cfg), f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.splitlines()
    assert f"jaxsteer: {cfg}: config key 'lr' is now 'optimizer.lr'; write optimizer.lr" in err
    assert f"jaxsteer: {cfg}: config key 'algorithm.name' is now 'algorithm'; write algorithm" in err
    assert "data.train" in str(exit_info.value)
