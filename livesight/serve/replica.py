"""One engine replica of a Ray Serve deployment: an engine (one model, one GPU) with its own streams,
driven by the ingress (cluster.py) through plain calls that return plain data.

Errors come back as ("error", status, field, message) rather than raised: an exception crossing Ray
arrives wrapped, and the ingress must answer the client with the field at fault.
"""

import asyncio
import os
import tempfile
import threading
import uuid
from typing import Any

from livesight.errors import InputError
from livesight.serve.bodies import StreamCreate
from livesight.serve.streams import FieldError

Result = tuple  # ("ok", value) or ("error", status, field, message)


def _error(err: Exception) -> Result:
    if isinstance(err, FieldError):
        return ("error", err.status, err.field, str(err))
    return ("error", 400, "body", str(err))


class EngineReplica:
    def __init__(self, model: str, device: str, server: dict[str, Any], max_streams: int, host: str,
                 media_root: str | None):
        """server: the engine flags by dest (every stream's defaults); host: the ingress's bind, which sets
        the camera URL policy."""
        from livesight.serve.cli import make_streams
        from livesight.serve.metrics import ApiMetrics
        from livesight.models.registry import load_adapter
        from livesight.streaming.engine import Engine
        from livesight.streaming.options import build_config
        self.folder = tempfile.mkdtemp(prefix="livesight-replica-")
        offload = os.path.join(self.folder, "offload")
        os.mkdir(offload)
        server = {**server, "offload_dir": offload}
        self.engine = Engine(load_adapter(model, device), build_config(server), max_streams)
        self.stop = threading.Event()
        self.stepping = threading.Thread(target=self.engine.run, args=(self.stop,), daemon=True)
        self.stepping.start()
        self.streams = make_streams(self.engine, server, host, media_root, self.folder, ApiMetrics())
        self.boot = uuid.uuid4().hex  # this incarnation: a replica Serve restarts has a new one, and no streams
        import ray
        self.actor = ray.get_runtime_context().get_actor_name()  # the ingress looks it up to see it is alive
        # ids deleted before their stream was open (the ingress gave up waiting for it): opened, they close
        self.cancelled: set[str] = set()
        self._ids = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {"boot": self.boot, "actor": self.actor, "capacity": self.streams.capacity,
                "streams": len(self.streams.all()), "ready": self.stepping.is_alive()}

    def create(self, body: dict[str, Any], stream_id: str) -> Result:
        """A stream under the ingress's id: if the ingress stops waiting and deletes it, it does not stay."""
        try:
            stream = self.streams.create(StreamCreate(**body), stream_id)
        except InputError as err:
            return _error(err)
        with self._ids:
            if stream_id in self.cancelled:
                self.cancelled.discard(stream_id)
                self.streams.delete(stream_id)
                return ("error", 503, "source", "the stream was cancelled while it opened")
        return ("ok", stream.describe())

    def describe(self, stream_id: str) -> Result:
        try:
            return ("ok", self.streams.get(stream_id).describe())
        except InputError as err:
            return _error(err)

    def delete(self, stream_id: str) -> Result:
        with self._ids:
            try:
                self.streams.delete(stream_id)
                return ("ok", None)
            except InputError as err:
                self.cancelled.add(stream_id)  # not open yet, or never: if it opens, it closes
                return _error(err)

    def poll(self, cursors: dict[str, int]) -> dict[str, Any]:
        """This incarnation (boot, actor) and, under "streams", each stream's events after its cursor, as
        (id, event dict); None for a stream this replica does not hold."""
        out: dict[str, list | None] = {}
        for stream_id, last in cursors.items():
            try:
                log = self.streams.get(stream_id).log
            except InputError:
                out[stream_id] = None
                continue
            out[stream_id] = [(n, e.to_dict()) for n, e in log.after(last)[0]]
        return {"boot": self.boot, "actor": self.actor, "streams": out}

    async def ask(self, stream_id: str, text: str, timeout_s: float, max_tokens: int | None) -> Result:
        """The answer's events (async: the wait holds a thread, not the replica's event loop)."""
        try:
            stream = self.streams.get(stream_id)
            stream.check_question(text)
        except InputError as err:
            return _error(FieldError("text", str(err)) if not isinstance(err, FieldError) else err)
        events = await asyncio.to_thread(stream.ask, text, timeout_s, max_tokens)
        return ("ok", [e.to_dict() for e in events])

    def shutdown(self) -> None:
        self.streams.close_all()
        self.stop.set()
