"""A source into an engine stream: the one loop every front end and bench feeds streams with.

Each source runs in a thread of its own, so decoding never holds up the engine and a slow source
holds up no other stream. Chunks go to `engine.put` (a live source's are dropped oldest first when
the engine falls behind; a file's wait for room); a source's notices become the stream's events;
a source that fails on the way (InputError: a file damaged mid-way) ends the stream with an error
event, and the questions scheduled for it are still answered from what was seen.
"""

import queue
import threading
from collections.abc import Iterable

from livesight.errors import InputError
from livesight.streaming.chunker import Chunk
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event
from livesight.vision.sources import SourceEvent

STOP_CHECK_S = 0.2  # a feeder waiting for room in its stream looks at `stop` this often


def feed(engine: Engine, stream_id: str, items: Iterable[Chunk | SourceEvent],
         stop: threading.Event | None = None) -> threading.Thread:
    """Start feeding `items` to the stream -> the thread (a daemon). `stop` ends it early; either way
    the stream is told its source has ended."""
    def run() -> None:
        error = None
        try:
            for item in items:
                if stop is not None and stop.is_set():
                    break
                if isinstance(item, SourceEvent):
                    engine.note(stream_id, Event(item.type, item.t, item.text))
                elif not _put(engine, stream_id, item, stop):
                    break
        except InputError as err:
            error = str(err)
        except Exception as err:  # noqa: BLE001 - the stream ends with it; the engine and others go on
            error = f"{type(err).__name__}: {err}"
        try:
            engine.end(stream_id, error)
        except InputError:
            pass  # the stream was closed meanwhile
    thread = threading.Thread(target=run, name=f"livesight-feed-{stream_id}", daemon=True)
    thread.start()
    return thread


def _put(engine: Engine, stream_id: str, chunk: Chunk, stop: threading.Event | None) -> bool:
    """engine.put, but a wait for room ends when `stop` is set (a file's feeder would otherwise wait
    for an engine that has stopped) -> whether the chunk went in."""
    while True:
        try:
            engine.put(stream_id, chunk, timeout=None if stop is None else STOP_CHECK_S)
            return True
        except queue.Full:
            if stop.is_set():
                return False
