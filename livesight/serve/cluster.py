"""Streams spread over engine replicas on Ray Serve, behind this process's API (the ingress).

Each replica is a Ray Serve application `livesight-engine-K` of one replica (replica.py: an engine
with its own streams, one GPU). A new stream goes to the replica with the most free room; every later
call for it goes to that replica, where its cache is. The ingress keeps each stream's event log
itself (polling the replicas), so its clients' event ids and Last-Event-ID survive a move.

When a replica dies (its actor is gone from Ray's control store, its calls fail, or Serve restarted it
empty: its boot id changed), each of its streams is opened again from its source on the replica with
the most room, preferring the others, and told so by a `migrated` event: what it saw before lived in
the dead replica's cache and offload store, so a question after the move is answered from what it has
seen since (the answer says so). A stream no replica can take ends with an error event. No stream is
dropped silently. A replica Serve is still restarting is no candidate.
"""

import logging
import threading
import time
import uuid
from typing import Any

from livesight.serve.bodies import StreamCreate
from livesight.serve.event_log import EventLog
from livesight.serve.metrics import ApiMetrics
from livesight.serve.streams import FieldError, StreamTable
from livesight.streaming.events import Event

POLL_S = 0.2  # how often the ingress gathers the replicas' new events
CALL_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 60.0  # a stream's opening or deletion on its replica
POLL_TIMEOUT_S = 1.0  # a replica's poll in a polling round (a slow one is asked again next round)
RESTARTED_TIMEOUT_S = 2.0  # a restarted replica's first info
SERVE_NAMESPACE = "serve"  # where Ray Serve keeps its replicas' actors
log = logging.getLogger(__name__)


class Replicas:
    """The engine replicas, by index: deployed, called, added."""

    def __init__(self, count: int, replica_args: tuple, gpus: float):
        from ray import serve
        self.serve, self.replica_args, self.gpus = serve, replica_args, gpus
        serve.start(proxy_location="Disabled")  # no HTTP proxy (it would take port 8000): this process is the API
        self.handles: list = []
        for _ in range(count):
            self.add()

    def add(self) -> int:
        """Deploy one more replica -> its index; FieldError (409) when the cluster has no GPU free for it."""
        import ray

        from livesight.serve.replica import EngineReplica
        free = ray.available_resources().get("GPU", 0.0)
        if self.gpus and free < self.gpus:
            raise FieldError("replicas", f"the Ray cluster has {free:g} GPUs free, a replica needs {self.gpus:g}: add "
                                         f"a node with a GPU to the cluster first", 409)
        k = len(self.handles)
        deployment = self.serve.deployment(EngineReplica, name="engine", num_replicas=1, max_ongoing_requests=256,
                                           ray_actor_options={"num_gpus": self.gpus, "num_cpus": 0})
        self.handles.append(self.serve.run(deployment.bind(*self.replica_args), name=f"livesight-engine-{k}",
                                           route_prefix=None))
        return k

    def running(self) -> set[int]:
        """The replicas whose Serve application runs (not one being deployed, restarted or unhealthy)."""
        apps = self.serve.status().applications
        return {k for k in range(len(self.handles)) if getattr(apps.get(f"livesight-engine-{k}"), "status", None)
                == "RUNNING"}

    @staticmethod
    def alive(actor: str | None) -> bool:
        """Whether a replica's actor (by its name) still lives: a lookup in Ray's control store, which
        knows of a dead process at once, where a call to it would wait out its timeout."""
        import ray
        if actor is None:
            return True
        try:
            ray.get_actor(actor, namespace=SERVE_NAMESPACE)
            return True
        except ValueError:
            return False

    def call(self, k: int, method: str, *args, timeout_s: float = CALL_TIMEOUT_S):
        return getattr(self.handles[k], method).remote(*args).result(timeout_s=timeout_s)

    def shutdown(self) -> None:
        for k in range(len(self.handles)):
            try:
                self.call(k, "shutdown")
            except Exception:  # noqa: BLE001 - a dead replica has nothing left to close
                pass
            self.serve.delete(f"livesight-engine-{k}")


def _shown(k: int, info: dict | None) -> dict[str, Any]:
    """What GET /v1/replicas says of replica k (its info; None: not answering)."""
    if info is None:
        return {"replica": k, "ready": False}
    return {"replica": k, **{key: info[key] for key in ("capacity", "streams", "ready")}}


def _raise(result: tuple) -> Any:
    if result[0] == "error":
        _, status, field, message = result
        raise FieldError(field, message, status)
    return result[1]


