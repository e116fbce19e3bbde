"""Fuzzing the evaluator's inputs (hypothesis, derandomized: the same examples on every run).

Benchmark files of all three formats with any JSON value where a row, a field or the whole file
goes, and StreamingBench CSVs with random cells: loading gives Questions (a malformed row is one
with `error` set) or a clean InputError naming the file, never another exception, and never more
memory than a few MB. The eval command line with random text in its numeric flags: exit 2 with a
one-line message, or a run."""

import contextlib
import csv
import io
import json
import math
import os
import tempfile
import tracemalloc

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from livesight.errors import InputError
from livesight.eval import cli, ovobench, report, streamingbench, vqa
from livesight.eval.__main__ import run as eval_main
from livesight.eval.questions import KINDS, MAX_PROMPT_CHARS
from livesight.eval.runner import Plan, RunStats, error_record

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PEAK_BYTES = 8 * 2**20  # a few KB of input must not cost more than this

SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["00:00:03", "1:05", "99999999999999999999:00", "9" * 400, "A", "b", "Counting", "OJR",
                              "REC", "SSR", "CRR", "Proactive Output", "Sequential Question Answering", "clip.mp4",
                              "../x.mp4", "['a', 'b']", "[\"a\", \"b\"]", "-" * 100_000 + "1", "1e999", "NaN"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=12)

# What may stand in a field's place besides any JSON value: the values that break each kind of field.
TIMES = st.floats() | st.integers() | st.sampled_from(["9" * 400, "99999999999999999999:00", "1:2:3:4", "-1", "1e999",
                                                        " 00:00:01 ", "00:60:00.5"])
NUMBERS = st.floats() | st.integers() | st.sampled_from(["3", "1.5", True, 10**400, -1])
OPTIONS = st.lists(SCALARS, max_size=30) | st.sampled_from(["ab", "['a', 'b']", "-" * 100_000 + "1", "[" * 1000,
                                                            "['a', 'b'] * 3", "{'a', 'b'}", "['\\N{x}', 'b']"])
POOLS = {"time_stamp": TIMES, "ground_truth_time_stamp": TIMES, "realtime": TIMES, "time": TIMES, "gt": NUMBERS,
         "count": NUMBERS, "type": NUMBERS, "options": OPTIONS}

SB_ROW = {"task_type": "Counting", "question": "How many?", "time_stamp": "00:00:02", "answer": "B",
          "options": ["A. 1", "B. 2"], "ground_truth_time_stamp": "00:00:05", "ground_truth_output": "Now."}
OVO_CHOICE = {"id": 1, "video": "clip.mp4", "task": "OJR", "question": "What?", "options": ["a", "b"],
              "realtime": 2, "gt": 1}
OVO_PROBE = {"realtime": 2, "count": 1, "type": 1, "step": "cut"}
VQA_ROW = {"id": "q", "video": "clip.mp4", "time": 2, "question": "What?", "options": ["a", "b"], "answer": "A",
           "task": "counting"}
SB_COLUMNS = ["question_id", "task_type", "question", "time_stamp", "answer", "options", "video_path",
              "ground_truth_time_stamp", "ground_truth_output"]
DROP = object()


def present(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not DROP}


