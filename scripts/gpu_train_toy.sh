#!/usr/bin/env bash
# Train toy-vlm on one H200, in runs of at most MINUTES (default 8.5) that resume from the checkpoint:
#   bash scripts/gpu_train_toy.sh            (carry nothing; the machine's own torch and transformers)
# Returns $OUT/toy-vlm.tgz (the weights folder: model.safetensors, config, tokenizer, training.json with the
# command, seed, loss curve, steps done and hash). A run that runs out of time also returns the checkpoint cut into
# $OUT/checkpoint.part-* (15 MB each): put them in .ckpt/ here (ignored), carry .ckpt, and call again.
# Stage 2 starts from stage 1's weights: carry them (e.g. livesight/weights/toy-vlm is tracked) and give
#   EXTRA="--init livesight/weights/toy-vlm ..."
set -uo pipefail
PY=${PY:-python3}; MINUTES=${MINUTES:-8.6}; STEPS=${STEPS:-1800}; WORKERS=${WORKERS:-12}
OUT=${OUT:-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
  echo "cores $(nproc)"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} | tee "$OUT/gpu.txt"
mkdir -p runs/toy-vlm
if ls .ckpt/checkpoint.part-* >/dev/null 2>&1; then cat .ckpt/checkpoint.part-* > runs/toy-vlm/checkpoint.pt; fi
WEIGHTS=/tmp/toy-vlm
$PY -m livesight train toy --out $WEIGHTS --steps "$STEPS" --minutes "$MINUTES" --workers "$WORKERS" ${EXTRA:-} \
  2>&1 | tee "$OUT/train.log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 0 ] || [ "$rc" = 3 ]; then tar czf "$OUT/toy-vlm.tgz" -C /tmp toy-vlm; fi  # the weights reached
if [ "$rc" = 3 ]; then split -b 15M -d runs/toy-vlm/checkpoint.pt "$OUT/checkpoint.part-"; fi
exit "$rc"
