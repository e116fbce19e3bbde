"""What a benchmark asks, in one shape for every format: a `Question` about one video, asked
through one or more `Probe`s at stream times, and how its replies are scored.

kinds:
- choice: one probe; a letter among the options (StreamingBench, OVO-Bench backward/real-time, VQA);
- open: one probe; free text, right when it holds the answer (VQA rows without options);
- proactive: StreamingBench's Proactive Output: a yes/no poll every second from the time stamp
  to the ground-truth time + 4 s; at the first yes the question itself is asked; right when that
  yes came within +-2 s of the ground truth;
- series: OVO-Bench's forward active responding: a probe at each test time, each with its own
  expected reply (a count, or yes/no); the score is the share answered right.
"""

import ast
import math
import os
import re
import reprlib
import string
from dataclasses import dataclass, field

KINDS = ("choice", "open", "proactive", "series")
LETTERS = string.ascii_uppercase  # a choice question's option letters, in order
# The longest prompt a row may make. The real benchmarks' longest (StreamingBench's Sequential QA with
# its context) is a few thousand characters; the engine sizes its cache for the longest prompt in the file.
MAX_PROMPT_CHARS = 20_000


@dataclass(frozen=True)
class Probe:
    t: float  # video seconds
    prompt: str
    expected: str = ""  # series: the right reply ("3", "yes", "no")
    rule: str = ""  # series: "count" | "yesno"


@dataclass
class Question:
    id: str
    order: int  # place in the data file: results are written back in this order
    benchmark: str
    video: str  # as the data names it, resolved inside --videos
    task: str
    group: str
    kind: str
    t: float  # the time stamp, video seconds
    text: str = ""  # the question as the data gives it
    options: list[str] = field(default_factory=list)  # choice: 'A. ...' lines
    prompt: str = ""  # choice/open: the text asked; proactive: the question asked after a yes
    answer: str = ""  # choice: the letter; open: the text; proactive: the ground-truth output
    letters: str = "ABCD"  # choice: the option letters
    strict: str = "first"  # choice: the official rule: "first" (first character) or "contains" (OVO-Bench)
    poll_prompt: str = ""  # proactive: the yes/no question polled every second
    gt_t: float | None = None  # proactive: the ground-truth time
    probes: list[Probe] = field(default_factory=list)  # series
    error: str | None = None  # a malformed row: written as an error line, never asked
    time_stamp: str = ""  # as given

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        for prompt in (self.prompt, self.poll_prompt, *(p.prompt for p in self.probes)):
            check_prompt(prompt)  # ValueError: the loaders make the row a malformed one


def parse_time(value) -> float:
    """'HH:MM:SS', 'MM:SS', 'SS' (fractions allowed) or a number -> finite seconds >= 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)  # OverflowError for an int past float's range: a malformed row
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?(:\d+(\.\d+)?){0,2}\s*", value):
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
    else:
        raise ValueError(f"bad time {_short(value)}: write HH:MM:SS or seconds")
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ValueError(f"bad time {_short(value)}: must be a finite number of seconds >= 0")
    return seconds


def text(value, name: str) -> str:
    """A text field: a string, or a number written out; '' when missing or null. A list, an object
    or a boolean is a malformed row (ValueError), never its printed form."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name} must be text, got {type(value).__name__} {_short(value)}")
    return str(value).strip()


def option_list(value, name: str = "options") -> list[str]:
    """A choice question's options: a list of 2 to 26 texts (one letter each). A string is not a
    list; `parse_options_text` reads the text form a CSV cell holds."""
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of texts, got {type(value).__name__} {_short(value)}")
    if not 2 <= len(value) <= len(LETTERS):
        raise ValueError(f"{name} must hold 2 to {len(LETTERS)} options, got {len(value)}")
    options = [text(o, name) for o in value]
    if not all(options):
        raise ValueError(f"{name} holds an empty option")
    return options


# a quoted text or a number, then spaces; each run of spaces has one place in the pattern (no backtracking)
_LITERAL = r"""(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|-?\d+(?:\.\d+)?)\s*"""
_FLAT_LIST = re.compile(rf"\[\s*(?:{_LITERAL}(?:,\s*{_LITERAL})*(?:,\s*)?)?\]")


def parse_options_text(cell: str) -> list:
    """The options as a CSV cell writes them, a Python or JSON list of quoted texts ("['A. x', 'B. y']").
    Only a flat list of literals is evaluated: the parser is never handed a nesting it cannot hold."""
    cell = cell.strip()
    if not _FLAT_LIST.fullmatch(cell):
        raise ValueError(f"options must be a list like ['A. ...', 'B. ...'], got {_short(cell)}")
    try:
        return list(ast.literal_eval(cell))
    except (ValueError, SyntaxError) as err:  # a bad escape inside a quoted text
        raise ValueError(f"options: {str(err).splitlines()[0]}") from None


def check_prompt(prompt: str) -> str:
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt is {len(prompt):,} characters long, more than {MAX_PROMPT_CHARS:,}: "
                         f"a question this long is not a benchmark's")
    return prompt


def _short(value) -> str:
    """A bad value in a message: reprlib bounds both its length and its depth."""
    return reprlib.repr(value)


def lettered(options: list[str]) -> list[str]:
    """Options as 'A. text' lines; already-lettered options are kept as they are (the official rule)."""
    if options and re.match(r"^[A-Z]\.", str(options[0])):
        return [str(o) for o in options]
    return [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]


def resolve_video(videos_dir: str, name: str) -> str:
    """The file `name` names inside videos_dir: its relative path there, else its file name at the top.

    The name is confined as the data file writes it: no absolute path, no drive letter, no '..'
    segment (backslashes count as '/'), so it cannot name anything outside videos_dir's tree. What the
    folder itself holds is the user's: a symlink in it (a Hugging Face snapshot's sample_N/video.mp4
    -> ../../../blobs/<sha>) resolves where it points. Raises ValueError for a name that would leave
    the folder, FileNotFoundError for one that names nothing."""
    rel = name.replace("\\", "/")
    if "\0" in rel or rel.startswith("/") or re.match(r"^[A-Za-z]:", rel):
        raise ValueError(f"video path {name!r} is absolute: paths are resolved inside --videos only")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"video path {name!r} leaves --videos {videos_dir} (a '..' segment): paths are "
                         f"resolved inside it only")
    candidates = [parts, parts[1:] if parts[:1] == ["videos"] else [], parts[-1:]]
    for candidate in candidates:
        path = os.path.join(os.path.abspath(videos_dir), *candidate) if candidate else ""
        if path and os.path.isfile(path):
            return path
    raise FileNotFoundError(f"video {name!r} not found in --videos {videos_dir}")
