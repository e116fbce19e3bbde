"""`livesight bench speed`: the engine against the hardware's limit and against two baselines.

One run streams a synthetic scene through the engine for `--seconds` and, in the same process,
through the plain-transformers baselines (baselines.py) for `--baseline-seconds`: the full
context growing, and StreamingVLM's re-prefill of the last W seconds every chunk. It reports the
engine's real-time factor, per-chunk latency p50/p99 with its split, decode ms per token, question
time to first token with retrieval over the offloaded history, memory over stream time and prefill
MFU; and, stream length by stream length, how much slower each baseline is. Output: speed.json,
speed.md and speed.png in --out.
"""

import statistics
import time

import numpy as np
import psutil
import torch

from livesight.eval.baselines import PlainStream
from livesight.eval.config import SpeedConfig
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import DEFAULT_SYSTEM_PROMPT, CompressionConfig, SessionConfig
from livesight.streaming.events import CHUNK_PARTS, chunk_ms
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.vision.ingest import Ingest
from livesight.vision.sources import SyntheticSource

QUESTION = "What has happened in the video so far?"


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return psutil.Process().memory_info().rss / 2**20


def prefill_flops(adapter: QwenVLAdapter, num_params: int, tokens_in: int, keys: int) -> float:
    """Matmul FLOPs of one prefill step: the layers' num_params weights once per token, plus QK^T and
    AV over `keys`."""
    config = adapter.language_model.config
    attention = 4 * config.num_hidden_layers * tokens_in * keys * config.num_attention_heads * adapter.head_dim
    return 2 * num_params * tokens_in + attention


def run_engine(adapter: QwenVLAdapter, cfg: SpeedConfig) -> dict:
    compress = CompressionConfig(reuse=cfg.compression, prune=cfg.compression)
    config = SessionConfig(fps=cfg.fps, vision_window_s=cfg.window_s, narrate=cfg.narrate_tokens > 0,
                           narrate_tokens=cfg.narrate_tokens, compression=compress,
                           retrieval=RetrievalConfig(enabled=cfg.retrieval, ram_gb=32.0, disk_gb=0.0),
                           kv_dtype=cfg.kv_dtype, duo_gates=cfg.duo_gates, duo_sparsity=cfg.duo_sparsity)
    session = Session(adapter, config, (cfg.height, cfg.width))
    kv_bytes = session.cache.nbytes
    source = Ingest(SyntheticSource(cfg.fps, cfg.seconds, cfg.width, cfg.height, cfg.scene))  # as the front ends
    rows, questions, asking = [], [], 0.0
    num_params = sum(p.numel() for p in adapter.language_model.layers.parameters())
    start = last_done = time.perf_counter()
    for chunk in chunk_frames(source, config.frames_per_chunk, cfg.fps):
        m = session.add_chunk(chunk)[-1].data
        keys = sum(m["kv_tokens"].values())
        flops = prefill_flops(adapter, num_params, m["tokens_in"], keys)
        done = time.perf_counter()
        rows.append({"t": chunk.t_end, "chunk_ms": round(chunk_ms(m), 2), **{k: round(m[k], 2) for k in CHUNK_PARTS},
                     "wall_ms": round((done - last_done) * 1000, 2), "tokens_in": m["tokens_in"],
                     "tokens_out": m["tokens_out"], "kv_tokens": keys, "mem_mb": round(_memory_mb(adapter.device), 1),
                     "prefill_tflops": round(flops / m["prefill_ms"] / 1e9, 1)})
        last = chunk.t_end >= cfg.seconds - 1e-9
        t = round(chunk.t_end, 6)
        if t == cfg.warmup_s or (t % cfg.ask_every_s == 0 and t > cfg.warmup_s) or last:
            answer = session.ask(QUESTION, remember=False)[-1].data
            questions.append({"t": chunk.t_end, "ttft_ms": answer["ttft_ms"], "latency_ms": answer["latency_ms"],
                              "retrieved": len(answer["retrieved"]), "offloaded_blocks": len(session.offloaded.store)
                              if session.offloaded else 0, "mem_mb": round(_memory_mb(adapter.device), 1)})
            asking += time.perf_counter() - done
        last_done = time.perf_counter()
    wall = last_done - start - asking
    session.close()
    return {"rows": rows, "questions": questions, "wall_s": round(wall, 2),
            "realtime_factor": round(cfg.seconds / wall, 2), "kv_bytes": kv_bytes}


