import os
import shutil
import socket
import time

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# without a GPU, the Triton kernels' tests run them in Triton's interpreter; it is read when a kernel
# is defined, so before livesight.kernels is first imported
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # a test's devices: the GPU where there is one


@pytest.fixture(autouse=True)
def _release_frozen():
    """Session and Engine freeze the collector on what exists when they start (gc.freeze: no full collection
    mid-step); in one test process that makes every earlier test's sessions immortal, gigabytes by the
    suite's middle. Each test's leftovers are unfrozen and collected after it."""
    yield
    import gc
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()


@pytest.fixture(scope="session")
def tiny():
    from livesight.models.loader import load_model
    return load_model("tiny-random")


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """An 8-second synthetic video at 30 fps."""
    from livesight.vision.synthetic import write_video
    path = str(tmp_path_factory.mktemp("clip") / "clip.mp4")
    write_video(path, 8.0, 30.0, 320, 180)
    return path


def make_chunks(num_chunks: int, fps: float = 2.0, frames_per_chunk: int = 2, size=(180, 320), scene="shapes"):
    from livesight.streaming.chunker import Chunk
    from livesight.vision.synthetic import render
    chunks = []
    for i in range(num_chunks):
        times = [(i * frames_per_chunk + k) / fps for k in range(frames_per_chunk)]
        frames = np.stack([render(t, size[1], size[0], scene) for t in times])
        chunks.append(Chunk(frames, times[0], times[-1] + 1 / fps, i))
    return chunks


def wait(predicate, timeout_s: float = 60.0, every_s: float = 0.1) -> bool:
    """Poll `predicate` until it holds (True) or `timeout_s` passes (False)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every_s)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str | None:
    """Debian's chromium (as .ci/run installs it), or the one LIVESIGHT_CHROMIUM names."""
    return os.environ.get("LIVESIGHT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
