"""The engine: one model, any number of streams joining and leaving, all stepped in the same batched pass.

Every stream's cache is a slab of one preallocated pool (kvcache/pool.py), and its logic is its
Stream's generators (stream.py). Each engine step gathers the work that is ready across streams:
idle streams start their next job (a question ahead of chunks), one vision pass encodes every
ready chunk, and one language-model pass runs every stream's next step packed together (chunk
prefills, questions, one decode token per narrating or answering stream; a stream whose turn
ends leaves the batch). The weights are read once per step for all streams.

Real time, explicitly: a live stream never waits for the engine. Its chunks wait at most GATHER_S to
start together with other streams' (one prefill and one vision pass for all, not one each). It may
have `max_pending` chunks waiting; one more drops the oldest (counted as `chunks_dropped`), and a
stream that starts a chunk with another already waiting narrates half as many tokens
(`narrations_shortened`). Each metrics event says how long its chunk waited and took (`latency_ms`,
from its arrival to its caption). A file or an evaluator's video is not live: its feeder waits for room.

Admission: the pool is sized when the engine starts (`max_streams` slabs, checked against the
device's free memory, with the offload budgets against the host's); one stream more is refused
with a clear message. Closing a stream frees its slab and its offload files; a stream's failure
(its source dies, its offload folder vanishes, a bad question) reaches only that stream's events.
"""

import gc
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable

from livesight.errors import InputError
from livesight.kernels.graphs import on_device
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.batch_step import BatchStep
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import SessionConfig
from livesight.streaming.events import Event
from livesight.streaming.lane import Job, Lane
from livesight.streaming.stream import (Stream, VisionWork, check_fits, check_host_memory, duo_heads, largest_step,
                                       slab_tokens)

MAX_PENDING = 2  # chunks a live stream may have waiting; one more drops the oldest
# Live chunks arrive spread over each second; started at once, each would be a prefill step and a vision
# pass of its own (every step reads all the weights). They wait up to GATHER_S to start together, or
# until GATHER_CHUNKS wait (a batched vision pass's worth)
GATHER_S, GATHER_CHUNKS = 0.25, 8
log = logging.getLogger(__name__)


