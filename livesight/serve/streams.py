"""The API's streams: each a LiveRun (app/live.py) on the server's one engine, with its settings and an
event log its clients read (event_log.py). At most as many as the engine has slabs."""

import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from livesight.app.live import LiveRun
from livesight.errors import InputError
from livesight.serve.bodies import FIELD_NAMES, StreamCreate
from livesight.serve.event_log import EventLog
from livesight.serve.metrics import ApiMetrics
from livesight.serve.sources import SourceCheck
from livesight.streaming.config import SessionConfig
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event
from livesight.streaming.options import SECONDS, build_config
from livesight.streaming.stream import slab_tokens


class FieldError(InputError):
    """Bad input that one field of a request carries: the API answers with its status, naming it."""

    def __init__(self, field_name: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.status = field_name, status


class NotFound(FieldError):
    def __init__(self, stream_id: str):
        super().__init__("stream_id", f"no stream {stream_id[:64]!r}: list them with GET /v1/streams", 404)


@dataclass
class ApiStream:
    id: str
    source: str  # as the client gave it
    kind: str  # camera | synthetic | file
    settings: SessionConfig
    run: LiveRun
    log: EventLog
    created: float = field(default_factory=time.time)

    @property
    def state(self) -> str:
        return self.run.state

    @property
    def caption_s(self) -> float:
        """How long a caption shows in a subtitle file: its chunk's length."""
        return self.settings.chunk_seconds

    def check_question(self, text: str) -> None:
        """InputError for a question the stream's model would refuse (empty, too long), before it is queued."""
        with contextlib.suppress(KeyError):  # not streaming yet (or any more): ask says which
            self.run.engine.lanes[self.run.stream_id].stream.question_ids(text)

    def ask(self, text: str, timeout_s: float, max_tokens: int | None, on_delta=None) -> list[Event]:
        """Ask and wait -> [answer] or [error] (LiveRun.ask)."""
        return self.run.ask(text, timeout_s, max_tokens, on_delta)

    def transcript(self) -> list[Event]:
        return self.run.transcript()

    def describe(self) -> dict[str, Any]:
        """What GET /v1/streams/{id} says: state, settings, and the last chunk's metrics."""
        last, c = self.run.last_metrics(), self.settings
        return {
            "id": self.id, "source": self.source, "kind": self.kind, "state": self.run.state,
            "created": self.created,
            "settings": {"fps": c.fps, "chunk_seconds": c.chunk_seconds, "vision_window": c.vision_window_s,
                         "narrate": c.narrate, "narrate_tokens": c.narrate_tokens, "answer_tokens": c.answer_tokens,
                         "compression": c.compression.reuse or c.compression.prune,
                         "retrieval": c.retrieval.enabled, "retrieve_top_k": c.retrieval.top_k},
            "metrics": {k: last[k] for k in ("t", "chunk", "latency_ms", "kv_tokens", "kv_mb", "chunks_dropped",
                                             "narrations_shortened", "gpu_mem_mb", "offload") if k in last},
            "last_event_id": self.log.last_id,
        }


class StreamTable:
    """The API's streams by id (here, or on replicas: cluster.py): found, listed, taken out."""

    def __init__(self):
        self._streams: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, stream_id: str):
        with self._lock:
            stream = self._streams.get(stream_id)
        if stream is None:
            raise NotFound(stream_id)
        return stream

    def all(self) -> list:
        with self._lock:
            return list(self._streams.values())

    def _take_out(self, stream_id: str):
        with self._lock:
            stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise NotFound(stream_id)
        return stream

    def delete(self, stream_id: str) -> None:
        raise NotImplementedError

    def close_all(self) -> None:
        for stream in self.all():
            self.delete(stream.id)

    def list_replicas(self) -> list[dict[str, Any]]:
        """What GET /v1/replicas lists: the engines and the streams each carries."""
        return [{"replica": 0, "capacity": self.capacity, "streams": len(self.all()), "ready": True}]

    def add_replica(self) -> dict[str, Any]:
        raise FieldError("replicas", "this server runs one engine in its own process: start it with --replicas N "
                                     "(Ray Serve) to add replicas while it runs", 409)


class ApiStreams(StreamTable):
    def __init__(self, engine: Engine, server: dict[str, Any], check: SourceCheck, folder: str,
                 metrics: ApiMetrics):
        """server: the server's engine flags by dest, every stream's defaults; folder: where runs keep
        their transcripts."""
        super().__init__()
        self.engine, self.server, self.check, self.folder, self.metrics = engine, server, check, folder, metrics

    def create(self, body: StreamCreate, stream_id: str | None = None) -> ApiStream:
        """stream_id: the id to give it (an ingress names the streams it places; None: a new one)."""
        try:
            spec, kind = self.check(body.source)
        except InputError as err:
            raise FieldError("source", str(err)) from None
        config = self._config(body)
        with self._lock:
            if len(self._streams) >= self.capacity:
                raise FieldError("source", f"the server carries {len(self._streams)} streams, all it holds: delete "
                                           f"one first (DELETE /v1/streams/ID)", 409)
            stream_id, log = stream_id or secrets.token_hex(8), EventLog()

            def on_event(event):
                event.data["stream"] = stream_id  # the API's id, not the engine's
                log.append(event)
                self.metrics.observe(stream_id, event)
            run = LiveRun(self.engine, config, spec, realtime=body.realtime or kind == "camera", name=body.source,
                          parent=self.folder, seconds=body.seconds, on_event=on_event)
            stream = ApiStream(stream_id, body.source, kind, config, run, log)
            self._streams[stream_id] = stream
        return stream

    def _config(self, body: StreamCreate) -> SessionConfig:
        if body.seconds is not None:
            try:
                SECONDS.check(body.seconds, "seconds")
            except InputError as err:
                raise FieldError("seconds", str(err)) from None
        overrides = body.overrides()
        try:
            config = build_config({**self.server, **overrides}, FIELD_NAMES)
        except InputError as err:
            named = next((FIELD_NAMES[k] for k in overrides if str(err).startswith(FIELD_NAMES[k])), "settings")
            raise FieldError(named, str(err)) from None
        need, _ = slab_tokens(self.engine.adapter, config)
        if need > self.engine.slab_capacity:
            raise FieldError(next((FIELD_NAMES[k] for k in overrides), "settings"),
                             f"these settings need a cache of {need:,} tokens per stream; the server's slabs hold "
                             f"{self.engine.slab_capacity:,}: ask for a shorter vision_window or fewer tokens")
        return config

    @property
    def capacity(self) -> int:
        """The most streams held at once."""
        return self.engine.pool.num_slabs

    def delete(self, stream_id: str) -> None:
        stream = self._take_out(stream_id)
        stream.run.close()
        stream.log.close()
        self.metrics.forget(stream_id)
