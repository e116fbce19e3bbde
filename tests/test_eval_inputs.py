"""The evaluator against bad input: a file of another benchmark's format is refused before any
model loads; null, non-text and string-where-a-list fields are malformed rows; video paths are
confined as the data writes them, while the folder's own symlinks (a Hugging Face snapshot) resolve."""

import json
import os
import shutil

import pytest

from livesight.errors import InputError
from livesight.eval import ovobench, streamingbench, vqa
from livesight.eval.__main__ import run as eval_main
from livesight.eval.questions import resolve_video
from test_eval_scoring import run

OPTIONS = ["A. a red ball", "B. a blue box"]
FILES = {  # one question each, in every format
    "sb.json": json.dumps([{"video_path": "clip.mp4", "questions": [
        {"task_type": "Counting", "question": "How many?", "time_stamp": "00:00:02", "answer": "B",
         "options": OPTIONS}]}], indent=2),
    "sb.csv": "question_id,task_type,question,time_stamp,answer,options\n"
              "sample_1_0,Counting,How many?,00:00:02,B,\"['A. a red ball', 'B. a blue box']\"\n",
    "ovo.json": json.dumps([{"id": 1, "video": "clip.mp4", "task": "OJR", "question": "What?",
                             "options": ["a", "b"], "realtime": 2, "gt": 1}], indent=4),
    "vqa.jsonl": json.dumps({"video": "clip.mp4", "time": 2, "question": "What?", "options": ["a", "b"],
                             "answer": "B"}) + "\n" + json.dumps({"video": "clip.mp4", "time": 3,
                                                                  "question": "Colour?", "answer": "red"}) + "\n",
    "notes.txt": "these are my notes\nabout the benchmark\n",
}
FORMAT_OF = {"sb.json": "streamingbench", "sb.csv": "streamingbench", "ovo.json": "ovobench", "vqa.jsonl": "vqa"}
LOOKS = {"sb.json": "a StreamingBench GitHub JSON file", "sb.csv": "a StreamingBench Hugging Face CSV file",
         "ovo.json": "an OVO-Bench annotation file", "vqa.jsonl": "a VQA JSON Lines file",
         "notes.txt": "neither JSON nor CSV"}
