"""Benchmark formats and scoring, checked exactly with a scripted model whose replies are known."""

import json
import math
import os
import shutil

import pytest

from livesight.eval import ovobench, report, streamingbench, vqa
from livesight.eval.questions import parse_time, resolve_video
from livesight.eval.runner import evaluate
from livesight.eval.scoring import parse_letter, strict_letter
from livesight.vision.sources import VideoFile

OPTIONS = ["A. a red ball", "B. a blue box", "C. a green car", "D. a cat"]


class ScriptedEngine:
    """Replies from `answer(video name, video seconds, prompt)`; records every probe it was asked."""

    fps, frames_per_chunk, max_streams = 2.0, 2, 1

    def __init__(self, answer):
        self.answer, self.asked, self.passes = answer, [], []

    def video(self, path):
        return VideoFile(path)

    def open(self, video, start, seconds):
        self.passes.append((os.path.basename(video.path), start, seconds))
        return ScriptedPass(self, os.path.basename(video.path), start)


class ScriptedPass:
    def __init__(self, engine, name, start):
        self.engine, self.name, self.start, self.now, self.frames = engine, name, start, 0.0, 0

    def advance(self, t):
        assert t >= self.now - 1e-9, "a pass only moves forward"
        self.now = t
        self.frames = math.ceil(t - 1e-6) * 2

    def ask(self, prompt, max_tokens):
        t = round(self.start + self.now, 3)
        self.engine.asked.append((self.name, t, prompt))
        return {"text": self.engine.answer(self.name, t, prompt), "ttft_ms": 1.0, "latency_ms": 2.0, "retrieved": []}

    def close(self):
        pass


@pytest.fixture
def videos(tmp_path, clip):
    """clip.mp4 (8 s) and its copies under other names, in one folder."""
    folder = tmp_path / "videos"
    (folder / "sample_7").mkdir(parents=True)
    for name in ("clip.mp4", "other.mp4", "sample_7/video.mp4"):
        shutil.copy(clip, folder / name)
    return folder


def run(questions, folder, answer, protocol="stream", context=None):
    engine, records = ScriptedEngine(answer), []
    stats = evaluate(questions, engine, str(folder), records.append, protocol, context)
    return {r["id"]: r for r in records}, engine, stats


