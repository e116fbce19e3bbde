#!/usr/bin/env bash
# An hour of retrieval on a GPU (results/retrieval-hour/), through the device tool from the repo root (carry .whl):
# random-7b, one hour of 2 fps synthetic video, no narration, every evicted chunk offloaded
# (pinned RAM, then disk); questions after 10, 30 and 60 minutes. Logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT" /tmp/offload
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
free -g | head -2 | tee -a "$OUT/gpu.txt"; df -h /tmp | tail -1 | tee -a "$OUT/gpu.txt"
timeout 560 python3 -m livesight run --model random-7b --source synthetic --seconds 3600 --no-narrate --json \
  --offload-ram-gb 40 --offload-disk-gb 20 --offload-dir /tmp/offload --answer-tokens 16 \
  --ask "600:What was the first thing that moved?" --ask "1800:When did the red circle reach the left edge?" \
  --ask "3600:What happened in the first minute?" > "$OUT/run3600.jsonl" 2> "$OUT/run3600.err"
echo "run3600 exit $?"; tail -3 "$OUT/run3600.err"
python3 -m livesight.eval.summary "$OUT/run3600.jsonl" --skip 30 | tee "$OUT/run3600_summary.json"