ARTICLE = {"streamingbench": "a StreamingBench", "ovobench": "an OVO-Bench", "vqa": "a VQA"}


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the evaluator gets as far as loading a model."""
    from livesight.models import registry as adapter

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(adapter, "load_adapter", refuse)


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("benchmark", ["streamingbench", "ovobench", "vqa"])
def test_a_file_of_another_format_is_refused_before_any_model_loads(tmp_path, capsys, no_model, name, benchmark):
    data = tmp_path / name
    data.write_text(FILES[name])
    argv = [benchmark, "--data", str(data), "--videos", str(tmp_path), "--out", str(tmp_path / "out")]
    if FORMAT_OF.get(name) == benchmark:
        loaded = {"streamingbench": streamingbench, "ovobench": ovobench, "vqa": vqa}[benchmark].load(str(data))
        assert loaded and all(q.error is None for q in loaded)
        return
    assert eval_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{data} is not {ARTICLE[benchmark]} file: it looks like {LOOKS[name]}" in err
    if name in FORMAT_OF:
        assert f"Run `livesight eval {FORMAT_OF[name]}` on it" in err
    assert not os.path.exists(tmp_path / "out" / "results.jsonl")


@pytest.mark.parametrize("text,looks", [
    ("", "an empty file"),
    ("[1, 2, 3]", "a JSON list of 3 items"),
    ('{"video": "a.mp4", "question": "?"}\n', None),  # a VQA line: refused for OVO-Bench only
    ("[" * 100_000, "JSON nested deeper"),
    ('[{"video": "a.mp4", "time": 1, "question": "?", "answer": "x"}]', "a JSON list of VQA rows"),
])
def test_unrecognised_files_say_what_they_look_like(tmp_path, text, looks):
    path = tmp_path / "data"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        ovobench.load(str(path))
    assert str(path) in str(info.value) and "is not an OVO-Bench file" in str(info.value)
    if looks:
        assert looks in str(info.value)


def test_options_must_be_a_list(tmp_path):
    """VQA is JSON Lines: a string where the options go is a malformed row (it used to be split into
    one option per character). StreamingBench's CSV writes the list as text: that text is read as a
    list, and only a flat list of quoted texts is evaluated."""
    rows = [{"id": "string", "options": "ab"}, {"id": "list-as-text", "options": '["a", "b"]'},
            {"id": "object", "options": {"A": "a", "B": "b"}}, {"id": "one", "options": ["a"]},
            {"id": "nested", "options": [["a"], "b"]}, {"id": "ok", "options": ["a", "b"]}]
    path = tmp_path / "v.jsonl"
    path.write_text("".join(json.dumps({"video": "clip.mp4", "time": 1, "question": "?", "answer": "A"} | r) + "\n"
                            for r in rows))
    got = {q.id: q for q in vqa.load(str(path))}
    for bad in ("string", "list-as-text", "object", "one", "nested"):
        assert got[bad].error and "options" in got[bad].error, (bad, got[bad].error)
    assert got["ok"].error is None and got["ok"].options == ["A. a", "B. b"]
    cells = {"text": "\"['x', 'y']\"", "json": '"[""x"", ""y""]"', "word": "xy", "expression": "\"['x'] * 3\"",
             "deep": "-" * 100_000 + "1", "call": "\"__import__('os')\""}
    csv = tmp_path / "sb.csv"
    csv.write_text("question_id,task_type,question,time_stamp,answer,options\n" + "".join(
        f"{name}_1_0,Counting,?,1,A,{cell}\n" for name, cell in cells.items()))
    got = {q.id: q for q in streamingbench.load(str(csv))}
    assert got["text_1_0"].options == got["json_1_0"].options == ["A. x", "B. y"]
    for bad in ("word", "expression", "deep", "call"):
        assert got[f"{bad}_1_0"].error and "options" in got[f"{bad}_1_0"].error
    ovo = tmp_path / "ovo.json"
    ovo.write_text(json.dumps([{"id": 1, "video": "clip.mp4", "task": "OJR", "question": "?", "options": "ab",
                                "realtime": 1, "gt": 0}]))
    assert "options must be a list" in ovobench.load(str(ovo))[0].error


def test_a_null_or_missing_task_is_a_malformed_row(tmp_path):
    base = {"question": "?", "time_stamp": "00:00:01", "answer": "A", "options": ["x", "y"]}
    rows = [base | {"task_type": None}, dict(base), base | {"task_type": ""}, base | {"task_type": ["Counting"]},
            base | {"task_type": "CT"}]
    path = tmp_path / "sb.json"
    path.write_text(json.dumps([{"video_path": "clip.mp4", "questions": rows}]))
    questions = streamingbench.load(str(path))
    assert [q.error is not None for q in questions] == [True, True, True, True, False]
    assert all("task_type" in q.error for q in questions[:4])
    assert all(isinstance(q.task, str) and q.task != "None" for q in questions)
    assert questions[4].task == "Counting"
    ovo = tmp_path / "ovo.json"
    ovo.write_text(json.dumps([{"id": None, "video": "clip.mp4", "task": None, "question": "?", "options": ["a", "b"],
                                "realtime": 1, "gt": 0}]))
    (q,) = ovobench.load(str(ovo))
    assert q.error == "malformed entry: no task" and q.id == "entry0"
    line = tmp_path / "v.jsonl"
    line.write_text(json.dumps({"video": None, "time": 1, "question": "?", "answer": "x", "task": None}) + "\n")
    (q,) = vqa.load(str(line))
    assert q.error == "malformed line 1: no video" and q.video == ""


def snapshot(tmp_path, clip) -> str:
    """A StreamingBench folder as huggingface_hub.snapshot_download leaves it: each
    snapshots/<rev>/sample_N/video.mp4 a relative symlink into the cache's blobs/."""
    repo = tmp_path / "hub" / "datasets--mjuicem--StreamingBench"
    (repo / "blobs").mkdir(parents=True)
    rev = repo / "snapshots" / "3f2c5e0d9a"
    for n in (1, 2):
        blob = repo / "blobs" / f"sha256-{n}"
        shutil.copy(clip, blob)
        (rev / f"sample_{n}").mkdir(parents=True)
        os.symlink(f"../../../blobs/sha256-{n}", rev / f"sample_{n}" / "video.mp4")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    return str(rev)


