"""`livesight run | web | demo | synth | bench`: the command-line front end.

Bad input gets one line naming the input and the fix, and exit code 2; never a traceback.
"""

import argparse
import json
import logging
import os
import queue
import sys
import tempfile
import threading

from livesight.errors import InputError

EXIT_BAD_INPUT = 2


def parse_ask(text: str) -> tuple[float, str]:
    """'SECONDS:question' -> (seconds, question)."""
    seconds, sep, question = text.partition(":")
    try:
        value = float(seconds)
    except ValueError:
        value = -1.0
    if not sep or value < 0 or not question.strip():
        raise argparse.ArgumentTypeError(f"malformed --ask '{text}': write SECONDS:question, e.g. --ask \"12:what is red?\"")
    return value, question.strip()


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
        return value
    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livesight", description="Streaming video assistant.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch a source, narrate, answer questions")
    run.add_argument("--source", required=True, help="video file, webcam:N, rtsp://..., http(s)://..., or "
                     "synthetic[:static|quiet|shapes|busy]")
    add_engine_args(run)
    run.add_argument("--ask", action="append", type=parse_ask, default=[], metavar="SECONDS:QUESTION",
                     help="ask QUESTION when the stream reaches SECONDS (repeatable)")
    run.add_argument("--realtime", action="store_true", help="pace a file or synthetic source at real time")
    run.add_argument("--json", action="store_true", help="one JSON object per event on stdout")

    web = sub.add_parser("web", help="the web UI: watch a file, webcam or camera, narrate and ask in a browser")
    web.add_argument("--model", default="tiny-random",
                     help="tiny-random | random-3b | random-7b | a local checkpoint folder | a hub id")
    web.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve the network)")
    web.add_argument("--port", type=positive(int), default=7860)
    web.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    web.add_argument("--max-streams", type=positive(int), default=2,
                     help="streams running at once; a visitor past that is told the server is busy")
    web.add_argument("--max-upload-mb", type=positive(int), default=500, help="largest video upload accepted")

    demo = sub.add_parser("demo", help="write a synthetic clip and run it with tiny-random")
    demo.add_argument("--seconds", type=positive(float), default=20.0)
    demo.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    from livesight.eval import fidelity_report
    fidelity_report.add_arguments(bench.add_parser(
        "fidelity", help="cache policies on trained SmolLM2-135M: perplexity and passkey recall (CPU)"))
    from livesight.eval import compression
    compression.add_arguments(bench.add_parser(
        "compression", help="encoder reuse and token pruning on the synthetic scenes: tokens, encoder calls, time"))

    synth = sub.add_parser("synth", help="write a synthetic video (moving shapes and a clock)")
    synth.add_argument("out", help="output file, e.g. clip.mp4")
    synth.add_argument("--seconds", type=positive(float), required=True)
    synth.add_argument("--fps", type=positive(float), default=30.0)
    synth.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    synth.add_argument("--scene", default="shapes", help="static | quiet | shapes | busy (default shapes)")
    return parser


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-random",
                   help="tiny-random | random-3b | random-7b | a local checkpoint folder | a hub id")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--fps", type=positive(float), default=2.0, help="frames sampled per second of video")
    p.add_argument("--seconds", type=positive(float), default=None,
                   help="stop after this many stream seconds (and the length of synthetic; default 30 for it)")
    p.add_argument("--chunk-seconds", type=positive(float), default=1.0)
    p.add_argument("--vision-window", type=positive(float), default=16.0, help="seconds of video kept in the cache")
    p.add_argument("--text-sink", type=non_negative_int, default=512, help="first text tokens always kept")
    p.add_argument("--text-window", type=non_negative_int, default=512, help="last text tokens kept")
    p.add_argument("--narrate-tokens", type=non_negative_int, default=20)
    p.add_argument("--no-narrate", dest="narrate", action="store_false")
    p.add_argument("--answer-tokens", type=positive(int), default=64)
    p.add_argument("--max-pixels", type=positive(int), default=None, help="frame area fed to the model")
    p.add_argument("--retrieve", action=argparse.BooleanOptionalAction, default=True,
                   help="offload evicted video and bring back what a question needs (default: on)")
    p.add_argument("--retrieve-top-k", type=non_negative_int, default=8, help="blocks (chunks) brought back per question")
    p.add_argument("--retrieve-scope", choices=("layer", "global"), default="layer",
                   help="layer: each layer picks its own top-k (ReKV); global: one set for all layers")
    p.add_argument("--offload-ram-gb", type=non_negative_float, default=4.0, help="pinned-RAM budget for offloaded KV")
    p.add_argument("--offload-disk-gb", type=non_negative_float, default=16.0, help="disk budget for offloaded KV")
    p.add_argument("--offload-dir", default=None, help="folder for spilled blocks (default: a new temporary folder)")
    add_compression_args(p)
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on a GPU, replay vision passes and language-model steps from CUDA graphs (default on)")


