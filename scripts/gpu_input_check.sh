#!/usr/bin/env bash
# Bad input and limits on a GPU (results/input-checks/), through the device tool from the repo root
# (carry .whl: transformers 5.23.0, decord 0.6.0 and hypothesis wheels for Python 3.12):
#   the GPU tests (CUDA-graph steps, Triton kernels) and the input-bound tests; random-7b settings that
#   do not fit in the GPU's free memory refused before they allocate, and ones that do fit run; a video
#   damaged mid-way ending in an error event, the answers and a summary; SIGTERM leaving no folder.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
LS="python3 -m livesight"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_static_step.py tests/test_triton_kernels.py \
    tests/test_input_bounds.py tests/test_leftovers.py -k "not web" 2>&1 | tail -4
  echo "== settings that cannot fit: refused before allocating (exit 2, one line)"
  timeout 120 $LS run --model random-7b --source synthetic --seconds 4 --no-narrate --fps 8 --vision-window 3600 \
    --text-sink 131072 --text-window 131072 --retrieve-top-k 256 > "$OUT/refused.txt" 2>&1
  echo "exit $?"; cat "$OUT/refused.txt"
  echo "== the largest window and top-k with default budgets: they fit, and run"
  timeout 180 $LS run --model random-7b --source synthetic --seconds 20 --no-narrate --vision-window 3600 \
    --retrieve-top-k 256 --json > "$OUT/big.jsonl" 2> "$OUT/big.err"
  echo "exit $?"; tail -2 "$OUT/big.err"
  grep '"metrics"' "$OUT/big.jsonl" | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); \
print({k: d[k] for k in ('kv_capacity', 'kv_mb', 'gpu_mem_mb', 'gpu_peak_mb')})"
  echo "== a video damaged mid-way"
  python3 - <<'EOF'
from livesight.vision.synthetic import write_video
write_video("/tmp/damaged.mp4", 8.0, 10.0, 320, 180)
data = bytearray(open("/tmp/damaged.mp4", "rb").read())
data[len(data) // 2:len(data) // 2 + len(data) // 8] = bytes(len(data) // 8)
open("/tmp/damaged.mp4", "wb").write(data)
EOF
  timeout 180 $LS run --model random-7b --source /tmp/damaged.mp4 --no-narrate --answer-tokens 4 --ask "1:early?" \
    --ask "7.5:late?" --json > "$OUT/damaged.jsonl" 2> "$OUT/damaged.err"
  echo "exit $?"; cat "$OUT/damaged.err"
  grep -v '"metrics"' "$OUT/damaged.jsonl" | cut -c1-220
  echo "== SIGTERM mid-stream on the GPU: temporary folders afterwards"
  mkdir -p /tmp/t && TMPDIR=/tmp/t timeout 120 $LS run --model random-7b --source synthetic --seconds 600 --realtime \
    --no-narrate --vision-window 2 > /dev/null 2>&1 &
  sleep 45; pkill -TERM -f "seconds 600 --realtime"; wait
  echo "left in TMPDIR: $(ls /tmp/t | grep -v torchinductor | wc -l)"
} 2>&1 | tee "$OUT/input_check.txt"