def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def test_parsers():
    letters = "ABCD"
    cases = {  # reply: (official first character, robust)
        "B": ("B", "B"), "B. a blue box": ("B", "B"), " B": (" ", "B"), "(D)": ("(", "D"),
        "The best option is: C": ("T", "C"), "I think the answer is A because": ("I", "A"),
        "a green car": ("a", "C"), "none of them": ("n", ""), "": ("", ""), "Option (B)": ("O", "B"),
    }
    for reply, (first, robust) in cases.items():
        assert strict_letter(reply, "first", "B", letters) == first, reply
        assert parse_letter(reply, letters, OPTIONS) == robust, reply
    assert strict_letter("I pick B", "contains", "B", letters) == "B"
    assert parse_letter("E", letters) == ""  # not an option letter
    assert parse_time("00:01:05") == 65 and parse_time("1:05") == 65 and parse_time(12.5) == 12.5
    for bad in ("soon", "-3", None, "1:2:3:4"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_streamingbench_choice_scores_exactly(tmp_path, videos):
    replies = {"00:00:02": "B", "00:00:03": " B", "00:00:04": "The best option is: C", "00:00:05": "D. a cat",
               "00:00:06": "a blue box"}  # answer B for all
    data = [{"video_path": "./videos/clip.mp4", "questions": [
        {"task_type": task, "question": f"q{ts}", "time_stamp": ts, "answer": "B", "options": OPTIONS}]}
        for ts, task in zip(replies, ["Object Perception", "Object Recognition", "Counting", "Counting", "OP"])]
    questions = streamingbench.load(write_json(tmp_path / "sb.json", data))
    assert [q.task for q in questions] == ["Object Perception"] * 2 + ["Counting"] * 2 + ["Object Perception"]
    stamp = {q.id: q.time_stamp for q in questions}
    records, engine, stats = run(questions, videos, lambda name, t, prompt: replies[f"00:00:0{int(t)}"])
    got = {stamp[i]: (r["letter_strict"], r["letter_robust"], r["score_strict"], r["score_robust"])
           for i, r in records.items()}
    assert got == {"00:00:02": ("B", "B", 1, 1), "00:00:03": (" ", "B", 0, 1), "00:00:04": ("T", "C", 0, 0),
                   "00:00:05": ("D", "D", 0, 0), "00:00:06": ("a", "B", 0, 1)}
    assert [t for _, t, _ in engine.asked] == [2, 3, 4, 5, 6]
    assert engine.asked[0][2].startswith("You are an advanced video question-answering AI assistant.")
    assert engine.asked[0][2].endswith("D. a cat\n\nThe best option is:")
    assert len(engine.passes) == 1 and stats.frames_encoded == stats.frames_span == 12  # one pass, to 6 s
    s = report.scores(list(records.values()), "streamingbench")
    assert s["tasks"]["Object Perception"] == {"n": 3, "strict": 33.33, "robust": 100.0,
                                               "group": "Real-Time Visual Understanding"}
    assert s["tasks"]["Counting"]["strict"] == 0 and s["overall"]["strict"] == 20.0 and s["overall"]["robust"] == 60.0
    assert s["overall"]["official"] == 20.0


@pytest.mark.parametrize("yes_at,answered,right", [(3, 3, False), (4, 4, True), (6, 6, True), (8, 8, True),
                                                   (None, None, False)])
def test_proactive_polling_window(tmp_path, videos, yes_at, answered, right):
    data = [{"video_path": "clip.mp4", "questions": [{
        "task_type": "Proactive Output", "question": "Say when the ball turns.", "time_stamp": "00:00:02",
        "ground_truth_time_stamp": "00:00:06", "ground_truth_output": "It turned."}]}]
    questions = streamingbench.load(write_json(tmp_path / "po.json", data))

    def answer(name, t, prompt):
        return "Yes." if "Is it the right time" in prompt and t == yes_at else ("It turned." if "Is it" not in prompt
                                                                              else "No")
    for protocol in ("stream", "official"):
        records, engine, _ = run(questions, videos, answer, protocol)
        (record,) = records.values()
        assert record["answered_t"] == answered and record["score_strict"] == float(right)
        polls = [t for _, t, p in engine.asked if "Is it the right time to output \"It turned.\"?" in p]
        last = yes_at if yes_at is not None else 8  # gt + 4 = 10 lies past the 8-s clip: clamped to its end
        assert polls == list(range(3, last + 1))
        assert record["clamped"] == (yes_at is None or yes_at == 8)  # the poll at the end stands for 9 and 10
        if yes_at is not None:
            assert engine.asked[-1][1] == yes_at and "Is it" not in engine.asked[-1][2]
            assert record["reply"] == "It turned."
        if protocol == "official":  # each poll (and the answer after a yes) a fresh cut from the time stamp
            cuts = polls + ([yes_at] if yes_at is not None else [])
            assert [(start, seconds) for _, start, seconds in engine.passes] == [(2.0, t - 2.0) for t in cuts]


def test_sequential_context_and_csv_format(tmp_path, videos):
    rows = ["question_id,task_type,question,time_stamp,answer,options",
            'sqa_7_0,Sequential Question Answering,First?,00:00:02,A,"[\'A. x\', \'B. y\', \'C. z\', \'D. w\']"',
            'sqa_7_1,Sequential Question Answering,Second?,00:00:04,C,"[\'x\', \'y\', \'z\', \'w\']"',
            'sqa_7_2,Counting,How many?,00:00:20,B,"[\'1\', \'2\']"',
            'sqa_7_3,Counting,Broken?,later,B,"[\'1\', \'2\']"',
            'sqa_9_0,Counting,Elsewhere?,00:00:01,A,"[\'1\', \'2\']"']
    path = tmp_path / "sb.csv"
    path.write_text("\n".join(rows) + "\n")
    questions = streamingbench.load(str(path))
    assert [q.video for q in questions] == ["sample_7/video.mp4"] * 4 + ["sample_9/video.mp4"]
    assert questions[1].options == ["A. x", "B. y", "C. z", "D. w"]
    assert "the following question and answer occurred: Question: First?" in questions[1].prompt
    assert "Answer: A;" in questions[1].prompt and "occurred" not in questions[0].prompt
    records, _, stats = run(questions, videos, lambda *a: "A")
    assert records["sqa_7_0"]["score_strict"] == 1 and records["sqa_7_1"]["score_strict"] == 0
    assert records["sqa_7_2"]["clamped"] and records["sqa_7_2"]["asked_t"] == 8.0
    assert records["sqa_7_3"]["error_kind"] == "malformed" and "bad time" in records["sqa_7_3"]["error"]
    assert records["sqa_9_0"]["error_kind"] == "video_missing"
    s = report.scores(list(records.values()), "streamingbench")
    assert s["errors"] == {"malformed": 1, "video_missing": 1} and s["answered"] == 3 and s["clamped_time_stamps"] == 1


def test_video_paths_stay_inside_the_folder(tmp_path, videos):
    (tmp_path / "secret.mp4").write_bytes(b"x")
    assert resolve_video(str(videos), "./videos/clip.mp4") == str((videos / "clip.mp4").resolve())
    for name in ("../secret.mp4", "sample_7/../../secret.mp4", str(tmp_path / "secret.mp4")):
        with pytest.raises(ValueError, match="absolute|leaves --videos"):
            resolve_video(str(videos), name)


def test_ovobench_scores_exactly(tmp_path, videos):
    data = [
        {"id": 1, "video": "clip.mp4", "task": "EPM", "question": "What was held?", "options": ["cup", "pen", "key"],
         "realtime": 3, "gt": 1},
        {"id": 2, "video": "clip.mp4", "task": "OCR", "question": "What is written?", "options": ["no", "yes"],
         "realtime": 4.5, "gt": 0},
        {"id": 3, "video": "clip.mp4", "task": "REC", "activity": "jump", "test_info": [
            {"realtime": 2, "count": 1}, {"realtime": 5, "count": 2}, {"realtime": 7, "count": 12}]},
        {"id": 4, "video": "other.mp4", "task": "SSR", "test_info": [
            {"realtime": 2, "step": "cut", "type": 1}, {"realtime": 6, "step": "fold", "type": 0}]},
        {"id": 5, "video": "other.mp4", "task": "CRR", "question": "Is it raining?", "answer": "yes", "test_info": [
            {"realtime": 3, "type": 0}, {"realtime": 9, "type": 1}]},
        {"id": 6, "video": "other.mp4", "task": "XYZ", "question": "?", "options": ["a"], "realtime": 1, "gt": 0},
    ]
    questions = ovobench.load(write_json(tmp_path / "ovo.json", data))
    assert questions[0].prompt.startswith("Question: What was held?\nOptions:\nA. cup; B. pen; C. key;")
    script = {("clip.mp4", 3): "A, no: B", ("clip.mp4", 4.5): "B", ("clip.mp4", 2): "1", ("clip.mp4", 5): "2 times",
              ("clip.mp4", 7): "1 and 2", ("other.mp4", 2): "Y", ("other.mp4", 6): "Yes", ("other.mp4", 3): "no",
              ("other.mp4", 8): "Yes, it is."}
    records, _, _ = run(questions, videos, lambda name, t, prompt: script[(name, t)])
    assert (records["1"]["score_strict"], records["1"]["score_robust"]) == (1, 0)  # B is in it; robust: the leading A
    assert (records["2"]["score_strict"], records["2"]["score_robust"]) == (0, 0)
    rec = records["3"]
    assert [p["right"] for p in rec["probes"]] == [True, True, True]  # "1 and 2" joins to 12, as the official scorer
    assert [p["right_robust"] for p in rec["probes"]] == [True, True, False]
    assert records["4"]["score_strict"] == 0.5 and records["5"]["score_strict"] == 0.5
    assert records["5"]["clamped"] and records["5"]["probes"][1]["t"] == 8.0
    assert records["6"]["error_kind"] == "malformed"
    s = report.scores(list(records.values()), "ovobench")
    assert s["groups"]["Backward Tracing"]["task_mean_strict"] == 100.0
    assert s["groups"]["Real-Time Visual Perception"]["task_mean_strict"] == 0.0
    assert s["groups"]["Forward Active Responding"]["task_mean_strict"] == 66.67  # (1 + 0.5 + 0.5) / 3
    assert s["overall"]["official"] == 55.56  # mean of the three groups


def test_vqa_open_and_choice(tmp_path, videos):
    lines = [{"id": "a", "video": "clip.mp4", "time": "00:00:03", "question": "Colour?", "answer": "Dark red"},
             {"id": "b", "video": "clip.mp4", "time": 5, "question": "Which?", "options": ["x", "y"], "answer": "b"},
             "not json", {"id": "d", "video": "clip.mp4", "time": 1, "question": "?", "options": ["x"], "answer": "Q"}]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    questions = vqa.load(str(path))
    replies = {3: "It is dark red.", 5: "B"}
    records, _, _ = run(questions, videos, lambda name, t, prompt: replies[int(t)])
    assert (records["a"]["score_strict"], records["a"]["score_robust"]) == (0, 1)
    assert records["b"]["score_strict"] == 1 and records["b"]["answer"] == "B"
    assert records["line3"]["error_kind"] == "malformed" and records["d"]["error_kind"] == "malformed"


def test_repeated_ids_get_a_suffix(tmp_path, videos):
    import argparse
    from livesight.eval.cli import load_questions
    row = {"id": "q", "video": "clip.mp4", "time": 1, "question": "?", "options": ["x", "y"], "answer": "A"}
    path = tmp_path / "v.jsonl"
    path.write_text((json.dumps(row) + "\n") * 3)
    args = argparse.Namespace(data=str(path), videos=str(videos), benchmark="vqa", tasks=None, limit=2)
    everything, selected = load_questions(args)
    assert [q.id for q in everything] == ["q", "q~2", "q~3"] and [q.id for q in selected] == ["q", "q~2"]
