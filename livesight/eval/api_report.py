"""`livesight bench api`: how many live streams a running `livesight serve` keeps in real time, driven
over its HTTP API alone (api_load.py), count by count; beside `bench streams`' in-process figure when
given its streams.json. Writes api.json and api.md (again after every count: a cut run keeps them).

    livesight serve --model random-7b --max-streams 64 &
    livesight bench api --url http://127.0.0.1:8000 --streams 8,16,32 --out results/api/h200
"""

import argparse
import asyncio
import json
import os
import sys

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import SHORTENED_MAX, ApiLoadConfig
from livesight.eval.output import writable_folder
from livesight.eval.streams_report import SECONDS, Counts
from livesight.progress import progress
from livesight.streaming.options import Bound


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ApiLoadConfig("")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="a file holding the server's bearer token (default: none, for a server without one)")
    parser.add_argument("--streams", type=Counts(), default=d.streams, metavar="N,N,...",
                        help=f"stream counts to measure (default {','.join(map(str, d.streams))})")
    parser.add_argument("--narrate-tokens", type=Bound(int, 0, 4096), default=d.narrate_tokens,
                        help="tokens narrated per chunk; 0: no narration (default %(default)s)")
    parser.add_argument("--seconds", type=SECONDS, default=d.seconds,
                        help="stream seconds measured at each count, after the warm-up (default %(default)s)")
    parser.add_argument("--warmup-seconds", type=Bound(float, 0, 3600, why="stream seconds"), default=d.warmup_s,
                        help="stream seconds every stream runs, live, before the measured window (default "
                             "%(default)s)")
    parser.add_argument("--ask-every", type=Bound(float, 0, 3600, low_open=True, why="seconds"),
                        default=d.ask_every_s, help="a question to a random stream every so many seconds of the "
                                                    "window (default %(default)s)")
    parser.add_argument("--latency-bound", type=Bound(float, 0, 600, low_open=True, why="seconds"),
                        default=d.latency_bound_s, help="the p99 chunk-to-caption latency within which a count "
                                                        "keeps real time (default %(default)s)")
    parser.add_argument("--stop-at-miss", action="store_true",
                        help="skip the counts above the first that misses real time (default: measure every count)")
    parser.add_argument("--disrupt", default=None, metavar="COMMAND",
                        help="a shell command run --disrupt-after seconds into each window (e.g. one that kills a "
                             "replica's process); the report then gives each stream's fate (default: none)")
    parser.add_argument("--disrupt-after", type=Bound(float, 0, 3600, why="seconds"), default=d.disrupt_after_s,
                        help="seconds into the window the --disrupt command runs (default %(default)s)")
    parser.add_argument("--label", default="",
                        help="what the report's title calls the server: model, replicas, GPU (default: its URL)")
    parser.add_argument("--in-process", default=None, metavar="STREAMS_JSON",
                        help="bench streams' streams.json from the same machine, to set the API's figures beside "
                             "(default: none)")
    parser.add_argument("--out", default="out/api", help="folder for api.json and api.md (default %(default)s)")


def main(args) -> int:
    token = None
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as err:
            raise InputError(f"--token-file {args.token_file}: cannot read it ({err.strerror})") from None
    in_process = _in_process(args.in_process, args.narrate_tokens) if args.in_process else None
    writable_folder(args.out)
    cfg = ApiLoadConfig(args.url, token, args.streams, args.narrate_tokens, args.seconds, args.warmup_seconds,
                        args.ask_every, args.latency_bound, args.stop_at_miss, args.disrupt, args.disrupt_after)
    result = asyncio.run(measure(cfg, args.out, args.label, in_process))
    print(markdown(result), end="")
    return 0


def _in_process(path: str, narrate_tokens: int) -> list[dict]:
    try:
        with open(path) as f:
            runs = json.load(f)["modes"][str(narrate_tokens)]["engine"]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--in-process {path}: not a bench streams result with {narrate_tokens} narrated tokens "
                         f"({type(err).__name__}: {err})") from None
    return [r for r in runs if r.get("fits")]


async def measure(cfg: ApiLoadConfig, out: str, label: str, in_process: list[dict] | None) -> dict:
    from livesight.eval.api_load import Load
    load = Load(cfg)
    result = {"config": {k: v for k, v in vars(cfg).items() if k != "token"}, "label": label, "runs": [],
              "in_process": in_process, "finished": False}
    try:
        ready = await load.check()
        if max(cfg.streams) > ready["capacity"] - ready["streams"]:
            raise InputError(f"--streams up to {max(cfg.streams)}: the server has room for "
                             f"{ready['capacity'] - ready['streams']} more streams (start it with a larger "
                             f"--max-streams)")
        with progress(len(cfg.streams), "bench api", unit="counts", every_s=0) as bar:
            for n in cfg.streams:
                bar.describe(f"{n} stream{'s' * (n != 1)}")
                run = {"streams": n} | await load.run_count(n)
                result["runs"].append(run)
                print(run_line(run), file=sys.stderr, flush=True)
                result["config"]["chunk_s"] = load.cfg.chunk_s
                report.save(out, "api", result, markdown(result))
                bar.update()
                if cfg.stop_at_miss and not run.get("kept_real_time", True):
                    break
    finally:
        await load.close()
    result["finished"] = True
    report.save(out, "api", result, markdown(result))
    return result


