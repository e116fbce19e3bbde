"""`livesight bench streams`'s command line and its outputs: streams.json, streams.md, streams.png.

streams.json and streams.md are written again after every run, so a run cut short (a time-boxed GPU
job) leaves every count it finished ("finished": false until the last); streams.png comes at the end,
or from them: python -m livesight.eval.streams_report --render FOLDER.
"""

import argparse
import os
import platform
import sys
from dataclasses import asdict

import psutil

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import ARRIVALS, StreamsConfig
from livesight.eval.output import writable_folder
from livesight.eval.streams_summary import markdown, plot, summarize
from livesight.progress import progress
from livesight.streaming.config import GB
from livesight.streaming.options import ENGINE, KV_DTYPES, Bound, check_gates_path, resolve_device

SECONDS = Bound(float, 1, 86400, why="stream seconds, at most a day")


class Counts(Bound):
    """Stream counts, comma-separated, each within the bound: '8,1,16' -> (1, 8, 16); 'none' -> () where
    `none` allows no counts."""

    def __init__(self, none: bool = False):
        super().__init__(int, 1, 4096, why="streams")
        self.none = none

    def __call__(self, text: str) -> tuple[int, ...]:
        if self.none and text.strip().lower() == "none":
            return ()
        try:
            return tuple(sorted({self.parse(part) for part in text.split(",")}))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} in {text!r}: write counts like 1,8,16") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = StreamsConfig()
    join = ",".join
    parser.add_argument("--model", default=d.model,
                        help="tiny-random | random-3b | random-7b | a checkpoint folder (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--streams", type=Counts(), default=d.streams, metavar="N,N,...",
                        help=f"stream counts the engine is measured at (default {join(map(str, d.streams))})")
    parser.add_argument("--narration", choices=("both", "on", "off"), default="both",
                        help="measure each count with narration, without, or both (default %(default)s)")
    parser.add_argument("--narrate-tokens", type=Bound(int, 1, 4096), default=d.narrate_tokens[0],
                        help="tokens narrated per chunk when narrating (default %(default)s)")
    parser.add_argument("--seconds", type=SECONDS, default=d.seconds,
                        help="stream seconds measured at each count, after the warm-up (default %(default)s)")
    parser.add_argument("--warmup-seconds", type=Bound(float, 0, 3600, why="stream seconds"), default=d.warmup_s,
                        help="stream seconds before the measured run, fed as fast as the streams take them (the "
                             "last 2 s live): the window fills, and past it blocks are offloaded (default %(default)s)")
    parser.add_argument("--fps", type=ENGINE["fps"], default=d.fps, help="frames per second (default %(default)s)")
    parser.add_argument("--window", type=Bound(float, 1, 3600, why="seconds"), default=d.window_s,
                        help="vision window, seconds (default %(default)s)")
    parser.add_argument("--compression", action=argparse.BooleanOptionalAction, default=d.compression,
                        help="encoder reuse and token pruning (default: on)")
    parser.add_argument("--partial", action=argparse.BooleanOptionalAction, default=d.partial,
                        help="re-encode only the changed regions of a chunk, per stream (default: off: a changed "
                             "chunk gets the full vision pass, batched across streams)")
    parser.add_argument("--retrieval", action=argparse.BooleanOptionalAction, default=d.retrieval,
                        help="offload evicted video and retrieve for each question (default: on)")
    parser.add_argument("--ask-every", type=Bound(float, 0, 3600, low_open=True, why="seconds"),
                        default=d.ask_every_s, help="a question to a random stream every so many seconds of the "
                                                    "measured run (default %(default)s)")
    parser.add_argument("--baseline-streams", type=Counts(none=True), default=d.baseline_streams, metavar="N,N,...",
                        help="counts at which today's way (Sessions taking turns under one lock) is measured; "
                             f"none: not at all (default {join(map(str, d.baseline_streams))})")
    parser.add_argument("--arrivals", choices=ARRIVALS, default=d.arrivals,
                        help="spread: stream i's chunk arrives at i/N of each period; together: all at once "
                             "(default %(default)s)")
    parser.add_argument("--latency-bound", type=Bound(float, 0, 600, low_open=True, why="seconds"),
                        default=d.latency_bound_s, help="the p99 chunk-to-caption latency within which a count "
                                                        "keeps real time (default %(default)s)")
    parser.add_argument("--offload-ram-gb", type=ENGINE["offload_ram_gb"], default=None,
                        help="RAM for each stream's offloaded blocks, GB; no disk (default: half the available RAM "
                             "over the largest count, at most 1)")
    parser.add_argument("--stop-at-miss", action="store_true",
                        help="in each narration mode, skip the counts above the first that misses real time "
                             "(default: measure every count)")
    parser.add_argument("--memory-seconds", type=Bound(float, 0, 86400, why="stream seconds"),
                        default=d.memory_seconds, help="then run the headline count this long, for GPU memory over "
                                                       "time; 0: no such run (default %(default)s)")
    parser.add_argument("--bandwidth-tbs", type=Bound(float, 0, 1e3, low_open=True), default=d.bandwidth_tbs,
                        help="memory bandwidth for the floor estimate, TB/s (default %(default)s: H200 measured)")
    parser.add_argument("--peak-tflops", type=Bound(float, 0, 1e5, low_open=True), default=d.peak_tflops,
                        help="matmul TFLOP/s for the floor estimate (default %(default)s: H200 bf16 measured)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default=d.kv_dtype,
                        help="the pool's keys and values as the model computes them, or fp8 (default %(default)s)")
    parser.add_argument("--duo", metavar="GATES", default=None,
                        help="DuoAttention gates (`livesight calibrate duo`'s folder or duo_gates.json): the heads "
                             "they mark keep only each stream's first and latest tokens (default: none)")
    parser.add_argument("--duo-sparsity", type=ENGINE["duo_sparsity"], default=d.duo_sparsity,
                        help="with --duo, the share of KV heads that stream (default %(default)s)")
    parser.add_argument("--out", default="out/streams",
                        help="folder for streams.json, streams.md, streams.png, created if missing; by convention "
                             "results/streams/<hardware> (default %(default)s)")


