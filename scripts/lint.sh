#!/usr/bin/env bash
# The lint and type gate: ruff's linter and formatter check over the Python trees, then pyright (basic
# mode, configured in pyproject.toml) over jaxsteer/. Runs every check and fails if any failed.
# Uses the test environment (scripts/setup.sh test installs jaxsteer[lint] with the test extras);
# JAXSTEER_LINT_NO_SETUP=1 skips the setup step and uses whatever environment is active.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${JAXSTEER_LINT_NO_SETUP:-}" ]; then
  bash scripts/setup.sh test || exit 1
  . .venv/bin/activate
fi
# pyright's wrapper would otherwise ask PyPI for a newer version on every run; the wheel bundles the checker.
export PYRIGHT_PYTHON_IGNORE_WARNINGS=1
paths=(jaxsteer tests benchmarks experiments docs/tutorials)
status=0
run() { echo "lint: $*"; "$@" || status=1; }
run ruff check "${paths[@]}"
run ruff format --check --output-format concise "${paths[@]}"  # `ruff format --diff` shows the changes
run pyright jaxsteer
[ "$status" -eq 0 ] && echo "lint: clean" || echo "lint: FAILED" >&2
exit "$status"
