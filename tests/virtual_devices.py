"""Run test code in a subprocess with N virtual CPU devices (XLA's host-platform device count),
the tests directory and the repository root importable."""

from __future__ import annotations

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def device_env(devices: int) -> dict:
    """This process's environment with `devices` CPU devices and tests/ + the root on PYTHONPATH."""
    return dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=os.pathsep.join([HERE, ROOT, os.environ.get("PYTHONPATH", "")]),
    )


def run_script(script: str, devices: int, timeout: int) -> dict:
    """Run `script` (Python source that prints one line "RESULT" + JSON) on `devices` devices and
    return that JSON; fails the test with the subprocess's output tail when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=device_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT") :])
