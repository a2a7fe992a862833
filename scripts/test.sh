#!/usr/bin/env bash
# Set up the test environment and run the whole suite (CPU only, no network needed beyond PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q "$@"
