"""Summarize a `livesight run --json` event log: chunk latency percentiles and memory over time.

    python -m livesight.eval.summary RUN.jsonl [--skip 5]
"""

import argparse
import json
import sys

import numpy as np

from livesight.streaming.events import CHUNK_PARTS, chunk_ms


def summarize(lines, skip: int = 5) -> dict:
    """Metrics after the first `skip` chunks (warm-up); latency = vision + prune + prefill + decode + evict."""
    metrics = [e for e in lines if e.get("type") == "metrics"]
    if not metrics:
        raise ValueError("no metrics events in the log")
    steady = metrics[skip:] or metrics
    latency = np.array([chunk_ms(m) for m in steady])
    parts = {k: float(np.median([m.get(k, 0.0) for m in steady])) for k in CHUNK_PARTS}
    out = {
        "chunks": len(metrics), "stream_s": metrics[-1]["t"], "skipped_warmup_chunks": len(metrics) - len(steady),
        "chunk_ms_p50": float(np.median(latency)), "chunk_ms_p99": float(np.percentile(latency, 99)),
        "median_split_ms": parts,
        "max_position_first_last": [metrics[0]["max_position"], metrics[-1]["max_position"]],
        "max_position_peak": max(m["max_position"] for m in metrics),
        "kv_tokens_last": metrics[-1]["kv_tokens"],
        "rss_mb_first_mid_last": [metrics[0]["rss_mb"], metrics[len(metrics) // 2]["rss_mb"], metrics[-1]["rss_mb"]],
    }
    if "gpu_mem_mb" in metrics[0]:
        out["gpu_mem_mb_first_last"] = [metrics[0]["gpu_mem_mb"], metrics[-1]["gpu_mem_mb"]]
        mem = [m["gpu_mem_mb"] for m in steady]
        out["gpu_mem_mb_min_max"] = [min(mem), max(mem)]
        out["gpu_mem_spread"] = round((max(mem) - min(mem)) / max(mem), 5)
        out["gpu_peak_mb_last"] = metrics[-1]["gpu_peak_mb"]
    if "offload" in metrics[-1]:
        out["offload_last"] = metrics[-1]["offload"]
    out["answers"] = [{k: a.get(k) for k in ("t", "question", "ttft_ms", "latency_ms")} | {
        "retrieved_ranges": len(a.get("retrieved", []))} for a in lines if a.get("type") == "answer"]
    out["errors"] = [e.get("text") for e in lines if e.get("type") == "error"][:5]
    summary = [e for e in lines if e.get("type") == "summary"]
    if summary:
        out["realtime_factor"] = summary[-1]["realtime_factor"]
        out["chunks_per_s"] = summary[-1]["chunks_per_s"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--skip", type=int, default=5, help="warm-up chunks left out of the percentiles")
    args = parser.parse_args(argv)
    with open(args.log) as f:
        lines = [json.loads(line) for line in f if line.strip().startswith("{")]
    print(json.dumps(summarize(lines, args.skip), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
