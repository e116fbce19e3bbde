"""`livesight bench compression`: what encoder reuse and token pruning save, scene by scene.

Every setting streams the same synthetic scene through a real Session (narration and retrieval
off, so vision and prefill are what is timed). Per setting: visual tokens entering the cache per
second of video, encoder passes (full / partial / reused), the share of the encoder skipped, and
median vision, pruning and prefill milliseconds per chunk after a warm-up. A separate, untimed pass
measures the error of reuse: each chunk's reused tokens against a full recomputation. The
measurements are in compression_measure.py; this file is the command line, the settings and the report.
"""

import argparse

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import CompressionBenchConfig
from livesight.eval.output import writable_folder
from livesight.progress import progress
from livesight.streaming.config import CompressionConfig
from livesight.streaming.options import Bound
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


SIDE = Bound(int, 32, 3840, why="pixels")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = CompressionBenchConfig()
    parser.add_argument("--model", default=d.model,
                        help="tiny-random | random-3b | random-7b | a checkpoint folder (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--seconds", type=Bound(float, 5, 3600, why="the medians skip a warm-up"), default=d.seconds,
                        help="seconds of each scene (default %(default)s)")
    parser.add_argument("--scenes", default=",".join(d.scenes),
                        help=f"comma-separated, of {', '.join(SCENES)} (default %(default)s)")
    parser.add_argument("--size", default=f"{d.width}x{d.height}",
                        help="WIDTHxHEIGHT of the synthetic video, 32 to 3840 each (default %(default)s)")
    parser.add_argument("--out", default="out/compression",
                        help="folder for compression.json and compression.md, created if missing (default %(default)s)")


def main(args) -> int:
    from livesight.eval import compression_measure
    from livesight.streaming.options import resolve_device
    scenes = tuple(s.strip() for s in args.scenes.split(",") if s.strip())
    if not scenes or any(s not in SCENES for s in scenes):
        raise InputError(f"bad --scenes '{args.scenes}': a comma-separated list of {', '.join(SCENES)}")
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"bad --size '{args.size}': write WIDTHxHEIGHT, e.g. 640x360") from None
    width, height = SIDE.check(width, "--size width"), SIDE.check(height, "--size height")
    writable_folder(args.out)
    bench = CompressionBenchConfig(args.model, resolve_device(args.device), args.seconds, 2.0, width, height, scenes)
    with progress(compression_measure.num_phases(bench), "bench compression", unit="phases") as bar:
        result = compression_measure.run(bench, bar)
    text = markdown(result)
    report.save(args.out, "compression", result, text)
    print(text)
    return 0
