"""The server's Prometheus metrics, kept in a registry of its own and moved by the streams' events."""

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from livesight.streaming.events import Event

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class ApiMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.streams = Gauge("livesight_streams", "Streams held by the server, by state", ["state"], registry=r)
        self.chunks = Counter("livesight_chunks", "Chunks captioned", registry=r)
        self.dropped = Counter("livesight_chunks_dropped", "Chunks a live stream dropped to keep up", registry=r)
        self.latency = Histogram("livesight_chunk_latency_seconds", "From a chunk's arrival to its caption",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("livesight_question_ttft_seconds", "From a question to its answer's first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("livesight_tokens", "Tokens generated", ["kind"], registry=r)
        self.gpu_memory = Gauge("livesight_gpu_memory_bytes", "GPU memory allocated (last chunk's reading)",
                                registry=r)
        self.offload = Gauge("livesight_offload_bytes", "Offloaded KV held, over all streams", ["tier"], registry=r)
        self._dropped: dict[str, int] = {}  # each stream's running count, to add only what is new
        self._offload: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def observe(self, stream_id: str, event: Event) -> None:
        """A stream's event moves the counters."""
        data = event.data
        if event.type == "metrics":
            self.chunks.inc()
            if "latency_ms" in data:
                self.latency.observe(data["latency_ms"] / 1000)
            self.tokens.labels("narrated").inc(data.get("tokens_out", 0))
            if "gpu_mem_mb" in data:
                self.gpu_memory.set(data["gpu_mem_mb"] * 2**20)
            with self._lock:
                dropped = data.get("chunks_dropped", 0)
                self.dropped.inc(max(0, dropped - self._dropped.get(stream_id, 0)))
                self._dropped[stream_id] = dropped
                if "offload" in data:
                    self._offload[stream_id] = (data["offload"]["ram_mb"], data["offload"]["disk_mb"])
        elif event.type == "answer":
            if "ttft_ms" in data:
                self.ttft.observe(data["ttft_ms"] / 1000)
            self.tokens.labels("answer").inc(data.get("tokens", 0))

    def forget(self, stream_id: str) -> None:
        """A deleted stream's offload no longer counts."""
        with self._lock:
            self._dropped.pop(stream_id, None)
            self._offload.pop(stream_id, None)

    def render(self, states: list[str]) -> bytes:
        """The exposition text, with the gauges set from `states` (every stream's) now."""
        for state in ("starting", "running", "ended", "stopped", "failed"):
            self.streams.labels(state).set(sum(s == state for s in states))
        with self._lock:
            self.offload.labels("ram").set(sum(ram for ram, _ in self._offload.values()) * 2**20)
            self.offload.labels("disk").set(sum(disk for _, disk in self._offload.values()) * 2**20)
        return generate_latest(self.registry)
