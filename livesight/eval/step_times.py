"""The engine's language-model steps timed by kind: decode-only steps (one token per stream) apart from
steps that carry prefills (chunks, questions). The engine's stage_ms sums both in lm_ms; decode
throughput (tokens per second of decoding) and where the time goes at many streams need them apart.

It wraps the BatchStep of one engine instance (DESIGN §6.14: on the instance, never process-wide)
and times each step on the device's timeline (CUDA events, read in bulk later: reading one waits for
the GPU) or on the host's clock.
"""

import threading
import time

import torch

from livesight.streaming.engine import Engine
from livesight.streaming.step_output import StepResult

READ_AFTER = 1024  # steps kept unread before the older ones are read (their events are long done)


class StepTimes:
    def __init__(self, engine: Engine):
        self.batch = engine.batch
        self.cuda = engine.pool.key_buffer.is_cuda
        self._lock = threading.Lock()  # the engine's thread adds steps; the bench's resets and reads
        engine.batch = self
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.unread: list[tuple[str, int, object, object]] = []  # (kind, rows, start, end)
            self.totals = {kind: {"steps": 0, "rows": 0, "ms": 0.0} for kind in ("decode", "prefill")}

    def __call__(self, steps: list) -> list[StepResult]:
        rows = sum(builder.num_tokens for _, builder in steps)
        kind = "decode" if rows == len(steps) else "prefill"
        start = self._mark()
        outputs = self.batch(steps)
        end = self._mark()
        with self._lock:
            self.unread.append((kind, rows, start, end))
            if len(self.unread) > READ_AFTER:
                self._read(len(self.unread) // 2)
        return outputs

    def __getattr__(self, name: str):
        return getattr(self.batch, name)  # the rest of BatchStep (num_graphs) as it is

    def read(self) -> dict:
        """-> {"decode" | "prefill": {"steps", "rows", "ms"}} since the last reset."""
        with self._lock:
            self._read(len(self.unread))
            return {kind: dict(t, ms=round(t["ms"], 2)) for kind, t in self.totals.items()}

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _read(self, count: int) -> None:
        """Add the oldest `count` steps to the totals (under the lock)."""
        for kind, rows, start, end in self.unread[:count]:
            total = self.totals[kind]
            if self.cuda:
                end.synchronize()
            total["ms"] += start.elapsed_time(end) if self.cuda else (end - start) * 1000
            total["steps"] += 1
            total["rows"] += rows
        del self.unread[:count]
