#!/usr/bin/env bash
# The main job: RL-train steering vectors on the embedded default model (SmolLM2-135M-Instruct)
# on 2-digit addition; prints held-out accuracy before and after (200 problems, 95% CI), saves
# the checkpoint, exports the vectors (.npy and a Hugging Face safetensors patch) and prints
# their logit lens. Base install only (no torch). About 2.5 minutes on an idle 2-core CPU plus
# about 2 minutes of first-time setup. Extra arguments are config overrides, e.g.
# `bash scripts/demo.sh steps=10` or `bash scripts/demo.sh --resume`.
# (The older contrastive-steering demo is still there: `jaxsteer demo`.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. "${JAXSTEER_VENV:-.venv}/bin/activate"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
jaxsteer train experiments/smollm2_arithmetic_steering.yaml "$@"
