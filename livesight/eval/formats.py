"""Which benchmark a question file is, read once for its loader.

`read(path, benchmark)` returns the file's rows in the shape that benchmark's loader takes, or
raises InputError when the file is not that benchmark's format: the message names the file, the
benchmark asked for and, where it can tell, the format the file looks like. A file is a benchmark's
when at least one of its rows carries that format's fields (below); its other rows are the
loader's malformed rows, so a real file with a few broken rows still runs.

- StreamingBench, GitHub JSON: a list of entries (one list per video in the Sequential QA file)
  with `questions`; Hugging Face CSV: a header with `question` and `time_stamp`.
- OVO-Bench: a JSON list of entries with `task` and `video`.
- VQA: JSON Lines, a line an object with `video` and `question`.
"""

import csv
import io
import json
import os
from dataclasses import dataclass

from livesight.errors import InputError

NAMES = {"streamingbench": "a StreamingBench", "ovobench": "an OVO-Bench", "vqa": "a VQA"}
EXPECTED = {
    "streamingbench": "StreamingBench's GitHub JSON (a list of entries with video_path and questions) or its Hugging "
                      "Face CSV (question_id, task_type, question, time_stamp, answer, options)",
    "ovobench": "OVO-Bench's ovo_bench.json (a JSON list of entries with id, video, task, ...)",
    "vqa": "a VQA file: JSON Lines, one object per line with video, time, question, answer",
}
LOOKS = {"streamingbench-json": "a StreamingBench GitHub JSON file (entries with video_path and questions)",
         "streamingbench-csv": "a StreamingBench Hugging Face CSV file", "ovobench": "an OVO-Bench annotation file",
         "vqa": "a VQA JSON Lines file"}
MAX_FILE_BYTES = 256 * 2**20  # the real files are a few MB; past this, reading it whole is not a question file


@dataclass
class Contents:
    format: str  # a key of LOOKS
    rows: list  # streamingbench-json, ovobench: the entries; streamingbench-csv: (line, row dict);
    # vqa: (line number, line text)


def read(path: str, benchmark: str) -> Contents:
    text = _text(path)
    found, rows, looks = _identify(text)
    if found is None or found.split("-")[0] != benchmark:
        other = found.split("-")[0] if found else None
        hint = f"Run `livesight eval {other}` on it, or give " if other else "Give "
        raise InputError(f"{path} is not {NAMES[benchmark]} file: it looks like {looks}. {hint}{EXPECTED[benchmark]}")
    return Contents(found, rows)


def _text(path: str) -> str:
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path} is {size / 2**20:,.0f} MB, larger than any benchmark's question file "
                             f"({MAX_FILE_BYTES // 2**20} MB at most): is it the right file?")
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text (byte {err.start}): a question file is JSON, JSONL or CSV") \
            from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None


def _identify(text: str) -> tuple[str | None, list, str]:
    """-> (the format found or None, its rows, what the file looks like, in words)."""
    if not text.strip():
        return None, [], "an empty file"
    try:
        value = json.loads(text)
    except RecursionError:
        return None, [], "JSON nested deeper than Python's parser goes"
    except ValueError:
        pass
    else:
        return _identify_json(value, text)
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    objects = [v for _, line in lines if isinstance(v := _json_or_none(line), dict)]
    if objects:
        if any("video" in o and "question" in o for o in objects):
            return "vqa", lines, LOOKS["vqa"]
        return None, [], f"JSON Lines whose objects have the keys {_keys(objects[0])}"
    return _identify_csv(text)


def _identify_json(value, text: str) -> tuple[str | None, list, str]:
    if isinstance(value, dict):
        if "video" in value and "question" in value and len(text.strip().splitlines()) == 1:
            return "vqa", [(1, text.strip())], LOOKS["vqa"]  # JSON Lines of one line
        return None, [], f"a single JSON object with the keys {_keys(value)}"
    if not isinstance(value, list):
        return None, [], f"a single JSON {type(value).__name__}"
    entries = [e for item in value for e in (item if isinstance(item, list) else [item])]  # SQA: a list per video
    dicts = [e for e in entries if isinstance(e, dict)]
    votes = {"streamingbench-json": sum("questions" in e for e in dicts),
             "ovobench": sum("task" in e and "video" in e for e in dicts)}
    best = max(votes, key=votes.get)
    if votes[best]:
        return best, entries if best == "streamingbench-json" else value, LOOKS[best]
    if any("video" in e and "question" in e for e in dicts):
        return None, [], "a JSON list of VQA rows (VQA takes JSON Lines: one object per line, no list)"
    return None, [], f"a JSON list of {len(value)} items" + (f", the first with the keys {_keys(dicts[0])}"
                                                               if dicts else "")


def _identify_csv(text: str) -> tuple[str | None, list, str]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [str(name).strip() for name in reader.fieldnames or []]
        if not {"question", "time_stamp"} <= set(header):
            return None, [], f"neither JSON nor CSV with StreamingBench's columns (its first line: {_first(text)})"
        reader.fieldnames = header
        rows = [(number, row) for number, row in enumerate(reader, start=2)]
    except csv.Error as err:
        return None, [], f"a CSV file that cannot be read (line {reader.line_num}: {err})"
    return "streamingbench-csv", rows, LOOKS["streamingbench-csv"]


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except (ValueError, RecursionError):
        return None


def _keys(d: dict) -> str:
    names = [repr(k if len(k) <= 30 else k[:27] + "...") for k in list(d)[:8]]  # quoted: a key may hold a newline
    return ", ".join(names) + (", ..." if len(d) > 8 else "") if names else "(none)"


def _first(text: str) -> str:
    line = text.strip().splitlines()[0]
    return repr(line if len(line) <= 60 else line[:57] + "...")
