"""The command line: the JSON event stream's fields, readable output, and exit 2 on bad input."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from livesight.errors import InputError


def livesight(*args, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "livesight", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_json_event_stream(clip):
    proc = livesight("run", "--source", clip, "--seconds", "6", "--narrate-tokens", "3", "--vision-window", "2",
                     "--ask", "2.5:what is red?", "--ask", "100:and later?", "--json")
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all({"type", "t"} <= e.keys() for e in events)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["chunk"] for m in metrics] == list(range(6))
    for m in metrics:
        assert set(m["kv_tokens"]) == {"sink", "retrieved", "vision", "text"}
        for key in ("max_position", "vision_ms", "prune_ms", "prefill_ms", "decode_ms", "rss_mb", "kv_capacity", "kv_mb"):
            assert isinstance(m[key], (int, float)), key
        tokens = m["vision_tokens"]
        assert 0 <= tokens["kept"] <= tokens["grid"] and 0 <= tokens["encoded"] <= tokens["grid"]
        assert m["encoder"] in ("full", "partial", "reused")
        assert sum(m["kv_tokens"].values()) <= m["kv_capacity"]
    answers = [e for e in events if e["type"] == "answer"]
    assert [a["question"] for a in answers] == ["what is red?", "and later?"]
    assert answers[0]["retrieved"] == [[0.0, 1.0]]  # by 3 s, only chunk 0 has left the 2-s window
    assert all(0 <= a <= b <= 6 for r in answers[1]["retrieved"] for a, b in [r])
    assert answers[0]["t"] == 3.0 and answers[1]["t"] == 6.0  # asked once the stream reached the time
    assert all(isinstance(e["text"], str) for e in events if e["type"] in ("caption", "answer"))
    assert any(e["type"] == "caption" for e in events)
    assert events[-1]["type"] == "summary" and events[-1]["chunks"] == 6


def test_readable_output_and_console_script(clip):
    script = pathlib.Path(sys.executable).with_name("livesight")
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable} (run through make test)")
    proc = subprocess.run([str(script), "run", "--source", "synthetic", "--seconds", "2", "--no-narrate"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("[    1.0s] metrics  chunk 0: kv sink") and "summary" in lines[-1]


@pytest.mark.parametrize("args,message", [
    (["run", "--source", "/nonexistent/clip.mp4"], "video file not found: /nonexistent/clip.mp4"),
    (["run", "--source", "EMPTY"], "video file is empty"),
    (["run", "--source", "CORRUPT"], "cannot decode"),
    (["run", "--source", "TEXT"], "cannot decode"),
    (["run", "--source", "gopher://x"], "unknown source scheme 'gopher'"),
    (["run", "--source", "rtsp://127.0.0.1:9/live", "--seconds", "1"], "cannot open rtsp://127.0.0.1:9/live: it failed "
                                                                       "after"),  # refused at once: not "within 10 s"
    (["run", "--source", "webcam:7"], "cannot open webcam:7"),
    (["run", "--source", "synthetic", "--ask", "soon:what?"], "malformed --ask 'soon:what?'"),
    (["run", "--source", "synthetic", "--ask", "12"], "malformed --ask '12'"),
    (["run", "--source", "synthetic", "--ask", "@12:what?"], "malformed --ask '@12:what?'"),
    (["run", "--source", "synthetic", "--source", "synthetic:windy"], "--source 2 of 2 (synthetic:windy): unknown "
                                                                      "synthetic scene 'windy'"),
    (["run", "--source", "synthetic", "--fps", "3"], "even number of frames"),
    (["run", "--source", "synthetic", "--model", "nope"], "unknown model 'nope'"),
    (["run", "--source", "synthetic", "--model", "Qwen/Qwen2.5-VL-3B-Instruct"], "Offline options"),
    (["synth", "OUT", "--seconds", "1", "--size", "big"], "bad --size 'big'"),
    (["synth", "OUT", "--seconds", "1", "--scene", "windy"], "unknown synthetic scene 'windy'"),
    (["run", "--source", "synthetic:windy"], "unknown synthetic scene 'windy'"),
    (["run", "--source", "synthetic", "--keep-ratio", "1.5"], "argument --keep-ratio: expected a number above 0 to 1, got '1.5'"),
    (["run", "--source", "synthetic", "--reuse-threshold", "2"], "argument --reuse-threshold: expected a number from 0 to 1"),
    (["run", "--source", "synthetic", "--keep-floor", "3"], "argument --keep-floor: expected a number from 0 to 1"),
    (["bench", "compression", "--scenes", "quiet,windy"], "bad --scenes 'quiet,windy'"),
    (["bench", "fidelity", "--window", "64", "--chunk", "64"], "--chunk must be between 1 and the window - 1"),
    (["bench", "fidelity", "--tokens", "100"], "--tokens (100) must exceed the window (256)"),
    (["eval", "vqa", "--data", "/nonexistent.jsonl", "--videos", ".", "--out", "OUT"],
     "--data /nonexistent.jsonl: no such file"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, args, message):
    files = {"EMPTY": b"", "CORRUPT": os.urandom(3000), "TEXT": b"hello\n" * 100}
    args = [str(_write(tmp_path, a, files[a])) if a in files else a for a in args]
    args = [str(tmp_path / "x.mp4") if a == "OUT" else a for a in args]
    proc = livesight(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert message in proc.stderr
    # one line, ours: no traceback, no usage text, no decoder's own chatter (libav, decord, OpenCV) before it
    assert proc.stderr.startswith("livesight") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(tmp_path) not in proc.stderr or args[args.index("--source") + 1] in proc.stderr


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """An 8-second video whose second half is zeroed over a stretch of frames."""
    from livesight.vision.synthetic import write_video
    path = tmp_path_factory.mktemp("damaged") / "damaged.mp4"
    write_video(str(path), 8.0, 10.0, 320, 180)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + len(data) // 8] = bytes(len(data) // 8)  # zeros over a stretch of frames
    path.write_bytes(data)
    return str(path)


@pytest.fixture(scope="module")
def damaged_run(damaged):
    proc = livesight("run", "--source", damaged, "--no-narrate", "--answer-tokens", "2", "--ask", "1:early?",
                     "--ask", "7.5:late?", "--json")
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def test_a_video_damaged_mid_way_ends_with_an_error_event_answers_and_a_summary(damaged_run):
    proc, events = damaged_run
    types = [e["type"] for e in events]
    assert types.count("error") == 1 and types[-1] == "summary", types
    error = events[types.index("error")]
    assert "damaged.mp4" in error["text"] and "damaged there" in error["text"], error
    assert [e["question"] for e in events if e["type"] == "answer"] == ["early?", "late?"]  # both answered
    assert events[-1]["error"] == error["text"] and {e["stream"] for e in events} == {"damaged"}
    assert proc.returncode == 2 and proc.stderr == f"livesight: error: {error['text']}\n", proc.stderr


def test_a_damaged_videos_error_comes_where_it_broke(damaged_run):
    proc, events = damaged_run
    types = [e["type"] for e in events]
    error = events[types.index("error")]
    assert 0 < error["t"] < 7.5 and types[:types.index("error")].count("metrics") == error["t"]  # what was seen
    assert events[-1]["chunks"] == error["t"]


# --- several sources, one engine

SHARED = ["--seconds", "3", "--narrate-tokens", "3", "--vision-window", "2", "--answer-tokens", "3"]


def run_json(capsys, *args) -> tuple[int, list[dict], str]:
    """`livesight run ARGS --json` in this process -> (exit code, events, stderr)."""
    from livesight.app.cli import main
    code = main(["run", *args, "--json"])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def by_stream(events: list[dict]) -> dict[str, list[dict]]:
    streams: dict[str, list[dict]] = {}
    for event in events:
        streams.setdefault(event["stream"], []).append(event)
    return streams


def said(events: list[dict]) -> list[tuple]:
    return [(e["type"], e["t"], e.get("question"), e["text"]) for e in events if e["type"] in ("caption", "answer")]


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """A 4-second square video: another frame size (and model grid) than synthetic's 16:9."""
    from livesight.vision.synthetic import write_video
    path = tmp_path_factory.mktemp("square") / "square.mp4"
    write_video(str(path), 4.0, 10.0, 160, 160, "quiet")
    return str(path)


