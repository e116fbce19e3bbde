"""Videos evaluated at once: a few threads take them in turn, and their records reach the results
file in the order one video at a time writes them, so a resumed run finds the file it would have
found (results.py)."""

import threading
from collections.abc import Callable


class InOrder:
    """Records of videos evaluated at once, written in the order one video at a time writes them: the
    first unfinished video's as they come, a later video's held until every video before it is
    written. A run interrupted leaves what one video at a time would have left by then, less the
    records held (asked again on resume)."""

    def __init__(self, write: Callable[[dict], None], num_videos: int):
        self._write, self._lock, self._closed = write, threading.Lock(), False
        self._held: list[list[dict]] = [[] for _ in range(num_videos)]
        self._finished = [False] * num_videos
        self._head = 0  # the first unfinished video: its records go straight out

    def writer(self, video: int) -> Callable[[dict], None]:
        def write(record: dict) -> None:
            with self._lock:
                if self._closed:
                    return
                if video == self._head:
                    self._write(record)
                else:
                    self._held[video].append(record)
        return write

    def finish(self, video: int) -> None:
        with self._lock:
            self._finished[video] = True
            while not self._closed and self._head < len(self._finished) and self._finished[self._head]:
                self._head += 1
                if self._head < len(self._held):
                    for record in self._held[self._head]:
                        self._write(record)
                    self._held[self._head] = []

    def close(self) -> None:
        """Write nothing more: the run ended, or was interrupted and the videos still going must not
        write the errors its stopping causes."""
        with self._lock:
            self._closed = True


def each(fn: Callable[[int], None], count: int, workers: int) -> None:
    """fn(0), ..., fn(count - 1), each once, in `workers` threads; the first exception is raised here
    once they have stopped. Daemon threads: an interrupt leaves them, as the engine stops under them."""
    indices, lock, errors = iter(range(count)), threading.Lock(), []

    def work() -> None:
        while not errors:
            with lock:
                i = next(indices, None)
            if i is None:
                return
            try:
                fn(i)
            except BaseException as err:  # noqa: BLE001 - raised in the caller's thread
                errors.append(err)
    threads = [threading.Thread(target=work, name=f"livesight-eval-{k}", daemon=True)
               for k in range(min(workers, count))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
