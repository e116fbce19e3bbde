"""A generic video QA set: one JSON object per line,
    {"video": "clip.mp4", "time": 12.5 | "00:00:12", "question": "...", "options": ["...", ...],
     "answer": "B", "id": "q1" (optional), "task": "counting" (optional)}
Without options a question is open: right when the reply holds the answer (robust) or is it
(strict), case and punctuation aside. Prompts are StreamingBench's."""

import json

from livesight.eval import streamingbench
from livesight.eval.questions import Question, lettered, parse_time

BENCHMARK = "vqa"


def load(path: str) -> list[Question]:
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                questions.append(_question(line, number, len(questions)))
    return questions


def _question(line: str, number: int, order: int) -> Question:
    try:
        row = json.loads(line)
        if not isinstance(row, dict):
            raise ValueError("a line must be a JSON object")
    except ValueError as err:
        return Question(id=f"line{number}", order=order, benchmark=BENCHMARK, video="", task="?", group="?",
                        kind="choice", t=0.0, error=f"malformed line {number}: {str(err).splitlines()[0]}")
    task = str(row.get("task") or "vqa")
    base = dict(id=str(row.get("id", f"line{number}")), order=order, benchmark=BENCHMARK,
                video=str(row.get("video") or ""), task=task, group=task, time_stamp=str(row.get("time", "")))
    try:
        if not base["video"]:
            raise ValueError("no video")
        t = parse_time(row.get("time"))
        question, answer = str(row.get("question") or "").strip(), str(row.get("answer") or "").strip()
        if not question or not answer:
            raise ValueError("question and answer must not be empty")
        options = row.get("options") or []
        if not options:
            return Question(**base, kind="open", t=t, text=question, answer=answer,
                            prompt=streamingbench.OPEN.format(question=question))
        options = lettered([str(o) for o in options])
        letters = "".join(chr(65 + i) for i in range(len(options)))
        if answer.upper()[:1] not in letters:
            raise ValueError(f"answer {answer!r} is not one of the option letters {letters}")
        return Question(**base, kind="choice", t=t, text=question, options=options, answer=answer.upper()[:1],
                        letters=letters, prompt=streamingbench.CHOICE.format(question=question,
                                                                             options="\n".join(options)))
    except (ValueError, TypeError) as err:
        return Question(**base, kind="choice", t=0.0, error=f"malformed line {number}: {str(err).splitlines()[0]}")
