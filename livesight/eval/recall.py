"""`livesight bench recall`: how well a model answers about moments of the synthetic world by their age,
under each cache policy and compression setting. The set is recall_set.py's (world videos, four-option
questions whose facts only the frames hold, tasks = age buckets); each setting runs it through the
evaluator's engine (engine.py, runner.py: the engine every front end runs), one video at a time, and
scores accuracy per bucket. Writes recall.json, recall.md and recall.png (accuracy vs age, a line per
setting); the set is written once into OUT/set and reused.

Policies: dense (the window holds the whole video; only while it fits), sink + window, sink + window +
retrieval (top-k 4, 8, 16). Compression: off, reuse, reuse + pruning at keep ratios 1.0, 0.5, 0.25.
Narration is off by default, so kept text cannot answer for the vision path (--narrate turns it on).
--kv-dtype fp8 stores every setting's keys and values in 8 bits. With --duo GATES each setting runs once with
every KV head keeping the whole window, and once per --duo-sparsity share of its KV heads streaming
(DuoAttention: the heads the gates rank lowest keep only the first and the latest tokens).

    livesight bench recall [--model toy-vlm] [--videos 2] [--seconds 120] [--per-video 16] [--jobs 1]
                           [--kv-dtype model|fp8] [--duo GATES --duo-sparsity 0.25,0.5,0.75] [--out DIR]

With --jobs N the cells run in N processes at once (each loads the model once): a small model leaves
the GPU idle, and one process per cell keeps the machine's cores busy instead.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import DUO_SPARSITIES
from livesight.eval.output import writable_folder
from livesight.eval.recall_set import BUCKETS, write_set
from livesight.progress import progress
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.options import KV_DTYPES, Bound, Shares, check_gates_path

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
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default="model",
                        help="how every setting's cache stores keys and values: as the model computes them, or fp8 "
                             "(8 bits with a scale per head and token) (default %(default)s)")
    parser.add_argument("--duo", metavar="GATES", default=None,
                        help="DuoAttention gates (`livesight calibrate duo`'s folder or its duo_gates.json): each "
                             "setting runs again with each --duo-sparsity share of KV heads streaming (default: none)")
    parser.add_argument("--duo-sparsity", type=Shares(), default=None, metavar="S,S,...",
                        help="with --duo, the shares of KV heads that stream (default "
                             f"{','.join(f'{s:g}' for s in DUO_SPARSITIES)})")
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


def setting(policy: str, compression: str, seconds: int, window: float, narrate: bool, kv_dtype: str = "model",
            duo_gates: str | None = None, sparsity: float | None = None) -> SessionConfig:
    """One cell of the matrix as the engine's settings; sparsity: the share of KV heads that stream, as
    duo_gates rank them (None: every head keeps the whole window)."""
    assert sparsity is None or duo_gates is not None
    retrieval = RetrievalConfig(enabled=policy.startswith("retrieval"), top_k=int(policy.split("-")[1])
                                if policy.startswith("retrieval") else 8)  # the default budgets: 4 GB RAM, 16 disk
    prune = compression.startswith("prune")
    packing = CompressionConfig(reuse=compression != "off", prune=prune,
                                keep_ratio=float(compression.split("-")[1]) if prune else 1.0)
    duo = {} if sparsity is None else {"duo_gates": duo_gates, "duo_sparsity": sparsity}
    return SessionConfig(vision_window_s=seconds + 2.0 if policy == "dense" else window, narrate=narrate,
                         answer_tokens=ANSWER_TOKENS, retrieval=retrieval, compression=packing, kv_dtype=kv_dtype,
                         **duo)


def sparsities(args) -> tuple[float | None, ...]:
    """The KV heads each cell runs with: None (every head keeps the whole window), then with --duo each share of
    streaming heads."""
    if args.duo is None:
        if args.duo_sparsity is not None:
            raise InputError("--duo-sparsity needs --duo GATES: the shares are of the KV heads those gates rank")
        return (None,)
    return (None, *dict.fromkeys(args.duo_sparsity or DUO_SPARSITIES))


def heads(run: dict) -> str:
    """A row's KV heads: all keep the window, or a share of them stream."""
    return "all" if run["sparsity"] is None else f"duo {run['sparsity']:g}"


