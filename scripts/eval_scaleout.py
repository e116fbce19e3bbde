"""The evaluator sharded over processes (one GPU each) against one process, on one synthetic
StreamingBench-format set: questions per minute of each, and whether the merged results equal the
single process's (every answer and score; wall-clock latencies aside).

    python scripts/eval_scaleout.py --out DIR [--processes 2] [--videos 40] [--seconds 20] [--questions 2]
                                    [-- ENGINE FLAGS, e.g. --model random-7b]

Writes DIR/eval_scaleout.json and DIR/eval_scaleout.md; the runs' own folders are DIR/one and DIR/sharded.
Throughput counts each launch end to end (processes starting, the model loading, the merge), and also
the processes' own time (the slowest process, from its start to its last answer: summary.json's wall_s).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

TIMING = ("latency_ms", "ttft_ms")  # wall-clock figures, different run to run
HERE = os.path.dirname(os.path.abspath(__file__))


def records(folder: str) -> dict[str, dict]:
    with open(os.path.join(folder, "results.jsonl")) as f:
        return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in map(json.loads, f)}


def launch(command: list[str], log: str, env: dict) -> float:
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:6])} … failed ({done.returncode}): see {log}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--questions", type=int, default=2)
    args, engine = parser.parse_known_args()
    engine = [a for a in engine if a != "--"]
    for stale in ("set", "one", "sharded"):  # a rerun into the same --out would resume, not measure
        shutil.rmtree(os.path.join(args.out, stale), ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    bench = os.path.join(args.out, "set")
    subprocess.run([sys.executable, os.path.join(HERE, "synthetic_streamingbench.py"), bench, "--videos",
                    str(args.videos), "--seconds", str(args.seconds), "--questions", str(args.questions)], check=True)
    common = ["streamingbench", "--data", os.path.join(bench, "questions.json"), "--videos",
              os.path.join(bench, "videos"), *engine]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    one, sharded = os.path.join(args.out, "one"), os.path.join(args.out, "sharded")
    first_gpu = env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    wall_one = launch([sys.executable, "-m", "livesight.eval", *common, "--out", one],
                      os.path.join(args.out, "one.log"), env | {"CUDA_VISIBLE_DEVICES": first_gpu})
    wall_sharded = launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                           str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend",
                           "no", "-m", "livesight.eval", *common, "--out", sharded],
                          os.path.join(args.out, "sharded.log"), env)
    summaries = {}
    for name, folder in (("one", one), ("sharded", sharded)):
        with open(os.path.join(folder, "summary.json")) as f:
            summaries[name] = json.load(f)
    a, b = records(one), records(sharded)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    scores = {name: {k: v for k, v in s["scores"].items() if k != "latency_ms"} for name, s in summaries.items()}
    questions = summaries["one"]["run"]["questions"]
    result = {"videos": args.videos, "seconds": args.seconds, "questions": questions, "processes": args.processes,
              "engine": engine, "identical": not differ and scores["one"] == scores["sharded"],
              "records_differing": differ[:20], "scores_equal": scores["one"] == scores["sharded"]}
    for name, wall in (("one", wall_one), ("sharded", wall_sharded)):
        run = summaries[name]["run"]
        result[name] = {"launch_s": round(wall, 2), "questions_per_min": round(60 * questions / wall, 2),
                        "process_wall_s": run["wall_s"], "process_questions_per_min": run["questions_per_min"]}
    result["speedup"] = round(wall_one / wall_sharded, 3)
    result["process_speedup"] = round(summaries["one"]["run"]["wall_s"] / summaries["sharded"]["run"]["wall_s"], 3)
    with open(os.path.join(args.out, "eval_scaleout.json"), "w") as f:
        json.dump(result, f, indent=1)
    text = markdown(result)
    with open(os.path.join(args.out, "eval_scaleout.md"), "w") as f:
        f.write(text)
    print(text, end="")


def markdown(r: dict) -> str:
    lines = [f"# The evaluator on {r['processes']} processes against 1", "",
             f"{r['videos']} synthetic videos of {r['seconds']} s, {r['questions']} StreamingBench-format questions "
             f"(stream protocol), engine flags `{' '.join(r['engine'])}`.", "",
             "| processes | launch to summary s | questions / min | processes' own s | questions / min (own) |",
             "|---|---|---|---|---|"]
    for name, n in (("one", 1), ("sharded", r["processes"])):
        x = r[name]
        lines.append(f"| {n} | {x['launch_s']} | {x['questions_per_min']} | {x['process_wall_s']} | "
                     f"{x['process_questions_per_min']} |")
    lines += ["", f"Speed-up: {r['speedup']}× end to end, {r['process_speedup']}× in the processes' own time. "
                  f"Merged results identical to the single process's: **{'yes' if r['identical'] else 'no'}**"
                  + ("" if r["identical"] else f" (differing: {', '.join(r['records_differing'])})") + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
