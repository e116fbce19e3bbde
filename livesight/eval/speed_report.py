"""`livesight bench speed`'s command line and its outputs: speed.json, speed.md, speed.png."""

import argparse
import json
import os
import platform
from dataclasses import asdict

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import SpeedConfig
from livesight.eval.output import writable_folder
from livesight.progress import progress
from livesight.streaming.options import positive, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SpeedConfig()
    parser.add_argument("--model", default=d.model, help="random-7b | random-3b | tiny-random | a checkpoint folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=positive(float), default=d.seconds, help="stream length for the engine")
    parser.add_argument("--baseline-seconds", type=float, default=d.baseline_seconds,
                        help="cap for each baseline (0: no baselines)")
    parser.add_argument("--fps", type=positive(float), default=d.fps)
    parser.add_argument("--window", type=positive(float), default=d.window_s, help="vision window, seconds")
    parser.add_argument("--narrate-tokens", type=int, default=d.narrate_tokens, help="0: no narration")
    parser.add_argument("--compression", action=argparse.BooleanOptionalAction, default=d.compression)
    parser.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=d.retrieval)
    parser.add_argument("--ask-every", type=positive(float), default=d.ask_every_s)
    parser.add_argument("--scene", default=d.scene)
    parser.add_argument("--peak-tflops", type=positive(float), default=d.peak_tflops, help="for MFU")
    parser.add_argument("--out", default="out/speed")


def main(args) -> int:
    from livesight.eval.speed import run_baseline, run_engine, summarize
    from livesight.streaming.adapter import QwenVLAdapter
    from livesight.streaming.models import load_model
    cfg = SpeedConfig(args.model, resolve_device(args.device), args.seconds, args.baseline_seconds, args.fps,
                      args.window, args.narrate_tokens, args.compression, args.retrieval, args.ask_every, args.scene,
                      peak_tflops=args.peak_tflops)
    if cfg.narrate_tokens < 0:
        raise InputError(f"--narrate-tokens must be >= 0, got {cfg.narrate_tokens}")
    writable_folder(args.out)
    adapter = QwenVLAdapter(load_model(cfg.model, cfg.device))
    baselines = {}
    names = ("full", "window") if cfg.baseline_seconds > 0 else ()
    with progress(len(names) + 1, "bench speed", unit="phases") as bar:
        for name in names:  # baselines first: the engine's offload store then cannot crowd them out
            bar.describe(f"baseline {name}, {cfg.baseline_seconds:g} s of video")
            baselines[name] = run_baseline(adapter, cfg, window=name == "window")
            bar.update()
        bar.describe(f"engine, {cfg.seconds:g} s of video")
        engine = run_engine(adapter, cfg)
        bar.update()
    result = {"config": asdict(cfg), "hardware": _hardware(), "summary": summarize(engine, baselines, cfg),
              "engine": engine, "baselines": baselines}
    text = markdown(result)
    report.save(args.out, "speed", result, text)
    plot(result, os.path.join(args.out, "speed.png"))
    print(text, end="")
    return 0


def _hardware() -> dict:
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"gpu": gpu, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}


def markdown(result: dict) -> str:
    cfg, s = result["config"], result["summary"]
    split = s["split_ms_p50"]
    lines = [f"# bench speed: {cfg['model']} on {result['hardware']['gpu'] or 'CPU'}", "",
             f"{cfg['seconds']:g} s of `{cfg['scene']}` at {cfg['fps']:g} fps, window {cfg['window_s']:g} s, "
             f"narration {cfg['narrate_tokens']} tokens per chunk, "
             f"compression {'on' if cfg['compression'] else 'off'}, "
             f"retrieval {'on' if cfg['retrieval'] else 'off'}. Latency and memory after a warm-up of "
             f"{cfg['window_s'] + 10:g} s (the window fills; the first question captures the graphs questions need).",
             "",
             "| metric | value |", "|---|---|",
             f"| real-time factor (video s per wall s) | {s['realtime_factor']} |",
             f"| chunk latency p50 / p99 | {s['chunk_ms_p50']} / {s['chunk_ms_p99']} ms (p99/p50 "
             f"{s['chunk_ms_p99'] / s['chunk_ms_p50']:.2f}) |",
             f"| split p50: vision / prune / prefill / decode / evict | {split['vision_ms']} / {split['prune_ms']} / "
             f"{split['prefill_ms']} / {split['decode_ms']} / {split['evict_ms']} ms |",
             f"| outside the chunk p50 (metrics, frames waiting) | {s['outside_chunk_ms_p50']} ms |",
             f"| decode per token p50 | {s['decode_ms_per_token_p50']} ms |",
             f"| prefill MFU p50 (of {cfg['peak_tflops']:g} TFLOP/s) | {100 * s['prefill_mfu_p50']:.1f} % |",
             f"| memory min / max (spread) | {s['mem_mb_min_max'][0]:.0f} / {s['mem_mb_min_max'][1]:.0f} MB "
             f"({100 * s['mem_spread']:.2f} %) |"]
    for q in s["questions"]:
        lines.append(f"| question at {q['t']:g} s ({q['offloaded_blocks']} blocks offloaded) | time to first token "
                     f"{q['ttft_ms']} ms |")
    if s["compare"]:
        lines += ["", "| stream time | LiveSight ms | full context ms (×) | window re-prefill ms (×) |",
                  "|---|---|---|---|"]
        for row in s["compare"]:
            lines.append(f"| {row['from_s']:g}–{row['to_s']:g} s | {row['livesight_ms']} | {row.get('full_ms')} "
                         f"({row.get('full_ratio')}×) | {row.get('window_ms')} ({row.get('window_ratio')}×) |")
        stopped = {k: v for k, v in s["baselines_stopped"].items() if v}
        if stopped:
            lines.append("")
            lines += [f"Baseline {k} stopped: {v}." for k, v in stopped.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    series = {"LiveSight": result["engine"]["rows"], **{f"baseline: {k}": v["rows"] for k, v in
                                                          result["baselines"].items()}}
    for name, rows in series.items():
        top.plot([r["t"] for r in rows], [r["chunk_ms"] for r in rows], label=name, linewidth=0.8)
        bottom.plot([r["t"] for r in rows], [r["mem_mb"] for r in rows], label=name, linewidth=0.8)
    top.set_ylabel("latency per 1-s chunk (ms)")
    top.set_yscale("log")
    bottom.set_ylabel("memory (MB)")
    bottom.set_xlabel("stream time (s)")
    top.legend()
    fig.suptitle(f"{result['config']['model']} on {result['hardware']['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(folder: str) -> None:
    """speed.md and speed.png again from a run's speed.json (a GPU run that returned only the JSON)."""
    with open(os.path.join(folder, "speed.json")) as f:
        result = json.load(f)
    with open(os.path.join(folder, "speed.md"), "w") as f:
        f.write(markdown(result))
    plot(result, os.path.join(folder, "speed.png"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Render speed.md and speed.png from FOLDER/speed.json")
    parser.add_argument("--render", metavar="FOLDER", required=True)
    render(parser.parse_args().render)
