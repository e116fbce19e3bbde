"""A source run in its own thread, feeding the engine through a bounded queue.

Live sources drop the oldest frame when the queue is full (the engine fell behind); files and
generated video block instead, so they never drop. Source events are never dropped.
"""

import threading
import time
from collections import deque
from collections.abc import Iterator

from livesight.vision.sources import Frame, SourceEvent


class FrameQueue:
    def __init__(self, max_frames: int, drop_oldest: bool):
        if max_frames < 1:
            raise ValueError(f"queue must hold at least one frame, got {max_frames}")
        self.max_frames, self.drop_oldest = max_frames, drop_oldest
        self.dropped = 0
        self._items: deque = deque()
        self._frames = 0
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Frame | SourceEvent) -> bool:
        """Add an item; False once the queue is closed (the consumer left)."""
        with self._cond:
            if isinstance(item, Frame):
                while self._frames >= self.max_frames and not self._closed:
                    if self.drop_oldest:
                        self._drop_oldest_frame()
                    else:
                        self._cond.wait()
                self._frames += 1
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def _drop_oldest_frame(self) -> None:
        for i, item in enumerate(self._items):
            if isinstance(item, Frame):
                del self._items[i]
                self._frames -= 1
                self.dropped += 1
                return

    def get(self):
        """The next item, or None when the producer has finished and the queue is empty."""
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if not self._items:
                return None
            item = self._items.popleft()
            if isinstance(item, Frame):
                self._frames -= 1
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Ingest:
    """Iterate `source` in a producer thread through a FrameQueue; the producer's error re-raises
    in the consumer. realtime: pace a file or generated source to the wall clock, as if live."""

    def __init__(self, source, max_frames: int = 8, realtime: bool = False):
        self.source, self.realtime = source, realtime
        self.queue = FrameQueue(max_frames, drop_oldest=source.is_live)

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def _produce(self, failure: list[BaseException]) -> None:
        start = time.monotonic()
        try:
            for item in self.source:
                if self.realtime and not self.source.is_live and isinstance(item, Frame):
                    time.sleep(max(0.0, start + item.t - time.monotonic()))
                if not self.queue.put(item):
                    break
        except BaseException as err:  # handed to the consumer, which re-raises it
            failure.append(err)
        finally:
            self.queue.close()

    def __iter__(self) -> Iterator[Frame | SourceEvent]:
        failure: list[BaseException] = []
        thread = threading.Thread(target=self._produce, args=(failure,), name="livesight-ingest", daemon=True)
        thread.start()
        try:
            while (item := self.queue.get()) is not None:
                yield item
            if failure:
                raise failure[0]
        finally:
            self.queue.close()
            self.source.close()
            thread.join(timeout=5)
