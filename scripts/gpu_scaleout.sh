#!/usr/bin/env bash
# Second of two device calls on nvidia-h200-x2, right after scripts/gpu_api.sh on the same warm machine (whose
# wheels it reuses); carry .whl-ray (scripts/device_wheels.sh: Ray 2.60 for Python 3.12), timeout_s 600:
#   bash scripts/gpu_scaleout.sh
# Scale-out on Ray Serve (results/scaleout/h200x2/), random-7b, 20 narrated tokens per chunk, the same load as
# gpu_api.sh (`livesight bench api`: live synthetic streams over HTTP, a question every second):
#   1. `livesight serve --replicas 1` (a local Ray cluster, one engine replica on one GPU): counts COUNTS1;
#   2. a second replica added while the server runs (POST /v1/replicas): counts COUNTS2 over both;
#   3. the one-replica headline's count of streams over both replicas, and 5 s into the window the second
#      replica's process killed (pkill -9): each moved stream's time from the kill to its first caption on the
#      survivor, and that none was lost.
# KILL_STREAMS sets stage 3's count (default: stage 1's headline); SKIP_KILL=1 skips stage 3.
# OFFLOAD_GB (default 1): each stream's offload RAM cap. The machine's memory starts small and grows with use, and the
# engine refuses streams whose caps together pass 90 % of it: 0.25 lets 96 streams start (a short run fills ~0.25 GB).
# On the CPU (a rehearsal): PY=.venv/bin/python NO_INSTALL=1 MODEL=tiny-random COUNTS1=1,2 COUNTS2=2,4 ...
set -uo pipefail
started=$SECONDS
stamp() { echo "[$((SECONDS - started)) s] $*"; }
PY=${PY:-python3}; MODEL=${MODEL:-random-7b}; OFFLOAD_GB=${OFFLOAD_GB:-1}; COUNTS1=${COUNTS1:-16,24,32}; COUNTS2=${COUNTS2:-32,48,64}
WARM=${WARM:-16}; MEASURE=${MEASURE:-15}; PORT=${PORT:-8100}; MAX=${COUNTS2##*,}
WHEELS=${WHEELS:-.whl-ray}  # or a folder with Ray's and gpu_api.sh's wheels both, on a machine of its own
if [ -z "${NO_INSTALL:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $WHEELS/*.whl || exit 1
  [ -d /tmp/site/transformers ] || { echo "no transformers: run scripts/gpu_api.sh first, or carry its wheels"; exit 3; }
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
RES=/tmp/gpu_scaleout; rm -rf $RES; mkdir -p $RES
pack() { tar czf "$OUT/gpu_scaleout.tgz" -C $RES .; }
$PY -c "import ray, torch; from ray import serve; print('ray', ray.__version__, 'gpus', torch.cuda.device_count())" \
  | tee $RES/gpu.txt || exit 1
api() {  # method, path: one call to the server, its JSON printed
  $PY -c "import httpx, sys; r = httpx.request(sys.argv[1], 'http://127.0.0.1:$PORT' + sys.argv[2], timeout=600); print(r.status_code, r.text)" "$1" "$2"
}
ready() {
  for _ in $(seq 1 "$1"); do api GET /readyz 2>/dev/null | grep -q '^200' && return 0; sleep 1; done; return 1
}
headline() {  # api.json -> the most streams kept in real time (or the first count)
  $PY -c "import json, sys; runs = json.load(open(sys.argv[1]))['runs']; kept = [r['streams'] for r in runs if r.get('kept_real_time')]; print(max(kept) if kept else runs[0]['streams'])" "$1"
}
LOAD="--narrate-tokens 20 --seconds $MEASURE --warmup-seconds $WARM --ask-every 1"

stamp "livesight serve --replicas 1"
$PY -m livesight serve --model $MODEL --replicas 1 --port $PORT --max-streams $MAX --no-ui --no-partial \
  --offload-ram-gb $OFFLOAD_GB --offload-disk-gb 0 > $RES/serve.log 2>&1 &
server=$!
ready 180 || { stamp "the server did not come up"; tail -30 $RES/serve.log; pack; exit 1; }
stamp "1. one replica: counts $COUNTS1"
timeout 170 $PY -m livesight bench api --url http://127.0.0.1:$PORT --streams $COUNTS1 $LOAD --out $RES/api_1 \
  --label "livesight serve --replicas 1 (Ray Serve), $MODEL" > $RES/api_1.log 2>&1
stamp "exit $?"; grep -E "^[0-9]+ streams" $RES/api_1.log; pack

stamp "2. a second replica, added while the server runs"
t0=$SECONDS; api POST /v1/replicas | tee $RES/added.txt; stamp "added in $((SECONDS - t0)) s"; api GET /v1/replicas
timeout 190 $PY -m livesight bench api --url http://127.0.0.1:$PORT --streams $COUNTS2 $LOAD --out $RES/api_2 \
  --label "livesight serve, 2 replicas (Ray Serve), $MODEL" > $RES/api_2.log 2>&1
stamp "exit $?"; grep -E "^[0-9]+ streams" $RES/api_2.log; pack

if [ -n "${SKIP_KILL:-}" ]; then kill $server; wait $server; pack; stamp "done"; exit 0; fi
one=${KILL_STREAMS:-$(headline $RES/api_1/api.json)}
stamp "3. $one streams over both replicas; the second replica's process killed 5 s into the window"
timeout 90 $PY -m livesight bench api --url http://127.0.0.1:$PORT --streams $one --narrate-tokens 20 --seconds 20 \
  --warmup-seconds $WARM --ask-every 1 --disrupt "pkill -9 -f 'ray::ServeReplica:livesight-engine-[1]:'" \
  --disrupt-after 5 --out $RES/api_kill --label "livesight serve, 2 replicas, one killed, $MODEL" > $RES/api_kill.log 2>&1
stamp "exit $?"; grep -E "^[0-9]+ streams|moved" $RES/api_kill.log | head -3
api GET /v1/replicas
kill $server; wait $server; stamp "server: exit $?"
pack
stamp "done"
