"""A generic video QA set: one JSON object per line,
    {"video": "clip.mp4", "time": 12.5 | "00:00:12", "question": "...", "options": ["...", ...],
     "answer": "B", "id": "q1" (optional), "task": "counting" (optional)}
`options` is a JSON list of 2 to 26 texts; a string there is a malformed row, never split into
characters nor guessed at (JSON Lines has lists). Without options (absent, null or []) a question
is open: right when the reply holds the answer (robust) or is it (strict), case and punctuation
aside. Prompts are StreamingBench's."""

import json

from livesight.eval import formats, streamingbench
from livesight.eval.questions import LETTERS, Question, lettered, option_list, parse_time, text

BENCHMARK = "vqa"


def load(path: str) -> list[Question]:
    """Questions in file order; a malformed line becomes a Question with `error` set. InputError for
    a file that is not JSON Lines of VQA rows (formats.read)."""
    lines = formats.read(path, BENCHMARK).rows
    return [_question(line, number, order) for order, (number, line) in enumerate(lines)]


def _question(line: str, number: int, order: int) -> Question:
    base = dict(id=f"line{number}", order=order, benchmark=BENCHMARK, video="", task="?", group="?")
    try:
        try:
            row = json.loads(line)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise ValueError("a line must be a JSON object")
        base["id"] = text(row.get("id"), "id") or base["id"]
        task = text(row.get("task"), "task") or "vqa"  # optional
        base.update(video=text(row.get("video"), "video"), task=task, group=task,
                    time_stamp=text(row.get("time"), "time"))
        if not base["video"]:
            raise ValueError("no video")
        t = parse_time(row.get("time"))
        question, answer = text(row.get("question"), "question"), text(row.get("answer"), "answer")
        if not question or not answer:
            raise ValueError("question and answer must not be empty")
        if row.get("options") in (None, []):
            return Question(**base, kind="open", t=t, text=question, answer=answer,
                            prompt=streamingbench.OPEN.format(question=question))
        # options: a JSON list. A string is refused, not split or guessed at: JSON Lines has lists.
        options = lettered(option_list(row.get("options")))
        letters = LETTERS[:len(options)]
        if answer.upper()[:1] not in letters:
            raise ValueError(f"answer {answer!r} is not one of the option letters {letters}")
        return Question(**base, kind="choice", t=t, text=question, options=options, answer=answer.upper()[:1],
                        letters=letters, prompt=streamingbench.CHOICE.format(question=question,
                                                                             options="\n".join(options)))
    except (ValueError, TypeError, OverflowError) as err:
        return Question(**base, kind="choice", t=0.0, error=f"malformed line {number}: {str(err).splitlines()[0]}")
