"""Temporary folders the process owns, and their removal however the process ends.

A folder is made as `livesight-KIND-PID-XXXX` (under the system's temp folder, or under a folder
the user chose, such as --offload-dir) and removed when its owner closes it, at exit, on Ctrl-C
and on SIGTERM (the CLI turns SIGTERM into SystemExit, so every `finally` runs). A process killed
outright (SIGKILL, a crash) cannot clean up: the next start sweeps the folders whose process is
gone (`sweep`), so nothing piles up.
"""

import atexit
import os
import re
import shutil
import signal
import tempfile
import threading

import psutil

PATTERN = re.compile(r"^livesight-([a-z]+)-(\d+)-")
_owned: set[str] = set()
_lock = threading.Lock()
_atexit_registered = False


def make(kind: str, parent: str | None = None) -> str:
    """A new folder `livesight-KIND-PID-XXXX` in `parent` (default: the system's temp folder), owned
    by this process: removed by `remove`, or at exit."""
    global _atexit_registered
    assert re.fullmatch(r"[a-z]+", kind), kind
    path = tempfile.mkdtemp(prefix=f"livesight-{kind}-{os.getpid()}-", dir=parent)
    with _lock:
        _owned.add(path)
        if not _atexit_registered:
            atexit.register(remove_all)
            _atexit_registered = True
    return path


def remove(path: str) -> None:
    """Remove a folder `make` returned (and everything in it); a second call does nothing."""
    with _lock:
        _owned.discard(path)
    shutil.rmtree(path, ignore_errors=True)


def remove_all() -> None:
    """Remove every folder this process still owns (at exit)."""
    with _lock:
        paths = list(_owned)
    for path in paths:
        remove(path)


def sweep(parent: str | None = None) -> list[str]:
    """Remove the livesight folders in `parent` (default: the system's temp folder) left by processes
    that are gone: killed before they could clean up. -> the folders removed."""
    parent = parent or tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    for name in names:
        match = PATTERN.match(name)
        path = os.path.join(parent, name)
        if match and os.path.isdir(path) and not os.path.islink(path) and _orphaned(path, int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _orphaned(path: str, pid: int) -> bool:
    """True when the process that made `path` is gone. A pid can be reused: a process of that pid
    started after the folder was last written is another process."""
    if pid == os.getpid():
        return False
    try:
        started = psutil.Process(pid).create_time()
        return started > os.stat(path).st_mtime + 1.0
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False  # not ours to judge (another user's process): leave it


def exit_on_sigterm(grace_s: float = 10.0) -> None:
    """SIGTERM raises SystemExit(143) in the main thread, so `finally` blocks and atexit run (by
    default SIGTERM ends Python without either). Python drops an exception raised while a `__del__`
    runs, and a shutdown can hang on a thread: if the process is still there `grace_s` later, its
    folders are removed and it exits at once. Call from an entry point's main thread."""
    def handler(signum, frame):
        timer = threading.Timer(grace_s, _exit_now, (128 + signum,))
        timer.daemon = True  # a normal exit does not wait for it
        timer.start()
        raise SystemExit(128 + signum)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _exit_now(code: int) -> None:
    remove_all()
    os._exit(code)
