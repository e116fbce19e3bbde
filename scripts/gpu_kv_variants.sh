#!/usr/bin/env bash
# One stream's KV bytes and decode time with keys and values in 8 bits (--kv-dtype fp8) and with half the KV
# heads streaming (DuoAttention, --duo), against the model's dtype: livesight bench speed on an H200
# (results/speed/h200-kv-variants/), through the device tool from the repo root, in ONE command (carry .whl:
# transformers 5.23.0, fla-core and einops wheels for Python 3.12), timeout_s 600:
#   bash scripts/gpu_kv_variants.sh
# Stages, each time-boxed (worst case 200 + 60 + 3 x 110 s); TESTS, SKIP_KERNEL=1 and VARIANTS (of model, fp8, duo,
# duofp8: both at once) pick a subset:
#   tests (≤ 200 s; SKIP_TESTS=1 skips): the fp8 span and quantize kernels compiled against their references, fp8
#         and head-wise CUDA-graph steps against eager ones, every Triton kernel, the static step, the engine.
#   probe (≤ 90 s; only with PROBE=1): scripts/decode_sync_probe.py, where a narrated chunk waits on the GPU.
#   kernel (≤ 60 s): scripts/kv_kernel_bench.py, the span kernel on fp8 and half-streaming heads against bf16 at 7B
#         decode shapes, and an 8-bit write of a decode step's keys and values.
#   speed (≤ 110 s each): $MODEL (default random-7b), SECONDS_ (default 60) of video with 20 narrated tokens a
#         chunk and a question a minute, each way. The gates are random, drawn from seed 0: which heads stream
#         changes neither bytes nor time (a trained model's come from `livesight calibrate duo`).
#   streams (≤ 120 s each; only with STREAMS=N): livesight bench streams, N streams of $MODEL without narration in
#         the engine's pool, each way (10 s of warm-up, 6 s measured): bytes per stream, memory per stream, real time.
# What comes back ($OUT): gpu.txt, tests.log, syncs.json, kernels.json, speed.log, speed_{model,fp8,duo}/speed.json,
# streams.log, streams_{model,fp8,duo}/streams.json (PACK=1: all but gpu.txt in kv-variants.tgz).
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
  stamp "tests on the GPU (at most 200 s)"
  timeout 200 python3 -m pytest -v -p no:cacheprovider --tb=short ${TESTS:-tests/test_fp8_kv.py \
    tests/test_triton_kernels.py tests/test_static_step.py tests/test_headwise.py tests/test_engine.py} \
    > "$OUT/tests.log" 2>&1
  stamp "tests: exit $?"; grep -E "FAILED|passed|failed" "$OUT/tests.log" | tail -6
fi
if [ -z "${SKIP_KERNEL:-}" ]; then
  stamp "kernel: span attention, fp8 against bf16 (at most 60 s)"
  timeout 60 python3 scripts/kv_kernel_bench.py --out "$OUT/kernels.json"
fi

if [ -n "${PROBE:-}" ]; then  # PROBE=1: where a narrated chunk waits on the GPU, each variant (tiny-random)
  stamp "sync probe (at most 90 s)"
  timeout 90 python3 scripts/decode_sync_probe.py --out "$OUT/syncs.json" 2>&1 | grep -v Warning | tail -40
fi

python3 - "$MODEL" <<'EOF'
import json, os, sys
import torch
from livesight.models.configs import random_config
text = random_config(sys.argv[1]).get_text_config()
gates = torch.rand(text.num_hidden_layers, text.num_key_value_heads, generator=torch.Generator().manual_seed(0))
os.makedirs("/tmp/gates", exist_ok=True)
json.dump({"model": sys.argv[1], "gates": gates.tolist(), "settings": {"sink": 4, "recent": 64},
           "data": "random gates (seed 0): bytes and time only"}, open("/tmp/gates/duo_gates.json", "w"))
EOF

speed() {  # name, then bench speed's arguments
  local name=$1; shift
  stamp "speed $name (at most 110 s)"
  timeout 110 python3 -m livesight bench speed --model $MODEL --baseline-seconds 0 --seconds ${SECONDS_:-60} \
    --narrate-tokens 20 --ask-every 30 --out "/tmp/speed_$name" "$@" > "/tmp/speed_$name.md" 2>> "$OUT/speed.log"
  stamp "speed $name: exit $?"
  mkdir -p "$OUT/speed_$name" && cp /tmp/speed_$name/speed.json "$OUT/speed_$name/"
  grep -E "real-time factor|chunk latency|split p50|decode per token|KV cache|time to first token" "/tmp/speed_$name.md"
}
flags() {  # a variant's flags
  case $1 in
    model) ;; fp8) echo "--kv-dtype fp8" ;; duo) echo "--duo /tmp/gates --duo-sparsity 0.5" ;;
    duofp8) echo "--kv-dtype fp8 --duo /tmp/gates --duo-sparsity 0.5" ;;
  esac
}
for variant in ${VARIANTS:-model fp8 duo}; do  # VARIANTS: which to run
  speed $variant $(flags $variant)
done

streams() {  # name, then bench streams' arguments
  local name=$1; shift
  stamp "streams $name: $STREAMS streams without narration (at most 120 s)"
  timeout 120 python3 -m livesight bench streams --model $MODEL --streams $STREAMS --narration off --seconds 6 \
    --warmup-seconds 10 --baseline-streams none --out "$OUT/streams_$name" "$@" > "/tmp/streams_$name.md" \
    2>> "$OUT/streams.log"
  stamp "streams $name: exit $?"
  grep -E "^\| engine" "/tmp/streams_$name.md"
  rm -f "$OUT/streams_$name/streams.png" "$OUT/streams_$name/streams.md"
}
if [ -n "${STREAMS:-}" ]; then  # STREAMS: a count, for bench streams with each variant's pool
  for variant in ${STREAM_VARIANTS:-${VARIANTS:-model fp8 duo}}; do  # STREAM_VARIANTS: which, if not VARIANTS
    streams $variant $(flags $variant)
  done
fi
if [ -n "${PACK:-}" ]; then  # PACK=1: everything but gpu.txt in one archive (the device returns at most 8 files)
  tar czf /tmp/kv-variants.tgz -C "$OUT" --exclude gpu.txt . && find "$OUT" -mindepth 1 ! -name gpu.txt -delete
  mv /tmp/kv-variants.tgz "$OUT/"
fi
stamp "done"
