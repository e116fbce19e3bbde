"""OVO-Bench: its public annotation format (ovo_bench.json), task groups and prompts.

Each entry has id, video, task. Backward tracing (EPM, ASI, HLD) and real-time perception (STU,
OJR, ATR, ACR, OCR, FPD) entries ask one multiple-choice question at `realtime` seconds (options
unlettered, `gt` the right index). Forward active responding entries (REC, SSR, CRR) carry
`test_info`: a probe at each `realtime`, with the expected `count` (REC) or `type` 1 = yes,
0 = no (SSR, CRR). The official score: a letter is right when the reply contains it; a count when
the reply's digits, joined, equal it; yes/no when the reply contains the expected word (or is
its initial). Per task the mean; per group the mean of its tasks; overall the mean of the groups.
"""

import math

from livesight.eval import formats
from livesight.eval.questions import LETTERS, Probe, Question, lettered, option_list, parse_time, text

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
    """Questions in file order; a malformed entry becomes a Question with `error` set. InputError for
    a file that is not OVO-Bench's (formats.read)."""
    return [_question(entry, order) for order, entry in enumerate(formats.read(path, BENCHMARK).rows)]


def _question(entry, order: int) -> Question:
    base = dict(id=f"entry{order}", order=order, benchmark=BENCHMARK, video="", task="?", group="?")
    try:
        if not isinstance(entry, dict):
            raise ValueError("an entry must be an object with id, video and task")
        base["id"] = text(entry.get("id"), "id") or base["id"]
        task = text(entry.get("task"), "task").upper()
        base.update(video=text(entry.get("video"), "video"), task=task or "?", group=GROUP_OF.get(task, "Other"))
        if not base["video"]:
            raise ValueError("no video")
        if not task:
            raise ValueError("no task")
        if task in ("REC", "SSR", "CRR"):
            test_info = entry.get("test_info")
            if not isinstance(test_info, list) or not test_info:
                raise ValueError("a forward task needs test_info, a list of probes")
            probes = [_probe(entry, task, info) for info in test_info]
            return Question(**base, kind="series", t=probes[0].t, text=text(entry.get("question"), "question"),
                            probes=probes)
        if task not in GROUP_OF:
            raise ValueError(f"unknown task {task!r}: OVO-Bench tasks are {', '.join(GROUP_OF)}")
        options = lettered(option_list(entry.get("options")))
        gt = _whole(entry.get("gt"), "gt")
        if not 0 <= gt < len(options):
            raise ValueError(f"gt {gt} is not an option index (0..{len(options) - 1})")
        t = parse_time(entry.get("realtime"))
        question = text(entry.get("question"), "question")
        if not question:
            raise ValueError("empty question")
        return Question(**base, kind="choice", t=t, time_stamp=text(entry["realtime"], "realtime"), text=question,
                        options=options, prompt=CHOICE.format(question=question, options="; ".join(options) + ";"),
                        answer=LETTERS[gt], letters=LETTERS[:len(options)], strict="contains")
    except (ValueError, TypeError, OverflowError) as err:
        return Question(**base, kind="choice", t=0.0, error=f"malformed entry: {str(err).splitlines()[0]}")


def _probe(entry: dict, task: str, info) -> Probe:
    if not isinstance(info, dict):
        raise ValueError("a test_info probe must be an object with realtime")
    t = parse_time(info.get("realtime"))
    if task == "REC":
        activity = text(entry.get("activity"), "activity")
        if not activity:
            raise ValueError("REC needs an activity")
        return Probe(t, REC.format(activity=activity), str(_whole(info.get("count"), "count")), "count")
    expected = {1: "yes", 0: "no"}.get(_whole(info.get("type"), "type"))
    if expected is None:
        raise ValueError(f"a probe's type must be 1 (yes) or 0 (no), got {info.get('type')!r}")
    if task == "SSR":
        step = text(info.get("step"), "step")
        if not step:
            raise ValueError("an SSR probe needs a step")
        return Probe(t, SSR.format(step=step), expected, "yesno")
    question = text(entry.get("question"), "question")
    if not question:
        raise ValueError("CRR needs a question")
    return Probe(t, CRR.format(question=question), expected, "yesno")


def _whole(value, name: str) -> int:
    """A whole number >= 0 as the file writes it: 3, 3.0 or "3"."""
    number = float(text(value, name) or "nan")
    if not (number >= 0 and math.isfinite(number) and number == int(number)):
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(number)