def add_compression_args(p: argparse.ArgumentParser) -> None:
    from livesight.streaming.config import CompressionConfig
    d = CompressionConfig()
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=d.reuse,
                   help="reuse the vision encoder's work for regions that did not change (default: on)")
    p.add_argument("--reuse-threshold", type=non_negative_float, default=d.reuse_threshold,
                   help="mean pixel change (0..1) up to which a region counts as unchanged; 0: only identical "
                        "chunks are reused, exactly (default %(default)s)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=d.prune,
                   help="drop visual tokens the model already has before they reach it (default: on)")
    p.add_argument("--keep-ratio", type=positive(float), default=d.keep_ratio,
                   help="the most of a chunk's visual tokens kept, most novel first (default %(default)s)")
    p.add_argument("--keep-floor", type=non_negative_float, default=d.keep_floor,
                   help="the least kept of a chunk that changed, so a scene cut is never starved (default %(default)s)")
    p.add_argument("--prune-threshold", type=non_negative_float, default=d.prune_threshold,
                   help="1 - cosine similarity at or below which a token is redundant (default %(default)s)")


def compression_config(args):
    from livesight.streaming.config import CompressionConfig
    try:
        return CompressionConfig(args.reuse, args.reuse_threshold, args.prune, args.keep_ratio, args.keep_floor,
                                 args.prune_threshold)
    except ValueError as err:
        raise InputError(str(err)) from None


def session_config(args):
    from livesight.streaming.config import SessionConfig
    from livesight.streaming.retrieval import RetrievalConfig
    try:
        if args.offload_dir is not None and not os.path.isdir(args.offload_dir):
            raise ValueError(f"--offload-dir {args.offload_dir} is not a folder: create it or leave the flag out")
        retrieval = RetrievalConfig(args.retrieve, args.retrieve_top_k, args.retrieve_scope, args.offload_ram_gb,
                                    args.offload_disk_gb, args.offload_dir)
        return SessionConfig(fps=args.fps, chunk_seconds=args.chunk_seconds, vision_window_s=args.vision_window,
                             text_sink=args.text_sink, text_window=args.text_window, narrate=args.narrate,
                             narrate_tokens=args.narrate_tokens, answer_tokens=args.answer_tokens,
                             max_pixels=args.max_pixels, retrieval=retrieval, compression=compression_config(args),
                             cuda_graphs=args.cuda_graphs)
    except ValueError as err:
        raise InputError(str(err)) from None


def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown --device '{name}': use auto, cpu, cuda or cuda:N")
    return name


def start_stdin_questions() -> "queue.Queue[str]":
    """Questions typed on stdin, one per line, for live sources."""
    questions: "queue.Queue[str]" = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                questions.put(line.strip())

    threading.Thread(target=read, name="livesight-stdin", daemon=True).start()
    return questions


