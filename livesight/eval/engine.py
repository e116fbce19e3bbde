"""The evaluator's engine: LiveSight's Session over video files, the same code the CLI and the web
UI run. Sessions are kept per frame size and reset between streams, so buffers and captured CUDA
graphs serve every video and every cut of that size."""

import time
from collections import OrderedDict

from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import SessionConfig
from livesight.streaming.session import Session
from livesight.vision.ingest import Ingest
from livesight.vision.sources import FileSource, SourceEvent, VideoFile

MAX_SESSIONS = 4  # frame sizes kept at once; the least recently used is closed past that


class SessionEngine:
    def __init__(self, adapter, config: SessionConfig):
        self.adapter, self.config = adapter, config
        self.fps, self.frames_per_chunk = config.fps, config.frames_per_chunk
        self._sessions: OrderedDict[tuple[int, int], Session] = OrderedDict()

    def video(self, path: str) -> VideoFile:
        return VideoFile(path)

    def open(self, video: VideoFile, start: float, seconds: float | None) -> "SessionPass":
        """A new stream over video[start, start + seconds) (to the end if None)."""
        size = tuple(video.size)
        session = self._sessions.pop(size, None)
        if session is None:
            session = Session(self.adapter, self.config, size)
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.popitem(last=False)[1].close()
        else:
            session.reset()
        self._sessions[size] = session
        return SessionPass(session, FileSource(video, self.fps, seconds, start))

    def close(self) -> None:
        for session in self._sessions.values():
            session.close()
        self._sessions.clear()


class SessionPass:
    """One stream: frames decoded ahead in a thread (Ingest), fed chunk by chunk up to the time asked."""

    def __init__(self, session: Session, source: FileSource):
        self.session, self.frames = session, 0
        self.stream_s = self.wait_s = self.ask_s = 0.0  # feeding chunks (waiting included), waiting, answering
        config = session.config
        self._chunks = chunk_frames(Ingest(source), config.frames_per_chunk, config.fps)

    def advance(self, t: float) -> None:
        """Feed chunks until the stream reaches t seconds, or ends."""
        while self.session.now < t - 1e-9:
            start = time.perf_counter()
            chunk = next(self._chunks, None)
            self.wait_s += time.perf_counter() - start
            if chunk is None:
                return
            if isinstance(chunk, SourceEvent):
                continue
            self.session.add_chunk(chunk)
            self.frames += chunk.frames.shape[0]
            self.stream_s += time.perf_counter() - start

    def ask(self, prompt: str, max_tokens: int | None) -> dict:
        start = time.perf_counter()
        event = self.session.ask(prompt, remember=False, max_tokens=max_tokens)[-1]
        self.ask_s += time.perf_counter() - start
        data = event.data
        return {"text": event.text, "ttft_ms": data["ttft_ms"], "latency_ms": data["latency_ms"],
                "retrieved": data["retrieved"]}

    def close(self) -> None:
        self._chunks.close()  # stops the decoding thread