def duo_gates(args, shares: tuple[float | None, ...]) -> dict | None:
    """--duo's gates checked against the model's (layers, KV heads) at every share, before any setting runs ->
    what recall.json's config says of them (None without --duo). Raises InputError naming --duo."""
    if args.duo is None:
        return None
    from livesight.kvcache.duo import gates_file, load_duo
    adapter = _adapter(args.model, args.device)
    duo = load_duo(args.duo, shares[1], adapter.num_layers, adapter.num_kv_heads)  # its sink, recent: any share's
    if args.jobs > 1:  # the settings run in processes of their own, each loading the model: free this one
        _adapter.cache_clear()
    with open(gates_file(args.duo), "rb") as f:  # the same path may hold gates calibrated again
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"gates": args.duo, "sha256": digest, "sink": duo.sink, "recent": duo.recent}


def main(args) -> int:
    policies = _chosen(args.policies, POLICIES, "--policies")
    compressions = _chosen(args.compression, COMPRESSIONS, "--compression")
    shares = sparsities(args)
    check_gates_path(args.duo)
    writable_folder(args.out)
    cells = [(p, c, s) for p in policies for c in compressions for s in shares]
    result = measure(args, cells, duo_gates(args, shares))
    print(markdown(result), end="")
    return 0


def measure(args, cells: list[tuple[str, str, float | None]], duo: dict | None) -> dict:
    """Run each (policy, compression, share of streaming KV heads) cell not already in OUT/recall.json."""
    from livesight.eval import vqa
    folder = os.path.join(args.out, "set")
    counts = write_set(folder, args.videos, args.seconds, args.per_video, args.seed)
    questions = vqa.load(os.path.join(folder, "questions.jsonl"))
    result = {"config": {k: v for k, v in vars(args).items() if k in ("model", "videos", "seconds", "per_video",
                                                                      "seed", "window", "narrate", "kv_dtype")}
              | {"duo": duo}, "questions": counts, "runs": [], "finished": False}
    result["runs"] = _finished_runs(args.out, result)
    kept = {_key(r) for r in result["runs"]}
    if kept:
        print(f"bench recall: {len(kept)} settings already in {args.out}/recall.json for this set: kept, not run again",
              file=sys.stderr)
    cells = [cell for cell in cells if cell not in kept]
    with progress(len(cells), "bench recall", unit="settings", every_s=0) as bar:
        def done(run: dict) -> None:
            result["runs"] = sorted(result["runs"] + [run], key=_order)
            if run["fits"]:
                print(f"{run['policy']}, compression {run['compression']}, KV heads {heads(run)}: " + ", ".join(
                    f"{name} {a['accuracy']}" for name, a in run["buckets"].items()), file=sys.stderr)
            report.save(args.out, "recall", result, markdown(result))
            bar.update()

        if args.jobs == 1 or len(cells) < 2:
            for cell in cells:
                bar.describe(f"{cell[0]}, compression {cell[1]}, KV heads {heads({'sparsity': cell[2]})}")
                done(run_cell(args, questions, *cell))
        else:
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            with ProcessPoolExecutor(min(args.jobs, len(cells)), multiprocessing.get_context("spawn"),
                                     initializer=_worker, initargs=(threads,)) as pool:
                running = [pool.submit(run_cell, args, questions, *cell) for cell in cells]
                for future in as_completed(running):
                    done(future.result())
    result["finished"] = True
    report.save(args.out, "recall", result, markdown(result))
    plot(result, os.path.join(args.out, "recall.png"))
    return result


def _key(run: dict) -> tuple[str, str, float | None]:
    return run["policy"], run["compression"], run["sparsity"]


def _order(run: dict) -> tuple[int, int, float]:
    """Rows by policy, compression, then KV heads: all, then the shares streaming from the least."""
    return (POLICIES.index(run["policy"]), COMPRESSIONS.index(run["compression"]),
            -1.0 if run["sparsity"] is None else run["sparsity"])


def _finished_runs(out: str, result: dict) -> list[dict]:
    """The settings an earlier run into `out` finished on this very set (same config, KV dtype and gates
    included, and questions): a run stopped by a time limit goes on where it stopped, and more settings can be
    added to a table. A recall.json from before --kv-dtype and --duo ran in the model's dtype, every head whole."""
    try:
        with open(os.path.join(out, "recall.json")) as f:
            earlier = json.load(f)
    except (OSError, ValueError):
        return []
    config = {"kv_dtype": "model", "duo": None} | earlier.get("config", {})
    same = config == result["config"] and earlier.get("questions") == result["questions"]
    return [run | {"sparsity": run.get("sparsity")} for run in earlier.get("runs", [])] if same else []


def _worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=1)
def _adapter(model: str, device: str):
    """The model, loaded once per process."""
    from livesight.models.registry import load_adapter
    from livesight.streaming.options import resolve_device
    return load_adapter(model, resolve_device(device))


