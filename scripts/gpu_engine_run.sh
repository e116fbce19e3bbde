#!/usr/bin/env bash
# The engine on a GPU (results/stream/), run through the device tool from the repo root:
#   random-7b, synthetic source, 600 s, no narration, JSON events; then 60 s with narration.
# Needs .whl/ (transformers 5.23.0, decord 0.6.0 wheels) carried along. Writes logs under $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m livesight run --model random-7b --source synthetic --seconds 600 --no-narrate --json > "$OUT/run600.jsonl" 2> "$OUT/run600.err"
echo "run600 exit $?"; tail -3 "$OUT/run600.err"
python3 -m livesight.eval.summary "$OUT/run600.jsonl" | tee "$OUT/run600_summary.json"
python3 -m livesight run --model random-7b --source synthetic --seconds 60 --json --ask "30:What happened?" > "$OUT/run60_narrate.jsonl" 2> "$OUT/run60.err"
echo "run60 exit $?"; tail -3 "$OUT/run60.err"
python3 -m livesight.eval.summary "$OUT/run60_narrate.jsonl" | tee "$OUT/run60_summary.json"
grep '"answer"' "$OUT/run60_narrate.jsonl" | head -c 600; echo
