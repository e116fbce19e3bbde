"""Nothing is left behind: `run`, `web` and `eval` ended by SIGTERM leave no file in the temporary
folder or in a chosen --offload-dir; ended by SIGKILL (no chance to clean up), the next start
removes what they left; and two sessions sharing an --offload-dir never meet."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import free_port, wait


def start(tmp, *args):
    env = dict(os.environ, TMPDIR=str(tmp), HF_HUB_OFFLINE="1")
    env.pop("GRADIO_TEMP_DIR", None)
    log = open(tmp.parent / f"log-{time.monotonic_ns()}.txt", "w")
    return subprocess.Popen([sys.executable, "-m", "livesight", *args], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp.parent)


def entries(*folders) -> list[str]:
    """What the folders hold, but torch's per-user compile cache (one folder, shared by every run and
    reused, like ~/.cache: not a leftover)."""
    return sorted(os.path.join(f, name) for f in folders for name in os.listdir(f)
                  if not name.startswith("torchinductor_"))


def livesight_folders(folder) -> list[str]:
    return [n for n in os.listdir(folder) if n.startswith("livesight-")]


@pytest.fixture
def places(tmp_path):
    tmp, offload = tmp_path / "tmp", tmp_path / "offload"
    tmp.mkdir()
    offload.mkdir()
    return tmp, offload


def commands(tmp_path, offload):
    """Each entry point, started so that it runs long enough to be killed mid-work."""
    from livesight.vision.synthetic import write_video
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    # 10 minutes of video: tiny-random streams 90 s in under a second, and the eval must still be at work (its
    # offload folder there) a second after that folder appears, when the signal comes
    write_video(str(videos / "long.mp4"), 600.0, 4.0, 160, 96)
    (tmp_path / "set.jsonl").write_text("".join(json.dumps(
        {"video": "long.mp4", "time": t, "question": "what?", "answer": "x"}) + "\n" for t in (30, 300, 599)))
    return {
        "run": ["run", "--source", "synthetic", "--seconds", "600", "--realtime", "--no-narrate",
                "--offload-dir", str(offload), "--vision-window", "2"],
        "web": ["web", "--device", "cpu", "--port", str(free_port())],
        "eval": ["eval", "vqa", "--data", str(tmp_path / "set.jsonl"), "--videos", str(videos), "--out",
                 str(tmp_path / "out"), "--offload-dir", str(offload), "--vision-window", "2"],
    }


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("command", ["run", "web", "eval"])
def test_no_stray_files_after_a_signal_and_a_restart(tmp_path, places, command, how):
    tmp, offload = places
    args = commands(tmp_path, offload)[command]
    proc = start(tmp, *args)
    own = tmp if command == "web" else offload  # where its folder appears once it is at work
    try:
        assert wait(lambda: livesight_folders(own)), f"{command} never made its folder"
        time.sleep(1.0)
    finally:
        proc.send_signal(how)
        proc.wait(timeout=60)
    if how == signal.SIGTERM:
        assert entries(tmp, offload) == [], (command, proc.returncode)
        return
    assert livesight_folders(own), "SIGKILL leaves its folders: nothing ran to remove them"
    again = start(tmp, "run", "--source", "synthetic", "--seconds", "1", "--no-narrate", "--offload-dir", str(offload))
    assert again.wait(timeout=120) == 0
    assert entries(tmp, offload) == [], command


def test_sessions_sharing_an_offload_dir_keep_their_blocks_apart(tiny, tmp_path):
    from conftest import make_chunks

    from livesight.models.qwen2_5_vl import QwenVLAdapter
    from livesight.streaming.options import build_config
    from livesight.streaming.session import Session
    config = build_config({"vision_window": 1.0, "offload_ram_gb": 0.0, "offload_dir": str(tmp_path),
                           "narrate": False})  # every evicted block spills to disk at once
    adapter = QwenVLAdapter(tiny)
    a, b = Session(adapter, config, (180, 320)), Session(adapter, config, (180, 320))
    for chunk in make_chunks(4):
        a.add_chunk(chunk)
        b.add_chunk(chunk)
    folders = {a.offloaded.folder, b.offloaded.folder}
    assert len(folders) == 2 and all(os.path.dirname(f) == str(tmp_path) for f in folders)
    assert len(os.listdir(a.offloaded.folder)) == len(a.offloaded.store) == 3  # each holds its own blocks
    assert len(os.listdir(b.offloaded.folder)) == 3
    a.close()
    assert not os.path.exists(a.offloaded.folder) and len(os.listdir(b.offloaded.folder)) == 3  # b's stay
    b.close()
    assert os.listdir(tmp_path) == []  # a chosen --offload-dir is left as it was found


def test_sigterm_that_python_drops_still_ends_the_process_and_removes_its_folders(tmp_path):
    """A SystemExit raised while a finalizer runs is dropped by Python ("Exception ignored in ..."):
    the grace timer still removes the folders and ends the process."""
    script = tmp_path / "victim.py"
    script.write_text(
        "import os, signal, time\n"
        "from livesight import scratch\n"
        "scratch.exit_on_sigterm(grace_s=1.0)\n"
        "print(scratch.make('test'), flush=True)\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(0.2)\n"
        "Finalized()\n"
        "time.sleep(30)\n"
        "print('still running', flush=True)\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60)
    folder = proc.stdout.splitlines()[0]
    assert proc.returncode == 143 and "still running" not in proc.stdout
    assert time.monotonic() - start < 20 and not os.path.exists(folder)