def field(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the usual value (7 in 10), else another value (2 in 10) or no field at all."""
    return st.integers(0, 9).flatmap(lambda i: usual if i < 7 else other if i < 9 else st.just(DROP))


def mutated(template: dict, other: st.SearchStrategy | None = None) -> st.SearchStrategy:
    """The template (a value there may be a strategy) with each field kept, replaced or dropped, and
    maybe a field more. Replacements: `other`, else any JSON value or one from the field's pool."""
    def usual(v):
        return v if isinstance(v, st.SearchStrategy) else st.just(v)

    def replacement(key):
        return other if other is not None else JSON | POOLS.get(key, st.nothing())
    fields = {k: field(usual(v), replacement(k)) for k, v in template.items()}
    return st.fixed_dictionaries(fields | {"extra": field(st.just(DROP), replacement("extra"))}).map(present)


OVO_FORWARD = {"id": 2, "video": "clip.mp4", "task": st.sampled_from(["REC", "SSR", "CRR"]), "activity": "jump",
               "question": "Is it?", "test_info": st.lists(mutated(OVO_PROBE), min_size=1, max_size=3)}


def mostly(usual: st.SearchStrategy, other: st.SearchStrategy) -> st.SearchStrategy:
    return st.integers(0, 9).flatmap(lambda i: usual if i < 8 else other)


def rows(template: dict) -> st.SearchStrategy:
    return st.lists(mostly(mutated(template), JSON), min_size=1, max_size=5)


@contextlib.contextmanager
def bounded_memory():
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < MAX_PEAK_BYTES, f"loading took {peak / 2**20:.1f} MB"
    finally:
        tracemalloc.stop()


def check(load, text: str, benchmark: str, expect_questions: bool = False) -> None:
    """The invariants of loading `text` as `benchmark`."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "data")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            with bounded_memory():
                questions = load(path)
        except InputError as err:
            assert not expect_questions, f"refused a file of the right format: {err}"
            assert path in str(err) and "\n" not in str(err)
            event("refused")
            return
    event(f"asked {sum(q.error is None for q in questions)}, malformed {sum(q.error is not None for q in questions)}")
    for q in questions:
        assert isinstance(q.id, str) and isinstance(q.task, str) and isinstance(q.video, str)
        if q.error is not None:
            assert isinstance(q.error, str) and q.error.startswith("malformed")
            json.dumps(error_record(q, "malformed", q.error))
            continue
        assert q.video and q.task and q.kind in KINDS and math.isfinite(q.t) and q.t >= 0
        prompts = [q.prompt, q.poll_prompt] + [p.prompt for p in q.probes]
        assert all(len(p) <= MAX_PROMPT_CHARS for p in prompts) and (q.prompt or q.probes)
        if q.kind == "choice":
            assert 2 <= len(q.options) == len(q.letters) and q.answer in q.letters
        if q.kind == "series":
            assert q.probes and all(math.isfinite(p.t) and p.t >= 0 for p in q.probes)
        if q.kind == "proactive":
            assert math.isfinite(q.gt_t) and len(Plan(q, 10.0, 16).todo) <= 12  # polls past the end: one
    cli._unique_ids(questions)
    assert len({q.id for q in questions}) == len(questions)
    report.scores([error_record(q, "malformed", q.error) for q in questions if q.error], benchmark)


@FUZZ
@given(entries=st.lists(mostly(mutated({"video_path": "clip.mp4", "questions": rows(SB_ROW)}), JSON),
                        min_size=1, max_size=4))
def test_streamingbench_json_rows(entries):
    signed = entries + [{"video_path": "clip.mp4", "questions": [SB_ROW]}]  # one real entry: the format is known
    check(streamingbench.load, json.dumps(signed), "streamingbench", expect_questions=True)


CSV_ROW = {"question_id": "real_1_0", "task_type": "Counting", "question": "How many?", "time_stamp": "00:00:02",
           "answer": "B", "options": "['A. 1', 'B. 2']", "video_path": "clip.mp4", "ground_truth_time_stamp": "5",
           "ground_truth_output": "Now."}


@FUZZ
@given(cells=st.lists(mostly(mutated(CSV_ROW, st.text(max_size=30) | SCALARS.map(str) | TIMES.map(str)).map(
    lambda r: [r.get(c, "") for c in SB_COLUMNS]), st.lists(st.text(max_size=30), max_size=len(SB_COLUMNS) + 2)),
    min_size=1, max_size=6))
def test_streamingbench_csv_cells(cells):
    """Random cells (quotes, commas, newlines, NUL among them), and rows too short or too long."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(SB_COLUMNS)
    writer.writerows(cells)
    check(streamingbench.load, out.getvalue(), "streamingbench", expect_questions=True)


@FUZZ
@given(cell=st.text(max_size=60) | st.lists(SCALARS, max_size=5).map(repr) | st.lists(JSON, max_size=3).map(json.dumps)
       | st.builds(lambda prefix, n, rest: prefix * n + rest, st.sampled_from(["-", "+", "~", "(", "[", "not ", "[-"]),
                   st.integers(1, 100_000), st.sampled_from(["1", "'a'", "]", "[]"])))
def test_options_cells(cell):
    """The text of a CSV options cell is a list or a ValueError: the parser never meets a nesting or a
    chain it cannot hold (ast.literal_eval('-' * 100000 + '1') is a MemoryError)."""
    from livesight.eval.questions import parse_options_text
    with bounded_memory():
        try:
            options = parse_options_text(cell)
        except ValueError:
            return
    assert isinstance(options, list) and all(isinstance(o, (str, int, float)) for o in options)


@FUZZ
@given(entries=st.lists(mostly(mutated(OVO_CHOICE) | mutated(OVO_FORWARD), JSON), min_size=1, max_size=5))
def test_ovobench_entries(entries):
    check(ovobench.load, json.dumps(entries + [OVO_CHOICE]), "ovobench", expect_questions=True)


@FUZZ
@given(lines=st.lists(mostly(mutated(VQA_ROW).map(json.dumps), JSON.map(json.dumps) | st.text(max_size=40)),
                      min_size=1, max_size=6))
def test_vqa_lines(lines):
    text = "\n".join(line.replace("\n", " ").replace("\r", " ") for line in lines + [json.dumps(VQA_ROW)]) + "\n"
    check(vqa.load, text, "vqa", expect_questions=True)


@FUZZ
@given(whole=JSON.map(json.dumps) | st.text(max_size=200), benchmark=st.sampled_from(["streamingbench", "ovobench",
                                                                                       "vqa"]))
def test_any_whole_file(whole, benchmark):
    load = {"streamingbench": streamingbench.load, "ovobench": ovobench.load, "vqa": vqa.load}[benchmark]
    check(load, whole, benchmark)


@FUZZ
@given(q=st.builds(lambda t, gt, duration: (t, gt, duration), st.floats(0, 1e6), st.floats(0, 1e6),
                   st.floats(0.5, 3600)))
def test_proactive_plans_stay_small_and_match_the_enumeration(q):
    """Polls past the video's end are one poll at its end: bounded however late the ground truth.
    (A ground truth up to 1e6 s: listing every poll, as before, costs about 100 MB there and fails
    the memory bound without taking a machine down.)"""
    from livesight.eval.questions import Question
    t, gt, duration = q
    question = Question(id="p", order=0, benchmark="streamingbench", video="v", task="Proactive Output", group="",
                        kind="proactive", t=t, gt_t=gt, prompt="ask", poll_prompt="poll")
    with bounded_memory():
        plan = Plan(question, duration, 16)
    assert len(plan.todo) <= max(0, math.ceil(duration - t)) + 2
    num_polls = max(1, math.floor(gt + 4 - t + 1e-9))
    if num_polls < 5000:  # the old way: every poll listed, those past the end merged
        todo = []
        for k in range(1, num_polls + 1):
            if todo and todo[-1][0] == min(t + k, duration):
                todo[-1][4] = t + k
            else:
                todo.append([min(t + k, duration), "poll", 4, True, t + k])
        assert plan.todo == todo


NUMERIC = ["--limit", "--context", "--fps", "--chunk-seconds", "--vision-window", "--text-sink", "--text-window",
           "--narrate-tokens", "--answer-tokens", "--max-pixels", "--retrieve-top-k", "--offload-ram-gb",
           "--offload-disk-gb", "--reuse-threshold", "--keep-ratio", "--keep-floor", "--prune-threshold"]
VALUES = (st.text(max_size=12) | st.floats().map(repr) | st.integers().map(str) | st.integers(0, 64).map(str)
          | st.floats(0, 64).map(str) | st.sampled_from(["nan", "inf", "-inf", "1e300", "-1", "0", "1e-300", "all", "2",
                                                        "16", " 4 ", "0x10", "1_000", "٣", "１"]))


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_cli")
    (folder / "v.jsonl").write_text(json.dumps(VQA_ROW) + "\n")
    return folder


@settings(FUZZ, max_examples=150)
@given(pairs=st.lists(st.tuples(st.sampled_from(NUMERIC), VALUES), min_size=1, max_size=3))
def test_eval_numeric_flags_exit_2_in_one_line_or_run(cli_inputs, pairs):
    out = tempfile.mkdtemp(dir=cli_inputs)
    argv = ["vqa", "--data", str(cli_inputs / "v.jsonl"), "--videos", str(cli_inputs), "--out", out]
    argv += [f"{flag}={value}" for flag, value in pairs]
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(err), \
            contextlib.redirect_stdout(io.StringIO()):
        patch.setattr(cli, "_run", lambda *a, **k: RunStats())  # no model: the run is all but the answering
        try:
            code = eval_main(argv)
        except SystemExit as exit_:
            code = exit_.code
    lines = [line for line in err.getvalue().splitlines() if "error" in line]
    event(f"exit {code}")
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("livesight eval"), err.getvalue()
    else:
        assert code == 0 and not lines, err.getvalue()
        assert os.path.exists(os.path.join(out, "summary.json"))