def config_from(args) -> StreamsConfig:
    modes = {"both": (args.narrate_tokens, 0), "on": (args.narrate_tokens,), "off": (0,)}[args.narration]
    largest = max(args.streams + args.baseline_streams, default=1)
    ram_gb = args.offload_ram_gb if args.offload_ram_gb is not None else \
        min(1.0, int(0.5 * psutil.virtual_memory().available / GB / largest * 1000) / 1000)
    return StreamsConfig(args.model, resolve_device(args.device), args.streams, modes, args.seconds,
                         args.warmup_seconds, args.fps, args.window, args.compression, args.retrieval, args.ask_every,
                         args.baseline_streams, args.arrivals, args.latency_bound, ram_gb, args.stop_at_miss,
                         args.memory_seconds, args.bandwidth_tbs, args.peak_tflops, partial=args.partial,
                         kv_dtype=args.kv_dtype, duo_gates=args.duo, duo_sparsity=args.duo_sparsity)


def main(args) -> int:
    check_gates_path(args.duo)  # before torch: a mistake costs no import
    from livesight.eval.streams import session_config
    cfg = config_from(args)
    for narrate_tokens in cfg.narrate_tokens:
        try:
            session_config(cfg, narrate_tokens)
        except ValueError as err:  # the settings' checks across fields (fps x chunk seconds)
            raise InputError(str(err)) from None
    writable_folder(args.out)
    result = measure(cfg, args.out)
    print(markdown(result), end="")
    return 0


