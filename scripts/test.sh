#!/usr/bin/env bash
# Set up the test environment and run the whole suite (CPU only, no network needed beyond PyPI).
# With no arguments the suite runs as three pytest processes over thirds of the test files (tests/**):
# one process compiling every test's XLA programs (~830 tests) grew until XLA aborted mid-compile in a
# test that passes on its own. The files are dealt largest first in snake order (0 1 2 2 1 0 ...), so
# each third holds about as much test code as the others and a share of every folder. Arguments
# (files, -k, ...) go to a single pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ $# -gt 0 ]; then
  exec python -m pytest -q "$@"
fi
shopt -s globstar
mapfile -t files < <(for f in tests/**/test_*.py; do echo "$(wc -c <"$f") $f"; done | sort -k1,1nr -k2,2 | cut -d' ' -f2)
status=0
for part in 0 1 2; do
  chunk=()
  for i in "${!files[@]}"; do
    r=$(( i % 6 ))
    if (( (r < 3 ? r : 5 - r) == part )); then chunk+=("${files[i]}"); fi
  done
  [ ${#chunk[@]} -gt 0 ] || continue
  python -m pytest -q "${chunk[@]}" || status=$?
done
exit "$status"
