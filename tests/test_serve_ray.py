"""`livesight serve --replicas 2`: a local Ray cluster, two engine replicas of tiny-random on the CPU;
four streams spread over both through the API; one replica's actor killed: its streams move to a
replica that lives, with `migrated` events, and all four keep producing captions. No stream is lost.
A third replica added while they run takes the next new stream."""

import os
import threading
import time

import httpx
import pytest
import uvicorn

from livesight.serve.app import MAX_BODY_BYTES, BodyLimit, build_app
from livesight.serve.metrics import ApiMetrics
from livesight.streaming.options import DEFAULTS

ray = pytest.importorskip("ray")


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (value := check()):
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_four_streams_on_two_replicas_survive_one_dying(tmp_path):
    from ray import serve

    from livesight.serve.cluster import ClusterStreams, Replicas
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    server_run = None
    try:
        os.makedirs(tmp_path / "offload")
        settings = {**DEFAULTS, "vision_window": 4.0, "narrate_tokens": 3, "answer_tokens": 4, "offload_ram_gb": 0.01,
                    "offload_disk_gb": 0.0, "offload_dir": str(tmp_path / "offload")}
        replicas = Replicas(2, ("tiny-random", "cpu", settings, 4, "127.0.0.1", None), 0)
        metrics = ApiMetrics()
        streams = ClusterStreams(replicas, metrics)
        app = BodyLimit(build_app(streams, metrics, None, streams.ready), MAX_BODY_BYTES)
        server_run = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        threading.Thread(target=server_run.run, daemon=True).start()
        wait_for(lambda: server_run.started, 20, "the server")
        client = httpx.Client(base_url=f"http://127.0.0.1:{server_run.servers[0].sockets[0].getsockname()[1]}",
                              timeout=60)
        assert client.get("/readyz").json()["capacity"] == 8
        ids = [client.post("/v1/streams", json={"source": f"synthetic:{scene}", "seconds": 600}).json()["id"]
               for scene in ("shapes", "busy", "quiet", "static")]
        placed = {sid: client.get(f"/v1/streams/{sid}").json()["replica"] for sid in ids}
        assert sorted(placed.values()) == [0, 0, 1, 1], placed  # the most free room first
        listed = {s["id"] for s in client.get("/v1/streams").json()["streams"]}
        assert listed == set(ids)

        def counts():
            return {sid: sum(e.type == "caption" for _, e in streams.get(sid).log.after(0)[0]) for sid in ids}
        wait_for(lambda: all(n >= 2 for n in counts().values()), 60, "captions from every stream")
        victim = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if "livesight-engine-0" in a["name"] and "REPLICA" in a["name"])
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=False)
        before = counts()
        moved = [sid for sid in ids if placed[sid] == 0]

        def migrated():
            return all(any(e.type == "migrated" for _, e in streams.get(sid).log.after(0)[0]) for sid in moved)
        wait_for(migrated, 60, "the dead replica's streams to move")
        wait_for(lambda: all(counts()[sid] >= before[sid] + 2 for sid in ids), 60, "captions after the move")
        assert not any(e.type == "migrated" for sid in ids if sid not in moved for _, e in streams.get(sid).log.after(0)[0])
        assert {s["id"] for s in client.get("/v1/streams").json()["streams"]} == set(ids)  # none lost
        assert all(client.get(f"/v1/streams/{sid}").json()["state"] == "running" for sid in ids)
        answer = client.post(f"/v1/streams/{moved[0]}/questions", json={"text": "what now?", "max_tokens": 2})
        assert answer.status_code == 200 and "history_lost_before" in answer.json(), answer.text
        times = [e.t for _, e in streams.get(moved[0]).log.after(0)[0]]
        assert times == sorted(times), times  # its time goes on across the move
        def vtt():
            text = client.get(f"/v1/streams/{moved[0]}/transcript", params={"format": "vtt"}).text
            return text if "Q: what now?" in text else None  # the answer's event reaches the ingress by polling
        assert "[migrated]" in wait_for(vtt, 10, "the answer in the transcript")
        added = client.post("/v1/replicas")  # while the four run
        assert added.status_code == 201 and added.json() == {"replica": 2, "capacity": 4, "streams": 0, "ready": True}
        # replica 0, restarted by Serve, holds none; 1 holds all four; 2 is new: the next two go to 0 and 2
        wait_for(lambda: all(r["ready"] for r in client.get("/v1/replicas").json()["replicas"]), 60,
                 "the killed replica to be back")
        newest = [client.post("/v1/streams", json={"source": "synthetic", "seconds": 600}).json() for _ in range(2)]
        assert sorted(s["replica"] for s in newest) == [0, 2], "new streams go to the replicas with the most room"
        assert [r["streams"] for r in client.get("/v1/replicas").json()["replicas"]] == [1, 4, 1]
        on_new = next(s["id"] for s in newest if s["replica"] == 2)
        wait_for(lambda: sum(e.type == "caption" for _, e in streams.get(on_new).log.after(0)[0]) >= 1, 60,
                 "a caption from the new replica")
        for sid in ids + [s["id"] for s in newest]:
            assert client.delete(f"/v1/streams/{sid}").status_code == 204
        client.close()
    finally:
        if server_run is not None:
            server_run.should_exit = True
        serve.shutdown()
        ray.shutdown()
