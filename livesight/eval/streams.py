"""`livesight bench streams`: how many live streams one GPU serves in real time, the engine against
today's way (streams_ways.py), stream count by stream count, with and without narration.

One run of one way at one count: open N live streams, warm them up (the window fills and blocks are
offloaded, fed as fast as they are taken; the last seconds live, so the measured run's shapes are
captured before it), then pace `seconds` of chunks in real time with questions to random streams,
and read every chunk's latency from its arrival to its caption. The stated rule for real time:
no chunk dropped, every chunk captioned, at most 1 % of narrations shortened (a stream that starts a
chunk with the next already waiting narrates half), and p99 latency within the bound.
"""

import numpy as np
import psutil
import torch

from livesight.errors import InputError
from livesight.eval.config import SHORTENED_MAX, StreamsConfig
from livesight.eval.streams_load import ChunkPool, EventLog, Pacer
from livesight.eval.streams_ways import EngineWay, SessionsWay, release
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.events import CHUNK_PARTS

WAYS = {"engine": EngineWay, "today": SessionsWay}
LIVE_WARMUP_S = 2.0  # the warm-up's last stream seconds, paced live like the measured run


def session_config(cfg: StreamsConfig, narrate_tokens: int) -> SessionConfig:
    compression = CompressionConfig(reuse=cfg.compression, prune=cfg.compression, partial=cfg.partial)
    retrieval = RetrievalConfig(enabled=cfg.retrieval, ram_gb=cfg.offload_ram_gb, disk_gb=0.0)
    return SessionConfig(fps=cfg.fps, vision_window_s=cfg.window_s, narrate=narrate_tokens > 0,
                         narrate_tokens=narrate_tokens, compression=compression, retrieval=retrieval,
                         kv_dtype=cfg.kv_dtype, duo_gates=cfg.duo_gates, duo_sparsity=cfg.duo_sparsity)


def memory_mb(device: torch.device) -> float:
    """What the metrics events report: GPU memory allocated, or the process's RSS on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def run_count(way_name: str, adapter: QwenVLAdapter, cfg: StreamsConfig, pool: ChunkPool, num_streams: int,
              narrate_tokens: int, seconds: float) -> dict:
    """One way at one count -> its figures, or {"fits": False, "error"} when the count does not fit. It
    leaves the device as it found it (streams_ways.release)."""
    device = adapter.device
    head = {"way": way_name, "streams": num_streams, "memory_before_mb": round(memory_mb(device), 1)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    log, refused = EventLog(num_streams), None
    try:
        way = WAYS[way_name](adapter, session_config(cfg, narrate_tokens), num_streams, pool.size, log)
    except (InputError, torch.cuda.OutOfMemoryError) as err:
        refused = str(err).splitlines()[0]
    if refused is not None:  # out of the except block: its traceback no longer holds the half-built way
        log.close()
        release(device)
        return head | {"fits": False, "error": refused}
    pacer, warm = Pacer(way, pool, log, num_streams, cfg), round(cfg.warmup_s / cfg.chunk_s)
    num_chunks = max(1, round(seconds / cfg.chunk_s))
    wait_s = 5 * cfg.latency_bound_s + 10
    try:
        live = min(round(LIVE_WARMUP_S / cfg.chunk_s), warm)
        pacer.fast(warm - live, stall_s=wait_s)
        pacer.live(live, ask=False)
        first = pacer.next
        way.reset_stages()
        start = pacer.live(num_chunks, ask=True)
        pacer.settle(wait_s)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    finally:
        way.close()
        log.close()
    stages, stream_mb = way.stages(), way.stream_mb()  # read once the way's threads have stopped
    del way, pacer
    release(device)
    run = head | {"fits": True, "first_chunk": first, "chunks_per_stream": num_chunks} | figures(
        log, first, num_streams, num_chunks, start, cfg)
    held = memory(log, first, num_streams, head["memory_before_mb"], peak, stream_mb)
    return run | {"decode_tokens_per_s": decode_rate(run, stages), "busy_share": busy_share(run, stages),
                  "stages": stages, "memory": held}


def busy_share(run: dict, stages: dict) -> float | None:
    """The share of the measured run (first arrival to last caption) the way spent computing: the
    engine's vision and LM passes; today's sessions' chunks and answers (one at a time, under the lock)."""
    busy = stages["vision_ms"] + stages["lm_ms"] if "lm_ms" in stages else run["model_ms"]
    return round(busy / (1000 * run["span_s"]), 3) if run["span_s"] > 0 else None


