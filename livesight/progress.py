"""Progress of long work, on stderr: a bar on a terminal, a status line now and then in a log.

    from livesight.progress import progress

    with progress(36, "bench compression", unit="runs") as bar:
        for scene, setting in work:
            bar.describe(f"{scene}, {setting}")  # what runs now (optional)
            ...
            bar.update()  # one step done; update(n) for n

When stderr is a terminal this draws a tqdm bar. Otherwise (a log file, CI, a pipe) it writes one
line at most every `every_s` seconds (30 by default), and a last line when the block ends, so a
long run's log shows how far it got without a carriage return per step:

    bench compression: 12/36 runs (33%) after 1m40s, about 3m20s left; now quiet, prune
    bench compression: done, 36/36 runs in 5m02s

A block left by an exception ends with "stopped at 12/36 ...". `total=None` counts with no total.
`bar=True/False` overrides the terminal check; `stream` and `clock` are there for tests.
"""

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def progress(total: int | None, desc: str, unit: str = "", every_s: float = 30.0, bar: bool | None = None,
             stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator["StatusLines"]:
    stream = stream if stream is not None else sys.stderr
    if bar is None:
        bar = bool(getattr(stream, "isatty", lambda: False)())
    shown = TerminalBar(total, desc, unit, stream) if bar else StatusLines(total, desc, unit, every_s, stream, clock)
    try:
        yield shown
    except BaseException:
        shown.close(done=False)
        raise
    shown.close(done=True)


class StatusLines:
    """The log form: a line when `every_s` has passed since the last one, and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str, every_s: float, stream: TextIO,
                 clock: Callable[[], float]):
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s, self.stream, self.clock = every_s, stream, clock
        self.count, self.now_doing = 0, ""
        self.start = self.last_line = clock()

    def describe(self, text: str) -> None:
        self.now_doing = text

    def update(self, n: int = 1) -> None:
        self.count += n
        now = self.clock()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            self._write(self._status(now))

    def close(self, done: bool) -> None:
        elapsed = _duration(self.clock() - self.start)
        self._write(f"{self.desc}: done, {self._counted()} in {elapsed}" if done else
                    f"{self.desc}: stopped at {self._counted()} after {elapsed}")

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        line = f"{self.desc}: {self._counted()}"
        if self.total:
            line += f" ({100 * self.count / self.total:.0f}%)"
        line += f" after {_duration(elapsed)}"
        if self.total and 0 < self.count < self.total:
            line += f", about {_duration(elapsed * (self.total - self.count) / self.count)} left"
        return line + (f"; now {self.now_doing}" if self.now_doing else "")

    def _counted(self) -> str:
        counted = f"{self.count}/{self.total}" if self.total is not None else str(self.count)
        return f"{counted} {self.unit}" if self.unit else counted

    def _write(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


class TerminalBar:
    """The terminal form: a tqdm bar, redrawn in place."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO):
        from tqdm import tqdm
        self._bar = tqdm(total=total, desc=desc, unit=f" {unit}" if unit else "it", file=stream, dynamic_ncols=True)

    def describe(self, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=True)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self, done: bool) -> None:
        if done:
            self._bar.set_postfix_str("done", refresh=False)
        self._bar.close()


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
