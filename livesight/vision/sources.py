"""Frame sources: a video file, a webcam, an RTSP/HTTP stream, or generated frames.

Every source yields `Frame`s sampled to a target fps with stream-time stamps (files: presentation
time; live: wall clock since the stream started) and `SourceEvent`s for trouble on the way.
"""

import contextlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from livesight.errors import InputError
from livesight.vision import synthetic

SCHEMES = "a video file path, webcam:N, rtsp://..., http(s)://..., synthetic or synthetic:SCENE"
_DECORD_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+\.(cc|h):\d+: ")  # decord's own log lines
_stderr_lock = threading.Lock()


def quiet_decoders() -> None:
    """The decoders log to the process's stderr on their own (libav's "moov atom not found", OpenCV's
    "[ WARN:0@0.02] ..."), ahead of our one-line message, which says the same in our words. These are
    the libraries' own log-level settings (process-wide by their design); setting them again is harmless."""
    import cv2
    import decord
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # OpenCV's libav: read when it first opens a stream
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    decord.logging.set_level(decord.logging.QUIET)


@contextlib.contextmanager
def _decord_stderr():
    """decord writes a line of its own to fd 2 when it cannot open a file, beside the exception it
    raises; no setting silences it. Around an open only, fd 2 goes to a file, decord's lines are
    dropped and anything else written meanwhile is passed on (a lock keeps two opens apart)."""
    with _stderr_lock, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            other = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                     if not _DECORD_LINE.match(line)]
            if other:
                sys.stderr.write("".join(other))


@dataclass
class Frame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    t: float


@dataclass
class SourceEvent:
    type: str  # error | reconnect
    t: float
    text: str


class SyntheticSource:
    is_live = False

    def __init__(self, fps: float, seconds: float, width: int = 640, height: int = 360, scene: str = "shapes"):
        if scene not in synthetic.LIVE_SCENES:
            raise InputError(f"unknown synthetic scene '{scene}': use synthetic or synthetic:SCENE with SCENE one "
                             f"of {', '.join(synthetic.LIVE_SCENES)}")
        self.fps, self.seconds, self.size, self.scene = fps, seconds, (height, width), scene

    def __iter__(self) -> Iterator[Frame]:
        for k in range(int(round(self.seconds * self.fps))):
            yield Frame(synthetic.render(k / self.fps, self.size[1], self.size[0], self.scene), k / self.fps)

    def close(self) -> None:
        pass


class VideoFile:
    """The one place that decodes files (decord). timestamps: (n,) presentation seconds from 0."""

    def __init__(self, path: str):
        if not os.path.exists(path):
            raise InputError(f"video file not found: {path}. Check the path, or use --source synthetic")
        if os.path.isdir(path):
            raise InputError(f"{path} is a folder, not a video file: give the path of a video file")
        if os.path.getsize(path) == 0:
            raise InputError(f"video file is empty (0 bytes): {path}. Record or copy it again")
        self.path = path
        try:
            import decord
            quiet_decoders()
            with _decord_stderr():
                self._reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
                count = len(self._reader)
                stamps = self._reader.get_frame_timestamp(np.arange(count))[:, 0] if count else np.zeros(0)
        except ImportError:
            raise InputError("cannot read video files: the decord package is missing (pip install decord)") from None
        except Exception:  # decord raises its own DECORDError and RuntimeError for bad data, in its own words
            raise InputError(f"cannot decode {path} as a video: it is not a video file, or it is damaged or cut "
                             f"short. Check that it plays, or re-encode it: ffmpeg -i {path} -c:v libx264 out.mp4"
                             ) from None
        if count == 0:
            raise InputError(f"video file has no frames: {path}. Check that it plays")
        self.timestamps = np.asarray(stamps, dtype=np.float64) - float(stamps[0])
        self.size = self.frame(0).shape[:2]

    def frame(self, index: int) -> np.ndarray:
        try:
            return self._reader[index].asnumpy()
        except Exception:  # decord's message is its C++ internals; say where, in our words
            raise InputError(f"cannot decode frame {index} (at {self.timestamps[index]:.1f} s) of {self.path}: the "
                             f"file is damaged there. Re-encode it (ffmpeg -i {self.path} -c:v libx264 out.mp4) "
                             f"to read past the damage") from None

    @property
    def duration(self) -> float:
        step = float(np.median(np.diff(self.timestamps))) if len(self.timestamps) > 1 else 0.0
        return float(self.timestamps[-1]) + step


class FileSource:
    """Samples a file at `fps` from `start` seconds: the sample at stream time k / fps shows the
    frame presented at start + k / fps. video: a path, or a VideoFile already open (cut after cut
    of one file, as the evaluator makes, decodes without reopening it)."""

    is_live = False

    def __init__(self, video: "str | VideoFile", fps: float, seconds: float | None = None, start: float = 0.0):
        self.video = video if isinstance(video, VideoFile) else VideoFile(video)
        self.fps, self.seconds, self.start, self.size = fps, seconds, start, self.video.size

    def __iter__(self) -> Iterator[Frame]:
        span = self.video.duration - self.start
        end = span if self.seconds is None else min(self.seconds, span)
        last_index, image = -1, None
        for k in range(int(np.ceil(end * self.fps - 1e-3))):  # decord's float32 stamps are off by ~1e-6 s
            t = k / self.fps
            index = max(0, int(np.searchsorted(self.video.timestamps, self.start + t + 1e-6, side="right")) - 1)
            if index != last_index:
                image, last_index = self.video.frame(index), index
            yield Frame(image, t)

    def close(self) -> None:
        pass