def run_line(run: dict) -> str:
    n = run["streams"]
    if "disrupt" in run:
        d = run["disrupt"]
        return f"{n} streams, disrupted: {d['moved']} moved, {d['lost']} lost, first caption after the command " \
               f"{d['to_first_caption_s']} s"
    lat, c = run["latency_ms"], run["chunks"]
    kept = "yes" if run["kept_real_time"] else "NO"
    return (f"{n} streams: {run['video_s_per_wall_s']} video-s/wall-s, real time {kept}, "
            f"latency p50/p99 {lat['p50']}/{lat['p99']} ms, TTFT p99 {run['ttft_ms']['p99']} ms, dropped "
            f"{c['dropped']}, shortened {c['shortened']}, missing {c['missing']}, errors {run['num_errors']}")


def headline(runs: list[dict]) -> int | None:
    return max((r["streams"] for r in runs if r.get("kept_real_time")), default=None)


def markdown(result: dict) -> str:
    c = result["config"]
    narration = f"{c['narrate_tokens']} narrated tokens per chunk" if c["narrate_tokens"] else "no narration"
    lines = [f"# bench api: {result['label'] or c['url']}", "",
             f"Streams added over the HTTP API of a running `livesight serve` ({c['url']}): synthetic scenes "
             f"(stream i: static, quiet, shapes, busy by i mod 4), each paced by the server in real time as a camera "
             f"and started i/N into a chunk period (chunks arrive spread, as independent cameras'), "
             f"{narration}; every stream's events read over Server-Sent Events; a question to a random stream "
             f"every {c['ask_every_s']:g} s. Per count: {c['warmup_s']:g} s of warm-up, then {c['seconds']:g} s "
             f"measured. Latency: the engine's, from a chunk's last frame to its caption. Real time kept (bench "
             f"streams' rule): no chunk dropped or left uncaptioned, at most {100 * SHORTENED_MAX:g} % of narrations "
             f"shortened, latency p99 ≤ {c['latency_bound_s']:g} s. Answer round trip: the client's, from sending "
             f"the question to the whole answer."]
    measured = [r for r in result["runs"] if "disrupt" not in r]
    if measured:
        lines += ["", "| streams | video-s / wall-s | real time | latency p50 / p99 ms | TTFT p50 / p99 ms (n) | "
                      "answer round trip p50 / p99 ms | narrated tok/s | dropped | shortened | missing | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in measured:
        lat, ttft, trip, ch = r["latency_ms"], r["ttft_ms"], r["answer_round_trip_ms"], r["chunks"]
        lines.append(f"| {r['streams']} | {r['video_s_per_wall_s']:g} | {'**yes**' if r['kept_real_time'] else 'no'} "
                     f"| {lat['p50']} / {lat['p99']} | {ttft['p50']} / {ttft['p99']} ({ttft['n']}) | {trip['p50']} / "
                     f"{trip['p99']} | {r['narrated_tokens_per_s']} | {ch['dropped']} | {ch['shortened']} | "
                     f"{ch['missing']} | {r['num_errors']} |")
    if measured:
        lines += ["", f"Headline: **{headline(measured) or 'no'} streams** kept real time over the API."]
    if result.get("in_process"):
        lines += _beside(measured, result["in_process"])
    for r in result["runs"]:
        if "disrupt" in r:
            lines += _disrupted(r, c["disrupt_after_s"])
    return "\n".join(lines) + "\n"


def _beside(api: list[dict], engine: list[dict]) -> list[str]:
    """The API's runs beside bench streams' in-process runs at the same counts."""
    by_count = {r["streams"]: r for r in engine}
    lines = ["", "In-process (`bench streams`, the same rule) beside the API:", "",
             "| streams | in-process: real time, latency p50 / p99 ms | API: real time, latency p50 / p99 ms |",
             "|---|---|---|"]
    for r in api:
        e = by_count.get(r["streams"])
        mine = f"{'yes' if r['kept_real_time'] else 'no'}, {r['latency_ms']['p50']} / {r['latency_ms']['p99']}"
        theirs = "not measured" if e is None else \
            f"{'yes' if e['kept_real_time'] else 'no'}, {e['latency_ms']['p50']} / {e['latency_ms']['p99']}"
        lines.append(f"| {r['streams']} | {theirs} | {mine} |")
    lines += ["", f"Headline: in-process {headline(engine) or 'no'} streams, over the API {headline(api) or 'no'}."]
    return lines


def _disrupted(run: dict, after_s: float) -> list[str]:
    d = run["disrupt"]
    firsts = d["to_first_caption_s"]
    lines = ["", f"## Disrupted: {run['streams']} streams; `{d['command']}` ran {after_s:g} s into the window "
                 f"(exit {d['exit']})", "",
             f"{d['moved']} of {d['streams']} streams moved, {d['lost']} lost. From the command to each moved "
             f"stream's first caption after its move: min {firsts['min']} s, median {firsts['p50']} s, max "
             f"{firsts['max']} s.", "", "| stream | moved | to migrated s | to first caption s | captions after | "
                                        "errors | lost |", "|---|---|---|---|---|---|---|"]
    for s in d["per_stream"]:
        lines.append(f"| {s['stream']} | {'yes' if s['moved'] else 'no'} | {s['to_migrated_s'] or '-'} | "
                     f"{s['to_first_caption_s'] or '-'} | {s['captions_after']} | {len(s['errors'])} | "
                     f"{'**yes**' if s['lost'] else 'no'} |")
    return lines


def render(folder: str, in_process: str | None) -> None:
    """api.md again from folder/api.json, with bench streams' streams.json beside it if given."""
    with open(os.path.join(folder, "api.json")) as f:
        result = json.load(f)
    if in_process:
        result["in_process"] = _in_process(in_process, result["config"]["narrate_tokens"])
    report.save(folder, "api", result, markdown(result))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Render api.md from FOLDER/api.json")
    parser.add_argument("--render", metavar="FOLDER", required=True)
    parser.add_argument("--in-process", metavar="STREAMS_JSON", default=None)
    cli = parser.parse_args()
    render(cli.render, cli.in_process)
