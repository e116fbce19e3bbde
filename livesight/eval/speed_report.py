"""`livesight bench speed`'s command line and its outputs: speed.json, speed.md, speed.png."""

import argparse
import os
import platform
from dataclasses import asdict

from livesight.eval import report
from livesight.eval.config import SpeedConfig
from livesight.eval.output import writable_folder
from livesight.progress import progress
from livesight.streaming.options import ENGINE, KV_DTYPES, Bound, check_gates_path, resolve_device
from livesight.vision.synthetic import SCENES


STREAM = Bound(float, 2, 86400, why="seconds of video, at most a day")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SpeedConfig()
    parser.add_argument("--model", default=d.model,
                        help="random-7b | random-3b | tiny-random | a checkpoint folder (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--seconds", type=STREAM, default=d.seconds,
                        help="stream length for the engine (default %(default)s)")
    parser.add_argument("--baseline-seconds", type=Bound(float, 0, STREAM.high, why="0: no baselines"),
                        default=d.baseline_seconds, help="cap for each baseline; 0: no baselines (default %(default)s)")
    parser.add_argument("--fps", type=ENGINE["fps"], default=d.fps, help="frames per second of video (default "
                                                                         "%(default)s)")
    parser.add_argument("--window", type=Bound(float, 1, 3600, why="seconds"), default=d.window_s,
                        help="vision window, seconds (default %(default)s)")
    parser.add_argument("--narrate-tokens", type=ENGINE["narrate_tokens"], default=d.narrate_tokens,
                        help="tokens narrated per chunk; 0: no narration (default %(default)s)")
    parser.add_argument("--compression", action=argparse.BooleanOptionalAction, default=d.compression,
                        help="encoder reuse and token pruning (default: on)")
    parser.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=d.retrieval,
                        help="offload evicted video and retrieve for each question (default: on)")
    parser.add_argument("--ask-every", type=Bound(float, 0, STREAM.high, low_open=True, why="stream seconds"),
                        default=d.ask_every_s, help="a question every so many stream seconds (default %(default)s)")
    parser.add_argument("--scene", default=d.scene, choices=SCENES, help="the synthetic scene (default %(default)s)")
    parser.add_argument("--peak-tflops", type=Bound(float, 0, 1e5, low_open=True, why="an H100 SXM is 989 in bf16"),
                        default=d.peak_tflops, help="the GPU's dense peak TFLOP/s, for MFU (default %(default)s)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default=d.kv_dtype,
                        help="the stream's keys and values as the model computes them, or fp8 (default %(default)s)")
    parser.add_argument("--duo", metavar="GATES", default=None,
                        help="DuoAttention gates (`livesight calibrate duo`'s folder or duo_gates.json): the heads "
                             "they mark keep only the stream's first and latest tokens (default: none)")
    parser.add_argument("--duo-sparsity", type=ENGINE["duo_sparsity"], default=d.duo_sparsity,
                        help="with --duo, the share of KV heads that stream (default %(default)s)")
    parser.add_argument("--out", default="out/speed",
                        help="folder for speed.json, speed.md, speed.png, created if missing (default %(default)s)")


def main(args) -> int:
    check_gates_path(args.duo)  # before torch: a mistake costs no import
    from livesight.eval.speed import run_baseline, run_engine, summarize
    from livesight.models.registry import load_adapter
    cfg = SpeedConfig(args.model, resolve_device(args.device), args.seconds, args.baseline_seconds, args.fps,
                      args.window, args.narrate_tokens, args.compression, args.retrieval, args.ask_every, args.scene,
                      peak_tflops=args.peak_tflops, kv_dtype=args.kv_dtype, duo_gates=args.duo,
                      duo_sparsity=args.duo_sparsity)
    writable_folder(args.out)
    adapter = load_adapter(cfg.model, cfg.device)
    if cfg.duo_gates is not None:  # the gates must fit the model before the baselines' minutes
        from livesight.kvcache.duo import load_duo
        load_duo(cfg.duo_gates, cfg.duo_sparsity, adapter.num_layers, adapter.num_kv_heads)
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


def _kv_kind(cfg: dict) -> str:
    kind = "fp8" if cfg.get("kv_dtype") == "fp8" else "model dtype"
    return kind + (f", {cfg['duo_sparsity']:.0%} of KV heads streaming" if cfg.get("duo_gates") else "")


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
             *([f"| the stream's KV cache ({_kv_kind(cfg)}) | {s['kv_bytes'] / 1e6:.1f} MB |"]
               if s.get("kv_bytes") else []),
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
    report.rerender(folder, "speed", markdown, plot)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Render speed.md and speed.png from FOLDER/speed.json")
    parser.add_argument("--render", metavar="FOLDER", required=True)
    render(parser.parse_args().render)
