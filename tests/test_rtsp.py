"""A live RTSP stream on loopback: sampled rate, and a reconnect after the stream drops mid-way."""

import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from livesight.vision.ingest import Ingest
from livesight.vision.sources import Frame, LiveSource, SourceEvent

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                reason="ffmpeg is not installed (.ci/run installs Debian's ffmpeg)")


def publish(url: str) -> subprocess.Popen:
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=10",
         "-c:v", "mpeg4", "-g", "5", "-f", "rtsp", "-rtsp_transport", "tcp", url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_rtsp_rate_and_reconnect():
    from rtsp_relay import Relay
    relay = Relay()
    publisher = publish(relay.url)
    try:
        assert relay.published.wait(15), "ffmpeg did not start publishing"
        source = LiveSource(relay.url, fps=2.0, seconds=14.0, timeout_s=3.0, max_backoff_s=1.0)
        items: list = []
        reader = threading.Thread(target=lambda: items.extend(Ingest(source)), daemon=True)
        reader.start()
        time.sleep(5.0)
        publisher.kill()  # the camera drops mid-stream
        publisher.wait()
        time.sleep(2.0)
        publisher = publish(relay.url)
        reader.join(timeout=30)
        assert not reader.is_alive()
    finally:
        publisher.kill()
        relay.shutdown()
    kinds = [i.type for i in items if isinstance(i, SourceEvent)]
    assert "error" in kinds and "reconnect" in kinds and kinds.index("error") < kinds.index("reconnect")
    frames = [i for i in items if isinstance(i, Frame)]
    times = np.array([f.t for f in frames])
    assert np.all(np.diff(times) > 0)
    assert frames[0].image.shape == (120, 160, 3)
    reconnect_t = next(i.t for i in items if isinstance(i, SourceEvent) and i.type == "reconnect")
    assert (times > reconnect_t).sum() >= 4, "no frames after the reconnect"
    for second in range(0, 4):  # before the drop: one frame per tick, within one frame per chunk
        count = ((times >= second) & (times < second + 1)).sum()
        assert abs(count - 2) <= 1, (second, times)
