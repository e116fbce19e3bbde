"""`livesight eval streamingbench | ovobench | vqa`: a benchmark through the streaming engine.

    livesight eval streamingbench --data FILE --videos DIR --out DIR [--model …] [--protocol stream|official]
                                  [--context all|60] [--tasks …] [--limit N] [--concurrent K] [engine flags]
    accelerate launch --num_processes N -m livesight.eval streamingbench …   (videos sharded over N processes)

Writes OUT/results.jsonl (a line per question, appended as made), OUT/summary.json and
OUT/summary.md. A rerun into the same OUT skips what is done.
"""

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time

from livesight.errors import InputError
from livesight.eval import ovobench, report, streamingbench, vqa
from livesight.eval.output import writable_folder
from livesight.eval.results import ResultsLog, _atomic_write
from livesight.eval.runner import RunStats, evaluate
from livesight.progress import progress
from livesight.streaming.options import STREAM_TIME, Bound, add_engine_args, resolve_device, session_config

LOADERS = {"streamingbench": streamingbench.load, "ovobench": ovobench.load, "vqa": vqa.load}
log = logging.getLogger("livesight.eval")
LIMIT = Bound(int, 1, 1_000_000, why="questions; the largest benchmark has a few thousand")
CONTEXT = Bound(float, 0, STREAM_TIME.high, low_open=True, why="seconds of video before a question")
CONCURRENT = Bound(int, 1, 256, why="videos evaluated at once, each a stream of one engine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)
    helps = {"streamingbench": "StreamingBench (GitHub JSON or Hugging Face CSV)",
             "ovobench": "OVO-Bench (its ovo_bench.json annotation format)",
             "vqa": "a generic JSONL of video, time, question, options, answer"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", required=True, help=f"the benchmark's question file, in {name}'s format (required)")
        p.add_argument("--videos", required=True,
                       help="folder the videos are resolved in, as the data names them: no absolute path or '..'; "
                            "symlinks inside it are followed (required)")
        p.add_argument("--out", required=True, help="results folder, created if missing; a rerun into it resumes "
                                                    "(required)")
        p.add_argument("--protocol", choices=("stream", "official"), default="stream",
                       help="stream: one pass per video, each question at its time; official: the video cut at each "
                            "question's time, a fresh stream each, as the benchmark's script does (default stream)")
        p.add_argument("--context", default="all", type=_context,
                       help="all or SECONDS: how much video before a question the model may use (default all)")
        p.add_argument("--tasks", default=None,
                       help="comma-separated task names or abbreviations, e.g. OP,CT (default: every task)")
        p.add_argument("--limit", type=LIMIT, default=None, help="only the first N questions (default: all)")
        p.add_argument("--concurrent", type=CONCURRENT, default=1,
                       help="videos (or cuts of one) evaluated at once, batched in one engine; the results are "
                            "those of one at a time (default %(default)s)")
        p.add_argument("--retry-errors", action="store_true",
                       help="ask again the questions whose results are error lines, a video added or fixed since "
                            "(default: they are kept)")
        add_engine_args(p, narrate=False, answer_tokens=16)


def _context(text: str) -> float | None:
    if text.strip() == "all":
        return None
    try:
        return CONTEXT.parse(text)
    except ValueError as err:  # "expected a number ..." -> "expected all or a number ..."
        raise argparse.ArgumentTypeError(str(err).replace("expected ", "expected all or ", 1)) from None


def load_questions(args) -> tuple[list, list]:
    """-> (every question in --data, those --tasks and --limit select)."""
    if not os.path.isfile(args.data):
        raise InputError(f"--data {args.data}: no such file. Download the benchmark's question file (README: "
                         f"Benchmarks) and give its path")
    if not os.path.isdir(args.videos):
        raise InputError(f"--videos {args.videos} is not a folder: give the folder that holds the benchmark's videos")
    questions = everything = LOADERS[args.benchmark](args.data)  # InputError: not that benchmark's file
    _unique_ids(questions)
    if args.tasks:
        name = {"streamingbench": streamingbench.task_name, "ovobench": str.upper, "vqa": str}[args.benchmark]
        wanted = {name(t.strip()) for t in args.tasks.split(",") if t.strip()}
        known = {q.task for q in questions}
        if not wanted & known:
            raise InputError(f"--tasks {args.tasks}: none of these tasks is in {args.data} "
                             f"(it has {', '.join(sorted(known))})")
        questions = [q for q in questions if q.task in wanted]
    return everything, questions[:args.limit] if args.limit else questions


def _unique_ids(questions: list) -> None:
    """A repeated id (the data's own question_id or id) gets a suffix: each question keeps its line."""
    seen: dict[str, int] = {}
    for q in questions:
        count = seen[q.id] = seen.get(q.id, 0) + 1
        if count > 1:
            log.warning("question id %s repeats in the data: this one is %s~%d", q.id, q.id, count)
            q.id = f"{q.id}~{count}"


def _identity(args, config) -> dict:
    """What the answers depend on: a rerun into the same --out must match it."""
    with open(args.data, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    engine = dataclasses.asdict(config)
    engine["retrieval"].pop("folder")
    engine.pop("max_question_tokens")
    return {"benchmark": args.benchmark, "data_sha256": digest, "model": args.model, "protocol": args.protocol,
            "context": "all" if args.context is None else args.context, "engine": engine}


def _processes() -> tuple[int, int]:
    """(rank, world). Launched as several processes (accelerate launch, torchrun: the env:// variables
    are set), they join a gloo group: they meet only at the end, over the CPU, and may share a GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))  # a shard may finish hours early
    return dist.get_rank(), dist.get_world_size()


def main(args) -> int:
    logging.getLogger("livesight.eval").setLevel(logging.INFO)
    config = session_config(args)
    if args.protocol == "stream" and args.context is not None:  # only the last `context` seconds: no history
        if args.context < config.chunk_seconds:
            raise InputError(f"--context {args.context:g}: the stream protocol keeps whole chunks of video; give at "
                             f"least --chunk-seconds ({config.chunk_seconds:g} s), or --protocol official")
        config = dataclasses.replace(config, vision_window_s=min(config.vision_window_s, args.context),
                                     retrieval=dataclasses.replace(config.retrieval, enabled=False))
    writable_folder(args.out)
    everything, questions = load_questions(args)
    rank, world = _processes()
    results = ResultsLog(args.out, rank, world)
    results.check_run(_identity(args, config))
    done = results.done()
    todo = [q for q in questions if q.id not in done or (args.retry_errors and "error" in done[q.id])]
    mine = _shard(todo, rank, world)
    start = time.perf_counter()
    stats = RunStats()
    if mine:
        stats = _run(args, config, mine, everything, results, "" if world == 1 else f" (process {rank + 1} of {world})")
    results.close()
    _atomic_write(os.path.join(args.out, f"stats.rank{rank}.json"), json.dumps(dataclasses.asdict(stats) | {
        "wall_s": time.perf_counter() - start}))
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        _finish(args, config, questions, results, world)
    if world > 1:
        dist.barrier()  # the others end once the summary is written
        dist.destroy_process_group()
    return 0


def _shard(todo: list, rank: int, world: int) -> list:
    """Whole videos, dealt round-robin in data order; malformed rows go to process 0."""
    videos = list(dict.fromkeys(q.video for q in todo if q.error is None))
    mine = set(videos[rank::world])
    return [q for q in todo if (q.error is None and q.video in mine) or (q.error is not None and rank == 0)]


def _run(args, config, questions: list, everything: list, results: ResultsLog, process: str = "") -> RunStats:
    from livesight.eval.engine import VideoEngine
    from livesight.models.registry import load_adapter

    device = resolve_device(args.device)
    if device == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # one GPU per process, shared past the count
        import torch
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
        torch.cuda.set_device(device)  # this process's GPU, for whatever runs on the current device
    adapter = load_adapter(args.model, device)
    # the cache's size from the longest prompt in the whole file: the same in every process and every rerun
    longest = max((len(adapter.tokenizer.encode(p, add_special_tokens=False)) for q in everything
                   for p in [q.prompt, q.poll_prompt] + [p.prompt for p in q.probes]), default=0)
    config = dataclasses.replace(config, max_question_tokens=max(config.max_question_tokens, longest))
    engine = VideoEngine(adapter, config, args.concurrent)
    try:
        with progress(len(questions), f"eval {args.benchmark}{process}", unit="questions") as bar:
            def write(record: dict) -> None:
                results.append(record)
                bar.update()
            return evaluate(questions, engine, args.videos, write, args.protocol, args.context, config.answer_tokens)
    finally:
        engine.close()


def _finish(args, config, questions: list, results: ResultsLog, world: int) -> None:
    """Merge the processes' results, then write the summary (JSON and Markdown) and print it."""
    records = results.merge({q.id: q.order for q in questions})
    wanted = {q.id for q in questions}
    runs = []
    for r in range(world):
        with open(os.path.join(args.out, f"stats.rank{r}.json")) as f:
            runs.append(json.load(f))
    total = {k: sum(run[k] for run in runs) for k in ("videos", "questions", "errors", "frames_encoded",
                                                      "frames_span", "video_s", "stream_s", "wait_s", "ask_s")}
    total |= {k: round(total[k], 2) for k in ("video_s", "stream_s", "wait_s", "ask_s")}
    wall = max(run["wall_s"] for run in runs)
    run = total | {"wall_s": round(wall, 2), "processes": world,
                   "questions_per_min": round(60 * total["questions"] / wall, 2) if wall > 0 else None,
                   "encodes_per_frame": round(total["frames_encoded"] / total["frames_span"], 3)
                   if total["frames_span"] else None}
    summary = {"settings": {"benchmark": args.benchmark, "data": args.data, "model": args.model,
                            "protocol": args.protocol, "context": "all" if args.context is None else args.context,
                            "fps": config.fps, "vision_window_s": config.vision_window_s,
                            "retrieval": config.retrieval.enabled},
               "scores": report.scores([r for r in records if r["id"] in wanted], args.benchmark), "run": run}
    _atomic_write(os.path.join(args.out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    text = report.markdown(summary)
    _atomic_write(os.path.join(args.out, "summary.md"), text)
    print(text, end="", flush=True)
