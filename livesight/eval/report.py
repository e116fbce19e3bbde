"""The summary of a results file: accuracy per task, per group and overall (strict and robust
parsers), errors and clamped time stamps, latency; as JSON and as Markdown.

`scores` depends only on the records, so it is the same however the run was split or resumed;
`run` is this invocation's throughput."""

import json
import os
import statistics

from livesight.eval import ovobench, streamingbench

GROUP_ORDER = {"streamingbench": list(streamingbench.GROUPS), "ovobench": list(ovobench.GROUPS)}


def save(folder: str, stem: str, result: dict, text: str, indent: int | None = 1) -> None:
    """A bench's outputs: folder/STEM.json (the result) and folder/STEM.md (its table)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=indent)
    with open(os.path.join(folder, f"{stem}.md"), "w") as f:
        f.write(text)


def rerender(folder: str, stem: str, markdown, plot, prepare=None) -> None:
    """folder/STEM.md and STEM.png again from folder/STEM.json (a GPU run that returned only the JSON);
    prepare(result) first fills what the JSON leaves out."""
    with open(os.path.join(folder, f"{stem}.json")) as f:
        result = json.load(f)
    if prepare is not None:
        prepare(result)
    with open(os.path.join(folder, f"{stem}.md"), "w") as f:
        f.write(markdown(result))
    plot(result, os.path.join(folder, f"{stem}.png"))


def _mean(values) -> float | None:
    values = list(values)
    return round(100 * sum(values) / len(values), 2) if values else None


def _accuracy(records: list[dict]) -> dict:
    return {"n": len(records), "strict": _mean(r["score_strict"] for r in records),
            "robust": _mean(r["score_robust"] for r in records)}


def scores(records: list[dict], benchmark: str) -> dict:
    answered = [r for r in records if "error" not in r]
    tasks: dict[str, list[dict]] = {}
    for r in answered:
        tasks.setdefault(r["task"], []).append(r)
    task_group = {r["task"]: r["group"] for r in answered}
    groups: dict[str, dict] = {}
    order = GROUP_ORDER.get(benchmark, [])
    for group in sorted(set(task_group.values()), key=lambda g: (order.index(g) if g in order else len(order), g)):
        members = [t for t in tasks if task_group[t] == group]
        per_task = [_accuracy(tasks[t]) for t in members]
        groups[group] = _accuracy([r for t in members for r in tasks[t]]) | {
            "task_mean_strict": _mean(a["strict"] / 100 for a in per_task),
            "task_mean_robust": _mean(a["robust"] / 100 for a in per_task)}
    overall = _accuracy(answered)
    # the leaderboards' headline: StreamingBench over all questions; OVO-Bench the mean of its groups' task means
    if benchmark == "ovobench" and groups:
        overall["official"] = _mean(g["task_mean_strict"] / 100 for g in groups.values())
    else:
        overall["official"] = overall["strict"]
    errors: dict[str, int] = {}
    for r in records:
        if "error" in r:
            errors[r["error_kind"]] = errors.get(r["error_kind"], 0) + 1
    latency = [r["latency_ms"] for r in answered]
    return {
        "questions": len(records), "answered": len(answered), "errors": errors,
        "clamped_time_stamps": sum(bool(r.get("clamped")) for r in answered),
        "overall": overall, "groups": groups,
        "tasks": {t: _accuracy(rs) | {"group": task_group[t]} for t, rs in sorted(tasks.items(), key=lambda kv: (
            list(groups).index(task_group[kv[0]]), kv[0]))},
        "latency_ms": {"p50": round(statistics.median(latency), 1) if latency else None,
                       "p90": round(statistics.quantiles(latency, n=10)[-1], 1) if len(latency) > 1 else None},
    }


def markdown(summary: dict) -> str:
    s, setting = summary["scores"], summary["settings"]
    lines = [f"# {setting['benchmark']}: {setting['model']}, protocol {setting['protocol']}, "
             f"context {setting['context']}", "",
             f"{s['answered']} of {s['questions']} questions answered; errors: "
             f"{', '.join(f'{k} {v}' for k, v in s['errors'].items()) or 'none'}; "
             f"time stamps past the video's end (clamped): {s['clamped_time_stamps']}.", "",
             "| task | group | n | strict % | robust % |", "|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for task, a in s["tasks"].items():
        lines.append(f"| {task} | {a['group']} | {a['n']} | {fmt(a['strict'])} | {fmt(a['robust'])} |")
    for group, a in s["groups"].items():
        lines.append(f"| **{group}** | | {a['n']} | {fmt(a['strict'])} | {fmt(a['robust'])} |")
    o = s["overall"]
    lines += [f"| **overall** | | {o['n']} | {fmt(o['strict'])} | {fmt(o['robust'])} |", "",
              f"Official headline (strict): {fmt(o['official'])}. Latency per question: p50 "
              f"{s['latency_ms']['p50']} ms, p90 {s['latency_ms']['p90']} ms."]
    run = summary.get("run")
    if run:
        lines += ["", f"This run: {run['questions']} questions in {run['wall_s']:.1f} s "
                      f"({run['questions_per_min']} per minute) on {run['processes']} process(es); "
                      f"{run['frames_encoded']} frames encoded for {run['frames_span']} frames of video "
                      f"({run['encodes_per_frame']} encodes per frame). Time: {run['stream_s']:.1f} s streaming "
                      f"{run['video_s']:.0f} s of video (of which {run['wait_s']:.1f} s waiting for frames to decode), "
                      f"{run['ask_s']:.1f} s answering."]
    return "\n".join(lines) + "\n"