class RemoteStream:
    """A stream held by a replica, as the API's routes see a local one (streams.ApiStream)."""

    def __init__(self, cluster: "ClusterStreams", body: StreamCreate, replica: int, remote: dict):
        self.cluster, self.body, self.replica, self.remote_id = cluster, body, replica, remote["id"]
        self.id = uuid.uuid4().hex[:16]
        self.log, self.cursor, self.created = EventLog(), 0, time.time()
        self.moved_at: float | None = None  # stream time of the last move, if it moved
        self.offset = 0.0  # added to the replica's stream times: a stream opened again starts from 0 there
        self.t = 0.0  # the latest stream time seen
        self.ended_with: str | None = None  # why no replica holds it any more
        self.caption_s = remote["settings"]["chunk_seconds"]  # its chunk's length, for subtitle files

    @property
    def state(self) -> str:
        return "failed" if self.ended_with else self.describe().get("state", "unknown")

    def describe(self) -> dict[str, Any]:
        local = {"id": self.id, "replica": self.replica, "last_event_id": self.log.last_id, "created": self.created,
                 "source": self.body.source}
        if self.ended_with:
            return {"state": "failed", "error": self.ended_with, **local}
        try:
            remote = _raise(self.cluster.replicas.call(self.replica, "describe", self.remote_id))
        except Exception:  # noqa: BLE001 - a replica failing now: the poller moves the stream
            return {"state": "moving", **local}
        return {**remote, **local}

    def check_question(self, text: str) -> None:
        pass  # the replica checks it, and says which field

    def ask(self, text: str, timeout_s: float, max_tokens: int | None, on_delta=None) -> list[Event]:
        if self.ended_with:
            return [Event("error", self.t, f"this stream ended: {self.ended_with}")]
        try:
            result = self.cluster.replicas.call(self.replica, "ask", self.remote_id, text, timeout_s, max_tokens,
                                                timeout_s=timeout_s + CALL_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001
            return [Event("error", self.t, f"its replica failed while answering ({type(err).__name__}); ask again")]
        events = [Event.from_dict(e) for e in _raise(result)]
        for event in events:
            event.data["stream"] = self.id
            event.t += self.offset
            if self.moved_at is not None and event.type == "answer":
                event.data["history_lost_before"] = self.moved_at  # what it saw before is gone with its replica
        if on_delta is not None and events and events[0].type == "answer" and events[0].text:
            on_delta(events[0].text)  # across replicas the answer comes whole
        return events

    def transcript(self) -> list[Event]:
        """From the events the ingress keeps (the last 4,096): they outlive a move."""
        return [e for _, e in self.log.after(0)[0]]


class ClusterStreams(StreamTable):
    def __init__(self, replicas: Replicas, metrics: ApiMetrics):
        super().__init__()
        self.replicas, self.metrics = replicas, metrics
        self.boots, self.actors = {}, {}  # each replica's incarnation and actor name, as last placed on
        for k in range(len(replicas.handles)):
            self._know(k, self._info(k))
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="livesight-cluster-poll", daemon=True)
        self._poller.start()

    def _know(self, k: int, info: dict) -> None:
        self.boots[k], self.actors[k] = info["boot"], info.get("actor")

    def _alive(self, k: int) -> bool:
        """Whether replica k's actor, as last known, lives."""
        return self.replicas.alive(self.actors.get(k))

    def _info(self, k: int) -> dict:
        return self.replicas.call(k, "info")

    @property
    def capacity(self) -> int:
        return sum(self._free(self._infos()).values()) + len(self._streams)

    def ready(self) -> bool:
        return self._poller.is_alive() and any(info.get("ready") for info in self._infos().values())

    def _infos(self, skip: int | None = None) -> dict[int, dict]:
        """The running replicas' info (but `skip`'s, one just found dead). One whose actor as last known
        died but whose application runs again was restarted: asked with a short timeout, as its
        application's status may lag by a moment."""
        infos = {}
        for k in self.replicas.running() - {skip}:
            try:
                infos[k] = self.replicas.call(k, "info", timeout_s=CALL_TIMEOUT_S if self._alive(k) else
                                              RESTARTED_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a replica down: not a candidate
                continue
        return infos

    @staticmethod
    def _free(infos: dict[int, dict]) -> dict[int, int]:
        return {k: info["capacity"] - info["streams"] for k, info in infos.items()}

    def _place(self, body: StreamCreate, avoid: int | None = None, infos: dict[int, dict] | None = None
               ) -> tuple[int, dict]:
        """Open the stream on the replica with the most room (not `avoid` while another has room). infos:
        the replicas' info to choose by (None: asked now), counted on as streams are placed."""
        infos = self._infos() if infos is None else infos
        free = self._free(infos)
        order = sorted(free, key=lambda k: (k == avoid, -free[k]))
        last_error = FieldError("source", "no replica has room for another stream: delete one first", 409)
        for k in order:
            if free[k] <= 0:
                continue
            remote_id = uuid.uuid4().hex[:16]
            try:  # opening waits for the replica's step (its first prefill): more than a call's usual wait
                result = self.replicas.call(k, "create", body.model_dump(), remote_id, timeout_s=CLOSE_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - it may have opened the stream all the same: delete it
                self._forget_on(k, remote_id)
                last_error = FieldError("source", f"replica {k} did not open the stream ({type(err).__name__})", 503)
                continue
            if result[0] == "ok":
                self._know(k, infos[k])  # a replica Serve restarted: its new streams are its own
                infos[k]["streams"] += 1
                return k, result[1]
            last_error = FieldError(result[2], result[3], result[1])
            if result[1] != 409:
                break  # the body itself is at fault: every replica would say so
        raise last_error

    def _forget_on(self, k: int, remote_id: str) -> None:
        """Delete a stream on replica k without waiting for it (best effort: the replica may be gone)."""
        try:
            self.replicas.handles[k].delete.remote(remote_id)
        except Exception:  # noqa: BLE001 - a dead replica holds nothing
            pass

    def create(self, body: StreamCreate) -> RemoteStream:
        k, remote = self._place(body)
        stream = RemoteStream(self, body, k, remote)
        with self._lock:
            self._streams[stream.id] = stream
        return stream

    def delete(self, stream_id: str) -> None:
        stream = self._take_out(stream_id)
        if not stream.ended_with:
            try:  # closing waits for the replica's step and the stream's threads: more than a call's usual wait
                self.replicas.call(stream.replica, "delete", stream.remote_id, timeout_s=CLOSE_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - a replica gone took the stream with it
                if self._alive(stream.replica):
                    log.warning("stream %s: replica %d did not confirm its deletion (%s): it may still run there",
                                stream_id, stream.replica, type(err).__name__)
        stream.log.close()
        self.metrics.forget(stream_id)

    def close_all(self) -> None:
        self._stop.set()
        super().close_all()

    def list_replicas(self) -> list[dict[str, Any]]:
        infos = self._infos()
        return [_shown(k, infos.get(k)) for k in range(len(self.replicas.handles))]

    def add_replica(self) -> dict[str, Any]:
        """One more engine replica (a GPU must be free in the cluster); new streams go to it first, having
        the most room. Blocks while it loads its model."""
        k = self.replicas.add()
        info = self._info(k)
        self._know(k, info)
        return _shown(k, info)

    # --- the poller: events in, failures found, streams moved
    def _poll_loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._poll_once()
            except Exception:  # noqa: BLE001 - one bad round must not end the polling
                log.exception("polling the replicas failed")

    def _poll_once(self) -> None:
        by_replica: dict[int, list[RemoteStream]] = {}
        for stream in self.all():
            if not stream.ended_with:
                by_replica.setdefault(stream.replica, []).append(stream)
        for k, streams in by_replica.items():
            if not self._alive(k):
                self._move(streams, k, "its replica's process died")
                continue
            try:
                news = self.replicas.call(k, "poll", {s.remote_id: s.cursor for s in streams},
                                          timeout_s=POLL_TIMEOUT_S)
            except Exception as err:  # noqa: BLE001 - the replica is down, or only slow to answer
                if self._alive(k) and isinstance(err, TimeoutError):
                    continue  # slow: the next round asks again
                self._move(streams, k, f"its replica failed ({type(err).__name__})")
                continue
            if news["boot"] != self.boots[k]:  # Serve restarted it: it holds none of them any more
                self._know(k, news)
                self._move(streams, k, "its replica was restarted")
                continue
            for stream in streams:
                events = news["streams"].get(stream.remote_id)
                if events is None:
                    self._move([stream], k, "its replica lost it")
                    continue
                for number, data in events:
                    event = Event.from_dict(data)
                    event.data["stream"] = stream.id
                    event.t += stream.offset
                    stream.t = max(stream.t, event.t)
                    stream.log.append(event)
                    self.metrics.observe(stream.id, event)
                    stream.cursor = number

    def _move(self, streams: list[RemoteStream], failed: int, why: str) -> None:
        infos = self._infos(skip=None if self._alive(failed) else failed)
        for stream in streams:
            try:
                k, remote = self._place(stream.body, avoid=failed, infos=infos)
            except Exception as err:  # noqa: BLE001 - no room anywhere, or the cluster is down
                stream.ended_with = f"{why}, and no replica could take the stream: {err}"
                stream.log.append(Event("error", stream.t, stream.ended_with, {"stream": stream.id}))
                continue
            stream.replica, stream.remote_id, stream.cursor, stream.moved_at = k, remote["id"], 0, stream.t
            stream.offset = stream.t  # its time goes on from where it was
            stream.log.append(Event("migrated", stream.t, f"{why}: the stream was opened again on replica {k} from "
                                    f"its source; what it saw before is no longer in its memory",
                                    {"stream": stream.id, "replica": k}))
