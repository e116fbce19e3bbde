"""One browser session's stream, a stream of the server's one engine (the registry that caps how many
it holds: registry.py). The web UI only reads what a LiveRun keeps; the engine is streaming/."""

import bisect
import json
import os
import queue
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

from livesight.errors import InputError
from livesight.streaming.chunker import Chunk, chunk_frames
from livesight.streaming.config import SessionConfig
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event
from livesight.streaming.feed import feed
from livesight.vision.ingest import Ingest
from livesight.vision.sources import PushSource, open_source

MAX_THUMBNAILS = 7200  # one per chunk: two hours of 1-s chunks at about 3 KB each
MAX_HISTORY = 3600  # metrics rows kept for the plots
MAX_EVENTS = 2000  # transcript lines kept in memory for the page; the run's transcript file keeps them all
TRANSCRIPT = "transcript.jsonl"
THUMB_WIDTH = 160
VIEW_WIDTH = 480  # the page's view of the frame being watched
WEBCAM_WAIT_S = 15.0
GONE = "the stream ended before this question was answered"


@dataclass
class Asked:
    """A question put to a run; `done` is set once `events` holds its answer (or error)."""

    question: str
    done: threading.Event = field(default_factory=threading.Event)
    events: list[Event] = field(default_factory=list)
    on_delta: Callable[[str], None] | None = None  # told the answer's text as it is generated