def test_a_hugging_face_snapshot_of_symlinks_is_evaluated(tmp_path, clip):
    videos = snapshot(tmp_path, clip)
    csv = tmp_path / "sb.csv"
    csv.write_text("question_id,task_type,question,time_stamp,answer,options\n" + "".join(
        f"real_{n}_0,Counting,How many?,00:00:0{n + 1},A,\"['x', 'y']\"\n" for n in (1, 2)))
    records, engine, _ = run(streamingbench.load(str(csv)), videos, lambda *a: "A")
    assert {r["id"]: r.get("error") for r in records.values()} == {"real_1_0": None, "real_2_0": None}
    assert [t for _, t, _ in engine.asked] == [2, 3]
    path = resolve_video(videos, "sample_1/video.mp4")
    assert path == os.path.join(videos, "sample_1", "video.mp4")  # where the data says, not the blob's name
    assert os.path.samefile(path, os.path.join(tmp_path, "hub", "datasets--mjuicem--StreamingBench", "blobs",
                                               "sha256-1"))


@pytest.mark.parametrize("name", [
    "/etc/passwd", "SECRET", "../secret.mp4", "sample_1/../../../../secret.mp4", "sample_1/../sample_1/video.mp4",
    "..\\secret.mp4", "sample_1\\..\\..\\..\\..\\secret.mp4", "C:\\secret.mp4", "c:/secret.mp4", "C:secret.mp4",
    "\\\\server\\share\\secret.mp4", "//server/share/secret.mp4", "sample_1/video.mp4\0.txt", "./../secret.mp4",
])
def test_hostile_video_paths_are_still_refused(tmp_path, clip, name):
    videos = snapshot(tmp_path, clip)
    name = name.replace("SECRET", str(tmp_path / "secret.mp4"))
    with pytest.raises(ValueError, match="absolute|leaves --videos"):
        resolve_video(videos, name)


def test_a_long_sequential_qa_chain_is_capped(tmp_path):
    """Each Sequential QA question carries every earlier one of its video: a file with a thousand for
    one video would make prompts (and the cache sized for the longest) quadratic in the file. Past
    MAX_PROMPT_CHARS the rest of that video's chain is malformed; memory stays small."""
    import tracemalloc

    from livesight.eval.questions import MAX_PROMPT_CHARS
    rows = [{"task_type": "Sequential Question Answering", "question": f"What happened at step {k}?",
             "time_stamp": k, "answer": "A", "options": ["it moved", "it stopped"]} for k in range(1000)]
    path = tmp_path / "sqa.json"
    path.write_text(json.dumps([{"video_path": "clip.mp4", "questions": rows}]))
    tracemalloc.start()
    try:
        questions = streamingbench.load(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MB"
    assert all(len(q.prompt) <= MAX_PROMPT_CHARS for q in questions)
    asked = [q.error is None for q in questions]
    first_refused = asked.index(False)
    assert 50 < first_refused and not any(asked[first_refused:])  # a prefix asked, the rest malformed
    assert "Sequential QA context" in questions[-1].error
    last = questions[first_refused - 1].prompt
    assert "Question: What happened at step 0?" in last and f"step {first_refused - 2}?; Options" in last
