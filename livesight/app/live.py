"""One browser session's stream, run in a thread over its own Session, and the registry that caps
how many run at once. The web UI only reads what a LiveRun keeps; the engine is streaming/."""

import bisect
import contextlib
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from livesight.errors import InputError
from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.chunker import Chunk, chunk_frames
from livesight.streaming.config import SessionConfig
from livesight.streaming.events import Event
from livesight.streaming.loop import answer, run_stream
from livesight.streaming.session import Session
from livesight.vision.ingest import Ingest
from livesight.vision.sources import PushSource, open_source

MAX_THUMBNAILS = 7200  # one per chunk: two hours of 1-s chunks at about 3 KB each
MAX_HISTORY = 3600  # metrics rows kept for the plots
MAX_EVENTS = 2000  # transcript lines kept in memory for the page; the run's transcript file keeps them all
TRANSCRIPT = "transcript.jsonl"
THUMB_WIDTH = 160
WEBCAM_WAIT_S = 15.0


@dataclass
class Asked:
    """A question put to a run; `done` is set once `events` holds its answer (or error)."""

    question: str
    done: threading.Event = field(default_factory=threading.Event)
    events: list[Event] = field(default_factory=list)


class LiveRun:
    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, source: str | PushSource,
                 realtime: bool = True, lock: contextlib.AbstractContextManager = contextlib.nullcontext(),
                 name: str | None = None, parent: str | None = None):
        """source: a spec for open_source (file path, rtsp://..., webcam:N) or frames pushed by the page.
        name: what messages call the source (an upload's own file name, not the server's path to it).
        parent: where the run makes its folder (its id): the whole transcript, written as it comes, and
        exports; removed by close(). Without it the transcript is the last MAX_EVENTS lines only."""
        self.adapter, self.config, self.source_spec = adapter, config, source
        self.realtime, self.lock = realtime, lock
        self.name = name or ("browser webcam" if isinstance(source, PushSource) else source)
        self.id = secrets.token_hex(8)  # the server's own name for this run (folders), never a client's string
        self.folder = os.path.join(parent, self.id) if parent else None
        if self.folder:
            os.makedirs(self.folder)
        self._transcript = open(os.path.join(self.folder, TRANSCRIPT), "a", encoding="utf-8") if self.folder else None
        # the page's share: an endless stream must not grow the server's memory or each refresh's work
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.history: deque[dict] = deque(maxlen=MAX_HISTORY)
        self.state = "starting"  # starting | running | ended | failed | stopped
        self.started = time.monotonic()
        self.frames = 0
        self._thumb_times: list[float] = []
        self._thumbs: dict[float, bytes] = {}
        self._questions: "queue.Queue[Asked]" = queue.Queue()
        self._stop = threading.Event()  # stop reading the source
        self._closed = threading.Event()  # stop answering too
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="livesight-web-run", daemon=True)
        self._thread.start()

    # --- the run thread
    def _main(self) -> None:
        session = None
        try:
            source = self._open()
            with self.lock:
                session = Session(self.adapter, self.config, source.size)
            self.state = "running"
            ingest = Ingest(source, realtime=self.realtime)
            chunks = self._between_chunks(chunk_frames(ingest, self.config.frames_per_chunk, self.config.fps), session)
            for event in run_stream(session, chunks, dropped=lambda: ingest.dropped, lock=self.lock):
                self._add(event)
            chunks.close()
            self.state = "stopped" if self._stop.is_set() else "ended"
            while not self._closed.is_set():  # questions on what was seen, until the page lets go
                self._serve(session, wait_s=0.2)
        except InputError as err:
            self.state = "failed"
            self._add(Event("error", 0.0, self._named(str(err))))
        except Exception as err:  # the page shows it; the server and other sessions go on
            self.state = "failed"
            self._add(Event("error", 0.0, self._named(f"the stream stopped: {type(err).__name__}: {err}")))
        finally:
            self._serve(None)
            if session is not None:
                session.close()

    def _open(self):
        if isinstance(self.source_spec, PushSource):
            self.source_spec.wait_first(WEBCAM_WAIT_S)
            return self.source_spec
        return open_source(self.source_spec, self.config.fps)

    def _named(self, text: str) -> str:
        """A message with the source's path replaced by its name: the page never learns server paths."""
        if isinstance(self.source_spec, str) and self.name != self.source_spec:
            text = text.replace(self.source_spec, self.name)
            text = text.replace(os.path.dirname(self.source_spec) + os.sep, "")
        return text

    def _between_chunks(self, chunks, session: Session):
        """The chunks, with the page's questions answered between them, until stopped."""
        for item in chunks:
            self._serve(session)
            if self._stop.is_set():
                return
            if isinstance(item, Chunk):
                self._thumbnail(item)
                self.frames += item.frames.shape[0]
            yield item

    def _serve(self, session: Session | None, wait_s: float = 0.0) -> None:
        """Answer the questions waiting (without a session: tell them the stream is gone)."""
        while True:
            try:
                asked = self._questions.get(timeout=wait_s) if wait_s else self._questions.get_nowait()
            except queue.Empty:
                return
            wait_s = 0.0
            if session is None:
                asked.events = [Event("error", 0.0, "the stream ended before this question was answered")]
            else:
                asked.events = answer(session, asked.question, self.lock)
                for event in asked.events:
                    self._add(event)
            asked.done.set()

    def _add(self, event: Event) -> None:
        with self._mutex:
            if event.type == "metrics":
                self.history.append({"t": event.t, "wall_s": time.monotonic() - self.started, **event.data})
                return
            self.events.append(event)
            if self._transcript is not None and not self._transcript.closed:
                self._transcript.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                self._transcript.flush()

    def _thumbnail(self, chunk: Chunk) -> None:
        image = chunk.frames[0]
        height = max(1, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
        small = cv2.resize(image, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return
        with self._mutex:
            self._thumb_times.append(chunk.t_start)
            self._thumbs[chunk.t_start] = jpeg.tobytes()
            if len(self._thumb_times) > MAX_THUMBNAILS:
                del self._thumbs[self._thumb_times.pop(0)]

    # --- what the page calls
    @property
    def is_streaming(self) -> bool:
        """Starting or reading its source: what a --max-streams slot counts. Ended, stopped and
        failed runs are not streaming (an ended run may still answer questions on what it saw)."""
        return self.state in ("starting", "running") and not self._stop.is_set()

    def ask(self, question: str, timeout_s: float = 300.0) -> list[Event]:
        """Ask and wait for the answer (asked after the chunk in flight); -> [answer] or [error]."""
        if not self._thread.is_alive():
            return [Event("error", 0.0, "no stream is running: press Start first")]
        asked = Asked(question)
        self._questions.put(asked)
        if not asked.done.wait(timeout_s):
            return [Event("error", 0.0, f"no answer within {timeout_s:g} s; the engine is busy")]
        return asked.events

    def thumbnail(self, t: float) -> np.ndarray | None:
        """The kept thumbnail of the chunk starting nearest to stream time t, RGB; None if gone."""
        with self._mutex:
            times = self._thumb_times
            i = bisect.bisect_left(times, t)
            near = [k for k in (i - 1, i) if 0 <= k < len(times)]
            if not near:
                return None
            best = times[min(near, key=lambda k: abs(times[k] - t))]
            if abs(best - t) > self.config.chunk_seconds:
                return None
            jpeg = self._thumbs[best]
        return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def snapshot(self) -> tuple[list[Event], list[dict]]:
        """The page's share: the last MAX_EVENTS events but metrics, and the last metrics rows."""
        with self._mutex:
            return list(self.events), list(self.history)

    def transcript(self) -> list[Event]:
        """Every event but metrics since the run started (from its transcript file; without a folder,
        the last MAX_EVENTS)."""
        with self._mutex:
            if self._transcript is None or self._transcript.closed:
                return list(self.events)
            with open(self._transcript.name, encoding="utf-8") as f:
                return [Event.from_dict(json.loads(line)) for line in f if line.endswith("\n")]

    def stop(self) -> None:
        """Stop reading the source; questions on what was seen are still answered."""
        self._stop.set()
        if isinstance(self.source_spec, PushSource):
            self.source_spec.close()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop everything and free the session and the run's folder."""
        self.stop()
        self._closed.set()
        self._thread.join(timeout_s)
        with self._mutex:
            if self._transcript is not None:
                self._transcript.close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)


class RunRegistry:
    """Runs by session key; a model step holds `lock` (one model, one GPU).

    A --max-streams slot counts only a run that is streaming. A run that ended or was stopped may go
    on answering questions about what it saw, but it still holds its Session (the model's cache), so
    it is closed when a new run needs the room (least recently used first), and any run is closed
    once no client has used it (refresh, question, frame) for `idle_timeout_s`. So at most `max_runs`
    runs hold a Session at any time, and nobody holds a slot by walking away.
    """

    MAX_NOTES = 1024  # why a key's run was closed, kept for its page to say; oldest forgotten first

    def __init__(self, max_runs: int, idle_timeout_s: float = 600.0, clock=time.monotonic):
        assert max_runs >= 1 and idle_timeout_s > 0, (max_runs, idle_timeout_s)
        self.max_runs, self.idle_timeout_s, self.clock = max_runs, idle_timeout_s, clock
        self.lock = threading.Lock()
        self._runs: OrderedDict[str, LiveRun] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}
        self._notes: OrderedDict[str, str] = OrderedDict()
        self._mutex = threading.Lock()  # guards the three dicts; never held while a run closes
        self._starting = threading.Lock()  # one start at a time, so the room one makes stays its own
        self._done = threading.Event()

    def get(self, key: str) -> LiveRun | None:
        """The key's run, marked used now (a client refreshed, asked or sent a frame)."""
        with self._mutex:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
                self._used[key] = self.clock()
            return run

    def note(self, key: str) -> str | None:
        """Why the key's run was closed by the server (idle, or room for another), if it was."""
        with self._mutex:
            return self._notes.get(key)

    def counts(self) -> tuple[int, int]:
        """(runs streaming, runs holding a Session)."""
        with self._mutex:
            return sum(run.is_streaming for run in self._runs.values()), len(self._runs)

    def start(self, key: str, make) -> LiveRun:
        """Replace this key's run with make(); raises InputError when `max_runs` runs are streaming."""
        with self._starting:
            self.close(key)
            self.reap()
            with self._mutex:
                streaming = sum(run.is_streaming for run in self._runs.values())
                if streaming >= self.max_runs:
                    raise InputError(f"LiveSight is busy: {streaming} {'stream is' if streaming == 1 else 'streams are'}"
                                     f" running, the most this server runs at once (its --max-streams is "
                                     f"{self.max_runs}). Try again when one ends")
                idle = [k for k, run in self._runs.items() if not run.is_streaming]
                surplus = len(self._runs) + 1 - self.max_runs
                closing = [self._pop(k, "another stream needed its room, and this one was no longer streaming")
                           for k in idle[:max(0, surplus)]]
            for run in closing:
                run.close()
            run = make()
            with self._mutex:
                self._runs[key], self._used[key] = run, self.clock()
            return run

    def reap(self) -> list[str]:
        """Close the runs no client has used for `idle_timeout_s`; -> their keys."""
        now = self.clock()
        with self._mutex:
            keys = [k for k in self._runs if now - self._used[k] > self.idle_timeout_s]
            closing = [self._pop(k, f"no page used it for {self.idle_timeout_s:g} s (the server's --idle-timeout)")
                       for k in keys]
        for run in closing:
            run.close()
        return keys

    def reap_every(self, interval_s: float) -> threading.Thread:
        """Reap in a thread every `interval_s` until close_all."""
        def loop() -> None:
            while not self._done.wait(interval_s):
                self.reap()
        thread = threading.Thread(target=loop, name="livesight-web-reaper", daemon=True)
        thread.start()
        return thread

    def close(self, key: str) -> None:
        """Close the key's run at its client's wish (Reset, a closed tab, a new Start): no note."""
        with self._mutex:
            run = self._pop(key, None)
            self._notes.pop(key, None)
        if run is not None:
            run.close()

    def close_all(self) -> None:
        self._done.set()
        with self._mutex:
            closing = [self._pop(k, None) for k in list(self._runs)]
        for run in closing:
            run.close()

    def _pop(self, key: str, note: str | None) -> LiveRun | None:
        """Forget the key's run (under _mutex; the caller closes it after letting go)."""
        self._used.pop(key, None)
        run = self._runs.pop(key, None)
        if run is not None and note is not None:
            self._notes[key] = note
            while len(self._notes) > self.MAX_NOTES:
                self._notes.popitem(last=False)
        return run
