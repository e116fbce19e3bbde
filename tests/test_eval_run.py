"""The evaluator end to end with tiny-random: protocols, encode-once, resume after SIGKILL,
several processes, videos at once, bad input."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from livesight.eval.__main__ import run as eval_main
from livesight.eval.results import ResultsLog, read_records

TIMING = ("latency_ms", "ttft_ms")
APPEND = ResultsLog.append


@pytest.fixture(scope="module")
def bench(tmp_path_factory, clip):
    """A VQA set over two videos: 8 s of shapes and 6 s of the quiet scene, 9 questions."""
    from livesight.vision.synthetic import write_video
    folder = tmp_path_factory.mktemp("bench")
    videos = folder / "videos"
    videos.mkdir()
    shutil.copy(clip, videos / "shapes.mp4")
    write_video(str(videos / "quiet.mp4"), 6.0, 30.0, 320, 180, "quiet")
    rows = [("shapes.mp4", t) for t in (2, 3, 5, 7, 8, 12)] + [("quiet.mp4", t) for t in (1, 4, 6)]
    lines = [{"id": f"{v}@{t}", "video": v, "time": t, "question": f"What is there at {t} s?",
              "options": ["a ball", "a box", "a car", "a cat"], "answer": "B"} for v, t in rows]
    (folder / "vqa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def args(bench, out, *extra):
    return ["vqa", "--data", str(bench / "vqa.jsonl"), "--videos", str(bench / "videos"), "--out", str(out),
            "--vision-window", "2", "--retrieve-top-k", "2", "--answer-tokens", "6", *extra]


def records(out) -> dict:
    return {r["id"]: r for r in read_records(os.path.join(out, "results.jsonl"))}


def deterministic(out) -> set:
    """The results file as a set of lines, timing left out (wall-clock latency differs run to run)."""
    return {json.dumps({k: v for k, v in r.items() if k not in TIMING}, sort_keys=True) for r in records(out).values()}


def summary(out) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def test_stream_answers_equal_a_fresh_stream_cut_at_each_time(bench, tmp_path):
    """With retrieval on and a 2-s window, the one-pass stream answers every question exactly as a
    fresh stream over the video cut at its time does: the stream shows the model only what came
    before, and no question sees another. Frames are encoded once per video in the stream."""
    assert eval_main(args(bench, tmp_path / "stream")) == 0
    assert eval_main(args(bench, tmp_path / "official", "--protocol", "official")) == 0
    stream, official = records(tmp_path / "stream"), records(tmp_path / "official")
    assert stream.keys() == official.keys() and len(stream) == 9
    for key in stream:
        for field in ("reply", "letter_strict", "letter_robust", "score_strict", "retrieved", "frames_seen", "asked_t"):
            assert stream[key][field] == official[key][field], (key, field)
    assert stream["shapes.mp4@7"]["retrieved"], "the question at 7 s draws on offloaded moments"
    assert stream["shapes.mp4@12"]["clamped"] and stream["shapes.mp4@12"]["asked_t"] == 8.0
    run_stream, run_official = summary(tmp_path / "stream")["run"], summary(tmp_path / "official")["run"]
    assert run_stream["frames_encoded"] == run_stream["frames_span"] == 16 + 12  # each video once, to its last question
    assert run_stream["encodes_per_frame"] == 1.0
    assert run_official["frames_encoded"] == 2 * (2 + 3 + 5 + 7 + 8 + 8) + 2 * (1 + 4 + 6)
    assert summary(tmp_path / "stream")["scores"] == {**summary(tmp_path / "official")["scores"], "latency_ms": (
        summary(tmp_path / "stream")["scores"]["latency_ms"])}
    md = (tmp_path / "stream" / "summary.md").read_text()
    assert "| **overall** | | 9 |" in md and "1.0 encodes per frame" in md


def test_resume_after_sigkill_gives_the_same_results(bench, tmp_path):
    """Killed at three random moments and resumed, the run ends with the same lines as an
    uninterrupted one, and no question twice."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "livesight.eval", *args(bench, tmp_path / "killed", "--answer-tokens", "24")]
    whole = [sys.executable, "-m", "livesight.eval", *args(bench, tmp_path / "whole", "--answer-tokens", "24")]
    assert subprocess.run(whole, env=env, capture_output=True, timeout=600).returncode == 0
    rng = random.Random(7)
    results = tmp_path / "killed" / "results.jsonl"
    killed_mid_run = 0
    for _ in range(3):
        before = len(read_records(str(results)))
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and len(read_records(str(results))) <= before and time.monotonic() < deadline:
            time.sleep(0.02)  # the model is loaded and answering
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.wait()
    assert killed_mid_run == 3, "every kill must land while the run is still going"
    assert len(read_records(str(results))) < 9
    assert subprocess.run(command, env=env, capture_output=True, timeout=600).returncode == 0
    lines = (tmp_path / "killed" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["id"] for x in lines}) == 9
    assert deterministic(tmp_path / "killed") == deterministic(tmp_path / "whole")


