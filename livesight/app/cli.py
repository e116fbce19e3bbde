"""`livesight run | web | serve | demo | synth | bench | eval | train | calibrate`: the command-line front end.

Bad input gets one line naming the input and the fix, and exit code 2; never a traceback.
"""

import argparse
import json
import logging
import os
import sys

from livesight import scratch
from livesight.app.watch import Ask, check_asks, close_all, open_sources, stream_names, watch
from livesight.errors import InputError
from livesight.streaming.options import SECONDS, STREAM_TIME, Bound, Parser, add_engine_args, resolve_device, \
    session_config

EXIT_BAD_INPUT = 2


def parse_ask(text: str) -> Ask:
    """'[STREAM@]SECONDS:question' -> an Ask (for stream STREAM, else for every stream)."""
    head, sep, question = text.partition(":")
    stream, at, seconds = head.rpartition("@")
    example = 'write [STREAM@]SECONDS:question, e.g. --ask "12:what is red?"'
    if not sep or not question.strip() or (at and not stream.strip()):
        raise argparse.ArgumentTypeError(f"malformed --ask '{text}': {example}")
    try:
        value = STREAM_TIME.parse(seconds)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"malformed --ask '{text}': its time: {err}; {example}") from None
    return Ask(value, question.strip(), stream.strip() or None)