def decode_rate(run: dict, stages: dict) -> float | None:
    """Tokens per second of decoding: the engine's decode-only steps (rows per device second), or
    today's sessions' decode stage (each runs alone). None without narration."""
    if "lm_by_kind" in stages:
        decode = stages["lm_by_kind"]["decode"]
        return round(1000 * decode["rows"] / decode["ms"], 1) if decode["ms"] > 0 else None
    return round(1000 * run["tokens_out"] / run["decode_ms_total"], 1) if run["tokens_out"] else None


def _cumulative(rows: list[dict], stream: int, key: str) -> int:
    mine = [r for r in rows if r["stream"] == stream]
    return max(mine, key=lambda r: r["chunk"])[key] if mine else 0


def figures(log: EventLog, first: int, num_streams: int, num_chunks: int, start: float, cfg: StreamsConfig) -> dict:
    """The measured run's figures (chunks from index `first` on, answers after `start`) and whether
    it kept real time by the rule above."""
    rows = [r for r in log.chunks if r["chunk"] >= first]
    warm = [r for r in log.chunks if r["chunk"] < first]
    expected = num_streams * num_chunks
    change = {key: sum(_cumulative(log.chunks, i, key) - _cumulative(warm, i, key) for i in range(num_streams))
              for key in ("dropped", "shortened")}
    missing = expected - len(rows) - change["dropped"]
    window = num_chunks * cfg.chunk_s  # the measured run's video, in real time
    span = max((r["done"] for r in rows), default=start) - start  # its first arrival to its last caption
    latency = np.array([r["latency_ms"] for r in rows] or [np.nan])
    ttft = np.array([a["ttft_ms"] for a in log.answers if a["done"] >= start] or [np.nan])
    p50, p99 = float(np.percentile(latency, 50)), float(np.percentile(latency, 99))
    video_s = len(rows) * cfg.chunk_s
    tokens_out = sum(r["tokens_out"] for r in rows)
    kept = (change["dropped"] == 0 and missing == 0 and change["shortened"] <= SHORTENED_MAX * expected
            and p99 <= 1000 * cfg.latency_bound_s)
    return {
        "kept_real_time": bool(kept), "wall_s": window, "span_s": round(span, 3),
        "video_s_per_wall_s": round(video_s / window, 3), "per_stream_ratio": round(video_s / window / num_streams, 3),
        "chunks": {"expected": expected, "captioned": len(rows), "dropped": change["dropped"], "missing": missing,
                   "shortened": change["shortened"]},
        "latency_ms": {"p50": round(p50, 1), "p99": round(p99, 1), "max": round(float(np.max(latency)), 1)},
        "ttft_ms": {"n": int(np.isfinite(ttft).sum()), "p50": round(float(np.percentile(ttft, 50)), 1),
                    "p99": round(float(np.percentile(ttft, 99)), 1)},
        "narrated_tokens_per_s": round(tokens_out / window, 1),
        "chunk_ms_p50": {part: round(float(np.median([r[part] for r in rows] or [np.nan])), 2) for part in CHUNK_PARTS},
        "model_ms": round(sum(r[part] for r in rows for part in CHUNK_PARTS)
                          + sum(a["latency_ms"] for a in log.answers if a["done"] >= start), 1),
        "model_ms_per_stream_s": round(sum(r[part] for r in rows for part in CHUNK_PARTS) / video_s, 1)
        if video_s else None,
        "decode_ms_total": round(sum(r["decode_ms"] for r in rows), 1), "tokens_out": tokens_out,
        "means": {key: round(float(np.mean([r[key] for r in rows] or [np.nan])), 3)
                  for key in ("tokens_in", "kv_tokens", "encoded_share")},
        "num_errors": len(log.errors), "errors": log.errors[:5],
    }


def memory(log: EventLog, first: int, num_streams: int, before_mb: float, peak_mb: float | None,
           stream_mb: dict) -> dict:
    """Memory over the measured run (the metrics events' GPU memory allocated, or RSS on the CPU): total
    min / max / spread, peak, and per stream measured ((mean - before) / N) beside its accounting."""
    mem = [r["mem_mb"] for r in log.chunks if r["chunk"] >= first] or [before_mb]
    low, high, mean = min(mem), max(mem), float(np.mean(mem))
    return {"min_mb": low, "max_mb": high, "spread": round((high - low) / high, 5) if high else 0.0,
            "peak_mb": round(peak_mb, 1) if peak_mb is not None else None, "samples": len(mem),
            "per_stream_mb": round((mean - before_mb) / num_streams, 1), **stream_mb}