class Engine:
    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, max_streams: int,
                 max_pending: int = MAX_PENDING, max_frame: tuple[int, int] | None = None,
                 gather_s: float | None = None):
        """config: every stream's settings unless it brings its own (which must fit a slab);
        max_streams: slabs in the pool, the most streams open at once; max_frame: (height, width) of the
        largest frames the streams will bring, which sizes the slabs (None: the largest the model takes);
        gather_s: how long live streams' chunks may wait to start together (None: GATHER_S with more than
        one slab, else 0)."""
        if max_streams < 1:
            raise InputError(f"max streams must be at least 1, got {max_streams}")
        self.adapter, self.config, self.max_pending = adapter, config, max_pending
        self.gather_s = (GATHER_S if max_streams > 1 else 0.0) if gather_s is None else gather_s
        # as Session does: what exists now (the model) lives as long as the process, and frozen, Python's
        # full collection (40-180 ms, mid-step) skips it. The pool and the streams come after: an engine
        # closed is collected
        gc.collect()
        gc.freeze()
        self.slab_capacity, tokens_per_chunk = slab_tokens(adapter, config, max_frame)
        check_fits(adapter, self.slab_capacity, tokens_per_chunk, config, num_streams=max_streams)
        check_host_memory(config, max_streams)
        self.pool = adapter.new_pool(max_streams, self.slab_capacity, config.kv_dtype, duo_heads(adapter, config),
                                     largest_step(config, tokens_per_chunk, adapter.chat_ids()))
        self.batch = BatchStep(adapter, self.pool, config.cuda_graphs)
        self.lanes: dict[str, Lane] = {}
        self._ids = itertools.count()
        self._lock = threading.RLock()  # the streams' queues and the lanes table
        self._changed = threading.Condition(self._lock)
        self._model = threading.Lock()  # the model's work: a step, or a stream's start (its sink prefill)
        self._stepping, self._closing = False, []
        # host time in the vision and language-model passes; LM steps, the tokens and the streams they packed
        self.stage_ms = {"vision_ms": 0.0, "lm_ms": 0.0, "steps": 0, "rows": 0, "streams": 0}

    # --- what front ends call (any thread) ---

    def open(self, frame_size: tuple[int, int], config: SessionConfig | None = None, live: bool = False,
             name: str | None = None, outbox: "queue.Queue[Event] | None" = None,
             frames_dropped: Callable[[], int] = lambda: 0) -> str:
        """A new stream of frames of frame_size (height, width) -> its id (`name`, if given). live: a
        camera that must not wait (chunks past max_pending drop the oldest); else its feeder waits
        for room. outbox: where its events go (several streams may share one); frames_dropped: the
        source's count of frames it dropped before chunking, for the metrics."""
        config = config or self.config
        with self._lock:
            name = name or f"s{next(self._ids)}"
            if name in self.lanes:
                raise InputError(f"a stream named {name!r} is open already")
        taken, stream = [], None  # the slab, to give back if the stream fails to start after taking it
        try:
            with self._model, on_device(self.adapter.device):  # its sink prefill runs the model: not in a step
                stream = Stream(self.adapter, config, frame_size, cache=lambda n: taken.append(self._take_slab(n))
                                or taken[-1])
            with self._lock:
                if name in self.lanes:
                    raise InputError(f"a stream named {name!r} is open already")
                lane = Lane(name, stream, live, frames_dropped=frames_dropped)
                if outbox is not None:
                    lane.outbox = outbox
                self.lanes[name] = lane
        except BaseException:
            if stream is not None:
                stream.close()
            with self._lock:
                for cache in taken:
                    self.pool.give_back(cache)
            raise
        return name

    def _take_slab(self, capacity: int):
        if capacity > self.slab_capacity:
            raise InputError(f"this stream's settings need a cache of {capacity:,} tokens; the engine's slabs hold "
                             f"{self.slab_capacity:,}: use the engine's settings or a smaller frame size")
        with self._lock:
            if not self.pool.free:
                raise InputError(f"the engine is carrying {self.pool.num_slabs} streams, all its memory holds: "
                                 f"close one first")
            return self.pool.take(capacity)

    def put(self, stream_id: str, chunk: Chunk, timeout: float | None = None) -> None:
        """Queue a chunk. A live stream drops its oldest waiting chunk when max_pending wait already;
        another waits until there is room (at most `timeout` seconds, then queue.Full)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            lane = self._lane(stream_id)
            while not lane.live and len(lane.chunks) >= self.max_pending and not lane.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Full
                self._changed.wait(left)
            if lane.closed:
                raise InputError(f"stream {stream_id!r} was closed")
            if lane.live and len(lane.chunks) >= self.max_pending:
                lane.chunks.popleft()
                lane.counts["chunks_dropped"] += 1
            lane.chunks.append(Job("chunk", time.perf_counter(), chunk))
            self._changed.notify_all()

    def ask(self, stream_id: str, question: str, remember: bool = True, max_tokens: int | None = None,
            at: float | None = None, partial: bool = False) -> None:
        """Queue a question: it runs ahead of the stream's next chunk, or once the stream has reached
        `at` seconds (at its end, if it ends first). The answer comes as an event; partial: its text also
        comes as it is generated, in "answer_delta" events before it."""
        job = Job("question", time.perf_counter(), question=question, remember=remember, max_tokens=max_tokens,
                  partial=partial)
        with self._changed:
            lane = self._lane(stream_id)
            if at is not None:
                lane.scheduled.append((at, job))
                lane.scheduled.sort(key=lambda pair: pair[0])
            else:
                lane.questions.append(job)
            self._changed.notify_all()

    def note(self, stream_id: str, event: Event) -> None:
        """Pass a source's notice (a reconnect) to the stream's events."""
        with self._lock:
            self._emit(self._lane(stream_id), [event])

    def end(self, stream_id: str, error: str | None = None) -> None:
        """The stream's source has ended (with `error` if it failed): once its queued work and its
        scheduled questions are done, a summary event closes its events."""
        with self._changed:
            lane = self._lane(stream_id)
            lane.source_done, lane.failure = True, error  # the error event comes after the chunks it delivered
            self._changed.notify_all()

    def close(self, stream_id: str) -> None:
        """Drop the stream now: its slab and offload files are freed, its queued work forgotten."""
        with self._changed:
            lane = self.lanes.pop(stream_id, None)
            if lane is None:
                return
            lane.closed = True
            if self._stepping:  # the step in flight may still write its slab: freed when the step ends
                self._closing.append(lane)
            else:
                self._release(lane)
            self._changed.notify_all()

    def _release(self, lane: Lane) -> None:
        if lane.work is not None:
            lane.work.close()
        lane.stream.close()
        self.pool.give_back(lane.stream.cache)

    def shutdown(self) -> None:
        """Close every stream."""
        for stream_id in list(self.lanes):
            self.close(stream_id)

    def events(self, stream_id: str) -> "queue.Queue[Event]":
        """The stream's events, in order; a summary event is its last."""
        with self._lock:
            return self._lane(stream_id).outbox

    def ended(self, stream_id: str) -> bool:
        with self._lock:
            lane = self.lanes.get(stream_id)
            return lane is None or lane.ended

    def _lane(self, stream_id: str) -> Lane:
        lane = self.lanes.get(stream_id)
        if lane is None:
            raise InputError(f"no open stream {stream_id!r}")
        return lane

    def _emit(self, lane: Lane, events: list[Event]) -> None:
        for event in events:
            event.data["stream"] = lane.id
            lane.outbox.put(event)

    # --- the loop (one thread) ---

    def run(self, stop: threading.Event | None = None, until_idle: bool = False) -> None:
        """Step until `stop` is set, or (until_idle) until every stream has ended and has nothing left
        to do. Waits, without spinning, while there is nothing to do."""
        while stop is None or not stop.is_set():
            if self.step():
                continue
            with self._changed:
                if until_idle and all(lane.ended and lane.idle for lane in self.lanes.values()):
                    return
                due_in = self._chunks_due_in(list(self.lanes.values()))
                if not self._ready() or due_in > 0:
                    self._changed.wait(min(0.1, due_in) if due_in > 0 else 0.1)

    def _ready(self) -> bool:
        return any(lane.work is not None or lane.questions or (lane.chunks and not lane.live)
                   or (lane.source_done and not lane.ended) for lane in self.lanes.values())

    def _chunks_due_in(self, lanes: list[Lane]) -> float:
        """Seconds until the live streams' waiting chunks start (0: now): the oldest has waited gather_s,
        GATHER_CHUNKS wait, a stream's queue is full, or no other idle live stream is left to wait for."""
        idle = [lane for lane in lanes if lane.live and lane.work is None and (lane.chunks or not lane.source_done)]
        waiting = [lane for lane in idle if lane.chunks]
        if not waiting or self.gather_s <= 0 or len(waiting) >= min(GATHER_CHUNKS, len(idle)) or \
                any(len(lane.chunks) >= self.max_pending for lane in waiting):
            return 0.0
        oldest = min(lane.chunks[0].arrived for lane in waiting)
        return max(0.0, oldest + self.gather_s - time.perf_counter())

    def step(self) -> bool:
        """One engine step -> whether there was work."""
        with self._model, on_device(self.adapter.device):  # the model's work, on its GPU
            with self._lock:
                self._stepping = True
                lanes = list(self.lanes.values())
                live_due = self._chunks_due_in(lanes) == 0
                started = [lane for lane in lanes if lane.work is None and self._take_job(lane, live_due)]
                busy = [lane for lane in self.lanes.values() if lane.work is not None]
                self._changed.notify_all()  # feeders waiting for room
            try:
                for lane in started:
                    self._begin(lane)
                busy = [lane for lane in busy + started if lane.work is not None]
                vision = [lane for lane in busy if isinstance(lane.item, VisionWork)]
                if vision:
                    self._timed("vision_ms", lambda: self._vision(vision))
                steps = [lane for lane in busy if lane.work is not None and not isinstance(lane.item, VisionWork)]
                if steps:
                    self._timed("lm_ms", lambda: self._language(steps))
            finally:
                with self._lock:
                    self._stepping = False
                    for lane in self._closing:
                        self._release(lane)
                    self._closing.clear()
        return bool(busy or started)

    def _take_job(self, lane: Lane, live_due: bool = True) -> bool:
        """An idle stream's next job (under the lock): a question first, then its oldest chunk (a live
        stream's once live_due); once its source has ended and its chunks are done, the source's error,
        the scheduled questions left and the summary. -> whether a job was taken (lane.job)."""
        stream = lane.stream
        done = lane.source_done and not lane.chunks
        if done and lane.failure and not lane.ended and not lane.failure_told:
            lane.failure_told = True
            self._emit(lane, [Event("error", stream.now, lane.failure)])
        while lane.scheduled and (lane.scheduled[0][0] <= stream.now + 1e-9 or done):
            job = lane.scheduled.pop(0)[1]
            job.arrived = time.perf_counter()  # its wait counts from when it became due
            lane.questions.append(job)
        if lane.questions:
            lane.job = lane.questions.popleft()
        elif lane.chunks:
            if lane.live and not live_due:
                return False
            lane.job = lane.chunks.popleft()
            lane.job.shorten = lane.live and bool(lane.chunks) and stream.config.narrate
            lane.counts["narrations_shortened"] += lane.job.shorten
        else:
            if done and not lane.ended:
                self._finish(lane)
            return False
        return True

    def _begin(self, lane: Lane) -> None:
        """Start the job's work and run it to its first item (a question's retrieval runs here, for its
        own stream only)."""
        job, stream = lane.job, lane.stream
        if job.kind == "question":
            told = (lambda text: self._emit(lane, [Event("answer_delta", stream.now, text)])) if job.partial else None
            lane.work = stream.ask_work(job.question, job.remember, job.max_tokens, job.arrived, told)
        else:
            lane.work = stream.chunk_work(job.chunk, stream.config.narrate_tokens // 2 if job.shorten else None)
        self._advance(lane, None)

    def _advance(self, lane: Lane, result) -> None:
        """Send the work its result; on to its next item, or its events when it is done. A failure
        ends the job with an error event for this stream alone."""
        try:
            lane.item = lane.work.send(result)
            return
        except StopIteration as done:
            events = done.value
        except Exception as err:  # noqa: BLE001 - one stream's failure must not stop the others
            events = [self._failure(lane, err)]
        self._done(lane, events)

    def _done(self, lane: Lane, events: list[Event]) -> None:
        """The job is over: its events out, a chunk's metrics with its latency and the stream's counts."""
        job, lane.work, lane.job, lane.item = lane.job, None, None, None
        if job.kind == "chunk":
            for event in events:
                if event.type == "metrics":
                    event.data["latency_ms"] = round((time.perf_counter() - job.arrived) * 1000, 2)
                    event.data["queued"] = len(lane.chunks)
                    event.data["frames_dropped"] = lane.frames_dropped()
                    event.data.update(lane.counts)
        with self._lock:
            self._emit(lane, events)

    def _finish(self, lane: Lane) -> None:
        stream, wall = lane.stream, time.perf_counter() - lane.started
        lane.ended = True
        self._emit(lane, [Event("summary", stream.now, None, {
            "chunks": stream.num_chunks, "wall_s": round(wall, 3),
            "chunks_per_s": round(stream.num_chunks / wall, 3) if wall > 0 else None,
            "realtime_factor": round(stream.now / wall, 3) if wall > 0 else None, **lane.counts}
            | ({"error": lane.failure} if lane.failure else {}))])

    def _vision(self, lanes: list[Lane]) -> None:
        """Every ready chunk in one vision pass; if it fails, chunk by chunk, to find whose it was."""
        items = [(lane.item.frames, lane.stream.size, lane.stream.encoder) for lane in lanes]
        try:
            results = self.adapter.encode_frames_batch(items)
        except Exception as err:  # noqa: BLE001
            if len(lanes) == 1:
                return self._fail(lanes[0], err)
            return [self._vision([lane]) for lane in lanes]
        for lane, result in zip(lanes, results):
            self._advance(lane, result)

    def _language(self, lanes: list[Lane]) -> None:
        """Every ready step in one language-model pass; if it fails, step by step, to find whose it was."""
        try:
            outputs = self.batch([(lane.stream.stepper, lane.item) for lane in lanes])
        except Exception as err:  # noqa: BLE001
            if len(lanes) == 1:
                return self._fail(lanes[0], err)
            return [self._language([lane]) for lane in lanes]
        self.stage_ms["steps"] += 1
        self.stage_ms["rows"] += sum(lane.item.num_tokens for lane in lanes)
        self.stage_ms["streams"] += len(lanes)
        for lane, result in zip(lanes, outputs):
            self._advance(lane, result)

    def _fail(self, lane: Lane, err: Exception) -> None:
        """The stream's job ends with an error event; the other streams go on."""
        event = self._failure(lane, err)
        lane.work.close()
        self._done(lane, [event])

    @staticmethod
    def _failure(lane: Lane, err: Exception) -> Event:
        """The error event of a job that failed: `failed` says which kind (a question, a chunk), so a front
        end can tell it from offload trouble reported along the way."""
        if not isinstance(err, InputError):
            log.error("stream %s: its %s failed", lane.id, lane.job.kind, exc_info=err)
        text = str(err) if isinstance(err, InputError) else f"{type(err).__name__}: {err}"
        return Event("error", lane.stream.now, text, {"failed": lane.job.kind})

    def _timed(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        fn()
        self.stage_ms[name] += (time.perf_counter() - t0) * 1000
