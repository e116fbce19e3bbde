"""Offload copies on a worker thread against on the engine's thread, side by side in one process:
random-7b, `shapes` at 2 fps, alternating runs of --seconds each, compression on and off.

  python scripts/ab_offload.py [--seconds 240] [--rounds 2]
"""

import argparse
import json
import statistics
from dataclasses import replace

from livesight.eval.speed import SpeedConfig, run_engine
from livesight.kvcache import offload
from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = SpeedConfig(seconds=args.seconds, baseline_seconds=0, ask_every_s=1e9)
    adapter = QwenVLAdapter(load_model(cfg.model, "cuda"))
    for _ in range(args.rounds):
        for compression in (True, False):
            for background in (True, False):
                offload.copy_in_background = background
                engine = run_engine(adapter, replace(cfg, compression=compression))
                rows = [r for r in engine["rows"] if r["t"] > cfg.warmup_s]
                chunk = sorted(r["chunk_ms"] for r in rows)
                print(json.dumps({"compression": compression, "background_copy": background,
                                  "realtime_factor": engine["realtime_factor"],
                                  "chunk_p50": round(statistics.median(chunk), 2),
                                  "chunk_p99": round(chunk[int(0.99 * (len(chunk) - 1))], 2),
                                  **{k: round(statistics.median(r[k] for r in rows), 2)
                                     for k in ("vision_ms", "prefill_ms", "evict_ms")}}), flush=True)


if __name__ == "__main__":
    main()
