"""Scoring: the official strict rules, a robust answer parser, and per-question scores.

A question's record gets `score_strict` and `score_robust` in [0, 1] (0/1 but for OVO-Bench's
forward series, the share of its probes answered right).
"""

import re
import string

PREFIXES = ("the best answer is", "the correct answer is", "the answer is", "the best option is",
            "the correct option is", "best answer:", "best option:", "answer:", "option")


def strict_letter(reply: str, rule: str, answer: str, letters: str) -> str:
    """first: the reply's first character (StreamingBench's count.py). contains: the right letter if
    the reply contains it (OVO-Bench), else the first option letter it contains."""
    if rule == "first":
        return reply[:1]
    if answer in reply:
        return answer
    return next((ch for ch in reply if ch in letters), "")


def parse_letter(reply: str, letters: str, options: list[str] = ()) -> str:
    """The option letter a free-form reply names, '' if none: a leading letter ('B', 'B.', '(B)'),
    a letter after 'answer is' or 'option', a letter in parentheses, a lone capital letter, and
    last an option's text: the whole reply (any length: "7" names the option "7"), else quoted in it."""
    text = reply.strip()
    lowered = text.lower()
    for prefix in PREFIXES:
        if lowered.startswith(prefix):
            text = text[len(prefix):].lstrip(" :")
            break
    allowed = f"[{re.escape(letters)}]"
    patterns = (rf"^\(?({allowed})\)?(?=$|[\s.:,)])", rf"(?i:answer is|option|choice)\s*:?\s*\(?({allowed})\b",
                rf"\(({allowed})\)", rf"(?<![A-Za-z'])({allowed})(?![A-Za-z'])")
    for pattern in patterns:
        if match := re.search(pattern, text):
            return match.group(1)
    exact = [o[:1] for o in options if _norm(o[2:]) and _norm(o[2:]) == _norm(reply)]
    if len(exact) == 1:
        return exact[0]
    named = [o[:1] for o in options if len(_norm(o[2:])) > 2 and _norm(o[2:]) in _norm(reply)]
    return named[0] if len(named) == 1 else ""


def _norm(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def said_yes(reply: str) -> bool:
    """StreamingBench's proactive rule: 'yes' anywhere in the reply, any case."""
    return "yes" in reply.strip().lower()


def probe_right(reply: str, expected: str, rule: str) -> tuple[bool, bool]:
    """An OVO-Bench forward probe -> (official, robust)."""
    if rule == "count":
        official = "".join(re.findall(r"\d+", reply)) == expected
        first = re.search(r"\d+", reply)
        return official, bool(first) and first.group() == expected
    word = expected.capitalize()  # "Yes" / "No", as OVO-Bench's scorer compares them
    official = reply == word[0] or word in reply
    first = re.match(r"\W*(\w+)", reply.lower())
    return official, bool(first) and first.group(1) == expected


def score(question, replies: list[dict]) -> dict:
    """The scoring fields of a record. replies: the probes' replies in the order asked, each with
    "text" and "t" (and "poll": True for a proactive poll)."""
    kind = question.kind
    if kind == "choice":
        reply = replies[0]["text"]
        strict = strict_letter(reply, question.strict, question.answer, question.letters)
        robust = parse_letter(reply, question.letters, question.options)
        right = (question.answer in reply) if question.strict == "contains" else strict == question.answer
        return {"reply": reply, "letter_strict": strict, "letter_robust": robust,
                "score_strict": float(right), "score_robust": float(robust == question.answer)}
    if kind == "open":
        reply, answer = replies[0]["text"], _norm(question.answer)
        return {"reply": reply, "score_strict": float(_norm(reply) == answer),
                "score_robust": float(bool(answer) and answer in _norm(reply))}
    if kind == "proactive":
        polls = [r for r in replies if r.get("poll")]
        answered = next((r["t"] for r in polls if said_yes(r["text"])), None)
        right = answered is not None and abs(answered - question.gt_t) <= 2 + 1e-9
        answers = [r["text"] for r in replies if not r.get("poll")]
        return {"polls": [[r["t"], r["text"]] for r in polls], "answered_t": answered,
                "reply": answers[0] if answers else None, "gt_t": question.gt_t,
                "score_strict": float(right), "score_robust": float(right)}
    assert kind == "series"
    marks = [probe_right(r["text"], p.expected, p.rule) for r, p in zip(replies, question.probes)]
    return {"probes": [{"t": r["t"], "reply": r["text"], "expected": p.expected, "right": m[0], "right_robust": m[1]}
                       for r, p, m in zip(replies, question.probes, marks)],
            "score_strict": sum(m[0] for m in marks) / len(marks),
            "score_robust": sum(m[1] for m in marks) / len(marks)}
