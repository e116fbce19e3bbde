"""The web server's runs, one per browser session: at most `max_runs` streaming at once, ended ones kept
(answering questions) until their slab is needed or they sit idle too long."""

import threading
import time
from collections import OrderedDict

from livesight.app.live import LiveRun
from livesight.errors import InputError


class RunRegistry:
    """Runs by session key, each holding at most one of the engine's `max_runs` slabs.

    A --max-streams slot counts only a run that is streaming. A run that ended or was stopped may go
    on answering questions about what it saw, but it still holds its engine stream (a slab of the
    cache), so it is closed when a new run needs the room (least recently used first), and any run is
    closed once no client has used it (refresh, question, frame) for `idle_timeout_s`. So at most
    `max_runs` runs hold a slab at any time, a new run always finds one free, and nobody holds a slot
    by walking away.
    """

    MAX_NOTES = 1024  # why a key's run was closed, kept for its page to say; oldest forgotten first

    def __init__(self, max_runs: int, idle_timeout_s: float = 600.0, clock=time.monotonic):
        assert max_runs >= 1 and idle_timeout_s > 0, (max_runs, idle_timeout_s)
        self.max_runs, self.idle_timeout_s, self.clock = max_runs, idle_timeout_s, clock
        self._runs: OrderedDict[str, LiveRun] = OrderedDict()  # least recently used first
        self._used: dict[str, float] = {}
        self._notes: OrderedDict[str, str] = OrderedDict()
        self._mutex = threading.Lock()  # guards the three dicts; never held while a run closes
        self._starting = threading.Lock()  # one start at a time, so the room one makes stays its own
        self._done = threading.Event()

    def get(self, key: str) -> LiveRun | None:
        """The key's run, marked used now (a client refreshed, asked or sent a frame)."""
        with self._mutex:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
                self._used[key] = self.clock()
            return run

    def note(self, key: str) -> str | None:
        """Why the key's run was closed by the server (idle, or room for another), if it was."""
        with self._mutex:
            return self._notes.get(key)

    def counts(self) -> tuple[int, int]:
        """(runs streaming, runs held: each holds a slab)."""
        with self._mutex:
            return sum(run.is_streaming for run in self._runs.values()), len(self._runs)

    def start(self, key: str, make) -> LiveRun:
        """Replace this key's run with make(); raises InputError when `max_runs` runs are streaming."""
        with self._starting:
            self.close(key)
            self.reap()
            with self._mutex:
                streaming = sum(run.is_streaming for run in self._runs.values())
                if streaming >= self.max_runs:
                    raise InputError(f"LiveSight is busy: {streaming} {'stream is' if streaming == 1 else 'streams are'}"
                                     f" running, the most this server runs at once (its --max-streams is "
                                     f"{self.max_runs}). Try again when one ends")
                idle = [k for k, run in self._runs.items() if not run.is_streaming]
                surplus = len(self._runs) + 1 - self.max_runs
                closing = [self._pop(k, "another stream needed its room, and this one was no longer streaming")
                           for k in idle[:max(0, surplus)]]
            for run in closing:
                run.close()
            run = make()
            with self._mutex:
                self._runs[key], self._used[key] = run, self.clock()
            return run

    def reap(self) -> list[str]:
        """Close the runs no client has used for `idle_timeout_s`; -> their keys."""
        now = self.clock()
        with self._mutex:
            keys = [k for k in self._runs if now - self._used[k] > self.idle_timeout_s]
            closing = [self._pop(k, f"no page used it for {self.idle_timeout_s:g} s (the server's --idle-timeout)")
                       for k in keys]
        for run in closing:
            run.close()
        return keys

    def reap_every(self, interval_s: float) -> threading.Thread:
        """Reap in a thread every `interval_s` until close_all."""
        def loop() -> None:
            while not self._done.wait(interval_s):
                self.reap()
        thread = threading.Thread(target=loop, name="livesight-web-reaper", daemon=True)
        thread.start()
        return thread

    def close(self, key: str) -> None:
        """Close the key's run at its client's wish (Reset, a closed tab, a new Start): no note."""
        with self._mutex:
            run = self._pop(key, None)
            self._notes.pop(key, None)
        if run is not None:
            run.close()

    def close_all(self) -> None:
        self._done.set()
        with self._mutex:
            closing = [self._pop(k, None) for k in list(self._runs)]
        for run in closing:
            run.close()

    def _pop(self, key: str, note: str | None) -> LiveRun | None:
        """Forget the key's run (under _mutex; the caller closes it after letting go)."""
        self._used.pop(key, None)
        run = self._runs.pop(key, None)
        if run is not None and note is not None:
            self._notes[key] = note
            while len(self._notes) > self.MAX_NOTES:
                self._notes.popitem(last=False)
        return run
