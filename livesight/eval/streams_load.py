"""The load `bench streams` puts on a way of serving streams: pre-rendered chunks, paced into live
streams by one thread, and every stream's events gathered in one log.

Rendering costs nothing during a run: each scene's chunks are rendered once, at the model's frame
size (so nothing is resized either), and stream i replays scene i mod 4 from an offset of its own, so
streams of one scene are not identical. The pacer feeds the warm-up as fast as the streams take it
(at most two chunks outstanding per stream, so a live stream drops nothing) and the measured run in
real time: one chunk per stream per chunk period, stream i's at i/N of the period ("spread", as
independent cameras) or all at once ("together").
"""

import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from livesight.eval.config import StreamsConfig
from livesight.streaming.chunker import Chunk
from livesight.streaming.events import CHUNK_PARTS, Event
from livesight.vision.synthetic import SCENES, render

POOL_CHUNKS = 30  # chunks rendered per scene; a stream loops over them
OFFSET_CHUNKS = 7  # how far apart in its scene's loop each next stream of that scene starts
QUESTION = "What has happened in the video so far?"


class ChunkPool:
    def __init__(self, size: tuple[int, int], frames_per_chunk: int, fps: float, chunk_s: float):
        """size: (height, width) the model takes the frames at."""
        height, width = size
        self.size, self.chunk_s = size, chunk_s
        count = POOL_CHUNKS * frames_per_chunk
        self.frames = {scene: np.stack([render(k / fps, width, height, scene) for k in range(count)]).reshape(
            POOL_CHUNKS, frames_per_chunk, height, width, 3) for scene in SCENES}

    def chunk(self, stream: int, index: int) -> Chunk:
        """Stream `stream`'s chunk `index` (its stream time index * chunk_s on)."""
        scene, lap = SCENES[stream % len(SCENES)], stream // len(SCENES)
        frames = self.frames[scene][(index + OFFSET_CHUNKS * lap) % POOL_CHUNKS]
        return Chunk(frames, index * self.chunk_s, (index + 1) * self.chunk_s, index)


class Way(Protocol):
    """A way of serving N live streams: the engine, or today's Sessions under one lock."""

    own_graphs: bool  # each stream captures its own CUDA graphs (a question's too, when it first asks)

    def put(self, stream: int, chunk: Chunk) -> None: ...

    def ask(self, stream: int, question: str) -> None: ...


def chunk_row(stream: int, data: dict, now: float) -> dict:
    """What the bench keeps of a chunk's metrics event (Stream._metrics plus the way's latency and counts)."""
    vision = data["vision_tokens"]
    return {"stream": stream, "chunk": data["chunk"], "done": now, "latency_ms": data["latency_ms"],
            "tokens_in": data["tokens_in"], "tokens_out": data["tokens_out"],
            "kv_tokens": sum(data["kv_tokens"].values()), "encoded_share": vision["encoded"] / max(1, vision["grid"]),
            "mem_mb": data.get("gpu_mem_mb", data["rss_mb"]), "dropped": data["chunks_dropped"],
            "shortened": data["narrations_shortened"], **{part: data[part] for part in CHUNK_PARTS}}


class EventLog:
    """Every stream's chunks, answers and errors as they come, with when they came. Fed by `add`
    (today's way: each session's thread) or by a thread reading one shared outbox (`follow`)."""

    def __init__(self, num_streams: int):
        self.chunks: list[dict] = []
        self.answers: list[dict] = []
        self.errors: list[str] = []
        self.done = [-1] * num_streams  # each stream's last chunk captioned
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None

    def follow(self, outbox: "queue.Queue[Event]", stream_ids: list[str]) -> None:
        index = {sid: i for i, sid in enumerate(stream_ids)}

        def read() -> None:
            while not self._stop.is_set():
                try:
                    event = outbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                self.add(index[event.data["stream"]], event, time.perf_counter())
        self._reader = threading.Thread(target=read, name="livesight-bench-events", daemon=True)
        self._reader.start()

    def add(self, stream: int, event: Event, now: float) -> None:
        with self._changed:
            if event.type == "metrics":
                self.chunks.append(chunk_row(stream, event.data, now))
                self.done[stream] = max(self.done[stream], event.data["chunk"])
            elif event.type == "answer":
                self.answers.append({"stream": stream, "done": now, "ttft_ms": event.data["ttft_ms"],
                                     "latency_ms": event.data["latency_ms"], "tokens": event.data["tokens"]})
            elif event.type == "error":
                self.errors.append(f"stream {stream}: {event.text}")
            self._changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `predicate` (called under the log's lock) holds -> whether it did in time."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout_s)

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join()


class Pacer:
    """Puts every stream's chunks (all streams at one index together) and the questions into a way."""

    def __init__(self, way: Way, pool: ChunkPool, log: EventLog, num_streams: int, cfg: StreamsConfig):
        self.way, self.pool, self.log, self.num_streams, self.cfg = way, pool, log, num_streams, cfg
        self.next = 0  # the next chunk index, the same for every stream
        self.asked = 0
        self.rng = np.random.default_rng(cfg.seed)

    def fast(self, num_chunks: int, stall_s: float) -> None:
        """Warm-up: num_chunks per stream as fast as the way takes them, each stream at most two
        chunks ahead of its captions; then a question (to every stream if each has graphs of its
        own to capture, else to stream 0: the shapes are shared) before the last chunk (today's way
        answers after a chunk), and all of it done."""
        for j in range(num_chunks):
            k = self.next
            if not self.log.wait(lambda: min(self.log.done) >= k - 2, stall_s):
                self.log.errors.append(f"warm-up: a stream gave no caption for {stall_s:g} s")
            if j == num_chunks - 1:
                for i in range(self.num_streams if self.way.own_graphs else 1):
                    self._ask(i)
            for i in range(self.num_streams):
                self.way.put(i, self.pool.chunk(i, k))
            self.next += 1
        if num_chunks:
            if not self.settle(stall_s):
                self.log.errors.append(f"warm-up: not every chunk and question was done {stall_s:g} s after it")

    def live(self, num_chunks: int, ask: bool) -> float:
        """num_chunks per stream in real time (and, if `ask`, a question to a random stream every
        ask_every_s, the first half-way into the first interval) -> the perf_counter() time the first
        chunk was due."""
        period, n = self.cfg.chunk_s, self.num_streams
        phase = [i / n if self.cfg.arrivals == "spread" else 0.0 for i in range(n)]
        due = [((k + phase[i]) * period, i, self.next + k) for k in range(num_chunks) for i in range(n)]
        if ask:  # each before the last chunk: today's way answers a question after the stream's next chunk
            last = (num_chunks - 1) * period
            due += [(t, -1, None) for t in np.arange(self.cfg.ask_every_s / 2, last, self.cfg.ask_every_s)]
        start = time.perf_counter() + 0.05
        for at, stream, index in sorted(due, key=lambda item: item[0]):
            time.sleep(max(0.0, start + at - time.perf_counter()))
            if stream < 0:
                self._ask(int(self.rng.integers(n)))
            else:
                self.way.put(stream, self.pool.chunk(stream, index))
        self.next += num_chunks
        return start

    def settle(self, timeout_s: float) -> bool:
        """Wait until every chunk put has its caption and every question its answer -> whether in time."""
        last = self.next - 1
        return self.log.wait(lambda: min(self.log.done) >= last and len(self.log.answers) >= self.asked, timeout_s)

    def _ask(self, stream: int) -> None:
        self.way.ask(stream, QUESTION)
        self.asked += 1