def test_two_processes_merge_into_the_single_process_result(bench, tmp_path):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    if accelerate is None:
        pytest.skip("accelerate's launcher is not installed next to this Python")
    assert eval_main(args(bench, tmp_path / "one")) == 0
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "livesight.eval",
                           *args(bench, tmp_path / "two")], env=dict(os.environ, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "two")) == ["results.jsonl", "run.json", "stats.rank0.json",
                                                    "stats.rank1.json", "summary.json", "summary.md"]
    assert deterministic(tmp_path / "two") == deterministic(tmp_path / "one")
    one, two = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert {k: v for k, v in two["scores"].items() if k != "latency_ms"} == \
        {k: v for k, v in one["scores"].items() if k != "latency_ms"}
    assert two["run"]["processes"] == 2 and two["run"]["videos"] == 2 and two["run"]["questions"] == 9
    assert [r["id"] for r in read_records(str(tmp_path / "two" / "results.jsonl"))] == \
        [r["id"] for r in read_records(str(tmp_path / "one" / "results.jsonl"))]  # data order


def test_a_partial_last_line_is_cut_and_asked_again(tmp_path):
    log = ResultsLog(str(tmp_path))
    log.append({"id": "a", "x": 1})
    log.close()
    with open(tmp_path / "results.jsonl", "ab") as f:
        f.write(b'{"id": "b", "x"')  # killed mid-write
    assert set(log.done()) == {"a"}
    log.append({"id": "b", "x": 2})
    log.close()
    assert [r["id"] for r in read_records(str(tmp_path / "results.jsonl"))] == ["a", "b"]
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize("extra,message", [
    (["--data", "/nonexistent.json"], "--data /nonexistent.json: no such file"),
    (["--videos", "/nonexistent"], "--videos /nonexistent is not a folder"),
    (["--context", "soon"], "argument --context: expected all or a number above 0"),
    (["--tasks", "XYZ"], "--tasks XYZ: none of these tasks"),
    (["--fps", "3"], "even number of frames"),
])
def test_bad_input_exits_2(bench, tmp_path, capsys, extra, message):
    argv = args(bench, tmp_path / "out") + extra
    if "--context" in extra:
        with pytest.raises(SystemExit) as exit_info:
            eval_main(argv)
        assert exit_info.value.code == 2
    else:
        assert eval_main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_rerun_with_other_settings_is_refused(bench, tmp_path, capsys):
    assert eval_main(args(bench, tmp_path / "out", "--limit", "2")) == 0
    assert eval_main(args(bench, tmp_path / "out", "--protocol", "official")) == 2
    assert "holds results made with other settings (protocol differ)" in capsys.readouterr().err
    assert eval_main(args(bench, tmp_path / "out")) == 0  # the same settings resume: 7 more questions
    assert len(records(tmp_path / "out")) == 9


