#!/usr/bin/env bash
# The many-stream engine on a GPU, through the device tool from the repo root (carry .whl: transformers
# 5.23.0, decord 0.6.0, hypothesis wheels for Python 3.12): the slab-attention kernel, the engine's
# exactness tests (fp32 eager and bf16 Triton + CUDA graphs) and the batched vision pass, then where a
# many-stream step spends its time on random-7b (scripts/engine_probe.py).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-out}; mkdir -p "$OUT"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_slab_attention.py tests/test_engine.py \
    tests/test_vision_batch.py tests/test_static_step.py 2>&1 | tail -6
  timeout 400 python3 scripts/engine_probe.py --model random-7b --streams ${STREAMS:-1,16,64,128} --rounds 3 --warmup 3
} 2>&1 | tee "$OUT/engine_check.txt"
