#!/usr/bin/env bash
# The issue-8 GPU measurement, through the device tool from the repo root (carry .whl): random-7b,
# 2 fps, shapes scene. (1) 30 minutes without narration, with both plain-transformers baselines for
# 300 s each; (2) 5 minutes with 20 narrated tokens per chunk. Outputs to $OUT/nonarrate, $OUT/narrate.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 420 python3 -m livesight bench speed --model random-7b --seconds 1800 --baseline-seconds 300 \
  --out "$OUT/nonarrate" 2> "$OUT/nonarrate.err"; echo "exit $?"; tail -3 "$OUT/nonarrate.err"
timeout 150 python3 -m livesight bench speed --model random-7b --seconds 300 --baseline-seconds 0 --narrate-tokens 20 \
  --ask-every 150 --out "$OUT/narrate" 2> "$OUT/narrate.err"; echo "exit $?"; tail -3 "$OUT/narrate.err"
