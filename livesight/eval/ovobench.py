"""OVO-Bench: its public annotation format (ovo_bench.json), task groups and prompts.

Each entry has id, video, task. Backward tracing (EPM, ASI, HLD) and real-time perception (STU,
OJR, ATR, ACR, OCR, FPD) entries ask one multiple-choice question at `realtime` seconds (options
unlettered, `gt` the right index). Forward active responding entries (REC, SSR, CRR) carry
`test_info`: a probe at each `realtime`, with the expected `count` (REC) or `type` 1 = yes,
0 = no (SSR, CRR). The official score: a letter is right when the reply contains it; a count when
the reply's digits, joined, equal it; yes/no when the reply contains the expected word (or is
its initial). Per task the mean; per group the mean of its tasks; overall the mean of the groups.
"""

import json

from livesight.eval.questions import Probe, Question, lettered, parse_time

BENCHMARK = "ovobench"
GROUPS = {
    "Backward Tracing": ["EPM", "ASI", "HLD"],
    "Real-Time Visual Perception": ["STU", "OJR", "ATR", "ACR", "OCR", "FPD"],
    "Forward Active Responding": ["REC", "SSR", "CRR"],
}
GROUP_OF = {task: group for group, tasks in GROUPS.items() for task in tasks}

CHOICE = ("Question: {question}\nOptions:\n{options}\nRespond only with the letter corresponding to your chosen "
          "option (e.g., A, B, C).\nDo not include any additional text or explanation in your response.")
REC = ("You're watching a video in which people may perform a certain type of action repetively.\nThe person "
       "performing this kind of action are referred to as 'they' in the following statement.\nYou're task is to "
       "count how many times have different people in the video perform this kind of action in total.\nOne complete "
       "motion counts as one.\nNow, answer the following question: How many times did they {activity}?\nProvide your "
       "answer as a single number (e.g., 0, 1, 2, 3...) indicating the total count.\nDo not include any additional "
       "text or explanation in your response.")
SSR = ("You're watching a tutorial video which contain a sequential of steps.\nThe following is one step from the "
       "whole procedures:\n{step}\nYour task is to determine if the man or woman in the video is currently "
       "performing this step.\nAnswer only with \"Yes\" or \"No\".\nDo not include any additional text or "
       "explanation in your response.")
CRR = ("You're responsible of answering questions based on the video content.\nThe following question are relevant "
       "to the latest frames, i.e. the end of the video.\n{question}\nDecide whether existing visual content, "
       "especially latest frames, i.e. frames that near the end of the video, provide enough information for "
       "answering the question.\nAnswer only with \"Yes\" or \"No\".\nDo not include any additional text or "
       "explanation in your response.")


def load(path: str) -> list[Question]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError("an OVO-Bench annotation file holds a list of entries with id, video and task")
    return [_question(entry, order) for order, entry in enumerate(data)]


def _question(entry, order: int) -> Question:
    entry = entry if isinstance(entry, dict) else {}
    task = str(entry.get("task", "?")).strip().upper()
    base = dict(id=str(entry.get("id", f"entry{order}")), order=order, benchmark=BENCHMARK,
                video=str(entry.get("video", "")), task=task, group=GROUP_OF.get(task, "Other"))
    try:
        if not base["video"]:
            raise ValueError("no video")
        if task in ("REC", "SSR", "CRR"):
            probes = [_probe(entry, task, info) for info in entry.get("test_info") or []]
            if not probes:
                raise ValueError("forward task without test_info")
            return Question(**base, kind="series", t=probes[0].t, text=str(entry.get("question", "")), probes=probes)
        if task not in GROUP_OF:
            raise ValueError(f"unknown task {task!r}: OVO-Bench tasks are {', '.join(GROUP_OF)}")
        options = lettered([str(o) for o in entry["options"]])
        gt = int(entry["gt"])
        if not 0 <= gt < len(options):
            raise ValueError(f"gt {gt} is not an option index (0..{len(options) - 1})")
        t = parse_time(entry["realtime"])
        question = str(entry["question"]).strip()
        return Question(**base, kind="choice", t=t, time_stamp=str(entry["realtime"]), text=question, options=options,
                        prompt=CHOICE.format(question=question, options="; ".join(options) + ";"), answer=chr(65 + gt),
                        letters="".join(chr(65 + i) for i in range(len(options))), strict="contains")
    except (KeyError, ValueError, TypeError) as err:
        message = f"missing field {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        return Question(**base, kind="choice", t=0.0, error=f"malformed entry: {message}")


def _probe(entry: dict, task: str, info: dict) -> Probe:
    t = parse_time(info["realtime"])
    if task == "REC":
        return Probe(t, REC.format(activity=entry["activity"]), str(int(info["count"])), "count")
    expected = "yes" if int(info["type"]) == 1 else "no"
    prompt = SSR.format(step=info["step"]) if task == "SSR" else CRR.format(question=entry["question"])
    return Probe(t, prompt, expected, "yesno")
