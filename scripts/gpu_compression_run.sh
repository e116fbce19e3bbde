#!/usr/bin/env bash
# Compressed visual tokens on a GPU (results/compression/), through the device tool from the repo root (carry .whl):
# the GPU tests (CUDA-graph steps against eager ones, on tiny-random), then random-7b, 60 s of each
# synthetic scene at 2 fps, compression settings side by side in one run.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_static_step.py 2> tests/test_static_step.py tests/test_compression.py 2>&11 | tail -15 | tee "$OUT/gpu_tests.txt"
timeout 480 python3 -m livesight bench compression --model random-7b --device cuda --seconds 60 \
  --out "$OUT" > "$OUT/bench.log" 2> "$OUT/bench.err"
echo "bench exit $?"; tail -5 "$OUT/bench.err"; cat "$OUT/compression.md"
