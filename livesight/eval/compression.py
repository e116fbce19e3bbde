"""`livesight bench compression`: what encoder reuse and token pruning save, scene by scene.

Every setting streams the same synthetic scene through a real Session (narration and retrieval
off, so vision and prefill are what is timed). Per setting: visual tokens entering the cache per
second of video, encoder passes (full / partial / reused), the share of the encoder skipped, and
median vision, pruning and prefill milliseconds per chunk after a warm-up. A separate, untimed pass
measures the error of reuse: each chunk's reused tokens against a full recomputation.
"""

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from livesight.errors import InputError
from livesight.eval import report
from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.streaming.models import load_model
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.vision.preprocess import fit_size
from livesight.vision.sources import SyntheticSource
from livesight.vision.synthetic import SCENES

WARMUP_CHUNKS = 3
SETTINGS = {
    "off": CompressionConfig(reuse=False, prune=False),
    "reuse": CompressionConfig(prune=False),
    "prune": CompressionConfig(reuse=False),
    "reuse+prune": CompressionConfig(),
    "reuse+prune, keep 0.5": CompressionConfig(keep_ratio=0.5),
    "reuse+prune, keep 0.25": CompressionConfig(keep_ratio=0.25),
}


@dataclass(frozen=True)
class BenchConfig:
    model: str = "tiny-random"
    device: str = "cpu"
    seconds: float = 60.0
    fps: float = 2.0
    width: int = 640
    height: int = 360
    scenes: tuple[str, ...] = SCENES


def run_setting(adapter: QwenVLAdapter, bench: BenchConfig, scene: str, compression: CompressionConfig,
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
def reuse_error(adapter: QwenVLAdapter, bench: BenchConfig, size: tuple[int, int], scene: str,
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
def tower_timing(adapter: QwenVLAdapter, size: tuple[int, int], bench: BenchConfig) -> dict:
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


def graphs_effect(adapter: QwenVLAdapter, bench: BenchConfig) -> dict:
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


def run(bench: BenchConfig) -> dict:
    adapter = QwenVLAdapter(load_model(bench.model, bench.device))
    size = fit_size(bench.height, bench.width, adapter.loaded.max_pixels, adapter.patch * adapter.merge)  # as Session
    result = {"settings": {**bench.__dict__, "scenes": list(bench.scenes), "device": str(adapter.device),
                           "gpu": torch.cuda.get_device_name() if adapter.device.type == "cuda" else None,
                           "defaults": CompressionConfig().__dict__},
              "tower": tower_timing(adapter, size, bench), "scenes": {}}
    for scene in bench.scenes:
        result["scenes"][scene] = {name: run_setting(adapter, bench, scene, c) for name, c in SETTINGS.items()}
        result["scenes"][scene]["reuse"]["error"] = reuse_error(adapter, bench, size, scene,
                                                                CompressionConfig().reuse_threshold)
    if adapter.device.type == "cuda":
        result["graphs"] = graphs_effect(adapter, bench)
    return result


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [f"Model {s['model']} on {s['gpu'] or s['device']}; {s['seconds']:g} s of each synthetic scene at "
             f"{s['width']}x{s['height']}, {s['fps']:g} fps, 1-s chunks; narration and retrieval off. Medians "
             f"after {WARMUP_CHUNKS} warm-up chunks. Defaults: reuse threshold {s['defaults']['reuse_threshold']}, "
             f"prune threshold {s['defaults']['prune_threshold']}, keep floor {s['defaults']['keep_floor']}.", "",
             "| scene | setting | visual tokens / s of video | encoder full / partial / reused | encoder skipped "
             "| vision ms | prune ms | prefill ms | reuse error (mean / max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    tower = result["tower"]
    lines[1:1] = ["", f"One chunk through the vision tower: transformers' own forward {tower['transformers_tower_ms']:.1f} ms, "
                      f"LiveSight's block-by-block full pass {tower['livesight_full_pass_ms']:.1f} ms (what 'off' runs)."
                      + ("" if "graph_vs_eager" not in tower else " CUDA-graph passes against eager ones, largest "
                         "relative difference: " + ", ".join(f"{m} {e:.1e}" for m, e in tower["graph_vs_eager"]) + ".")]
    if "graphs" in result:
        lines[3:3] = ["", "Language-model steps replayed from CUDA graphs (as every row below) against run eagerly, quiet "
                      "scene, prefill ms per chunk: " + "; ".join(
                          f"{name} {g['prefill_ms_p50_eager']:.1f} eager → {g['prefill_ms_p50_graphs']:.1f} graphs "
                          f"(logits differ by at most {g['max_logit_diff']:.1e} relative)"
                          for name, g in result["graphs"].items()) + "."]
    for scene, settings in result["scenes"].items():
        for name, r in settings.items():
            p = r["encoder_passes"]
            err = f"{r['error']['mean']:.3f} / {r['error']['max']:.3f}" if "error" in r else "—"
            lines.append(f"| {scene} | {name} | {r['tokens_per_s']:g} of {r['grid_tokens_per_chunk'] * r['chunks'] / s['seconds']:g} "
                         f"| {p['full']} / {p['partial']} / {p['reused']} | {100 * r['encoder_skipped']:.1f} % "
                         f"| {r['vision_ms_p50']:.1f} | {r['prune_ms_p50']:.1f} | {r['prefill_ms_p50']:.1f} "
                         f"| {err} |")
    lines += ["", "Change against compression off, on the same scene (medians per chunk):", "",
              "| scene | vision ms, off → reuse+prune | change | prefill ms, off → reuse+prune | change |",
              "|---|---|---|---|---|"]
    for scene, settings in result["scenes"].items():
        off, on = settings["off"], settings["reuse+prune"]
        dv = 100 * (on["vision_ms_p50"] / off["vision_ms_p50"] - 1)
        dp = 100 * (on["prefill_ms_p50"] / off["prefill_ms_p50"] - 1)
        lines.append(f"| {scene} | {off['vision_ms_p50']:.1f} → {on['vision_ms_p50']:.1f} | {dv:+.1f} % "
                     f"| {off['prefill_ms_p50']:.1f} → {on['prefill_ms_p50']:.1f} | {dp:+.1f} % |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    parser.add_argument("--model", default=d.model, help="tiny-random | random-3b | random-7b | a checkpoint folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--seconds", type=float, default=d.seconds, help="seconds of each scene")
    parser.add_argument("--scenes", default=",".join(d.scenes), help=f"comma-separated, of {', '.join(SCENES)}")
    parser.add_argument("--size", default=f"{d.width}x{d.height}", help="WIDTHxHEIGHT of the synthetic video")
    parser.add_argument("--out", default="out/compression", help="folder for compression.json and compression.md")


def main(args) -> int:
    scenes = tuple(s.strip() for s in args.scenes.split(",") if s.strip())
    if not scenes or any(s not in SCENES for s in scenes):
        raise InputError(f"bad --scenes '{args.scenes}': a comma-separated list of {', '.join(SCENES)}")
    if args.seconds < 5:
        raise InputError(f"--seconds must be at least 5 (got {args.seconds:g}): the medians skip a warm-up")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"bad --size '{args.size}': write WIDTHxHEIGHT, e.g. 640x360") from None
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    bench = BenchConfig(args.model, device, args.seconds, 2.0, width, height, scenes)
    result = run(bench)
    text = markdown(result)
    report.save(args.out, "compression", result, text)
    print(text)
    return 0
