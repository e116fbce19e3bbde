"""A stream's events for its API clients: numbered from 1, the last CAPACITY kept, waited on by readers.

A client reading the Server-Sent Events gives the last id it saw (Last-Event-ID) when it reconnects,
and receives every later event still kept, once each. Events older than the kept ones are lost to it,
and it is told how many (a `lost` event), never silently.
"""

import asyncio
import threading
from collections import deque

from livesight.streaming.events import Event

CAPACITY = 4096  # events kept per stream: about 30 minutes of 1-s chunks with narration and metrics


class EventLog:
    def __init__(self, capacity: int = CAPACITY):
        self._events: deque[tuple[int, Event]] = deque(maxlen=capacity)
        self._next = 1
        self._closed = False
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()  # readers on an event loop

    def append(self, event: Event) -> int:
        """Keep the event -> its id."""
        with self._lock:
            number = self._next
            self._events.append((number, event))
            self._next += 1
            self._wake()
            return number

    def close(self) -> None:
        """No more events will come (the stream was deleted): readers finish what is kept."""
        with self._lock:
            self._closed = True
            self._wake()

    def _wake(self) -> None:
        for loop, waiter in self._waiters:
            loop.call_soon_threadsafe(waiter.set)

    async def wait_after(self, last_id: int, timeout_s: float) -> tuple[list[tuple[int, Event]], int, bool]:
        """`after` for a reader on an event loop: it waits (up to timeout_s, for an event past last_id or
        the close) without holding a thread."""
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(waiter)
        try:
            found = self.after(last_id)  # looked at after the waiter is in: nothing appended is missed
            if found[0] or found[2]:
                return found
            try:
                await asyncio.wait_for(waiter[1].wait(), timeout_s)
            except TimeoutError:
                pass
            return self.after(last_id)
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    @property
    def last_id(self) -> int:
        with self._lock:
            return self._next - 1

    def after(self, last_id: int) -> tuple[list[tuple[int, Event]], int, bool]:
        """The kept events with ids above last_id -> (events, how many between last_id and the first kept
        were lost, whether the log is closed)."""
        with self._lock:
            oldest = self._events[0][0] if self._events else self._next
            lost = max(0, oldest - last_id - 1)
            return [(n, e) for n, e in self._events if n > last_id], lost, self._closed