def test_an_answer_that_is_not_remembered_leaves_the_session_as_it_was(tiny):
    """ask(remember=False) after retrieval has moved keys: cache, table, positions and pending
    tokens are bit for bit what they were; reset() gives a fresh session's state."""
    import torch
    from conftest import make_chunks
    from livesight.models.qwen2_5_vl import QwenVLAdapter
    from livesight.streaming.config import SessionConfig
    from livesight.streaming.session import Session
    adapter = QwenVLAdapter(tiny)
    session = Session(adapter, SessionConfig(vision_window_s=2.0, narrate_tokens=3), (180, 320))
    fresh = [session.cache.key_buffer[:, :, :, :session.cache.length].clone(), session.cache.table.pos.clone()]
    for chunk in make_chunks(6):
        session.add_chunk(chunk)
    cache = session.cache
    n = cache.length
    keys, values = cache.key_buffer[:, :, :, :n].clone(), cache.value_buffer[:, :, :, :n].clone()
    before = (n, keys, values, cache.table.pos.clone(), cache.table.seq.clone(), list(session.pending),
              session.stepper.builder().next_pos)
    answer = session.ask("what moved?", remember=False)[-1]
    assert answer.data["retrieved"], "retrieval moved the cached keys"
    after = (cache.length, cache.key_buffer[:, :, :, :n], cache.value_buffer[:, :, :, :n],
             cache.table.pos, cache.table.seq, session.pending, session.stepper.builder().next_pos)
    for name, a, b in zip(("length", "keys", "values", "positions", "seq", "pending", "next position"), before, after):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), name
    session.reset()
    assert torch.equal(cache.key_buffer[:, :, :, :cache.length], fresh[0]) and torch.equal(cache.table.pos, fresh[1])
    assert session.now == 0 and len(session.offloaded.store) == 0


def test_error_lines_are_kept_until_retried(bench, tmp_path):
    """A missing video gives error lines that a rerun keeps; --retry-errors asks them again once the
    video is there, and the merged results hold one line per question."""
    videos = tmp_path / "videos"
    shutil.copytree(bench / "videos", videos)
    quiet = videos / "quiet.mp4"
    quiet.rename(tmp_path / "quiet.mp4")
    argv = ["vqa", "--data", str(bench / "vqa.jsonl"), "--videos", str(videos), "--out", str(tmp_path / "out"),
            "--answer-tokens", "4"]
    assert eval_main(argv) == 0
    assert summary(tmp_path / "out")["scores"]["errors"] == {"video_missing": 3}
    (tmp_path / "quiet.mp4").rename(quiet)
    assert eval_main(argv) == 0
    assert summary(tmp_path / "out")["scores"]["errors"] == {"video_missing": 3}
    assert eval_main(argv + ["--retry-errors"]) == 0
    assert summary(tmp_path / "out")["scores"]["errors"] == {} and summary(tmp_path / "out")["run"]["questions"] == 3
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 9 and not any("error" in json.loads(x) for x in lines)


