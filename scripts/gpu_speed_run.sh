#!/usr/bin/env bash
# Speed at the limit on a GPU (results/speed/), through the device tool from the repo root (carry .whl: transformers,
# decord and pytest wheels for Python 3.12). random-7b, 2 fps, shapes scene. Two parts, each under the
# tool's 10 minutes:
#   kernels: the kernel, static-step, retrieval and speed tests on the GPU, scripts/kernel_bench.py,
#            and scripts/profile_engine.py without narration;
#   stream:  30 minutes without narration, with both plain-transformers baselines for 300 s each; and
#            5 minutes with compression off (every chunk's ~300 visual tokens reach the prefill: its MFU);
#   narrate: 5 minutes with 20 narrated tokens per chunk, and scripts/profile_engine.py with them.
# Only JSON comes back (the tool returns 8 files); speed.md and speed.png are rendered from it with
#   python -m livesight.eval.speed_report --render results/speed/h100/<name>
set -uo pipefail
part=${1:?kernels, stream or narrate}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
bench() {  # name, timeout, bench speed arguments...
  local name=$1 limit=$2; shift 2
  mkdir -p "$OUT/$name" /tmp/$name
  timeout "$limit" python3 -m livesight bench speed --model random-7b --out /tmp/$name "$@" 2> /tmp/$name.err
  echo "$name: exit $?"; tail -3 /tmp/$name.err
  cp /tmp/$name/speed.json "$OUT/$name/" 2>/dev/null
}
if [ "$part" = kernels ]; then
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_triton_kernels.py tests/test_kernels.py \
    tests/test_static_step.py tests/test_compression.py tests/test_retrieval.py tests/test_speed.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
  timeout 90 python3 scripts/kernel_bench.py --out "$OUT/kernels.json" 2>&1 | tail -12
  timeout 150 python3 scripts/profile_engine.py > "$OUT/profile.txt" 2>&1; echo "profile: exit $?"
elif [ "$part" = stream ]; then
  bench nonarrate 420 --seconds 1800 --baseline-seconds 300
  bench nocompress 120 --seconds 300 --baseline-seconds 0 --no-compression --ask-every 150
else
  bench narrate 200 --seconds 300 --baseline-seconds 0 --narrate-tokens 20 --ask-every 150
  timeout 120 python3 scripts/profile_engine.py --chunks 40 --profiled 8 --narrate-tokens 20 \
    > "$OUT/profile_narrate.txt" 2>&1; echo "profile narrate: exit $?"
fi
