#!/usr/bin/env bash
# First of two device calls on nvidia-h200-x2 (the second, scripts/gpu_scaleout.sh, follows within the 30 s the
# machine stays warm). From the repo root, carry .whl (scripts/device_wheels.sh), timeout_s 600:
#   bash scripts/gpu_api.sh
# 1. The API's cost (results/api/h200x2/): side by side, one GPU each, the same stream counts (COUNTS), random-7b,
#    20 narrated tokens per chunk, a question every second, WARM s of warm-up and MEASURE s measured per count:
#      GPU 0: `livesight bench streams` (the engine in-process, chunks pre-rendered);
#      GPU 1: `livesight serve` (one engine, no Ray) under `livesight bench api` (streams over HTTP, live synthetic
#             sources paced by the server, events over SSE, questions over POST).
# 2. The evaluator sharded (results/eval-scaleout/h200x2/): scripts/eval_scaleout.py, 40 synthetic videos of 15 s,
#    2 questions each, one process on GPU 0 against accelerate launch --num_processes 2.
# STAGES (default "api eval"; "tests" adds the engine's GPU tests first) picks what runs.
# OFFLOAD_GB (default 1): each stream's offload RAM cap. The machine's memory starts small and grows with use, and the
# engine refuses streams whose caps together pass 90 % of it: 0.25 lets 96 streams start (a short run fills ~0.25 GB).
# On the CPU (a rehearsal): PY=.venv/bin/python NO_INSTALL=1 MODEL=tiny-random COUNTS=1,2 VIDEOS=4 VIDEO_S=6 ...
set -uo pipefail
started=$SECONDS
stamp() { echo "[$((SECONDS - started)) s] $*"; }
PY=${PY:-python3}; MODEL=${MODEL:-random-7b}; OFFLOAD_GB=${OFFLOAD_GB:-1}; COUNTS=${COUNTS:-16,24,32}; WARM=${WARM:-16}; MEASURE=${MEASURE:-15}
VIDEOS=${VIDEOS:-40}; VIDEO_S=${VIDEO_S:-15}; PORT=${PORT:-8100}
if [ -z "${NO_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
RES=/tmp/gpu_api; rm -rf $RES; mkdir -p $RES  # everything comes back in one archive (a call returns 8 files at most)
pack() { tar czf "$OUT/gpu_api.tgz" -C $RES .; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "cores $(nproc)"
  $PY -c "import torch, transformers, fastapi; print('torch', torch.__version__, 'transformers', transformers.__version__, 'fastapi', fastapi.__version__, 'gpus', torch.cuda.device_count())"
} | tee "$RES/gpu.txt"
ready() {  # port, seconds: wait until the server answers /readyz
  $PY - "$1" "$2" <<'PY'
import sys, time, httpx
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        if httpx.get(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=5).status_code == 200:
            sys.exit(0)
    except httpx.TransportError:
        pass
    time.sleep(1)
sys.exit(1)
PY
}
LOAD="--streams $COUNTS --narrate-tokens 20 --seconds $MEASURE --warmup-seconds $WARM --ask-every 1"
MAX=${COUNTS##*,}

STAGES=${STAGES:-api eval}  # and "tests": the GPU tests of the engine (on both GPUs) first
if [[ $STAGES == *tests* ]]; then
  stamp "0. GPU tests"
  timeout 150 $PY -m pytest -q -p no:cacheprovider tests/test_engine.py -k "gpu or graphs" > $RES/gpu_tests.txt 2>&1
  stamp "tests: exit $?"; tail -3 $RES/gpu_tests.txt
fi
if [[ $STAGES == *api* ]]; then
stamp "1. bench streams in-process on GPU 0, serve + bench api on GPU 1 (counts $COUNTS)"
CUDA_VISIBLE_DEVICES=0 timeout 200 $PY -m livesight bench streams --model $MODEL --narration on $LOAD \
  --baseline-streams none --offload-ram-gb $OFFLOAD_GB --out "$RES/streams" > "$RES/streams.log" 2>&1 &
inproc=$!
CUDA_VISIBLE_DEVICES=1 $PY -m livesight serve --model $MODEL --port $PORT --max-streams $MAX --no-ui --no-partial \
  --offload-ram-gb $OFFLOAD_GB --offload-disk-gb 0 > "$RES/serve.log" 2>&1 &
server=$!
if ready $PORT 180; then
  stamp "server ready"
  timeout 200 $PY -m livesight bench api --url http://127.0.0.1:$PORT $LOAD --out "$RES/api" \
    --label "livesight serve (one engine in its process), $MODEL" > "$RES/api.log" 2>&1
  stamp "bench api: exit $?"
else
  stamp "the server did not come up"; tail -20 "$RES/serve.log"
fi
kill $server; wait $server
wait $inproc; stamp "bench streams: exit $?"
grep -E "^engine" "$RES/streams.log"; grep -E "^[0-9]+ streams" "$RES/api.log"; tail -3 "$RES/api.log"
$PY -m livesight.eval.api_report --render "$RES/api" --in-process "$RES/streams/streams.json" && tail -8 "$RES/api/api.md"

pack
fi
if [[ $STAGES == *eval* ]]; then
stamp "2. the evaluator: 1 process against 2"
timeout 300 $PY scripts/eval_scaleout.py --out /tmp/eval_scaleout --videos $VIDEOS --seconds $VIDEO_S --questions 2 \
  -- --model $MODEL > "$RES/eval_scaleout.log" 2>&1
stamp "eval_scaleout: exit $?"
tail -12 "$RES/eval_scaleout.log"
mkdir -p "$RES/eval"
cp /tmp/eval_scaleout/eval_scaleout.* /tmp/eval_scaleout/one/summary.json "$RES/eval/" 2>/dev/null
cp /tmp/eval_scaleout/sharded/summary.json "$RES/eval/summary_sharded.json" 2>/dev/null
cp /tmp/eval_scaleout/*.log "$RES/eval/" 2>/dev/null
grep -h '"error"' /tmp/eval_scaleout/one/results.jsonl /tmp/eval_scaleout/sharded/results.jsonl 2>/dev/null \
  | head -5 | tee "$RES/eval/errors.txt" | cut -c1-600
fi
pack
stamp "done"