def _joined_asks(argv: list[str]) -> list[str]:
    """`--ask -1:…` as `--ask=-1:…`: argparse takes a value that starts with '-' for a flag, and its
    message would not say what is wrong with the time."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--ask" and i + 1 < len(argv) and argv[i + 1].startswith("-") and ":" in argv[i + 1]:
            out.append(f"--ask={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="livesight", description="Streaming video assistant.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="watch one or several sources, narrate, answer questions")
    run.add_argument("--source", action="append", required=True,
                     help="video file, webcam:N, rtsp://..., http(s)://..., or "
                          "synthetic[:static|quiet|shapes|busy|world]; "
                          "repeat it to watch several at once, each a stream named for it (a file's stem, a URL's "
                          "last path part, webcam-N, synthetic-SCENE; -2, -3, ... if taken), which prefixes its "
                          "text lines and is its events' `stream`")
    add_engine_args(run)
    run.add_argument("--seconds", type=SECONDS, default=None,
                     help="stop after this many stream seconds, and the length of synthetic (default: the whole "
                          "source; 30 for synthetic)")
    run.add_argument("--ask", action="append", type=parse_ask, default=[], metavar="[STREAM@]SECONDS:QUESTION",
                     help="ask QUESTION when the stream reaches SECONDS: every stream, or only STREAM (repeatable). "
                          "With a live source, lines typed on stdin are questions too: STREAM: QUESTION for one of "
                          "several streams")
    run.add_argument("--realtime", action="store_true",
                     help="pace a file or synthetic source at real time (default: as fast as the engine goes)")
    run.add_argument("--json", action="store_true", help="one JSON object per event on stdout (default: text lines)")

    from livesight.app import web as web_ui
    web_ui.add_arguments(sub.add_parser("web", help="the web UI: watch a file, webcam or camera, narrate and ask "
                                                    "in a browser"))

    from livesight.serve import cli as serve_cli
    serve_cli.add_arguments(sub.add_parser("serve", help="an HTTP API: add streams, read their narration as "
                                                         "Server-Sent Events, ask questions (OpenAI-compatible too)"))

    demo = sub.add_parser("demo", help="write a clip of the synthetic world and watch it with toy-vlm")
    demo.add_argument("--seconds", type=Bound(float, 4, 3600), default=40.0,
                      help="length of the synthetic clip (default %(default)s)")
    demo.add_argument("--json", action="store_true", help="one JSON object per event on stdout (default: text lines)")

    from livesight.eval import cli as eval_cli
    eval_cli.add_arguments(sub.add_parser("eval", help="StreamingBench, OVO-Bench or a VQA set through the engine: "
                                                       "scores, resumable results, several GPUs"))

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    from livesight.eval import fidelity_report
    fidelity_report.add_arguments(bench.add_parser(
        "fidelity", help="cache policies on trained SmolLM2-135M: perplexity and passkey recall (CPU)"))
    from livesight.eval import compression
    compression.add_arguments(bench.add_parser(
        "compression", help="encoder reuse and token pruning on the synthetic scenes: tokens, encoder calls, time"))
    from livesight.eval import speed_report
    speed_report.add_arguments(bench.add_parser(
        "speed", help="real-time factor, latency, decode, TTFT, memory, MFU, against plain-transformers baselines"))
    from livesight.eval import api_report, streams_report
    streams_report.add_arguments(bench.add_parser(
        "streams", help="how many live streams keep real time in one engine, against sessions taking turns"))
    api_report.add_arguments(bench.add_parser(
        "api", help="how many live streams a running `livesight serve` keeps in real time, over its HTTP API"))
    from livesight.eval import recall
    recall.add_arguments(bench.add_parser(
        "recall", help="accuracy on the synthetic world by the age of what is asked, per cache policy and compression"))

    from livesight.train import config as train_config
    train_config.add_arguments(sub.add_parser(
        "train", help="train toy-vlm, LiveSight's own small VLM, on the synthetic world"))
    from livesight.train import duo_config
    calibrate = sub.add_parser("calibrate", help="calibrations of a model").add_subparsers(dest="calibrate",
                                                                                           required=True)
    duo_config.add_arguments(calibrate.add_parser(
        "duo", help="DuoAttention: which KV heads need the whole context and which the sink and recent keys"))

    synth = sub.add_parser("synth", help="write a synthetic video (moving shapes and a clock)")
    synth.add_argument("out", help="output file, e.g. clip.mp4")
    synth.add_argument("--seconds", type=Bound(float, 0, 86400, low_open=True), required=True,
                       help="length of the video (at most a day)")
    synth.add_argument("--fps", type=Bound(float, 0, 240, low_open=True), default=30.0,
                       help="frames per second (default %(default)s)")
    synth.add_argument("--size", default="640x360", help="WIDTHxHEIGHT (default %(default)s)")
    synth.add_argument("--scene", default="shapes",
                       help="static | quiet | shapes | busy | world (default shapes); world: shapes of five kinds "
                            "and seven colours come and go, texts are shown, the background changes, all logged")
    synth.add_argument("--seed", type=Bound(int, 0, 2**31 - 1), default=0,
                       help="the world's seed (--scene world; default %(default)s)")
    synth.add_argument("--events", default=None, metavar="FILE",
                       help="--scene world: write its events, a JSON line each, to FILE (default: OUT with "
                            ".events.jsonl)")
    return parser


def print_event(event, as_json: bool, name_width: int = 0) -> None:
    """One event as a JSON line, or as text lines; name_width > 0 (several streams): each line starts
    with the event's stream, padded to that width."""
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
    text = f"[{event.t:7.1f}s] {event.type:8} {line}"
    if name_width:
        text = "\n".join(f"{event.data['stream']:<{name_width}} | {part}" for part in text.split("\n"))
    print(text, flush=True)


def run(args) -> int:
    """Every --source into one engine, a stream each, until every stream has ended. A source that
    failed on the way exits 2 with its error once all output is printed."""
    from livesight.models.registry import load_adapter
    from livesight.streaming.engine import Engine

    config = session_config(args)
    names = stream_names(args.source)
    check_asks(args.ask, names)
    sources = open_sources(args.source, config.fps, args.seconds)
    try:
        adapter = load_adapter(args.model, resolve_device(args.device))
        engine = Engine(adapter, config, max_streams=len(sources))
    except BaseException:
        close_all(sources)
        raise
    width = max(map(len, names)) if len(names) > 1 else 0
    failures = watch(engine, names, sources, args.ask, args.realtime,
                     lambda event: print_event(event, args.json, width))
    if failures:  # the transcript is complete up to where each broke; the exit says so
        raise InputError("; ".join(text if len(names) == 1 else f"stream {name}: {text}"
                                   for name, text in failures.items()))
    return 0


DEMO_WORLD = 3  # a world (vision/world.py) whose first seconds show a text, a shape and a background change


