"""`livesight bench recall`: how well a model answers about moments of the synthetic world by their age,
under each cache policy and compression setting. The set is recall_set.py's (world videos, four-option
questions whose facts only the frames hold, tasks = age buckets); each setting runs it through the
evaluator's engine (engine.py, runner.py: the engine every front end runs), one video at a time, and
scores accuracy per bucket. Writes recall.json, recall.md and recall.png (accuracy vs age, a line per
setting); the set is written once into OUT/set and reused.

Policies: dense (the window holds the whole video; only while it fits), sink + window, sink + window +
retrieval (top-k 4, 8, 16). Compression: off, reuse, reuse + pruning at keep ratios 1.0, 0.5, 0.25.
Narration is off by default, so kept text cannot answer for the vision path (--narrate turns it on).

    livesight bench recall [--model toy-vlm] [--videos 2] [--seconds 120] [--per-video 16] [--jobs 1] [--out DIR]

With --jobs N the cells run in N processes at once (each loads the model once): a small model leaves
the GPU idle, and one process per cell keeps the machine's cores busy instead.
"""

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.output import writable_folder
from livesight.eval.recall_set import BUCKETS, write_set
from livesight.progress import progress
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.options import Bound

POLICIES = ("dense", "window", "retrieval-4", "retrieval-8", "retrieval-16")
COMPRESSIONS = ("off", "reuse", "prune-1.0", "prune-0.5", "prune-0.25")
ANSWER_TOKENS = 8  # a letter, or the option's text (toy-vlm answers with it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toy-vlm", help="a model name or folder (default %(default)s: the model "
                                                           "trained on this world)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    parser.add_argument("--videos", type=Bound(int, 1, 1000), default=2, help="world videos (default %(default)s)")
    parser.add_argument("--seconds", type=Bound(int, 20, 86400, why="seconds"), default=120,
                        help="each video's length (default %(default)s)")
    parser.add_argument("--per-video", type=Bound(int, 1, 10_000), default=16,
                        help="questions per video (default %(default)s)")
    parser.add_argument("--seed", type=Bound(int, 0, 2**31 - 1), default=0, help="the set's seed (default 0)")
    parser.add_argument("--window", type=Bound(float, 1, 3600, why="seconds"), default=16.0,
                        help="the vision window of the windowed policies, seconds (default %(default)s)")
    parser.add_argument("--policies", default=",".join(POLICIES),
                        help=f"comma-separated, of {', '.join(POLICIES)} (default: all)")
    parser.add_argument("--compression", default=",".join(COMPRESSIONS),
                        help=f"comma-separated, of {', '.join(COMPRESSIONS)} (default: all)")
    parser.add_argument("--narrate", action="store_true", help="narrate each chunk (default: off)")
    parser.add_argument("--jobs", type=Bound(int, 1, 256), default=1,
                        help="settings run at once, each in a process of its own (default %(default)s)")
    parser.add_argument("--out", default="out/recall",
                        help="folder for the set and the results (default %(default)s)")


