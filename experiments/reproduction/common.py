"""Shared context of the reproduction report (issue 14): paths, seeds, cached model, cached runs.

PART PROTOCOL (every module of experiments/reproduction/ that is a part follows it):

- A part is a module `experiments/reproduction/<part>.py` exposing
    `run(ctx: Context) -> dict`   JSON-serialisable results (plain floats / lists, no numpy types);
    `section(result: dict) -> str` the markdown body of its report section, without the `## `
                                  heading (run.py / report.py add the heading, the command that
                                  made it and its wall-clock / CPU time).
  Optional: a module constant `TITLE` (the section heading; default: the part name).
- `ctx` (a `Context`) gives:
    ctx.quick            bool, smoke scale (few steps, n ~ 20): shrink everything when set;
    ctx.seed             the fixed seed (0);
    ctx.out_dir          where JSON / PNG go (docs/reproduction, or runs/reproduction_quick/reproduction);
    ctx.runs_dir         training runs (runs/reproduction, or runs/reproduction_quick);
    ctx.model()          (model, tokenizer) of smollm2-135m-instruct, loaded once per process;
    ctx.train_or_load(name, config_path, overrides) -> dict | None: trains into <runs_dir>/<name> once
                         (quick overrides appended when ctx.quick), later calls reuse the finished run
                         (its summary.json plus "wall_s", "cpu_s", "reused"); None only with
                         `run.py --collect-only` (report what finished, train nothing) for an unfinished run;
    ctx.share_runs(jobs) trains independent runs (callables) skipping those another live process is
                         training, so two processes of one part split them (run the part twice);
    ctx.steering_vectors() -> np.ndarray [L, d]: table1's all-layer RL steering vectors (trained
                         if absent);
    ctx.save_fig(fig, name) -> str: saves <out_dir>/<name>.png (matplotlib Agg), closes the figure
                         and returns the path to embed from docs/reproduction.md ("reproduction/<name>.png");
    ctx.log(msg)         progress line on stderr with the elapsed time.
- Name figures `<part>_*.png`. run.py writes <out_dir>/<part>.json = result + {"wall_s", "cpu_s",
  "command", "quick", "finished"}; report.py assembles docs/reproduction.md from every JSON present.
- Run one part alone: `.venv/bin/python experiments/reproduction/run.py --parts <part> [--quick]`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL_SPEC = "smollm2-135m-instruct"
SEED = 0
EXPERIMENTS = ROOT / "experiments"

# Parts in report order. head_swap (the lead), vector_analyses and decodability (helper-report-analysis)
# are written by others; a missing module is skipped with a note.
PARTS = [
    "table1",
    "convergence",
    "essa_signal",
    "per_layer",
    "time_to_accuracy",
    "efficiency",
    "vector_analyses",
    "sae_features",
    "head_swap",
    "decodability",
    "paper_scale",
]

# Table 1's all-layer steering run, shared with the analysis parts (ctx.steering_vectors()).
STEERING_CONFIG = "experiments/smollm2_arithmetic_steering.yaml"
STEERING_RUN = "table1_steering"
STEERING_OVERRIDES: list[str] = []  # the demo config as committed: 20 steps x 4 prompts x G=8 = 640 rollouts

QUICK_OVERRIDES = ["steps=2", "eval.n=20", "eval.batch_size=20", "checkpoint.every=0"]


def cfg_path(name: str) -> str:
    """experiments/<name>, as a path relative to the repository root."""
    return str(Path("experiments") / name)


class CpuStamper:
    """Stamps every new record of a run's metrics.jsonl with the process CPU time and wall-clock
    at which it appeared (polled every 0.2 s in a thread), so a part can split CPU time per step."""

    def __init__(self, metrics_path: Path):
        self.path, self.stamps, self._stop = metrics_path, [], threading.Event()
        self._seen = 0
        self.t0_wall, self.t0_cpu = time.perf_counter(), time.process_time()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self) -> None:
        """Stamp the records written since the last poll."""
        if not self.path.exists():
            return
        with open(self.path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        now_w, now_c = time.perf_counter() - self.t0_wall, time.process_time() - self.t0_cpu
        for ln in lines[self._seen :]:
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError:
                return  # half-written line: next poll
            self.stamps.append({"step": rec.get("step"), "kind": rec.get("kind"), "wall_s": now_w, "cpu_s": now_c})
            self._seen += 1

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._poll()

    def __enter__(self) -> CpuStamper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()


class Context:
    """What every part's `run(ctx)` gets (see the module docstring)."""

    def __init__(self, quick: bool = False, seed: int = SEED, collect_only: bool = False, methods=None):
        self.quick, self.seed, self.collect_only = quick, seed, collect_only
        self.methods = set(methods) if methods else None  # convergence rows to run (None: all of them)
        self.used: list[dict] = []  # the training runs the current part used (name, wall_s, cpu_s, reused)
        self.runs_dir = ROOT / ("runs/reproduction_quick" if quick else "runs/reproduction")
        self.out_dir = (self.runs_dir if quick else ROOT / "docs") / "reproduction"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._model = None
        self._t0 = time.perf_counter()
        self._skip_busy = False  # inside share_runs: a run another live process is training is skipped

    def log(self, msg: str) -> None:
        """A progress line on stderr, prefixed with the seconds since the context was made."""
        print(f"[repro {time.perf_counter() - self._t0:7.1f} s] {msg}", file=sys.stderr, flush=True)

    def model(self):
        """(model, tokenizer) of SmolLM2-135M-Instruct in float32, loaded once per process."""
        if self._model is None:
            import jax.numpy as jnp

            from jaxsteer.models.loading import load

            self.log(f"loading {MODEL_SPEC}")
            self._model = load(MODEL_SPEC, dtype=jnp.float32)
        return self._model

    def scale(self, full, quick):
        """`quick` at smoke scale, else `full`."""
        return quick if self.quick else full

    def save_fig(self, fig, name: str) -> str:
        """Save `fig` as <out_dir>/<name>.png, close it; the path to embed from docs/reproduction.md."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.out_dir / f"{name}.png", dpi=110)
        plt.close(fig)
        return f"reproduction/{name}.png"

    def train_or_load(
        self, name: str, config_path: str, overrides=(), stamp: bool = False, seed: int | None = None
    ) -> dict:
        """Train `config_path` with `overrides` into <runs_dir>/<name> unless a finished run with the
        same config and overrides is there; returns its summary.json plus "wall_s" / "cpu_s" (of the
        whole train call, evaluations included), "overrides", "reused", and with `stamp` the CPU /
        wall stamps of every metrics record ("stamps", see CpuStamper). `seed` defaults to `ctx.seed`."""
        out = self.runs_dir / name
        given = list(overrides)
        overrides = given + (QUICK_OVERRIDES if self.quick else [])
        seed = self.seed if seed is None else seed
        overrides += [f"output_dir={out}", f"seed={seed}", "progress=false", "tensorboard=false"]
        key = {"config": config_path, "overrides": overrides}
        timing_path = out / "repro_timing.json"
        if (out / "summary.json").exists() and timing_path.exists():
            timing = json.loads(timing_path.read_text())
            if timing.get("key") == key:
                self.log(f"{name}: reusing the finished run in {out}")
                self._note(name, timing, True)
                return {**json.loads((out / "summary.json").read_text()), **timing, "reused": True}
        if self.collect_only:
            self.log(f"{name}: not finished, left out (collect-only)")
            self.used.append({"name": name, "missing": True})
            return None
        if self._skip_busy and self._other_trainer(out) is not None:
            self.log(f"{name}: another process is training it; left to it for now")
            return None
        if self._wait_for_other(out):
            return self.train_or_load(name, config_path, given, stamp, seed)
        if out.exists():
            shutil.rmtree(out)  # unfinished or made with other settings
        out.mkdir(parents=True)
        (out / "repro_training.pid").write_text(str(os.getpid()))
        from jaxsteer.train import load_config, train

        cfg = load_config(str(ROOT / config_path), overrides)
        self.log(f"{name}: training {config_path} {' '.join(overrides)}")
        model, tokenizer = self.model()
        w0, c0, git0 = time.perf_counter(), time.process_time(), git_state()
        with CpuStamper(out / "metrics.jsonl") as stamper:
            train(cfg, model=model, tokenizer=tokenizer)
        timing = {
            "key": key,
            "wall_s": time.perf_counter() - w0,
            "cpu_s": time.process_time() - c0,
            "stamps": stamper.stamps if stamp else None,
            "git": git0,
        }
        timing_path.write_text(json.dumps(timing, indent=1))
        (out / "repro_training.pid").unlink(missing_ok=True)
        self.log(f"{name}: done in {timing['wall_s']:.0f} s wall, {timing['cpu_s']:.0f} s CPU")
        self._note(name, timing, False)
        return {**json.loads((out / "summary.json").read_text()), **timing, "reused": False}

    def _note(self, name: str, timing: dict, reused: bool) -> None:
        """Record a training run the current part used (run.py puts the list in the part's JSON)."""
        self.used.append({"name": name, "wall_s": timing["wall_s"], "cpu_s": timing["cpu_s"], "reused": reused})

    def share_runs(self, jobs) -> None:
        """Call every job in `jobs` (callables that each train one run through train_or_load), skipping
        a run another live process is training instead of waiting for it. A part calls this on its
        independent runs before its own loop, so two processes running the same part split those runs
        between them; the loop then reuses every finished run and waits for the ones still training."""
        self._skip_busy = True
        try:
            for job in jobs:
                job()
        finally:
            self._skip_busy = False

    @staticmethod
    def _other_trainer(out: Path) -> int | None:
        """The pid of another live process training into `out` (its repro_training.pid), else None."""
        try:
            pid = int((out / "repro_training.pid").read_text().strip() or 0)
            if pid == os.getpid():
                return None
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError, PermissionError, FileNotFoundError):
            return None  # no trainer, or a dead one's directory (retrained)
        return pid

    def _wait_for_other(self, out: Path) -> bool:
        """If another live process is training into `out`, wait until it ends; True when it did (the
        caller then looks again)."""
        waited = False
        while (pid := self._other_trainer(out)) is not None:
            if not waited:
                self.log(f"{out.name}: process {pid} is training it; waiting")
            waited = True
            time.sleep(10)
        return waited

    def metrics(self, name: str) -> list[dict]:
        """The records of <runs_dir>/<name>/metrics.jsonl."""
        from jaxsteer.train.metrics import read_log

        return read_log(str(self.runs_dir / name / "metrics.jsonl"))

    def steering_vectors(self) -> np.ndarray:
        """Table 1's all-layer RL steering vectors, [L, d] float32 (the run is trained if absent)."""
        self.train_or_load(STEERING_RUN, STEERING_CONFIG, STEERING_OVERRIDES)
        return np.load(self.runs_dir / STEERING_RUN / "steering_vectors.npy")


