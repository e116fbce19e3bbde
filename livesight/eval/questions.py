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

import os
import re
from dataclasses import dataclass, field

KINDS = ("choice", "open", "proactive", "series")


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


def parse_time(value) -> float:
    """'HH:MM:SS', 'MM:SS', 'SS' (fractions allowed) or a number -> seconds >= 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?(:\d+(\.\d+)?){0,2}\s*", value):
        seconds = 0.0
        for part in value.strip().split(":"):
            seconds = seconds * 60 + float(part)
    else:
        raise ValueError(f"bad time {value!r}: write HH:MM:SS or seconds")
    if not seconds >= 0:
        raise ValueError(f"bad time {value!r}: must be >= 0")
    return seconds


def lettered(options: list[str]) -> list[str]:
    """Options as 'A. text' lines; already-lettered options are kept as they are (the official rule)."""
    if options and re.match(r"^[A-Z]\.", str(options[0])):
        return [str(o) for o in options]
    return [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]


def resolve_video(videos_dir: str, name: str) -> str:
    """The file `name` names inside videos_dir: its relative path there, else its file name at the
    top. Raises ValueError for a path that leaves the folder (absolute, or through ..) or names nothing."""
    root = os.path.realpath(videos_dir)
    rel = name.replace("\\", "/")
    if os.path.isabs(rel) or re.match(r"^[A-Za-z]:/", rel):
        raise ValueError(f"video path {name!r} is absolute: paths are resolved inside --videos only")
    rel = rel[2:] if rel.startswith("./") else rel
    for candidate in (rel, rel.split("/", 1)[1] if rel.startswith("videos/") else None, os.path.basename(rel)):
        if not candidate:
            continue
        path = os.path.realpath(os.path.join(root, candidate))
        if os.path.commonpath([root, path]) != root:
            raise ValueError(f"video path {name!r} leaves --videos {videos_dir}: paths are resolved inside it only")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"video {name!r} not found in --videos {videos_dir}")
