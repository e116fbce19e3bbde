#!/usr/bin/env bash
# bench recall at full size on one GPU machine: 10-minute worlds (4 videos x 40 questions, seed 0) and 60-minute
# worlds (2 videos x 60 questions, seed 10), every policy x compression setting, JOBS settings at once per length
# (a small model leaves the GPU mostly idle; the cells' own work is what takes the time).
#   bash scripts/gpu_bench_recall.sh      (MODEL=toy-vlm JOBS=8 LIMIT=480: seconds before what is done is returned)
# The machine lacks decord (the evaluator reads videos with it): carry its wheel, which scripts/device_wheels.sh
# puts in .whl/, and the script installs it.
# Returns $OUT/recall-10min.tgz and $OUT/recall-60min.tgz (recall.json, .md, .png and the question sets, no videos)
# and $OUT/bench-*.log; a length that ran out of time returns the settings it finished (recall.json "finished": false).
set -uo pipefail
PY=${PY:-python3}; JOBS=${JOBS:-8}; LIMIT=${LIMIT:-480}; MODEL=${MODEL:-toy-vlm}; DEVICE=${DEVICE:-cuda}
OUT=${OUT:-out}; mkdir -p "$OUT"
if ls .whl/decord-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/decord-*.whl || exit
  export PYTHONPATH=/tmp/site
fi
$PY -c "import decord" || { echo "decord is missing: carry .whl/decord-*.whl (bash scripts/device_wheels.sh)"; exit 2; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "cores $(nproc --all)"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"
bench() {  # NAME VIDEOS SECONDS PER_VIDEO SEED
  local start=$SECONDS
  timeout "$LIMIT" $PY -m livesight bench recall --model "$MODEL" --device "$DEVICE" --videos "$2" --seconds "$3" \
    --per-video "$4" --seed "$5" --jobs "$JOBS" --out "runs/$1" > "$OUT/bench-$1.log" 2>&1
  echo "rc $? after $((SECONDS - start)) s" >> "$OUT/bench-$1.log"
}
bench recall-10min 4 600 40 0 & bench recall-60min 2 3600 60 10 & wait
for name in recall-10min recall-60min; do
  tar czf "$OUT/$name.tgz" -C runs --exclude='*.mp4' "$name"
done
tail -n 3 "$OUT"/bench-*.log
