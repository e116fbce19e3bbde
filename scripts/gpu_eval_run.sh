#!/usr/bin/env bash
# The issue-7 GPU measurement, through the device tool from the repo root (carry .whl: transformers
# 5.23.0 and decord 0.6.0 wheels): the evaluator's GPU check (stream answers equal fresh cut streams,
# CUDA graphs reused across resets), then random-7b over a synthetic StreamingBench-format set
# (6 videos x 120 s, 5 questions each) in both protocols, all context and the last 60 s.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_eval_run.py -k "stream_answers or two_processes" 2>&1 \
  | tail -5 | tee "$OUT/log.txt"
BENCH=/tmp/sbench
python3 scripts/synthetic_streamingbench.py $BENCH --videos 6 --seconds 120 --size 640x360 --fps 10 | tee -a "$OUT/log.txt"
for protocol in stream official; do
  for context in all 60; do
    timeout 400 python3 -m livesight eval streamingbench --data $BENCH/questions.json --videos $BENCH/videos \
      --out /tmp/r_${protocol}_${context} --model random-7b --protocol $protocol --context $context \
      >> "$OUT/log.txt" 2> /tmp/err_${protocol}_${context}.txt
    echo "$protocol $context exit $?" | tee -a "$OUT/log.txt"; tail -3 /tmp/err_${protocol}_${context}.txt
    cp /tmp/r_${protocol}_${context}/summary.json "$OUT/summary_${protocol}_${context}.json"
  done
done
