#!/usr/bin/env bash
# The evaluator on the CPU: tiny-random over a synthetic StreamingBench-format set (4 videos x
# 90 s, 5 questions each), both protocols, all context and the last 60 s. Summaries to results/eval-synthetic/cpu-2core/.
set -uo pipefail
LS=${LS:-.venv/bin/livesight}; PY=${PY:-.venv/bin/python}
BENCH=${BENCH:-/tmp/sbench_cpu}; OUT=results/eval-synthetic/cpu-2core; mkdir -p "$OUT"
rm -rf "$BENCH"; $PY scripts/synthetic_streamingbench.py "$BENCH" --videos 4 --seconds 90 --size 640x360 --fps 10
for protocol in stream official; do
  for context in all 60; do
    rm -rf "$BENCH/r_${protocol}_${context}"
    $LS eval streamingbench --data "$BENCH/questions.json" --videos "$BENCH/videos" --out "$BENCH/r_${protocol}_${context}" \
      --model tiny-random --protocol $protocol --context $context > "$OUT/summary_${protocol}_${context}.md" 2>/dev/null
    echo "$protocol $context exit $?"; tail -1 "$OUT/summary_${protocol}_${context}.md"
    cp "$BENCH/r_${protocol}_${context}/summary.json" "$OUT/summary_${protocol}_${context}.json"
  done
done