class NewestFrame:
    """A live source's newest frame, set by a reader, sampled on the wall clock at `fps`: a tick
    with no new frame yields nothing, older frames are never queued. Notices pass in order."""

    is_live = True

    def __init__(self, fps: float, seconds: float | None):
        self.fps, self.seconds = fps, seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._events: list[SourceEvent] = []
        self._latest: np.ndarray | None = None
        self._serial = 0
        self._start = time.monotonic()

    def _set(self, image: np.ndarray) -> None:
        with self._lock:
            self._latest, self._serial = image, self._serial + 1

    def _now(self) -> float:
        return time.monotonic() - self._start

    def _notice(self, kind: str, text: str) -> None:
        with self._lock:
            self._events.append(SourceEvent(kind, self._now(), text))

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        taken, k = 0, 0
        while not self._stop.is_set():
            tick = k / self.fps
            if self.seconds is not None and tick >= self.seconds:
                return
            self._stop.wait(max(0.0, tick - self._now()))
            k += 1
            with self._lock:
                events, self._events = self._events, []
                image, serial = self._latest, self._serial
            yield from events
            if serial != taken and image is not None:
                taken = serial
                yield Frame(image, tick)

    def close(self) -> None:
        self._stop.set()


class PushSource(NewestFrame):
    """Frames handed in by a front end (the browser's webcam in the web UI), RGB uint8 (H, W, 3)."""

    def __init__(self, fps: float, seconds: float | None = None):
        super().__init__(fps, seconds)
        self._first = threading.Event()
        self.size: tuple[int, int] | None = None

    def put(self, image: np.ndarray) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"a pushed frame must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if self.size is None:
            self.size = image.shape[:2]
            self._start = time.monotonic()
        self._set(np.ascontiguousarray(image))
        self._first.set()

    def wait_first(self, timeout_s: float) -> tuple[int, int]:
        """Block until the first frame; -> its (height, width)."""
        if not self._first.wait(timeout_s):
            raise InputError(f"no frame from the webcam within {timeout_s:g} s: allow the camera in the browser, "
                             f"wait for its picture, then press Start")
        return self.size


class LiveSource(NewestFrame):
    """A webcam or network stream read by OpenCV in a thread that keeps only the newest frame.

    A dropped stream is reopened with exponential backoff; `error` and `reconnect` events say so.
    """

    def __init__(self, target: int | str, fps: float, seconds: float | None = None, timeout_s: float = 10.0,
                 max_backoff_s: float = 8.0):
        if isinstance(target, str) and target.startswith("rtsp") and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"  # TCP: no lost UDP packets
        quiet_decoders()  # our own events report drops and reconnects
        super().__init__(fps, seconds)
        self.target, self.timeout_s, self.max_backoff_s = target, timeout_s, max_backoff_s
        self.name = f"webcam:{target}" if isinstance(target, int) else target
        started = time.monotonic()
        self._capture = self._open()
        if self._capture is None:
            waited = time.monotonic() - started
            why = (f"no stream answered within {timeout_s:g} s" if waited >= 0.8 * timeout_s else
                   f"it failed after {waited:.1f} s (no such camera, nothing listening there, or the server "
                   f"refused the stream)")
            raise InputError(f"cannot open {self.name}: {why}. Check that the camera or server is up and the URL "
                             f"is right")
        ok, image = self._capture.read()
        if not ok:
            self._capture.release()
            raise InputError(f"{self.name} opened but sent no frame. Check the stream with: ffplay {self.name}")
        self._latest, self._serial = self._rgb(image), 1
        self.size = self._latest.shape[:2]
        self._start = time.monotonic()
        self._reader = threading.Thread(target=self._read_loop, name="livesight-reader", daemon=True)
        self._reader.start()

    def _open(self):
        import cv2
        ms = int(self.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        backend = cv2.CAP_ANY if isinstance(self.target, int) else cv2.CAP_FFMPEG
        capture = cv2.VideoCapture(self.target, backend, params)
        if capture.isOpened():
            return capture
        capture.release()
        return None

    @staticmethod
    def _rgb(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image[:, :, ::-1])

    def _read_loop(self) -> None:
        capture, backoff = self._capture, 0.5
        while not self._stop.is_set():
            ok, image = capture.read() if capture is not None else (False, None)
            if ok:
                self._set(self._rgb(image))
                backoff = 0.5
                continue
            if capture is not None:
                capture.release()
                self._notice("error", f"lost {self.name}; reconnecting")
            self._stop.wait(backoff)
            capture = None if self._stop.is_set() else self._open()
            if capture is not None:
                self._notice("reconnect", f"reconnected to {self.name}")
            else:
                backoff = min(backoff * 2, self.max_backoff_s)
        if capture is not None:
            capture.release()

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=self.timeout_s + 1)


def open_source(spec: str, fps: float, seconds: float | None = None):
    """Parse a source spec and open it; raises InputError naming the input and the fix."""
    spec = spec.strip()
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return SyntheticSource(fps, 30.0 if seconds is None else seconds, scene=spec.partition(":")[2] or "shapes")
    if match := re.fullmatch(r"webcam:(\d+)", spec):
        return LiveSource(int(match.group(1)), fps, seconds)
    if spec.startswith("webcam"):
        raise InputError(f"bad webcam source '{spec}': write webcam:N with N the camera index, e.g. webcam:0")
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", spec)
    if scheme:
        if scheme.group(1).lower() in ("rtsp", "rtsps", "http", "https"):
            return LiveSource(spec, fps, seconds)
        raise InputError(f"unknown source scheme '{scheme.group(1)}' in '{spec}': use {SCHEMES}")
    return FileSource(spec, fps, seconds)