def run_baseline(adapter: QwenVLAdapter, cfg: SpeedConfig, window: bool) -> dict:
    session_config = SessionConfig(fps=cfg.fps)
    size = adapter.frame_size((cfg.height, cfg.width), adapter.loaded.max_pixels)  # as Session
    stream = PlainStream(adapter, size, session_config.frames_per_chunk, adapter.temporal_stride(cfg.fps),
                         DEFAULT_SYSTEM_PROMPT, cfg.narrate_tokens, round(cfg.window_s) if window else None)
    source = Ingest(SyntheticSource(cfg.fps, cfg.baseline_seconds, cfg.width, cfg.height, cfg.scene))
    rows, stopped = [], None
    for chunk in chunk_frames(source, session_config.frames_per_chunk, cfg.fps):
        try:
            r = stream.step(chunk)
        except torch.cuda.OutOfMemoryError:
            stopped = f"out of GPU memory at {chunk.t_start:g} s"
            break
        rows.append({"t": chunk.t_end, "chunk_ms": round(r["vision_ms"] + r["prefill_ms"] + r["decode_ms"], 2),
                     **{k: round(v, 2) for k, v in r.items()}, "mem_mb": round(_memory_mb(adapter.device), 1)})
    del stream
    if adapter.device.type == "cuda":
        torch.cuda.empty_cache()
    return {"rows": rows, "stopped": stopped}


def summarize(engine: dict, baselines: dict, cfg: SpeedConfig) -> dict:
    steady = [r for r in engine["rows"] if r["t"] > cfg.warmup_s] or engine["rows"]
    latency = np.array([r["chunk_ms"] for r in steady])
    mem = [r["mem_mb"] for r in steady] + [q["mem_mb"] for q in engine["questions"] if q["t"] > cfg.warmup_s]
    decode = [r["decode_ms"] / r["tokens_out"] for r in steady if r["tokens_out"]]
    out = {
        "realtime_factor": engine["realtime_factor"],
        "chunk_ms_p50": round(float(np.median(latency)), 2),
        "chunk_ms_p99": round(float(np.percentile(latency, 99)), 2),
        "split_ms_p50": {k: round(statistics.median(r[k] for r in steady), 2) for k in CHUNK_PARTS},
        "outside_chunk_ms_p50": round(statistics.median(r["wall_ms"] - r["chunk_ms"] for r in steady), 2),
        "decode_ms_per_token_p50": round(statistics.median(decode), 2) if decode else None,
        "kv_bytes": engine.get("kv_bytes"),
        "prefill_mfu_p50": round(statistics.median(r["prefill_tflops"] for r in steady) / cfg.peak_tflops, 4),
        "mem_mb_min_max": [min(mem), max(mem)], "mem_spread": round((max(mem) - min(mem)) / max(mem), 5),
        "questions": engine["questions"],
    }
    compare = []
    edges = [] if not baselines else \
        list(range(int(cfg.window_s) + 30, int(cfg.baseline_seconds), 30)) + [cfg.baseline_seconds]
    for lo, hi in zip([cfg.window_s] + edges[:-1], edges):
        ours = [r["chunk_ms"] for r in engine["rows"] if lo < r["t"] <= hi]
        row = {"from_s": lo, "to_s": hi, "livesight_ms": round(statistics.median(ours), 2) if ours else None}
        for name, base in baselines.items():
            theirs = [r["chunk_ms"] for r in base["rows"] if lo < r["t"] <= hi]
            row[f"{name}_ms"] = round(statistics.median(theirs), 2) if theirs else None
            row[f"{name}_ratio"] = round(row[f"{name}_ms"] / row["livesight_ms"], 2) if theirs and ours else None
        compare.append(row)
    out["compare"] = compare
    out["baselines_stopped"] = {name: base["stopped"] for name, base in baselines.items()}
    return out
