"""The baseline `bench streams` measures against: how the front ends served several streams before the
engine, one Session per stream, taking turns on the model under one lock, chunk by chunk. Chunks and
questions in, events out."""

import contextlib
import queue
import time
from collections.abc import Callable, Iterable, Iterator

from livesight.errors import InputError
from livesight.streaming.chunker import Chunk
from livesight.streaming.events import Event
from livesight.streaming.session import Session
from livesight.vision.sources import SourceEvent


def run_stream(session: Session, chunks: Iterable[Chunk | SourceEvent], asks: list[tuple[float, str]] = (),
               questions: "queue.Queue[str] | None" = None, dropped: Callable[[], int] = lambda: 0,
               lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> Iterator[Event]:
    """Feed chunks to `session`; ask each scheduled question once the stream reaches its time, and
    any question waiting in `questions` after each chunk. Questions still scheduled when the stream
    ends are asked at its end. A source that fails on the way (a file damaged mid-way: InputError from
    `chunks`) ends the stream with an `error` event; the questions are still answered from what was
    seen. The last event is a summary (with `error` then). Each engine step holds `lock` (a front end
    driving several sessions on one model serializes them; waiting for frames holds nothing)."""
    pending = sorted(asks)
    start = time.perf_counter()
    items, failure = iter(chunks), None
    while True:
        try:
            item = next(items, None)
        except InputError as err:
            failure = str(err)
            yield Event("error", session.now, failure)
            break
        if item is None:
            break
        if isinstance(item, SourceEvent):
            yield Event(item.type, item.t, item.text)
            continue
        with lock:
            events = session.add_chunk(item)
        for event in events:
            if event.type == "metrics":
                event.data["frames_dropped"] = dropped()
            yield event
        while pending and pending[0][0] <= session.now + 1e-9:
            yield from answer(session, pending.pop(0)[1], lock)
        while questions is not None and not questions.empty():
            yield from answer(session, questions.get_nowait(), lock)
    for _, question in pending:
        yield from answer(session, question, lock)
    wall = time.perf_counter() - start
    yield Event("summary", session.now, None, {
        "chunks": session.num_chunks, "wall_s": round(wall, 3),
        "chunks_per_s": round(session.num_chunks / wall, 3) if wall > 0 else None,
        "realtime_factor": round(session.now / wall, 3) if wall > 0 else None} | ({"error": failure} if failure else {}))


def answer(session: Session, question: str,
           lock: contextlib.AbstractContextManager = contextlib.nullcontext()) -> list[Event]:
    """session.ask under `lock`; a bad question becomes an error event."""
    try:
        with lock:
            return session.ask(question)
    except InputError as err:  # a bad typed question must not end a live session
        return [Event("error", session.now, str(err))]
