#!/usr/bin/env bash
# The evaluator on a GPU (results/eval-synthetic/), through the device tool from the repo root (carry .whl: transformers
# 5.23.0 and decord 0.6.0 wheels), in two calls that each fit the 10-minute limit:
#   bash scripts/gpu_eval_run.sh stream|official
# Each runs the GPU tests (CUDA-graph steps, with retrieval too; the evaluator, two processes on one
# GPU among them), then
# random-7b over a synthetic StreamingBench-format set (6 videos x 120 s, 5 questions
# each; scripts/synthetic_streamingbench.py), with all context and with the last 60 s.
set -uo pipefail
PROTOCOL=${1:?stream or official}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ -z "${SKIP_TESTS:-}" ]; then  # set on a second call to the same machine
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_static_step.py tests/test_eval_run.py \
    -k "cuda_graph or stream_answers or two_processes" > "$OUT/gpu_tests.txt" 2>&1
  tail -3 "$OUT/gpu_tests.txt"
fi
BENCH=/tmp/sbench
python3 scripts/synthetic_streamingbench.py $BENCH --videos 6 --seconds 120 --size 640x360 --fps 10
for context in all 60; do
  rm -rf /tmp/r_${PROTOCOL}_${context}
  timeout 280 python3 -m livesight eval streamingbench --data $BENCH/questions.json --videos $BENCH/videos \
    --out /tmp/r_${PROTOCOL}_${context} --model random-7b --protocol "$PROTOCOL" --context $context \
    > "$OUT/summary_${PROTOCOL}_${context}.md" 2> /tmp/err_${context}.txt
  echo "$PROTOCOL $context exit $?"; tail -3 /tmp/err_${context}.txt; tail -2 "$OUT/summary_${PROTOCOL}_${context}.md"
  cp /tmp/r_${PROTOCOL}_${context}/summary.json "$OUT/summary_${PROTOCOL}_${context}.json"
done
