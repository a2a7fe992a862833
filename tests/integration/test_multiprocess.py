"""Multi-process training on JAX's own runtime: `jaxsteer train --coordinator ... --num-processes 2
--process-id I`, two local processes x 2 virtual CPU devices (gloo collectives), against one process
with 4 devices on the same ("data", "fsdp") mesh shape.

- RL with steering vectors (data=4) and full fine-tuning (data=2 x fsdp=2): the same parameters
  after 3 steps; the full fine-tuning run's weights moved from their start (every tensor), and equal
  a run on one device;
- ES (OpenAI-ES on steering vectors, members spread over the 4 devices of both processes): the
  same centre after 3 generations;
- a checkpoint written by the 2-process full fine-tuning run (step 2; parameters split over each
  process's devices) resumes in 1 process and its step 3 equals the uninterrupted runs'.

Every run is a `jaxsteer train` subprocess; the runs are started once for the module (marker
`multiprocess`) and the tests compare their checkpoints.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import train_toy as T
import yaml
from virtual_devices import device_env

from tests import ROOT

pytestmark = pytest.mark.multiprocess

RUNS = {
    "steering": {"steps": 3},
    "full": {"steps": 3, "trainable.kind": "full", "lr": 0.01, "mesh.data": 2, "mesh.fsdp": 2},
    "es": {"steps": 3, "algorithm": "es", "prompts_per_step": 2, "es.population": 8, "es.sigma": 0.5, "es.lr": 0.5},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(out: str, name: str, **overrides) -> str:
    cfg = T.config_dict(
        out, **{"model.random_scale": 0.2, "checkpoint.every": 2, "checkpoint.keep": 3, **RUNS[name], **overrides}
    )
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "..", f"{os.path.basename(out)}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def _launch(config: str, processes: int, devices: int, *extra: str) -> None:
    """`jaxsteer train CONFIG` as `processes` local processes with `devices` CPU devices each."""
    env = device_env(devices)
    cmd = [sys.executable, "-m", "jaxsteer.cli", "train", config, "--logit-lens", "0", *extra]
    port = _free_port()
    procs = [
        subprocess.Popen(
            cmd
            + (
                ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)]
                if processes > 1
                else []
            ),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(processes)
    ]
    logs = [p.communicate(timeout=1200)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-6000:]


def _checkpoint(out: str, step: int) -> dict:
    """The saved state of `step` as numpy (restored in this single-device process)."""
    import jax
    import orbax.checkpoint as ocp

    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.CheckpointManager(
        os.path.join(out, "checkpoints"),
        item_names=("state",),
        item_handlers={"state": ocp.StandardCheckpointHandler()},
    ) as mgr:
        meta = mgr.item_metadata(step)["state"]
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta, is_leaf=lambda m: hasattr(m, "shape")
        )
        state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return {"/".join(map(str, k)): np.asarray(v) for k, v in _flatten(state)}


def _flatten(tree, prefix=()):
    if isinstance(tree, dict):
        for k in sorted(tree):
            yield from _flatten(tree[k], prefix + (k,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _flatten(v, prefix + (i,))
    elif tree is not None:
        yield prefix, tree


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each config on 1 process x 4 devices and on 2 processes x 2 devices; full fine-tuning on one
    device too; the 2-process full run's step-2 checkpoint resumed in 1 process."""
    base = tmp_path_factory.mktemp("multiprocess")
    dirs, launches = {}, []
    for name in RUNS:
        for procs, devs in ((1, 4), (2, 2)):
            dirs[name, procs] = out = str(base / f"{name}_{procs}p")
            launches.append((_config(out, name), procs, devs))
    dirs["full", "1 device"] = str(base / "full_1dev")
    launches.append((_config(dirs["full", "1 device"], "full", **{"mesh.data": 1, "mesh.fsdp": 1}), 1, 1))
    with ThreadPoolExecutor(max_workers=2) as pool:  # independent runs, two at a time (start-up is serial work)
        list(pool.map(lambda a: _launch(*a), launches))
    resumed = str(base / "full_resumed")
    shutil.copytree(dirs["full", 2], resumed)
    shutil.rmtree(os.path.join(resumed, "checkpoints", "3"))
    _launch(_config(resumed, "full"), 1, 4, "--resume")
    dirs["full", "resumed"] = resumed
    return dirs


def _assert_same(a: dict, b: dict, rtol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(1.0, float(np.max(np.abs(a[k].astype(np.float64)))) if a[k].size else 1.0)
        diff = float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) if a[k].size else 0.0
        assert diff <= rtol * scale, (k, diff, scale)


@pytest.mark.parametrize("name", ["steering", "full", "es"])
def test_two_processes_equal_one(runs, name):
    one, two = _checkpoint(runs[name, 1], 3), _checkpoint(runs[name, 2], 3)
    moved = [k for k in one if "trainable" in k or "theta" in k]
    assert moved and any(np.abs(one[k]).max() > 0 for k in moved)  # steering / ES start at 0; "full": below
    _assert_same(one, two)


def test_two_process_full_fine_tuning_moved_every_weight_and_equals_one_device(runs):
    from jaxsteer.train.build import build_model
    from jaxsteer.train.config import config_from_dict

    cfg = config_from_dict(T.config_dict("/tmp/unused", **{"model.random_scale": 0.2, **RUNS["full"]}))
    params = build_model(cfg.model)[0].params
    start = {"train/trainable/" + "/".join(map(str, k)): np.asarray(v) for k, v in _flatten(params)}
    two = _checkpoint(runs["full", 2], 3)
    assert start and start.keys() <= two.keys()
    for k, w0 in start.items():  # Adam at lr 0.01 moves each weight with a gradient by ~0.01 a step
        assert np.abs(two[k] - w0).max() > 5e-3, (k, np.abs(two[k] - w0).max())
    # One device sums the gradient in another order than the 2 x 2 mesh; Adam divides each gradient by
    # its own running scale, so the few weights whose gradient is near zero move by float noise x lr
    # (measured: 2 of 2048 up_proj entries off by 2e-4, mean difference 2.5e-7 over every tensor; the
    # 1-process 4-device run agrees with the 2-process one to 3e-6). A sharding bug moves weights by
    # O(lr) = 1e-2 everywhere, so: the mean difference per tensor within 2e-6, none beyond 10% of a step.
    one = _checkpoint(runs["full", "1 device"], 3)
    assert one.keys() == two.keys()
    for k in (k for k in one if k.startswith("train/trainable/")):
        diff = np.abs(one[k].astype(np.float64) - two[k].astype(np.float64))
        assert diff.mean() <= 2e-6 and diff.max() <= 1e-3, (k, diff.mean(), diff.max())


def test_two_process_checkpoint_resumes_in_one_process(runs):
    _assert_same(_checkpoint(runs["full", "resumed"], 3), _checkpoint(runs["full", 1], 3))
    log = open(os.path.join(runs["full", "resumed"], "metrics.jsonl")).read()
    assert '"step": 3' in log