def run_cell(args, questions, policy: str, compression: str, sparsity: float | None) -> dict:
    """One setting over the whole set -> its row of recall.json."""
    from livesight.eval.engine import VideoEngine
    from livesight.eval.runner import evaluate
    adapter = _adapter(args.model, args.device)
    longest = max(len(adapter.tokenizer.encode(q.prompt, add_special_tokens=False)) for q in questions)
    config = setting(policy, compression, args.seconds, args.window, args.narrate, args.kv_dtype, args.duo, sparsity)
    config = dataclasses.replace(config, max_question_tokens=max(config.max_question_tokens, longest))
    run = {"policy": policy, "compression": compression, "sparsity": sparsity}
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
    lines = [f"# bench recall: {c['model']}, keys and values "
             + ("in fp8" if c["kv_dtype"] == "fp8" else "in the model's dtype"), "",
             f"{c['videos']} world videos of {c['seconds']} s (seed {c['seed']}), "
             f"{sum(result['questions'].values())} four-option questions ("
             + ", ".join(f"{n}: {result['questions'][n]}" for n in names) + "); narration "
             f"{'on' if c['narrate'] else 'off'}; window {c['window']:g} s. Accuracy by the fact's age (robust: the "
             f"option the reply names, by letter or text; strict scores are in recall.json; chance: 0.25)."
             + _duo_note(c["duo"]), "",
             "| policy | compression | KV heads | " + " | ".join(names) + " | errors |",
             "|---|---|---|" + "---|" * (len(names) + 1)]
    for r in result["runs"]:
        row = f"| {r['policy']} | {r['compression']} | {heads(r)} | "
        if not r["fits"]:
            lines.append(row + " | ".join("-" for _ in names) + f" | does not fit: {r['error'][:80]} |")
            continue
        cells = [str(r["buckets"][n]["accuracy"]) if n in r["buckets"] else "-" for n in names]
        lines.append(row + " | ".join(cells) + f" | {r['errors']} |")
    failed = next((r for r in result["runs"] if r.get("first_error")), None)
    if failed is not None:
        lines += ["", f"First error ({failed['policy']}, {failed['compression']}, KV heads {heads(failed)}): "
                      f"{failed['first_error'][:300]}"]
    return "\n".join(lines) + "\n"


def _duo_note(duo: dict | None) -> str:
    if duo is None:
        return ""
    return (f" KV heads \"all\": each keeps the whole window; \"duo S\": the share S of them that the DuoAttention "
            f"gates {duo['gates']} rank lowest stream, keeping only the first {duo['sink']} tokens and the latest "
            f"{duo['recent']}.")


MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")  # by KV heads: all, then each share streaming


def plot(result: dict, path: str) -> None:
    """Accuracy against age, a line per setting: colour by policy, line style by compression, marker by KV heads
    (duo rows fainter); the legend names each of the three once."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    names = [name for _, _, name in BUCKETS if name in result["questions"]]
    fitted = [r for r in result["runs"] if r["fits"]]
    colours, styles = plt.get_cmap("tab10").colors, ("-", "--", ":", "-.", (0, (1, 4)))  # by policy, by compression
    kinds = list(dict.fromkeys(heads(r) for r in sorted(fitted, key=lambda r: _order(r)[2])))
    fig, ax = plt.subplots(figsize=(9, 5))
    for r in fitted:
        ax.plot(range(len(names)), [r["buckets"].get(n, {}).get("accuracy") for n in names],
                color=colours[POLICIES.index(r["policy"])], linestyle=styles[COMPRESSIONS.index(r["compression"])],
                marker=MARKERS[kinds.index(heads(r)) % len(MARKERS)], markersize=4,
                alpha=1.0 if r["sparsity"] is None else 0.6)
    legend = [Line2D([], [], color=colours[POLICIES.index(p)], label=p)
              for p in dict.fromkeys(r["policy"] for r in fitted)]
    legend += [Line2D([], [], color="black", linestyle=styles[COMPRESSIONS.index(c)], label=f"compression {c}")
               for c in dict.fromkeys(r["compression"] for r in fitted)]
    legend += [Line2D([], [], color="black", linestyle="", marker=MARKERS[i % len(MARKERS)], label=f"KV heads {k}")
               for i, k in enumerate(kinds)] if len(kinds) > 1 else []
    ax.axhline(0.25, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), [n.removeprefix("age ") for n in names])
    ax.set_xlabel("age of the fact asked about")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(handles=legend, fontsize=7, ncol=3)
    c = result["config"]
    ax.set_title(f"bench recall: {c['model']}" + (", KV cache in fp8" if c["kv_dtype"] == "fp8" else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
