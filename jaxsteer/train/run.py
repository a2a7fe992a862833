"""The Run: one run directory and everything a learner keeps in it.

    run = Run(cfg.output_dir, config=cfg, resume=resume, keep=2, tensorboard=True, progress=True)
    state, meta = run.restore(template, identity=..., trainable_config=...)   # (template, None): fresh
    with run.progress(steps, "train") as bar:
        for step in range(run.start_step, steps):
            ...
            run.log(step + 1, metrics)
            run.say("printed above the progress bar")
            if run.due(step + 1, every, steps):
                run.save(step + 1, state, meta)
    run.finish(summary, title="model / algorithm / what")

A run directory holds `config.yaml` (the config it was started with), `checkpoints/` (Orbax,
`jaxsteer.train.checkpoint`), `metrics.jsonl` (+ `tb/`, `jaxsteer.train.metrics`), `curves.png`
and `summary.json`. `run.evals` holds named evaluations; the ones saved with `persist=True`
(the held-out "before") travel in every checkpoint's metadata, so a resumed run keeps them.
The directory is locked for the run's life (`jaxsteer.train.lock.RunLock`, taken before anything
is cleared or written, released by `close` / `finish`): a second live run on it is refused.
A fresh (not resumed) run clears old checkpoints first. Only process 0 writes files and prints.
The Run knows no learner: RL, ES and other trainers (SAE, SFT) use it alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import yaml

from ..config import ConfigError, config_diff, save_config
from ..errors import JaxsteerError
from . import checkpoint as ckpt
from .lock import RunLock
from .metrics import RunLogger, plot_curves

T = TypeVar("T")


class NonFiniteError(JaxsteerError, RuntimeError):
    """A training quantity became NaN or infinite; the run stopped without saving that state."""


def _finite(value: Any) -> bool:
    """Whether every leaf of `value` is finite, with one device-to-host transfer for the whole tree."""
    leaves = jax.tree_util.tree_leaves(value)
    if not leaves:
        return True
    return bool(jax.device_get(jax.numpy.all(jax.numpy.stack([jax.numpy.all(jax.numpy.isfinite(x)) for x in leaves]))))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (`ru_maxrss`)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Run:
    """A run directory with its config snapshot, checkpoints, metrics, progress output and summary.

    Args:
        output_dir: the run directory.
        config: what the run was started with (a dataclass tree or plain data), written to
            `config.yaml`; None = write nothing.
        resume: continue from the latest checkpoint (`restore`); otherwise old checkpoints are removed.
        keep: checkpoints kept.
        tensorboard: mirror metrics to `tb/`.
        progress: show a tqdm bar (`progress`).
        plot: draw `curves.png` at `finish`.
    """

    def __init__(
        self,
        output_dir: str,
        *,
        config: Any = None,
        resume: bool = False,
        keep: int = 2,
        tensorboard: bool = True,
        progress: bool = True,
        plot: bool = True,
    ):
        self.directory = output_dir
        self.resume, self.tensorboard, self.show_progress, self.plot = resume, tensorboard, progress, plot
        self.main = jax.process_index() == 0
        self.start_step = 0
        self.evals: dict[str, dict] = {}
        self.files: dict[str, str] = {}
        self._persist: set[str] = set()
        self._bar = None
        self.logger: RunLogger | None = None
        self.checkpointer: ckpt.Checkpointer | None = None
        self.lock = RunLock(output_dir).acquire() if self.main else None
        ckpt_dir = os.path.join(output_dir, "checkpoints")
        if not resume:
            self._clear_checkpoints(ckpt_dir)
        self.checkpointer = ckpt.Checkpointer(ckpt_dir, keep=keep)
        self.checkpointer_dir = self.checkpointer.directory
        self.files["checkpoints"] = self.checkpointer.directory
        self.config = config
        if config is not None and self.main:
            self._snapshot_config(config, resume and self.checkpointer.latest_step() is not None)

    def _snapshot_config(self, config: Any, resuming: bool) -> None:
        """Write config.yaml on a fresh start. On resume, config.yaml stays as the checkpoints'
        record; a config that differs in anything but `RESUMABLE_CHANGES` is refused, and the
        resumed run's own config goes to config.resumed.yaml."""
        path = os.path.join(self.directory, "config.yaml")
        if not (resuming and os.path.isfile(path)):
            save_config(config, path)
            return
        with open(path, encoding="utf-8") as f:
            original = yaml.safe_load(f) or {}
        changed = resume_conflicts(original, config)
        if changed:
            self.close()
            raise ConfigError(
                f"--resume with a config that differs from the one that made the checkpoints ({path}): "
                f"{'; '.join(changed)}. Resume with the original settings, or start a new output_dir"
            )
        save_config(config, os.path.join(self.directory, "config.resumed.yaml"))

    # ---- output

    def say(self, *args) -> None:
        """Print on process 0, above the progress bar when one is showing."""
        if not self.main:
            return
        msg = " ".join(str(a) for a in args)
        if self._bar is not None:
            self._bar.write(msg)
        else:
            print(msg, flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, desc: str) -> Iterator[Any]:
        """A tqdm bar from `start_step` to `total` (disabled unless `progress` and process 0)."""
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=self.start_step,
            desc=desc,
            dynamic_ncols=True,
            disable=not (self.show_progress and self.main),
        )
        try:
            yield self._bar
        finally:
            self._bar.close()
            self._bar = None

    # ---- checkpoints and metrics

    def restore(
        self, template: T, *, identity: dict, trainable_config: dict, unit: str = "step"
    ) -> tuple[T, dict | None]:
        """With `resume`, the latest checkpoint restored into `template`'s structure.

        Also restores the persisted evaluations and `start_step`. Opens the metrics log either way (a
        resumed log drops records after the checkpoint).

        Args:
            template: the state's structure (arrays or `jax.ShapeDtypeStruct`s).
            identity: the model's identity, checked against the checkpoint's (`Checkpointer.restore`).
            trainable_config: what is trained, checked likewise.
            unit: what a step is called in messages ("step", "generation").

        Returns:
            `(state, meta)`: the restored state and the checkpoint's metadata, or `(template, None)`.

        Raises:
            ConfigError: a checkpoint past the config's `steps`.
        """
        state, meta = template, None
        if self.resume and self._checkpointer().latest_step() is not None:
            state, meta = self._checkpointer().restore(template, identity=identity, trainable_config=trainable_config)
            self.start_step = int(meta["step"])
            total = getattr(self.config, "steps", None)
            if isinstance(total, int) and total < self.start_step:
                self.close()
                raise ConfigError(
                    f"the latest checkpoint in {self.checkpointer_dir} is at {unit} {self.start_step} "
                    f"but steps={total}; "
                    f"raise steps to train further, or evaluate it with `jaxsteer eval {self.directory}`"
                )
            for name, value in (meta.get("evals") or {}).items():
                self.evals[name] = value
                self._persist.add(name)
            if meta.get("eval_before") is not None:  # run directories written before `evals`
                self.evals.setdefault("before", meta["eval_before"])
                self._persist.add("before")
            self.say(f"resumed from {self.checkpointer_dir} at {unit} {self.start_step}")
        elif self.resume:
            self.say(f"--resume: no checkpoint in {self.checkpointer_dir}; starting from scratch")
        self._open_logger()
        return state, meta

    def saved_tree(self) -> dict | None:
        """When resuming, the leaf paths and shapes of the latest checkpoint's state
        (`checkpoint.tree_description`); None when starting fresh or nothing is saved yet. Lets a
        learner recognise, and migrate, a state layout written by an older version."""
        if not self.resume or self._checkpointer().latest_step() is None:
            return None
        try:
            return self._checkpointer().read_meta()[1].get("tree", {})
        except ckpt.CheckpointDamagedError:
            return None  # restoring falls back to the newest readable checkpoint and says so

    def _open_logger(self) -> RunLogger:
        if self.logger is None:
            self.logger = RunLogger(self.directory, tensorboard=self.tensorboard, resume_step=self.start_step or None)
            self.files["metrics"] = self.logger.path
        return self.logger

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        """One record in metrics.jsonl / TensorBoard (process 0)."""
        self._open_logger().log(step, metrics, kind=kind)

    def check_finite(self, step: int, values: dict[str, Any]) -> None:
        """Stop the run if any quantity became NaN or infinite.

        Call it before saving: the last checkpoint on disk stays the last good state.

        Args:
            step: the step, named in the error.
            values: name -> scalar, array or pytree (loss, gradient norm, the updated parameters ...).

        Raises:
            NonFiniteError: naming `step` and every non-finite quantity (the run is closed first).
        """
        bad = [name for name, value in values.items() if not _finite(value)]
        if not bad:
            return
        latest = self.checkpointer.latest_step() if self.checkpointer is not None else None
        where = (
            f"the last good checkpoint is step {latest} ({self.checkpointer_dir})"
            if latest is not None
            else "no checkpoint was written"
        )
        self.close()
        raise NonFiniteError(
            f"step {step}: {', '.join(bad)} became non-finite (NaN or inf); the run stops without saving this "
            f"state; {where}. Lower lr, check the rewards and data, or resume from the last checkpoint"
        )

    @staticmethod
    def due(done: int, every: int, total: int) -> bool:
        """Whether step `done` of `total` is a multiple of `every` (0 = never) or the last one."""
        return bool(every and done % every == 0) or done == total

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Checkpoint `state` at `step` with `meta` plus the persisted evaluations."""
        evals = {k: _without_examples(self.evals[k]) for k in sorted(self._persist) if self.evals.get(k)}
        meta = dict(meta, evals=evals or None, eval_before=evals.get("before"))
        self._checkpointer().save(step, state, meta)

    def _checkpointer(self) -> ckpt.Checkpointer:
        if self.checkpointer is None:
            raise RuntimeError(f"the run in {self.directory} is closed: its checkpoints can no longer be used")
        return self.checkpointer

    # ---- evaluation

    def evaluate(
        self, name: str, step: int, fn: Callable[[], dict], *, persist: bool = False, prefix: str = ""
    ) -> dict:
        """Run an evaluation, log it at `step` (kind "eval") and keep it as `evals[name]`.

        Args:
            name: the evaluation's name.
            step: the step it is logged at.
            fn: the evaluation, returning a dict of metrics.
            persist: save it with every checkpoint; a resumed run that has it returns the stored value
                without running `fn`.
            prefix: prefix of the logged keys.

        Returns:
            The metrics.
        """
        if persist and name in self.evals:
            return self.evals[name]
        result = fn()
        self.evals[name] = result
        if persist:
            self._persist.add(name)
        self.log(step, {f"{prefix}{k}": v for k, v in _without_examples(result).items()}, kind="eval")
        return result

    # ---- the end

    def finish(self, summary: dict, *, title: str = "") -> dict:
        """Plot the curves, write summary.json (with `files`), close the logger and checkpointer.

        Args:
            summary: what summary.json holds besides `files`.
            title: the curves' title.

        Returns:
            The files of the run (name -> path).
        """
        if self.main:
            if self.plot:
                png = plot_curves(self._open_logger().path, os.path.join(self.directory, "curves.png"), title=title)
                if png:
                    self.files["plot"] = png
            with open(os.path.join(self.directory, "summary.json"), "w") as f:
                json.dump({**summary, "files": self.files}, f, indent=2, default=str)
        self.close()
        return dict(self.files)

    def close(self) -> None:
        """Close the metrics log and the checkpointer (idempotent)."""
        try:
            if self.logger is not None:
                self.logger.close()
            if self.checkpointer is not None:
                checkpointer, self.checkpointer = self.checkpointer, None
                checkpointer.close()
        finally:  # the directory is released whatever failed above
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _clear_checkpoints(self, ckpt_dir: str) -> None:
        if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
            if self.main:
                self.say(
                    f"starting a fresh run: removing the old checkpoints in {ckpt_dir} "
                    "(pass resume=True / --resume to continue)"
                )
                shutil.rmtree(ckpt_dir)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("jaxsteer-fresh-run")


def resume_conflicts(original: dict, config: Any) -> list[str]:
    """The settings of `config` that a resumed run may not change but does.

    Args:
        original: the saved config (plain data; renamed keys migrated, missing keys at their defaults).
        config: the resumed run's config (a config dataclass); `type(config).RESUMABLE` holds the dotted
            prefixes that may change (how long it runs, what it prints, how often it saves or evaluates).

    Returns:
        `"key: old -> new"` per conflicting setting.
    """
    return config_diff(type(config), original, config, getattr(type(config), "RESUMABLE", ()))


def _without_examples(r: dict | None) -> dict:
    return {k: v for k, v in (r or {}).items() if k != "examples"}


__all__ = ["NonFiniteError", "Run", "peak_rss_mb", "resume_conflicts"]