def held_out_problems(ctx: Context, n: int, overrides=()) -> tuple:
    """`(cfg, examples, encode)`: the steering config (with `overrides`), its first `n` held-out
    problems and its prompt encoder (the config's template and system prompt)."""
    from jaxsteer.train import load_config
    from jaxsteer.train.build import PromptEncoder, load_examples

    cfg = load_config(str(ROOT / STEERING_CONFIG), list(overrides))
    _, tok = ctx.model()
    return cfg, list(load_examples(cfg.data.eval))[:n], PromptEncoder(tok, cfg.data.prompt_template, cfg.data.system)


def acc(ev: dict | None, mode: str = "lenient") -> dict | None:
    """{"acc", "lo", "hi", "n"} of an evaluation dict's greedy accuracy under `mode` (lenient / strict)."""
    if not ev:
        return None
    k = f"greedy_acc_{mode}" if f"greedy_acc_{mode}" in ev else "greedy_acc"
    lo, hi = ev[k.replace("acc", "ci")]
    return {"acc": float(ev[k]), "lo": float(lo), "hi": float(hi), "n": int(ev["n"])}


def pct(a: dict | None) -> str:
    """'62.0% [55.1, 68.4]' of an `acc` dict ('n/a' for None)."""
    if not a:
        return "n/a"
    return f"{100 * a['acc']:.1f}% [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]"


def git_state() -> dict:
    """The commit the code ran at and the library files with uncommitted edits (the tree is shared)."""
    import subprocess

    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "jaxsteer").splitlines() if ln.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "dirty_library_files": dirty}


def machine() -> dict:
    """CPU model, core count and the load average now (the machine is shared)."""
    name = "unknown"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                name = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "loadavg": list(os.getloadavg())}