def demo(args) -> int:
    """A clip of the synthetic world, watched by toy-vlm (trained on such worlds, none of them this one):
    narration, then questions about the present and the past whose true answers are printed after."""
    import numpy as np

    from livesight.vision.synthetic import write_video
    from livesight.vision.world import World
    from livesight.vision.world_tasks import question
    world, rng = World(DEMO_WORLD), np.random.default_rng(0)
    end = int(args.seconds)
    texts = (question(world, end, second, "text", rng) for second in range(end - 1))  # the first text shown
    asked = [q for q in (question(world, end // 2, end // 2 - 1, "background", rng), next(filter(None, texts), None),
                         question(world, end, end - 1, "background", rng)) if q is not None]
    folder = scratch.make("demo")
    try:
        path = os.path.join(folder, "world.mp4")
        write_video(path, args.seconds, 10.0, frame_at=world.render)
        if not args.json:
            print(f"wrote {args.seconds:g} s of the synthetic world; watching it with toy-vlm (a 4.7M-parameter "
                  f"VLM trained here on other worlds)", flush=True)
        flags = ["run", "--source", path, "--model", "toy-vlm"]
        for q in asked:
            flags += ["--ask", f"{q['time']}:{q['question']}"]
        ns = build_parser().parse_args(flags)
        ns.json = args.json
        code = run(ns)
        if not args.json:
            for q in asked:
                print(f"at {q['time']} s, asked \"{q['question']}\": the world showed "
                      f"{q['options']['ABCD'.index(q['answer'])]}")
        return code
    finally:
        scratch.remove(folder)


def synth(args) -> int:
    from livesight.vision.synthetic import write_video
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise InputError(f"bad --size '{args.size}': write WIDTHxHEIGHT, e.g. 640x360") from None
    if width < 32 or height < 32 or width % 2 or height % 2:
        raise InputError(f"bad --size '{args.size}': both sides must be even and at least 32")
    if args.scene != "world":
        count = write_video(args.out, args.seconds, args.fps, width, height, args.scene)
        print(f"wrote {count} frames ({args.seconds:g} s at {args.fps:g} fps, {width}x{height}) to {args.out}")
        return 0
    from livesight.vision.world import World
    world = World(args.seed)
    events = args.events or os.path.splitext(args.out)[0] + ".events.jsonl"
    try:
        log = open(events, "w", encoding="utf-8")
    except OSError as err:
        raise InputError(f"--events {events}: cannot write it ({err.strerror}): give a path in a writable folder")
    with log:
        count = write_video(args.out, args.seconds, args.fps, width, height, frame_at=world.render)
        for event in world.events(0, args.seconds):
            log.write(json.dumps(event) + "\n")
    print(f"wrote {count} frames ({args.seconds:g} s at {args.fps:g} fps, {width}x{height}, world seed {args.seed}) "
          f"to {args.out}, its events to {events}")
    return 0


def web(args) -> int:
    from livesight.app import web as web_ui
    return web_ui.main(args)


def serve(args) -> int:
    from livesight.serve import cli as serve_cli
    return serve_cli.main(args)


def bench(args) -> int:
    from livesight.eval import api_report, compression, fidelity_report, recall, speed_report, streams_report
    commands = {"fidelity": fidelity_report.main, "compression": compression.main, "speed": speed_report.main,
                "streams": streams_report.main, "api": api_report.main, "recall": recall.main}
    return commands[args.bench](args)


def train(args) -> int:
    from livesight.train import toy
    return toy.main(args)


def calibrate(args) -> int:
    from livesight.train import duo_config
    return duo_config.main(args)


def evaluate(args) -> int:
    from livesight.eval import cli as eval_cli
    return eval_cli.main(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_joined_asks(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    scratch.exit_on_sigterm()  # SIGTERM ends the process through `finally`: temporary folders go
    scratch.sweep()  # and those of livesight processes killed outright earlier go now
    try:
        return {"run": run, "web": web, "serve": serve, "demo": demo, "synth": synth, "bench": bench,
                "eval": evaluate, "train": train, "calibrate": calibrate}[args.command](args)
    except InputError as err:
        print(f"livesight: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("livesight: stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
