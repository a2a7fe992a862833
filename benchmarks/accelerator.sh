#!/usr/bin/env bash
# The speed benchmarks on a GPU or TPU host, in at most 10 minutes, into one JSON file:
#   bash benchmarks/accelerator.sh [out.json]          (default: accelerator.json)
#   PEERS=1 bash benchmarks/accelerator.sh             (also the Hugging Face / TRL / SAELens peers; needs torch)
# Runs benchmarks.inference, benchmarks.rl_step, benchmarks.es_population and benchmarks.sae_throughput
# one after the other, each under its own time limit (240 + 150 + 120 + 90 s), and writes
# {"device": ..., "<benchmark>": {"rc", "seconds", "result" (its JSON) or "log_tail"}}. A benchmark that
# fails or runs out of time is recorded as such; the others still run. Compare the figures with
# `jaxsteer plan CONFIG --device h100|v5e` (the roofline; docs/scale.md).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-accelerator.json}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ "${PEERS:-0}" = "1" ]; then INF_PEERS=""; RL_PEERS=""; else INF_PEERS="--skip-hf --skip-llamacpp"; RL_PEERS="--no-trl"; fi

run() {  # name, time limit (s), module and arguments
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" python -m "$@" >"$TMP/$name.log" 2>&1
  echo $? >"$TMP/$name.rc"
  echo $(( $(date +%s) - t0 )) >"$TMP/$name.seconds"
  echo "$name: rc $(cat "$TMP/$name.rc") in $(cat "$TMP/$name.seconds") s" >&2
}

run inference 240 benchmarks.inference $INF_PEERS --out "$TMP/inference.json"
run rl_step 150 benchmarks.rl_step $RL_PEERS --no-rss --json "$TMP/rl_step.json"
run es_population 120 benchmarks.es_population --out "$TMP/es_population.json"
if [ "${PEERS:-0}" = "1" ]; then
  run sae 90 benchmarks.sae_throughput
else
  echo 1 >"$TMP/sae.rc"; echo 0 >"$TMP/sae.seconds"; echo "skipped: benchmarks.sae_throughput times SAELens beside jaxsteer (PEERS=1)" >"$TMP/sae.log"
fi

python - "$TMP" "$OUT" <<'PY'
import json, pathlib, sys
import jax
tmp, out = pathlib.Path(sys.argv[1]), sys.argv[2]
d = jax.devices()[0]
res = {"device": {"backend": jax.default_backend(), "kind": d.device_kind, "count": jax.device_count()}}
for name in ("inference", "rl_step", "es_population", "sae"):
    part = {"rc": int((tmp / f"{name}.rc").read_text()), "seconds": int((tmp / f"{name}.seconds").read_text())}
    f = tmp / f"{name}.json"
    log = (tmp / f"{name}.log").read_text()
    if f.exists():
        part["result"] = json.loads(f.read_text())
    elif part["rc"] == 0 and "{" in log:  # benchmarks that print their JSON last
        part["result"] = json.loads(log[log.rindex("\n{") + 1:] if "\n{" in log else log[log.index("{"):])
    else:
        part["log_tail"] = log[-3000:]
    res[name] = part
pathlib.Path(out).write_text(json.dumps(res, indent=1, default=str))
print(f"wrote {out}")
PY
