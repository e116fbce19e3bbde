"""The evaluator's engine: LiveSight's Engine over video files, the same code the CLI and the web UI
run. One Engine carries up to `max_streams` passes at once (a video, or a cut of one), each a
non-live stream fed from its own thread and stepped, batched with the others, by one loop thread.

A pass keeps the one-at-a-time protocol exactly: its feeder stops at the time last asked for (the
gate), so a question sees the chunks a stream advanced to that time holds, no more; and its stream
stays open past the video's last chunk until the pass is closed, so a question may still come then
(the engine ends a stream whose source has ended as soon as its queued work is done).
"""

import logging
import queue
import threading
import time

from livesight.eval.runner import StreamFailed
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import SessionConfig
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event
from livesight.streaming.feed import feed
from livesight.vision.ingest import Ingest
from livesight.vision.sources import FileSource, SourceEvent, VideoFile

log = logging.getLogger("livesight.eval")


class VideoEngine:
    """The runner's engine (runner.py): video passes opened from its threads, one loop stepping them."""

    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, max_streams: int):
        self.config, self.max_streams = config, max_streams
        self.fps, self.frames_per_chunk = config.fps, config.frames_per_chunk
        self.engine = Engine(adapter, config, max_streams)
        self.failure: str | None = None  # set when the loop stops: nothing steps a pass after that
        self._passes: set[VideoPass] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._run, name="livesight-eval-engine", daemon=True)
        self._loop.start()

    def video(self, path: str) -> VideoFile:
        return VideoFile(path)

    def open(self, video: VideoFile, start: float, seconds: float | None) -> "VideoPass":
        """A new stream over video[start, start + seconds) (to the end if None)."""
        with self._lock:
            if self.failure is not None:
                raise StreamFailed(self.failure)
            opened = VideoPass(self, FileSource(video, self.fps, seconds, start))
            self._passes.add(opened)
            return opened

    def closed(self, done: "VideoPass") -> None:
        """`done` is closed: nothing to wake there if the loop stops."""
        with self._lock:
            self._passes.discard(done)

    def _run(self) -> None:
        try:
            self.engine.run(self._stop)
        except Exception as err:  # noqa: BLE001 - a bug in the loop: fail every pass rather than hang
            log.exception("the engine stopped")
            self._lose(f"the engine stopped: {type(err).__name__}: {err}")

    def _lose(self, why: str) -> None:
        """Wake every open pass with `why` as an error, and open no more."""
        with self._lock:
            self.failure = why
            for waiting in self._passes:
                waiting.fail(why)

    def close(self) -> None:
        self._stop.set()
        self._loop.join()
        self._lose("the evaluation stopped")


class VideoPass:
    """One stream of the engine over a video or a cut of it, driven by one thread of the runner
    (`advance`, `ask`, `close`) while its feeder thread decodes and puts chunks."""

    def __init__(self, owner: VideoEngine, source: FileSource):
        config = owner.config
        self.owner, self.engine, self.frames = owner, owner.engine, 0
        self.stream_s = self.wait_s = self.ask_s = 0.0  # feeding chunks (waiting included), waiting, answering
        self.events: queue.Queue[Event] = queue.Queue()
        self._gate = threading.Condition()
        self._target = self._fed_to = 0.0  # the time asked for; the end of the last chunk fed
        self._exhausted, self._closed, self._failure = False, False, None
        self.id = self.engine.open(tuple(source.size), outbox=self.events)
        feed(self.engine, self.id, self._chunks(chunk_frames(Ingest(source), config.frames_per_chunk, config.fps)))

    def _chunks(self, chunks):
        """The source's chunks while the stream is short of the time asked for: the next is read only
        once it is needed, so a video damaged past the last question fails no question. At the
        source's end, wait for close; a source's failure is kept for `ask` to raise."""
        try:
            while self._wait(lambda: self._closed or self._fed_to < self._target - 1e-9):
                start = time.perf_counter()
                try:
                    chunk = next(chunks, None)
                except Exception as err:
                    self._set(_failure=err)
                    raise
                self.wait_s += time.perf_counter() - start
                if chunk is None:
                    self._set(_exhausted=True)
                    self._wait(lambda: self._closed)
                    return
                if isinstance(chunk, SourceEvent):
                    continue
                self.frames += chunk.frames.shape[0]
                self._set(_fed_to=chunk.t_end)
                yield chunk
                self.stream_s += time.perf_counter() - start
        finally:
            chunks.close()  # stops the decoding thread

    def _wait(self, ready) -> bool:
        """Wait until ready() -> whether the pass is still open."""
        with self._gate:
            self._gate.wait_for(ready)
            return not self._closed

    def _set(self, **values) -> None:
        """Change the pass's state and wake whoever waits on it (its feeder, `ask`)."""
        with self._gate:
            for name, value in values.items():
                setattr(self, name, value)
            self._gate.notify_all()

    def advance(self, t: float) -> None:
        """Let the feeder go on until the stream reaches t seconds, or its source ends."""
        self._set(_target=t)

    def ask(self, prompt: str, max_tokens: int | None) -> dict:
        """Once every chunk up to the time asked for is fed, the question is scheduled after the last
        of them (not before: the engine would answer ahead of chunks still queued). An error event of a
        failed job (`failed`: no answer will come) fails the pass; the offload store's trouble does not
        (the answer comes from what is left)."""
        start = time.perf_counter()
        with self._gate:
            self._gate.wait_for(lambda: self._failure is not None or self._exhausted
                                or self._fed_to >= self._target - 1e-9)
            if self._failure is not None:
                raise self._failure
            at = self._fed_to
        self.engine.ask(self.id, prompt, remember=False, max_tokens=max_tokens, at=at)
        while (event := self.events.get()).type != "answer":
            if event.type == "error" and "failed" in event.data:
                raise StreamFailed(event.text)
        self.ask_s += time.perf_counter() - start
        data = event.data
        return {"text": event.text, "ttft_ms": data["ttft_ms"], "latency_ms": data["latency_ms"],
                "retrieved": data["retrieved"]}

    def fail(self, why: str) -> None:
        """The engine stopped: wake `ask` and `close` wherever they wait."""
        self._set(_failure=StreamFailed(why))
        self.events.put(Event("error", 0.0, why, {"failed": "engine"}))

    def close(self) -> None:
        """Stop the feeder and close the stream now: its queued chunks are dropped, not run (a feeder
        waiting for room in `put` is woken by the close)."""
        self._set(_closed=True)
        self.engine.close(self.id)
        self.owner.closed(self)