def print_event(event, as_json: bool) -> None:
    if as_json:
        print(json.dumps(event.to_dict(), ensure_ascii=False), flush=True)
        return
    d = event.data
    if event.type == "metrics":
        kv = d["kv_tokens"]
        line = (f"chunk {d['chunk']}: kv sink {kv['sink']} vision {kv['vision']} text {kv['text']} "
                f"(cap {d['kv_capacity']}), max pos {d['max_position']}, vision {d['vision_ms']:.0f} ms, "
                f"prefill {d['prefill_ms']:.0f} ms, decode {d['decode_ms']:.0f} ms, rss {d['rss_mb']:.0f} MB")
        vt = d["vision_tokens"]
        line += f", visual tokens {vt['kept']}/{vt['grid']} (encoder {d['encoder']})"
        if "gpu_mem_mb" in d:
            line += f", gpu {d['gpu_mem_mb']:.0f} MB"
    elif event.type == "answer":
        line = f"Q: {d['question']}\n{'':9}A: {event.text}  ({d['ttft_ms']:.0f} ms to first token)"
        if d.get("retrieved"):
            moments = ", ".join(f"{a:g}-{b:g} s" for a, b in d["retrieved"][:6])
            more = f" and {len(d['retrieved']) - 6} more" if len(d["retrieved"]) > 6 else ""
            line += f"\n{'':9}drew on: {moments}{more}"
    elif event.type == "summary":
        line = (f"{d['chunks']} chunks in {d['wall_s']:.1f} s: {d['chunks_per_s']} chunks/s, "
                f"real-time factor {d['realtime_factor']}")
    else:
        line = event.text or ""
    print(f"[{event.t:7.1f}s] {event.type:8} {line}", flush=True)


def run(args) -> int:
    from livesight.streaming.adapter import QwenVLAdapter
    from livesight.streaming.chunker import chunk_frames
    from livesight.streaming.loop import run_stream
    from livesight.streaming.models import load_model
    from livesight.streaming.session import Session
    from livesight.vision.ingest import Ingest
    from livesight.vision.sources import open_source

    config = session_config(args)
    source = open_source(args.source, config.fps, args.seconds)
    try:
        adapter = QwenVLAdapter(load_model(args.model, resolve_device(args.device)))
        session = Session(adapter, config, source.size)
    except BaseException:
        source.close()
        raise
    ingest = Ingest(source, realtime=args.realtime)
    questions = start_stdin_questions() if source.is_live else None
    chunks = chunk_frames(ingest, config.frames_per_chunk, config.fps)
    try:
        for event in run_stream(session, chunks, args.ask, questions, lambda: ingest.dropped):
            print_event(event, args.json)
    finally:
        session.close()
    return 0


def demo(args) -> int:
    from livesight.vision.synthetic import write_video
    folder = tempfile.mkdtemp(prefix="livesight-demo-")
    path = os.path.join(folder, "synthetic.mp4")
    write_video(path, args.seconds)
    if not args.json:
        print(f"wrote {args.seconds:g} s of synthetic video to {path}; running it with tiny-random "
              f"(random weights: the words are noise, the engine is real)", flush=True)
    ns = build_parser().parse_args([  # a short window, so the questions draw on offloaded moments
        "run", "--source", path, "--model", "tiny-random", "--narrate-tokens", "8", "--vision-window", "4",
        "--retrieve-top-k", "2", "--ask", f"{args.seconds / 2:g}:What is moving?",
        "--ask", f"{args.seconds:g}:What happened at the start?"])
    ns.json = args.json
    return run(ns)


def synth(args) -> int:
    from livesight.vision.synthetic import write_video
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"bad --size '{args.size}': write WIDTHxHEIGHT, e.g. 640x360") from None
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise InputError(f"bad --size '{args.size}': both sides must be even and at least 32")
    count = write_video(args.out, args.seconds, args.fps, width, height, args.scene)
    print(f"wrote {count} frames ({args.seconds:g} s at {args.fps:g} fps, {width}x{height}) to {args.out}")
    return 0


def web(args) -> int:
    from livesight.app import web as web_ui
    return web_ui.main(args)


def bench(args) -> int:
    from livesight.eval import compression, fidelity_report
    return {"fidelity": fidelity_report.main, "compression": compression.main}[args.bench](args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        return {"run": run, "web": web, "demo": demo, "synth": synth, "bench": bench}[args.command](args)
    except InputError as err:
        print(f"livesight: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("livesight: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
