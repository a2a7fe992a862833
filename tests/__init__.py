"""The test suite, laid out like the package (tests/models, tests/train/rl, ...; end-to-end flows in
tests/integration). Support modules (conftest, hf_tiny, gguf_tiny, train_toy, virtual_devices) stay
in this folder and are imported by bare name: conftest.py puts it on sys.path, and subprocesses get it
on PYTHONPATH (virtual_devices.device_env). Tests locate the repository with `ROOT` and this folder
with `TESTS`."""

import os

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
