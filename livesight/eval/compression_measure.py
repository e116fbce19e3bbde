"""`bench compression`'s measurements (compression.py holds its command line, settings and report):
each setting streamed through a real Session, the error of reuse, the vision tower's timing and, on
a GPU, what CUDA graphs change."""

import statistics
import time

import torch

from livesight.eval.compression import SETTINGS, WARMUP_CHUNKS
from livesight.eval.config import CompressionBenchConfig
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.models.registry import load_adapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.session import Session
from livesight.vision.sources import SyntheticSource


def run_setting(adapter: QwenVLAdapter, bench: CompressionBenchConfig, scene: str, compression: CompressionConfig,
                graphs: bool = True, logits: list | None = None) -> dict:
    """logits: if given, receives every chunk's last logits."""
    config = SessionConfig(fps=bench.fps, narrate=False, retrieval=RetrievalConfig(enabled=False),
                           compression=compression, cuda_graphs=graphs)
    session = Session(adapter, config, (bench.height, bench.width))
    if logits is not None:
        forward = session.stepper.forward
        session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
    source = SyntheticSource(bench.fps, bench.seconds, bench.width, bench.height, scene)
    rows = [session.add_chunk(chunk)[-1].data for chunk in chunk_frames(source, config.frames_per_chunk, bench.fps)]
    session.close()
    timed = rows[WARMUP_CHUNKS:] or rows
    modes = [r["encoder"] for r in rows]
    grid = sum(r["vision_tokens"]["grid"] for r in rows)
    return {
        "chunks": len(rows),
        "grid_tokens_per_chunk": rows[0]["vision_tokens"]["grid"],
        "tokens_per_s": round(sum(r["vision_tokens"]["kept"] for r in rows) / bench.seconds, 1),
        "encoder_passes": {m: modes.count(m) for m in ("full", "partial", "reused")},
        "encoder_skipped": round(1 - sum(r["vision_tokens"]["encoded"] for r in rows) / grid, 4),
        **{f"{k}_p50": round(statistics.median(r[k] for r in timed), 2) for k in ("vision_ms", "prune_ms", "prefill_ms")},
    }


@torch.inference_mode()
def reuse_error(adapter: QwenVLAdapter, bench: CompressionBenchConfig, size: tuple[int, int], scene: str,
                threshold: float) -> dict:
    """Relative L2 error of each chunk's tokens with reuse against full recomputation."""
    frames_per_chunk = SessionConfig(fps=bench.fps).frames_per_chunk
    reusing = adapter.vision_encoder(size, frames_per_chunk, threshold)
    full = adapter.vision_encoder(size, frames_per_chunk, None)
    source = SyntheticSource(bench.fps, bench.seconds, bench.width, bench.height, scene)
    errors = []
    for chunk in chunk_frames(source, frames_per_chunk, bench.fps):
        frames = torch.from_numpy(chunk.frames)
        got, _ = adapter.encode_frames(frames, size, reusing)
        want, _ = adapter.encode_frames(frames, size, full)
        errors.append(float((got.float() - want.float()).norm() / want.float().norm()))
    errors.sort()
    return {"mean": round(statistics.fmean(errors), 4), "p95": round(errors[int(0.95 * (len(errors) - 1))], 4),
            "max": round(errors[-1], 4)}


def _median_ms(fn, repeats: int = 10) -> float:
    """Median wall time of fn() after one warm-up call, synchronizing the GPU around each call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


@torch.inference_mode()
def tower_timing(adapter: QwenVLAdapter, size: tuple[int, int], bench: CompressionBenchConfig) -> dict:
    """One chunk through transformers' own tower and through our full pass; on a GPU, the largest
    difference between the CUDA-graph and the eager passes (a full pass, then a partial one)."""
    chunks = list(chunk_frames(SyntheticSource(bench.fps, 2.0, bench.width, bench.height, "quiet"), 2, bench.fps))
    x, pixels = adapter.to_pixels(torch.from_numpy(chunks[0].frames), size)
    grid_thw = torch.tensor([adapter.patch_grid(size, 2)], device=adapter.device)
    encoder = adapter.vision_encoder(size, 2, None)
    result = {"transformers_tower_ms": _median_ms(lambda: adapter.visual(pixels, grid_thw=grid_thw)),
              "livesight_full_pass_ms": _median_ms(lambda: encoder.encode(x, pixels))}
    if adapter.device.type == "cuda":
        threshold = CompressionConfig().reuse_threshold
        graphed, eager = (adapter.vision_encoder(size, 2, threshold) for _ in range(2))
        eager.graphs = False
        errors = []
        for chunk in chunks:  # the second chunk of the quiet scene is a partial pass
            inputs = adapter.to_pixels(torch.from_numpy(chunk.frames), size)
            (a, stats), (b, _) = graphed.encode(*inputs), eager.encode(*inputs)
            errors.append((stats.mode, float((a.float() - b.float()).abs().max() / b.float().abs().max())))
        result["graph_vs_eager"] = errors
    return result


def graphs_effect(adapter: QwenVLAdapter, bench: CompressionBenchConfig) -> dict:
    """On a GPU, the quiet scene with compression off and on, CUDA graphs on against off: prefill
    medians, and the largest relative difference between the two runs' logits."""
    result = {}
    for name in ("off", "reuse+prune"):
        logits = {True: [], False: []}
        prefill = {g: run_setting(adapter, bench, "quiet", SETTINGS[name], g, logits[g])["prefill_ms_p50"]
                   for g in (False, True)}
        diff = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(logits[True], logits[False]))
        result[name] = {"prefill_ms_p50_eager": prefill[False], "prefill_ms_p50_graphs": prefill[True],
                        "max_logit_diff": diff}
    return result


def num_phases(bench: CompressionBenchConfig) -> int:
    """What `run` reports progress in: the tower timing, each scene's settings and reuse error, and on
    a GPU the CUDA-graph comparison."""
    return 1 + len(bench.scenes) * (len(SETTINGS) + 1) + (bench.device.startswith("cuda"))


def run(bench: CompressionBenchConfig, bar) -> dict:
    """Every measurement; `bar` (livesight.progress) advances once per phase, `num_phases` in all."""
    adapter = load_adapter(bench.model, bench.device)
    size = adapter.frame_size((bench.height, bench.width), adapter.loaded.max_pixels)  # as Session
    bar.describe("vision tower timing")
    result = {"settings": {**bench.__dict__, "scenes": list(bench.scenes), "device": str(adapter.device),
                           "gpu": torch.cuda.get_device_name() if adapter.device.type == "cuda" else None,
                           "defaults": CompressionConfig().__dict__},
              "tower": tower_timing(adapter, size, bench), "scenes": {}}
    bar.update()
    for scene in bench.scenes:
        result["scenes"][scene] = {}
        for name, compression in SETTINGS.items():
            bar.describe(f"{scene}, {name}")
            result["scenes"][scene][name] = run_setting(adapter, bench, scene, compression)
            bar.update()
        bar.describe(f"{scene}, error of reuse")
        result["scenes"][scene]["reuse"]["error"] = reuse_error(adapter, bench, size, scene,
                                                                CompressionConfig().reuse_threshold)
        bar.update()
    if adapter.device.type == "cuda":
        bar.describe("CUDA graphs against eager")
        result["graphs"] = graphs_effect(adapter, bench)
        bar.update()
    return result