def test_two_sources_in_one_engine_each_stream_as_if_run_alone(square, capsys):
    asks = ["--ask", "2.5:what is red?", "--ask", "square@1.5:where?"]
    code, events, err = run_json(capsys, "--source", square, "--source", "synthetic:busy", *SHARED, *asks)
    assert code == 0, err
    streams = by_stream(events)
    assert set(streams) == {"square", "synthetic-busy"}
    for name, mine in streams.items():
        assert [e["chunk"] for e in mine if e["type"] == "metrics"] == [0, 1, 2], name
        assert [e["type"] for e in mine].count("summary") == 1 and mine[-1]["type"] == "summary", name
        assert mine[-1]["chunks"] == 3 and "error" not in mine[-1] and any(e["type"] == "caption" for e in mine)
    answers = {name: [(e["question"], e["t"]) for e in mine if e["type"] == "answer"] for name, mine in streams.items()}
    assert answers == {"square": [("where?", 2.0), ("what is red?", 3.0)], "synthetic-busy": [("what is red?", 3.0)]}
    grids = {name: {e["vision_tokens"]["grid"] for e in mine if e["type"] == "metrics"} for name, mine in streams.items()}
    assert grids["square"] != grids["synthetic-busy"], grids  # two frame sizes in one engine
    # the engine's exactness, seen from the command line: each stream says what its source alone says
    code, alone, err = run_json(capsys, "--source", square, *SHARED, *asks)
    assert code == 0 and {e["stream"] for e in alone} == {"square"}, err
    assert said(streams["square"]) == said(alone)
    code, alone, err = run_json(capsys, "--source", "synthetic:busy", *SHARED, asks[0], asks[1])
    assert code == 0 and {e["stream"] for e in alone} == {"synthetic-busy"}, err
    assert said(streams["synthetic-busy"]) == said(alone)