def _chosen(text: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [c for c in chosen if c not in known]
    if unknown or not chosen:
        raise InputError(f"{flag} {text}: use some of {', '.join(known)}")
    return chosen


def setting(policy: str, compression: str, seconds: int, window: float, narrate: bool) -> SessionConfig:
    """One cell of the matrix as the engine's settings."""
    retrieval = RetrievalConfig(enabled=policy.startswith("retrieval"), top_k=int(policy.split("-")[1])
                                if policy.startswith("retrieval") else 8)  # the default budgets: 4 GB RAM, 16 disk
    prune = compression.startswith("prune")
    packing = CompressionConfig(reuse=compression != "off", prune=prune,
                                keep_ratio=float(compression.split("-")[1]) if prune else 1.0)
    return SessionConfig(vision_window_s=seconds + 2.0 if policy == "dense" else window, narrate=narrate,
                         answer_tokens=ANSWER_TOKENS, retrieval=retrieval, compression=packing)


def main(args) -> int:
    policies = _chosen(args.policies, POLICIES, "--policies")
    compressions = _chosen(args.compression, COMPRESSIONS, "--compression")
    writable_folder(args.out)
    result = measure(args, policies, compressions)
    print(markdown(result), end="")
    return 0


def measure(args, policies, compressions) -> dict:
    from livesight.eval import vqa
    folder = os.path.join(args.out, "set")
    counts = write_set(folder, args.videos, args.seconds, args.per_video, args.seed)
    questions = vqa.load(os.path.join(folder, "questions.jsonl"))
    result = {"config": {k: v for k, v in vars(args).items() if k in ("model", "videos", "seconds", "per_video",
                                                                      "seed", "window", "narrate")},
              "questions": counts, "runs": [], "finished": False}
    result["runs"] = _finished_runs(args.out, result)
    kept = {(r["policy"], r["compression"]) for r in result["runs"]}
    if kept:
        print(f"bench recall: {len(kept)} settings already in {args.out}/recall.json for this set: kept, not run again",
              file=sys.stderr)
    cells = [(p, c) for p in policies for c in compressions if (p, c) not in kept]
    with progress(len(cells), "bench recall", unit="settings", every_s=0) as bar:
        def done(run: dict) -> None:
            result["runs"] = sorted(result["runs"] + [run], key=lambda r: (POLICIES.index(r["policy"]),
                                                                          COMPRESSIONS.index(r["compression"])))
            if run["fits"]:
                print(f"{run['policy']}, compression {run['compression']}: " + ", ".join(
                    f"{name} {a['accuracy']}" for name, a in run["buckets"].items()), file=sys.stderr)
            report.save(args.out, "recall", result, markdown(result))
            bar.update()

        if args.jobs == 1 or len(cells) < 2:
            for policy, compression in cells:
                bar.describe(f"{policy}, compression {compression}")
                done(run_cell(args, questions, policy, compression))
        else:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            with ProcessPoolExecutor(min(args.jobs, len(cells)), multiprocessing.get_context("spawn"),
                                     initializer=_worker, initargs=(threads,)) as pool:
                running = [pool.submit(run_cell, args, questions, p, c) for p, c in cells]
                for future in as_completed(running):
                    done(future.result())
    result["finished"] = True
    report.save(args.out, "recall", result, markdown(result))
    plot(result, os.path.join(args.out, "recall.png"))
    return result


def _finished_runs(out: str, result: dict) -> list[dict]:
    """The settings an earlier run into `out` finished on this very set (same config and questions): a run
    stopped by a time limit goes on where it stopped, and more settings can be added to a table."""
    try:
        with open(os.path.join(out, "recall.json")) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return []
    same = earlier.get("config") == result["config"] and earlier.get("questions") == result["questions"]
    return earlier.get("runs", []) if same else []


def _worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def _adapter(model: str, device: str):
    """The model, loaded once per process."""
    from livesight.models.registry import load_adapter
    from livesight.streaming.options import resolve_device
    return load_adapter(model, resolve_device(device))


def run_cell(args, questions, policy: str, compression: str) -> dict:
    """One setting over the whole set -> its row of recall.json."""
    from livesight.eval.engine import VideoEngine
    from livesight.eval.runner import evaluate
    adapter = _adapter(args.model, args.device)
    longest = max(len(adapter.tokenizer.encode(q.prompt, add_special_tokens=False)) for q in questions)
    config = setting(policy, compression, args.seconds, args.window, args.narrate)
    config = dataclasses.replace(config, max_question_tokens=max(config.max_question_tokens, longest))
    run = {"policy": policy, "compression": compression}
    try:  # dense: the whole video in one window must fit the device (the engine checks)
        engine = VideoEngine(adapter, config, 1)
    except InputError as err:
        return run | {"fits": False, "error": str(err).splitlines()[0]}
    records: list[dict] = []
    try:
        evaluate(questions, engine, os.path.join(args.out, "set", "videos"), records.append, "stream", None,
                 ANSWER_TOKENS)
    finally:
        engine.close()
    return run | {"fits": True} | accuracy(records)


def accuracy(records: list[dict]) -> dict:
    """Accuracy per age bucket as the evaluator's summary scores it: robust (the option the reply names,
    by its letter or its text; toy-vlm answers with the text) and strict (the reply's first character
    is the letter); and the errors."""
    scores = report.scores(records, "vqa")
    tasks, order = scores["tasks"], [name for _, _, name in BUCKETS]
    ranked = sorted(tasks, key=lambda b: order.index(b) if b in order else len(order))
    return {"buckets": {name: {"n": tasks[name]["n"], "accuracy": round(tasks[name]["robust"] / 100, 3),
                               "strict": round(tasks[name]["strict"] / 100, 3)} for name in ranked},
            "errors": sum(scores["errors"].values())} | _first_error(records)


def _first_error(records: list[dict]) -> dict:
    """The first failed question's error (kind: message), so a run whose every question failed says why."""
    failed = next((r for r in records if r.get("error")), None)
    return {} if failed is None else {"first_error": f"{failed['error_kind']}: {failed['error']}"}


def markdown(result: dict) -> str:
    c = result["config"]
    names = [name for _, _, name in BUCKETS if name in result["questions"]]
    lines = [f"# bench recall: {c['model']}", "",
             f"{c['videos']} world videos of {c['seconds']} s (seed {c['seed']}), "
             f"{sum(result['questions'].values())} four-option questions ("
             + ", ".join(f"{n}: {result['questions'][n]}" for n in names) + "); narration "
             f"{'on' if c['narrate'] else 'off'}; window {c['window']:g} s. Accuracy by the fact's age (robust: the "
             f"option the reply names, by letter or text; strict scores are in recall.json; chance: 0.25).", "",
             "| policy | compression | " + " | ".join(names) + " | errors |",
             "|---|---|" + "---|" * (len(names) + 1)]
    for r in result["runs"]:
        if not r["fits"]:
            lines.append(f"| {r['policy']} | {r['compression']} | " + " | ".join("-" for _ in names)
                         + f" | does not fit: {r['error'][:80]} |")
            continue
        cells = [str(r["buckets"][n]["accuracy"]) if n in r["buckets"] else "-" for n in names]
        lines.append(f"| {r['policy']} | {r['compression']} | " + " | ".join(cells) + f" | {r['errors']} |")
    failed = next((r for r in result["runs"] if r.get("first_error")), None)
    if failed is not None:
        lines += ["", f"First error ({failed['policy']}, {failed['compression']}): {failed['first_error'][:300]}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [name for _, _, name in BUCKETS if name in result["questions"]]
    fig, ax = plt.subplots(figsize=(9, 5))
    colours, styles = plt.get_cmap("tab10").colors, ("-", "--", ":", "-.", (0, (1, 4)))  # by policy, by compression
    for r in result["runs"]:
        if r["fits"]:
            ax.plot(range(len(names)), [r["buckets"].get(n, {}).get("accuracy") for n in names], marker="o",
                    color=colours[POLICIES.index(r["policy"])], markersize=4,
                    linestyle=styles[COMPRESSIONS.index(r["compression"])], label=f"{r['policy']}, {r['compression']}")
    ax.axhline(0.25, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), [n.removeprefix("age ") for n in names])
    ax.set_xlabel("age of the fact asked about")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, ncol=2)
    ax.set_title(f"bench recall: {result['config']['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
