#!/usr/bin/env bash
# Set up the test environment and run the whole suite (CPU only, no network needed beyond PyPI).
# With no arguments the suite runs as three pytest processes over consecutive thirds of the test files:
# one process compiling every test's XLA programs (~830 tests) grew until XLA aborted mid-compile in a
# test that passes on its own. Arguments (files, -k, ...) go to a single pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ $# -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
files=(tests/test_*.py)
per=$(( (${#files[@]} + 2) / 3 ))
status=0
for start in 0 "$per" $(( 2 * per )); do
  chunk=("${files[@]:start:per}")
  [ ${#chunk[@]} -gt 0 ] || continue
  python -m pytest -q "${chunk[@]}" || status=$?
done
exit "$status"
