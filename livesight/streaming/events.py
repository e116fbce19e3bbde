"""What the engine tells front ends: small dataclasses, one JSON object each."""

from dataclasses import dataclass, field
from typing import Any


CHUNK_PARTS = ("vision_ms", "prune_ms", "prefill_ms", "decode_ms", "evict_ms")  # a metrics event's timings


def chunk_ms(metrics: dict[str, Any]) -> float:
    """A chunk's latency from its metrics event's data: the sum of its parts (older logs lack some)."""
    return sum(metrics.get(part, 0.0) for part in CHUNK_PARTS)


@dataclass
class Event:
    """type: caption | answer | metrics | error | reconnect | info; t: stream seconds."""

    type: str
    t: float
    text: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        """The inverse of to_dict (a JSON line back to an event)."""
        d = dict(d)
        return cls(d.pop("type"), d.pop("t"), d.pop("text", None), d)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "t": round(self.t, 3)}
        if self.text is not None:
            out["text"] = self.text
        out.update(self.data)
        return out
