#!/usr/bin/env bash
# Many live streams on one H200 (results/streams/h200/), through the device tool from the repo root, in ONE
# command (carry .whl: transformers 5.23.0 and decord 0.6.0 wheels for Python 3.12), timeout_s 600:
#   bash scripts/gpu_streams.sh
# MODEL picks the model (default random-7b; e.g. MODEL=random-qwen3-vl-8b SKIP_TESTS=1 for another family).
# Stages, each time-boxed (worst case 150 + 400 + 80 + 80 s):
#   tests    (≤ 150 s; SKIP_TESTS=1 skips): the slab kernel and the engine-equals-alone tests on the GPU.
#   (SKIP_STREAMS=1 skips the streams stage; STOP= measures every count; BASELINE=1,4 today's way's counts.)
#   streams  (≤ STREAMS_LIMIT, default 400 s): livesight bench streams on $MODEL, counts STREAMS (default
#            1 … 256), with 20 narrated tokens and without, compression (--no-partial) and retrieval on, 2 fps,
#            16-s window, mixed scenes, chunks spread over each second, a question every second to a random
#            stream; 16 s of warm-up and 6 s measured per count; each mode stops at its first count that
#            misses real time (--stop-at-miss); today's way (Sessions under one lock) at 1 and 4 streams,
#            last. streams.json and streams.md go to $OUT after every run, so a cut keeps what finished.
#   speed    (≤ 80 s each; SKIP_SPEED=1 skips): livesight bench speed, one stream, shorter than
#            results/speed/ was measured: 300 s without narration, 120 s with 20 narrated tokens
#            (SPEED_SECONDS, NARRATE_SECONDS).
# What comes back ($OUT): gpu.txt, streams.json, streams.md, streams.png, streams.log, speed.log,
# speed_nonarrate/speed.json, speed_narrate/speed.json. Here, afterwards:
#   mkdir -p results/streams/h200 && cp -r <files_at>/* results/streams/h200/
#   python -m livesight.eval.streams_report --render results/streams/h200     # if streams.png is missing
# GPU memory over a long run at the headline count is a separate run, e.g.:
#   python3 -m livesight bench streams --model $MODEL --streams N --narration on --baseline-streams none \
#     --seconds 6 --memory-seconds 1800 --out /tmp/memory
set -uo pipefail
MODEL=${MODEL:-random-7b}
started=$SECONDS
stamp() { echo "[$((SECONDS - started)) s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"

if [ -z "${SKIP_TESTS:-}" ]; then
  stamp "engine tests on the GPU: the slab kernel, each stream equal to the stream alone (fp32 eager, bf16 graphs)"
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_engine.py tests/test_slab_attention.py 2>&1 | tail -3
fi
if [ -z "${SKIP_STREAMS:-}" ]; then
  stamp "streams: bench streams on $MODEL (at most ${STREAMS_LIMIT:-400} s); a line per run"
  timeout ${STREAMS_LIMIT:-400} python3 -m livesight bench streams --model $MODEL \
    --streams ${STREAMS:-1,8,16,32,64,128,192,256} --narration both --narrate-tokens 20 --seconds 6 --warmup-seconds 16 \
    --ask-every 1 --baseline-streams ${BASELINE:-1,4} ${STOP---stop-at-miss} --out "$OUT" 2>&1 \
    | tee "$OUT/streams.log" | grep -v "^|"  # written after every run: a cut keeps them
  stamp "streams: exit ${PIPESTATUS[0]}"
  grep -E "^\| (engine|today)" "$OUT/streams.md"
fi
[ -n "${SKIP_SPEED:-}" ] && exit 0

speed() {  # name, then bench speed's arguments
  local name=$1; shift
  stamp "speed $name (at most 80 s)"
  mkdir -p "$OUT/speed_$name"
  timeout 80 python3 -m livesight bench speed --model $MODEL --baseline-seconds 0 --out "/tmp/speed_$name" "$@" \
    > "/tmp/speed_$name.md" 2>> /tmp/speed.log
  stamp "speed $name: exit $?"
  cp "/tmp/speed_$name/speed.json" "$OUT/speed_$name/"
  grep -E "real-time factor|chunk latency|decode per token|time to first token" "/tmp/speed_$name.md"
}
speed nonarrate --seconds ${SPEED_SECONDS:-300} --ask-every 150
speed narrate --seconds ${NARRATE_SECONDS:-120} --narrate-tokens 20 --ask-every 60
cp /tmp/speed.log "$OUT/"
stamp "done"