def test_streamingbench_and_ovobench_files_end_to_end(bench, tmp_path):
    """Each format through tiny-random: proactive polls and forward probes run; every kind scores."""
    videos = str(bench / "videos")
    sb = [{"video_path": "./videos/shapes.mp4", "questions": [
        {"task_type": "Counting", "question": "How many?", "time_stamp": "00:00:03", "answer": "B",
         "options": ["A. 1", "B. 2", "C. 3", "D. 4"]},
        {"task_type": "Proactive Output", "question": "Tell me when it turns.", "time_stamp": "00:00:02",
         "ground_truth_time_stamp": "00:00:04", "ground_truth_output": "Now."}]}]
    ovo = [{"id": 1, "video": "quiet.mp4", "task": "OJR", "question": "What?", "options": ["a", "b"], "realtime": 2,
            "gt": 1},
           {"id": 2, "video": "quiet.mp4", "task": "REC", "activity": "tick", "test_info": [
               {"realtime": 2, "count": 1}, {"realtime": 5, "count": 3}]}]
    for name, data in (("streamingbench", sb), ("ovobench", ovo)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        out = tmp_path / name
        assert eval_main([name, "--data", str(tmp_path / f"{name}.json"), "--videos", videos, "--out", str(out),
                          "--answer-tokens", "4"]) == 0
        got = records(out)
        assert len(got) == 2 and not any("error" in r for r in got.values())
        assert all(0 <= r["score_strict"] <= 1 and 0 <= r["score_robust"] <= 1 for r in got.values())
    proactive = records(tmp_path / "streamingbench")["./videos/shapes.mp4#1"]
    assert [t for t, _ in proactive["polls"]][0] == 3 and proactive["polls"][-1][0] <= 8
    assert [p["t"] for p in records(tmp_path / "ovobench")["2"]["probes"]] == [2, 5]


def test_progress_counts_each_question(bench, tmp_path, capsys, monkeypatch):
    """Off a terminal, eval's progress is status lines on stderr: one update per question written
    (here a line at each, every_s=0)."""
    import functools

    from livesight.eval import cli
    from livesight.progress import progress
    monkeypatch.setattr(cli, "progress", functools.partial(progress, every_s=0, bar=False))
    assert eval_main(args(bench, tmp_path / "each", "--limit", "4")) == 0
    counts = [x.split(": ")[1].split(" ")[0] for x in capsys.readouterr().err.splitlines()
              if x.startswith("eval vqa: ")]
    assert counts == ["1/4", "2/4", "3/4", "4/4", "done,"]


@pytest.fixture(scope="module")
def three(bench, tmp_path_factory):
    """StreamingBench's format over three videos of two frame sizes: choices (two at one time, one past
    its video's end) and proactive polls, whose probes depend on earlier answers."""
    from livesight.vision.synthetic import write_video
    folder = tmp_path_factory.mktemp("three")
    shutil.copytree(bench / "videos", folder / "videos")
    write_video(str(folder / "videos" / "busy.mp4"), 5.0, 30.0, 240, 160, "busy")
    options = ["A. 1", "B. 2", "C. 3", "D. 4"]

    def choice(t: str, text: str = "How many shapes?") -> dict:
        return {"task_type": "Counting", "question": text, "time_stamp": t, "answer": "B", "options": options}

    def proactive(t: str, gt: str) -> dict:
        return {"task_type": "Proactive Output", "question": "Tell me when it turns.", "time_stamp": t,
                "ground_truth_time_stamp": gt, "ground_truth_output": "Now."}
    data = [{"video_path": "./videos/shapes.mp4", "questions": [choice("00:00:05"), proactive("00:00:02", "00:00:03"),
                                                                 choice("00:00:12", "What moved?")]},
            {"video_path": "./videos/busy.mp4", "questions": [choice("00:00:02"), choice("00:00:02", "What moved?"),
                                                               proactive("00:00:01", "00:00:02")]},
            {"video_path": "./videos/quiet.mp4", "questions": [choice("00:00:04"), choice("00:00:01")]}]
    (folder / "sb.json").write_text(json.dumps(data))
    return folder


def sb_args(three, out, *extra):
    return ["streamingbench", "--data", str(three / "sb.json"), "--videos", str(three), "--out", str(out),
            "--vision-window", "2", "--retrieve-top-k", "2", "--answer-tokens", "6", *extra]


def lines(out) -> list[dict]:
    """The results file's records in order, timing left out."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(os.path.join(out, "results.jsonl"))]


def appended(monkeypatch, interrupt_after: int | None = None) -> list[str]:
    """The ids of the records appended to results files from now on, in order (the file itself is
    sorted into data order at the end); after `interrupt_after` of them, Ctrl-C."""
    import signal
    import threading
    ids = []

    def recorded(self, record):
        APPEND(self, record)
        ids.append(record["id"])
        if len(ids) == interrupt_after:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    monkeypatch.setattr(ResultsLog, "append", recorded)
    return ids


@pytest.mark.parametrize("protocol,extra,count", [("stream", [], 8), ("official", ["--tasks", "Counting"], 6)])
def test_videos_at_once_give_the_results_of_one_at_a_time(three, tmp_path, monkeypatch, protocol, extra, count):
    """Three videos in one engine at once (official: cuts of them, a stream each) answer, score and
    append their records, in order, exactly as one video at a time does."""
    order = {}
    for k in ("1", "3"):
        order[k] = appended(monkeypatch)
        assert eval_main(sb_args(three, tmp_path / k, "--protocol", protocol, "--concurrent", k, *extra)) == 0
    one, three_at_once = lines(tmp_path / "1"), lines(tmp_path / "3")
    assert len(one) == count and not any("error" in r for r in one)
    assert three_at_once == one and order["3"] == order["1"]
    scores = [{k: v for k, v in summary(tmp_path / k)["scores"].items() if k != "latency_ms"} for k in ("1", "3")]
    assert scores[0] == scores[1]
    assert summary(tmp_path / "3")["run"]["frames_encoded"] == summary(tmp_path / "1")["run"]["frames_encoded"]


def test_failures_of_videos_at_once_are_those_of_one_at_a_time(three, tmp_path, monkeypatch):
    """A video damaged past 2.5 s and a question the engine fails mid-way: at once as one at a time,
    the questions before them are answered and the rest of that video become the same error lines,
    while the other videos go on."""
    from livesight.errors import InputError
    from livesight.streaming.stream import Stream
    from livesight.vision.sources import VideoFile
    frame, ask_work = VideoFile.frame, Stream.ask_work

    def damaged(self, index):
        if self.path.endswith("quiet.mp4") and index >= 75:
            raise InputError(f"cannot decode frame {index}: damaged")
        return frame(self, index)

    def failing(self, question, *args, **kwargs):
        work = ask_work(self, question, *args, **kwargs)
        result = yield next(work)
        if "What moved?" in question:
            raise ValueError("boom")
        try:
            while True:
                result = yield work.send(result)
        except StopIteration as done:
            return done.value
    monkeypatch.setattr(VideoFile, "frame", damaged)
    monkeypatch.setattr(Stream, "ask_work", failing)
    for k in ("1", "3"):
        assert eval_main(sb_args(three, tmp_path / k, "--concurrent", k)) == 0
    assert lines(tmp_path / "3") == lines(tmp_path / "1")
    errors = {r["id"].split("/")[-1]: r["error"] for r in lines(tmp_path / "1") if "error" in r}
    assert errors == {"shapes.mp4#2": "ValueError: boom", "busy.mp4#1": "ValueError: boom",
                      "busy.mp4#2": "ValueError: boom", "quiet.mp4#0": "InputError: cannot decode frame 75: damaged"}


def test_an_interrupted_run_of_videos_at_once_resumes_exactly(three, tmp_path, monkeypatch):
    """Ctrl-C after two records: the file holds the first records one video at a time appends (a
    later video's, held until then, are lost) and no error the stopping caused; a resumed run
    finishes it into the uninterrupted file, line for line."""
    whole_order = appended(monkeypatch)
    assert eval_main(sb_args(three, tmp_path / "whole")) == 0
    assert whole_order != [r["id"] for r in read_records(str(tmp_path / "whole" / "results.jsonl"))], \
        "a video whose questions finish out of data order"
    appended(monkeypatch, interrupt_after=2)
    with pytest.raises(KeyboardInterrupt):
        eval_main(sb_args(three, tmp_path / "cut", "--concurrent", "3"))
    cut = read_records(str(tmp_path / "cut" / "results.jsonl"))
    assert 2 <= len(cut) < len(whole_order) and [r["id"] for r in cut] == whole_order[:len(cut)]
    assert not any("error" in r for r in cut)
    monkeypatch.undo()
    assert eval_main(sb_args(three, tmp_path / "cut", "--concurrent", "3")) == 0
    assert lines(tmp_path / "cut") == lines(tmp_path / "whole")