def measure(cfg: StreamsConfig, out: str) -> dict:
    """Every planned run, the outputs saved after each; then the memory run, if asked for."""
    from livesight.eval.streams import run_count, session_config
    from livesight.eval.streams_floor import model_facts
    from livesight.streaming.stream import duo_heads
    from livesight.eval.streams_load import ChunkPool
    from livesight.models.registry import load_adapter
    adapter = load_adapter(cfg.model, cfg.device)
    size = adapter.frame_size((cfg.height, cfg.width), adapter.loaded.max_pixels)  # as a Stream
    frames_per_chunk = round(cfg.fps * cfg.chunk_s)
    pool = ChunkPool(size, frames_per_chunk, cfg.fps, cfg.chunk_s)
    result = {"config": asdict(cfg) | {"chunk_s": cfg.chunk_s}, "hardware": hardware(), "frame_size": list(size),
              "finished": False, "model": model_facts(adapter, size, frames_per_chunk, cfg.kv_dtype,
                                                      duo_heads(adapter, session_config(cfg, 0))),
              "modes": {str(m): {"engine": [], "today": []} for m in cfg.narrate_tokens}}
    # count by count, both modes at each: a run cut short loses the largest counts, not a whole mode
    plan = [(m, way, n) for way, ns in (("engine", cfg.streams), ("today", cfg.baseline_streams)) for n in ns
            for m in cfg.narrate_tokens]
    stopped: dict[tuple, str] = {}  # (mode, way) -> why its larger counts are skipped
    with progress(len(plan) + bool(cfg.memory_seconds), "bench streams", unit="runs", every_s=0) as bar:
        for mode, way, n in plan:
            runs = result["modes"][str(mode)][way]
            if (mode, way) in stopped:
                runs.append({"way": way, "streams": n, "skipped": stopped[(mode, way)]})
            else:
                bar.describe(f"{way}, {n} stream{'s' * (n != 1)}, {mode} narrated tokens")
                run = run_count(way, adapter, cfg, pool, n, mode, cfg.seconds)
                runs.append(run)
                print(run_line(mode, run), file=sys.stderr, flush=True)
                if not run["fits"]:
                    stopped[(mode, way)] = f"{n} streams did not fit"
                elif cfg.stop_at_miss and not run["kept_real_time"]:
                    stopped[(mode, way)] = f"{n} streams missed real time"
            bar.update()
            save(result, out)
        if cfg.memory_seconds:
            result["memory_run"] = memory_run(result, cfg, adapter, pool)
            bar.update()
    result["finished"] = True
    save(result, out)
    plot(result, os.path.join(out, "streams.png"))
    return result


def memory_run(result: dict, cfg: StreamsConfig, adapter, pool) -> dict:
    """The engine at the headline count (narrated if any count kept real time there) for memory_seconds."""
    from livesight.eval.streams import run_count
    summary = summarize(result)
    mode = next((m for m in cfg.narrate_tokens if summary[str(m)]["headline"]), cfg.narrate_tokens[0])
    count = summary[str(mode)]["headline"] or cfg.streams[0]
    print(f"memory run: {count} streams, {mode} narrated tokens, {cfg.memory_seconds:g} s", file=sys.stderr)
    return {"narrate_tokens": mode} | run_count("engine", adapter, cfg, pool, count, mode, cfg.memory_seconds)


def run_line(mode: int, run: dict) -> str:
    """One line per run on stderr: how far a long job got, and what it found."""
    n = run["streams"]
    head = f"{run['way']}, {n} stream{'s' * (n != 1)}, {mode} narrated tokens: "
    if not run["fits"]:
        return head + f"does not fit: {run['error']}"
    lat, c = run["latency_ms"], run["chunks"]
    return head + (f"{run['video_s_per_wall_s']} video-s/wall-s, real time {'yes' if run['kept_real_time'] else 'NO'}, "
                   f"latency p50/p99 {lat['p50']}/{lat['p99']} ms, TTFT p99 {run['ttft_ms']['p99']} ms, "
                   f"dropped {c['dropped']}, shortened {c['shortened']}, missing {c['missing']}")


def save(result: dict, out: str) -> None:
    """streams.json and streams.md as they stand (the plot comes at the end, or from --render)."""
    result["summary"] = summarize(result)
    report.save(out, "streams", result, markdown(result))


def hardware() -> dict:
    import torch
    import transformers
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    memory_gb = round(torch.cuda.get_device_properties(0).total_memory / GB, 1) if gpu else None
    return {"gpu": gpu, "gpu_memory_gb": memory_gb, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def render(folder: str) -> None:
    """streams.md and streams.png again from a run's streams.json."""
    report.rerender(folder, "streams", markdown, plot,
                    prepare=lambda result: result.update(summary=summarize(result)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Render streams.md and streams.png from FOLDER/streams.json")
    parser.add_argument("--render", metavar="FOLDER", required=True)
    render(parser.parse_args().render)
