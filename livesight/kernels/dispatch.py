"""Which implementation of each op ran, logged once per (op, path)."""

import logging

log = logging.getLogger("livesight.kernels")
_seen: set[tuple[str, str]] = set()
last_path: dict[str, str] = {}


def report(op: str, path: str) -> None:
    """Record that `op` ran through `path`; log the first time each pair is seen."""
    last_path[op] = path
    if (op, path) not in _seen:
        _seen.add((op, path))
        log.info("kernel %s: %s path", op, path)
