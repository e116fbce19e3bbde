"""The command line: the JSON event stream's fields, readable output, and exit 2 on bad input."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest


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


def test_a_video_damaged_mid_way_ends_with_an_error_event_answers_and_a_summary(tmp_path):
    from livesight.vision.synthetic import write_video
    path = tmp_path / "damaged.mp4"
    write_video(str(path), 8.0, 10.0, 320, 180)
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + len(data) // 8] = bytes(len(data) // 8)  # zeros over a stretch of frames
    path.write_bytes(data)
    proc = livesight("run", "--source", str(path), "--no-narrate", "--answer-tokens", "2", "--ask", "1:early?",
                     "--ask", "7.5:late?", "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    types = [e["type"] for e in events]
    assert types.count("error") == 1 and types[-1] == "summary", types
    error = events[types.index("error")]
    assert "damaged.mp4" in error["text"] and "damaged there" in error["text"], error
    assert 0 < error["t"] < 7.5 and types[:types.index("error")].count("metrics") == error["t"]  # what was seen
    assert [e["question"] for e in events if e["type"] == "answer"] == ["early?", "late?"]  # both answered
    assert events[-1]["error"] == error["text"] and events[-1]["chunks"] == error["t"]
    assert proc.returncode == 2 and proc.stderr == f"livesight: error: {error['text']}\n", proc.stderr


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