class LiveRun:
    """A source fed into a stream of the engine (its own thread, `feed`), the stream's events read back
    into the page's share and the transcript file, and questions asked of it until the run closes.

    The engine steps no stream once it has ended (its summary is out), and an ended run must go on
    answering; so the run tells the engine its source ended only when it closes, and knows its source
    is done when the last chunk it fed comes back (its metrics event)."""

    def __init__(self, engine: Engine, config: SessionConfig, source: str | PushSource, realtime: bool = True,
                 name: str | None = None, parent: str | None = None, seconds: float | None = None,
                 on_event: Callable[[Event], None] | None = None):
        """source: a spec for open_source (file path, rtsp://..., webcam:N) or frames pushed by the page.
        realtime: pace a file at real time (its stream is then live: it drops chunks, never waits).
        name: what messages call the source (an upload's own file name, not the server's path to it).
        parent: where the run makes its folder (its id): the whole transcript, written as it comes, and
        exports; removed by close(). Without it the transcript is the last MAX_EVENTS lines only.
        seconds: read at most this much of the source (None: open_source's default). on_event: told every
        event the run records, metrics included, in order (an API's event log)."""
        self.engine, self.config, self.source_spec, self.realtime = engine, config, source, realtime
        self.seconds, self.on_event = seconds, on_event
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
        self.stream_id: str | None = None  # the engine's, once the source is open
        self._outbox: "queue.Queue[Event | None]" = queue.Queue()  # the stream's events; None: the run closed
        self._asked: deque[Asked] = deque()  # questions with the engine, answered in order
        self._fed: int | None = None  # index of the last chunk fed, once the source is done
        self._back = -1  # index of the last chunk whose events came back
        self._thumb_times: list[float] = []
        self._thumbs: dict[float, bytes] = {}
        self._latest: tuple[float, np.ndarray] | None = None  # the newest chunk's first frame, for the page's view
        self._stop = threading.Event()  # stop reading the source
        self._closed = threading.Event()  # stop answering too
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="livesight-web-run", daemon=True)
        self._thread.start()

    # --- the run thread: open, feed, read the stream's events until closed
    def _main(self) -> None:
        try:
            ingest = Ingest(self._open(), realtime=self.realtime)
            if not self._join(ingest):
                return
            self.state = "running"
            feed(self.engine, self.stream_id, self._items(ingest))
            while (event := self._outbox.get()) is not None:
                self._take(event)
        except InputError as err:
            self.state = "failed"
            self._add(Event("error", 0.0, self._named(str(err))))
        except Exception as err:  # the page shows it; the server and other sessions go on
            self.state = "failed"
            self._add(Event("error", 0.0, self._named(f"the stream stopped: {type(err).__name__}: {err}")))
        finally:
            self._let_go()

    def _open(self):
        if isinstance(self.source_spec, PushSource):
            self.source_spec.wait_first(WEBCAM_WAIT_S)
            return self.source_spec
        return open_source(self.source_spec, self.config.fps, self.seconds)

    def _join(self, ingest: Ingest) -> bool:
        """Open the run's engine stream (InputError when its settings need more cache than a slab holds);
        False when the run was closed meanwhile. The source is let go if it will not be read."""
        source = ingest.source
        try:
            if not self._closed.is_set():
                stream_id = self.engine.open(source.size, self.config, live=source.is_live or self.realtime,
                                             outbox=self._outbox, frames_dropped=lambda: ingest.dropped)
                with self._mutex:
                    self.stream_id = stream_id
        except BaseException:
            source.close()
            raise
        if self._closed.is_set():  # closed while the source opened: close() saw no stream to close
            source.close()
            return False
        return True

    def _named(self, text: str) -> str:
        """A message with the source's path replaced by its name: the page never learns server paths."""
        if isinstance(self.source_spec, str) and self.name != self.source_spec:
            text = text.replace(self.source_spec, self.name)
            text = text.replace(os.path.dirname(self.source_spec) + os.sep, "")
        return text

    def _items(self, ingest: Ingest):
        """What `feed` puts into the stream: the source's chunks (each one's thumbnail kept) until it ends,
        fails or is stopped; then nothing more until the run closes (see the class)."""
        chunks, last = chunk_frames(ingest, self.config.frames_per_chunk, self.config.fps), None
        try:
            for item in chunks:
                if self._stop.is_set():
                    break
                if isinstance(item, Chunk):
                    self._thumbnail(item)
                    self.frames += item.frames.shape[0]
                    last = item.index
                yield item
        except InputError as err:  # a file damaged mid-way: what was seen is still asked about
            self._add(Event("error", self._now(), self._named(str(err))))
        except Exception as err:  # noqa: BLE001 - as feed would: this stream ends, the others go on
            self._add(Event("error", self._now(), self._named(f"{type(err).__name__}: {err}")))
        finally:
            chunks.close()  # the source (a camera) is let go now
        self._source_done(-1 if last is None else last)
        self._closed.wait()

    def _now(self) -> float:
        with self._mutex:
            return self.history[-1]["t"] if self.history else 0.0

    def _source_done(self, fed: int) -> None:
        with self._mutex:
            self._fed = fed
        self._settle()

    def _settle(self) -> None:
        """Ended (or stopped) once the source is done and its last chunk has come back."""
        with self._mutex:
            if self._fed is not None and self._back >= self._fed and self.state == "running":
                self.state = "stopped" if self._stop.is_set() else "ended"

    def _take(self, event: Event) -> None:
        """One of the stream's events: kept for the page, and an answer handed to its question (the
        answer's text as it comes, too, to a question that asked for it; that is not kept)."""
        if event.type == "answer_delta":
            with self._mutex:
                asked = self._asked[0] if self._asked else None
            if asked is not None and asked.on_delta is not None:
                asked.on_delta(event.text)
            return
        self._add(event)
        if event.type == "metrics":
            with self._mutex:
                self._back = event.data["chunk"]
            self._settle()
        elif event.type == "answer":
            with self._mutex:
                asked = self._asked.popleft() if self._asked else None
            if asked is not None:
                asked.events = [event]
                asked.done.set()

    def _let_go(self) -> None:
        """The engine stream goes (its slab and offload folder freed) and waiting questions are told."""
        with self._mutex:
            stream_id, self.stream_id = self.stream_id, None
            waiting, self._asked = list(self._asked), deque()
        if stream_id is not None:
            self.engine.close(stream_id)
        for asked in waiting:
            asked.events = [Event("error", 0.0, GONE)]
            asked.done.set()

    def _add(self, event: Event) -> None:
        with self._mutex:
            if self.on_event is not None:
                self.on_event(event)
            if event.type == "metrics":
                self.history.append({"t": event.t, "wall_s": time.monotonic() - self.started, **event.data})
                return
            self.events.append(event)
            if self._transcript is not None and not self._transcript.closed:
                self._transcript.write(json.dumps(event.to_dict(), ensure_ascii=False) + "\n")
                self._transcript.flush()

    def _thumbnail(self, chunk: Chunk) -> None:
        image = chunk.frames[0]
        view = cv2.resize(image, (VIEW_WIDTH, max(1, round(image.shape[0] * VIEW_WIDTH / image.shape[1]))),
                          interpolation=cv2.INTER_AREA) if image.shape[1] > VIEW_WIDTH else image.copy()
        height = max(1, round(image.shape[0] * THUMB_WIDTH / image.shape[1]))
        small = cv2.resize(image, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
        ok, jpeg = cv2.imencode(".jpg", small[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return
        with self._mutex:
            self._latest = (chunk.t_start, view)
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

    def ask(self, question: str, timeout_s: float = 300.0, max_tokens: int | None = None,
            on_delta: Callable[[str], None] | None = None) -> list[Event]:
        """Ask and wait for the answer (the engine takes it ahead of the stream's next chunk); -> [answer]
        or [error]. on_delta: told the answer's text as it is generated, before the answer comes."""
        with self._mutex:  # the stream stays open (see _let_go) until the question is with the engine
            if self.stream_id is None:
                starting = self.state == "starting" and not self._closed.is_set()
                return [Event("error", 0.0, "the stream is still starting: ask once it runs" if starting
                              else "no stream is running: press Start first")]
            try:  # checked here: the engine's error event for a bad question would not say which question
                self.engine.lanes[self.stream_id].stream.question_ids(question)
            except InputError as err:
                return [Event("error", 0.0, str(err))]
            asked = Asked(question, on_delta=on_delta)
            self._asked.append(asked)
            self.engine.ask(self.stream_id, question, max_tokens=max_tokens, partial=on_delta is not None)
        if not asked.done.wait(timeout_s):
            return [Event("error", 0.0, f"no answer within {timeout_s:g} s; the engine is busy")]
        return asked.events

    def latest_frame(self) -> tuple[float, np.ndarray] | None:
        """(stream time, RGB frame at most VIEW_WIDTH wide) of the newest chunk fed to the engine; None before."""
        with self._mutex:
            return self._latest

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

    def last_metrics(self) -> dict:
        """The last chunk's metrics row ({} before the first)."""
        with self._mutex:
            return self.history[-1] if self.history else {}

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
        """Stop everything and free the engine stream (now) and the run's folder."""
        self.stop()
        self._closed.set()
        self._let_go()
        self._outbox.put(None)
        self._thread.join(timeout_s)
        with self._mutex:
            if self._transcript is not None:
                self._transcript.close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