def test_text_lines_name_their_stream_when_there_are_several(capsys):
    from livesight.app.cli import main
    assert main(["run", "--source", "synthetic", "--source", "synthetic", "--seconds", "2", "--no-narrate",
                 "--ask", "synthetic-2@1:what?"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith(("synthetic   | ", "synthetic-2 | ")) for line in lines), lines
    assert sorted(line.split(" ")[0] for line in lines if " summary " in line) == ["synthetic", "synthetic-2"]
    answer = [k for k, line in enumerate(lines) if " answer " in line]
    assert len(answer) == 1 and lines[answer[0]].startswith("synthetic-2 | [    1.0s] answer   Q: what?")
    assert lines[answer[0] + 1].startswith("synthetic-2 |          A: ")  # its second line names it too


def test_a_bad_second_source_is_refused_before_anything_runs(capsys, monkeypatch):
    from livesight.app.cli import main
    from livesight.models import registry as adapter
    monkeypatch.setattr(adapter, "load_adapter", lambda *a: pytest.fail("the model loaded before the sources opened"))
    assert main(["run", "--source", "synthetic", "--source", "/nonexistent/clip.mp4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == ("livesight: error: --source 2 of 2 (/nonexistent/clip.mp4): video file not found: "
                                 "/nonexistent/clip.mp4. Check the path, or use --source synthetic\n")
    assert main(["run", "--source", "synthetic", "--source", "synthetic:busy", "--ask", "busy@1:what?"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "--ask 'busy@1:what?': no stream named 'busy'; the streams are " \
        "synthetic, synthetic-busy" in err, err


def test_a_source_failing_mid_way_ends_its_stream_alone_and_exits_2(damaged, capsys):
    code, events, err = run_json(capsys, "--source", damaged, "--source", "synthetic", "--seconds", "6",
                                 "--no-narrate", "--answer-tokens", "2", "--ask", "5.5:late?")
    streams = by_stream(events)
    assert set(streams) == {"damaged", "synthetic"}
    broken, whole = streams["damaged"], streams["synthetic"]
    errors = [e for e in broken if e["type"] == "error"]
    assert len(errors) == 1 and "damaged there" in errors[0]["text"] and broken[-1]["error"] == errors[0]["text"]
    assert broken[-1]["type"] == "summary" and 0 < broken[-1]["chunks"] < 6
    for mine in (broken, whole):  # the broken stream's answered from what it saw
        assert [e["question"] for e in mine if e["type"] == "answer"] == ["late?"]
    assert not any(e["type"] == "error" for e in whole) and "error" not in whole[-1]
    assert whole[-1]["type"] == "summary" and whole[-1]["chunks"] == 6
    assert [e["chunk"] for e in whole if e["type"] == "metrics"] == list(range(6))
    assert code == 2 and err == f"livesight: error: stream damaged: {errors[0]['text']}\n", err


def test_a_typed_line_goes_to_the_stream_it_names_or_the_one_live_stream():
    from livesight.app.watch import address, stream_names
    assert stream_names(["a.mp4", "/x/a.mkv", "synthetic", "synthetic:busy", "webcam:0", "rtsp://h:8554/cam/",
                         "http://10.0.0.5/", "my clip@2.mp4"]) == [
        "a", "a-2", "synthetic", "synthetic-busy", "webcam-0", "cam", "10.0.0.5", "my-clip-2"]
    assert address("door: who is there?", ["door"], ["door"]) == ("door", "door: who is there?")  # one stream: all
    names, live = ["door", "yard", "clip"], ["door", "yard"]
    assert address("yard: what moved?", names, live) == ("yard", "what moved?")
    assert address("clip: what moved?", names, live) == ("clip", "what moved?")  # a file's stream can be asked
    assert address("what is it: a cat?", names, ["door"]) == ("door", "what is it: a cat?")
    for line, message in [("gate: what?", "no stream named 'gate'"), ("what moved?", "which stream?")]:
        with pytest.raises(InputError, match=message):
            address(line, names, live)


def _write(folder, name, data):
    path = folder / f"{name.lower()}.mp4"
    path.write_bytes(data)
    return path


def test_synth_writes_a_readable_video(tmp_path):
    out = tmp_path / "s.mp4"
    proc = livesight("synth", str(out), "--seconds", "2", "--fps", "10", "--size", "160x90")
    assert proc.returncode == 0 and "wrote 20 frames" in proc.stdout
    from livesight.vision.sources import VideoFile
    video = VideoFile(str(out))
    assert len(video.timestamps) == 20 and video.size == (90, 160)


def test_a_hub_model_fails_at_once_when_the_hub_cannot_be_reached(tmp_path):
    """Not cached and no hub: one line at once, not the hub client's ~25 s of retries in silence."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and not k.lower().endswith("_proxy")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))  # nothing listens on port 9
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "livesight", "run", "--source", "synthetic", "--model",
                           "Org/NotCached-VL"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "the model hub (127.0.0.1) cannot be reached" in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Offline options" in proc.stderr
    assert time.monotonic() - start < 20
