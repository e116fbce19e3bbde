"""The two ways `bench streams` serves N live streams on one model.

- engine: one Engine holding every stream (a slab of its pool each), stepped by its own thread; each
  step runs every ready stream's work in one batched pass.
- today: one Session per stream (its own cache and CUDA graphs), each in a thread of its own running
  run_stream (turns.py), every model step under one lock, as the web UI's runs shared the model before.
  Streams take turns chunk by chunk, so its cost is linear in N.

Both are fed the same way (put, ask) and report into the same EventLog: a chunk's latency from its
arrival to its caption, a question's time to first token from when it was asked.
"""

import gc
import queue
import threading
import time
from collections import deque

import torch

from livesight.eval.step_times import StepTimes
from livesight.eval.streams_load import EventLog
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import SessionConfig
from livesight.streaming.engine import MAX_PENDING, Engine
from livesight.streaming.events import Event
from livesight.eval.turns import run_stream
from livesight.streaming.session import Session
from livesight.streaming.stream import slab_tokens, stream_bytes


class EngineWay:
    own_graphs = False

    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, num_streams: int, size: tuple[int, int],
                 log: EventLog):
        self.engine = Engine(adapter, config, max_streams=num_streams, max_frame=size)
        self.steps = StepTimes(self.engine)
        outbox: "queue.Queue" = queue.Queue()
        self.ids = [self.engine.open(size, live=True, name=f"s{i}", outbox=outbox) for i in range(num_streams)]
        self.vision_store = encoder_bytes(self.engine.lanes[self.ids[0]].stream.encoder)
        log.follow(outbox, self.ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.engine.run, args=(self._stop,), name="livesight-bench-engine",
                                        daemon=True)
        self._thread.start()

    def put(self, stream: int, chunk: Chunk) -> None:
        self.engine.put(self.ids[stream], chunk)

    def ask(self, stream: int, question: str) -> None:
        self.engine.ask(self.ids[stream], question)

    def reset_stages(self) -> None:
        self.steps.reset()
        self._stage0 = dict(self.engine.stage_ms)

    def stages(self) -> dict:
        """Since reset_stages: the engine's vision and LM host time, steps and rows, and its LM steps
        by kind on the device's timeline."""
        now = self.engine.stage_ms
        return {k: round(now[k] - self._stage0[k], 2) for k in now} | {"lm_by_kind": self.steps.read()}

    def stream_mb(self) -> dict:
        """Device memory one stream holds: its slab of the pool (and a hybrid model's linear-attention state
        with its checkpoints), its offloaded blocks' representatives."""
        engine, adapter = self.engine, self.engine.adapter
        _, tokens = slab_tokens(adapter, engine.config)
        need = stream_bytes(adapter, engine.slab_capacity, tokens, engine.config)
        slab, reps = need["cache"], need["representatives"]
        return {"cache_mb": round(slab / 2**20, 1), "representatives_mb": round(reps / 2**20, 1),
                "vision_store_mb": round(self.vision_store / 2**20, 1)}

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sid in self.ids:
            self.engine.close(sid)


class Inbox:
    """A live stream's chunks for its session's thread: at most MAX_PENDING wait (one more drops the
    oldest, as the engine's live streams do), each with its arrival time."""

    def __init__(self):
        self.chunks: deque = deque()
        self.arrived: dict[int, float] = {}
        self.dropped = 0
        self._changed = threading.Condition()
        self._closed = False

    def put(self, chunk: Chunk) -> None:
        with self._changed:
            if len(self.chunks) >= MAX_PENDING:
                self.arrived.pop(self.chunks.popleft().index)
                self.dropped += 1
            self.chunks.append(chunk)
            self.arrived[chunk.index] = time.perf_counter()
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def __iter__(self):
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self.chunks or self._closed)
                if not self.chunks:
                    return
                chunk = self.chunks.popleft()
            yield chunk


class SessionsWay:
    own_graphs = True

    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, num_streams: int, size: tuple[int, int],
                 log: EventLog):
        self.sessions: list[Session] = []
        try:
            for _ in range(num_streams):
                self.sessions.append(Session(adapter, config, size))
        except BaseException:
            for session in self.sessions:
                session.close()
            raise
        self.log, self.lock = log, threading.Lock()
        self.inboxes = [Inbox() for _ in range(num_streams)]
        self.questions: list[queue.Queue] = [queue.Queue() for _ in range(num_streams)]
        self.asked: list[deque] = [deque() for _ in range(num_streams)]  # when each waiting question came
        self._threads = [threading.Thread(target=self._serve, args=(i,), name=f"livesight-bench-session-{i}",
                                          daemon=True) for i in range(num_streams)]
        for thread in self._threads:
            thread.start()

    def _serve(self, i: int) -> None:
        """run_stream over stream i's inbox; each event gets the bench's clock: a chunk's latency from
        its arrival, an answer's time to first token from when it was asked (its wait for the lock and
        for the chunk in progress included)."""
        inbox, asked = self.inboxes[i], self.asked[i]
        try:
            for event in run_stream(self.sessions[i], inbox, questions=self.questions[i], lock=self.lock):
                now = time.perf_counter()
                if event.type == "metrics":
                    arrived = inbox.arrived.pop(event.data["chunk"])
                    event.data.update(latency_ms=round((now - arrived) * 1000, 2), chunks_dropped=inbox.dropped,
                                      narrations_shortened=0)
                elif event.type == "answer":
                    waited = (now - asked.popleft()) * 1000 - event.data["latency_ms"]
                    event.data["ttft_ms"] = round(waited + event.data["ttft_ms"], 2)
                self.log.add(i, event, now)
        except Exception as err:  # noqa: BLE001 - the run reports it (its chunks go missing); the others go on
            self.log.add(i, Event("error", 0.0, f"{type(err).__name__}: {err}"), time.perf_counter())

    def put(self, stream: int, chunk: Chunk) -> None:
        self.inboxes[stream].put(chunk)

    def ask(self, stream: int, question: str) -> None:
        self.asked[stream].append(time.perf_counter())
        self.questions[stream].put(question)

    def reset_stages(self) -> None:
        pass  # its stage times are the chunks' own (each runs alone)

    def stages(self) -> dict:
        return {}

    def stream_mb(self) -> dict:
        session = self.sessions[0]
        need = stream_bytes(session.adapter, session.capacity, session.tokens_per_chunk, session.config)
        return {"cache_mb": round(need["cache"] / 2**20, 1),
                "representatives_mb": round(need["representatives"] / 2**20, 1),
                "vision_store_mb": round(encoder_bytes(session.encoder) / 2**20, 1)}

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.close()
        for thread in self._threads:
            thread.join()
        for session in self.sessions:
            session.close()


def encoder_bytes(encoder) -> int:
    """Device bytes a stream's vision encoder keeps for reuse (every block's keys and values of the last
    chunk, its last hidden states and outputs); the engine's admission check does not count them."""
    stores = [getattr(encoder, name, None) for name in ("keys", "values", "hidden", "output")]  # reuse on
    return sum(t.nbytes for t in stores if t is not None)


def release(device: torch.device) -> None:
    """Give a finished way's memory back before the next one starts. Engine and Session freeze the
    collector on what exists when they start (gc.freeze), which makes a dropped engine's pool (held in
    a reference cycle with its layers) immortal; unfrozen, one collection frees it."""
    gc.unfreeze()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
