#!/usr/bin/env bash
# One model family's speed and streams on one H200 (results/streams/h200-<family>/), through the device tool from
# the repo root in ONE command (carry .whl: scripts/device_wheels.sh; fla-core and einops among them), timeout_s 600:
#   MODEL=random-qwen3-vl-8b bash scripts/gpu_families.sh
# Stages: for Qwen3.5, its GPU test (at most 120 s: the flash-linear-attention kernels against the torch
# reference; if it fails, fla is removed and the torch path measured instead, and gpu.txt says so); a 10-s
# bench speed smoke that stops the command at once if the model cannot run; then scripts/gpu_streams.sh without
# its tests (bench streams at counts STREAMS within STREAMS_LIMIT s, then bench speed without and with narration).
set -uo pipefail
MODEL=${MODEL:?MODEL=random-qwen3-vl-8b, random-smolvlm2-2.2b or random-qwen3.5-9b}
OUT=${OUT:-out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [[ $MODEL == *qwen3.5* ]]; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_qwen3_5.py -k flash 2>&1 | tail -4 \
    | tee "$OUT/gpu_tests.txt"
fi
if [[ $MODEL == *qwen3.5* ]] && ! grep -q " passed" "$OUT/gpu_tests.txt"; then
  echo "fla kernels did not pass: removed, the torch path is measured" | tee -a "$OUT/gpu_tests.txt"
  rm -rf /tmp/site/fla .whl/fla_core-*.whl  # gpu_streams.sh installs the carried wheels again
fi
python3 -c "import importlib.util as u; print('fla-core', 'installed' if u.find_spec('fla') else 'absent')" \
  | tee "$OUT/fla.txt"
timeout 150 python3 -m livesight bench speed --model "$MODEL" --seconds 10 --baseline-seconds 0 --out /tmp/smoke \
  > /tmp/smoke.md 2> "$OUT/smoke.log" || { echo "smoke failed"; tail -30 "$OUT/smoke.log"; exit 1; }
grep -E "real-time factor|decode per token" /tmp/smoke.md
SKIP_TESTS=1 MODEL=$MODEL SPEED_SECONDS=${SPEED_SECONDS:-120} NARRATE_SECONDS=${NARRATE_SECONDS:-60} \
  STREAMS_LIMIT=${STREAMS_LIMIT:-220} STREAMS=${STREAMS:-1,8,16,32,64,96} bash scripts/gpu_streams.sh
