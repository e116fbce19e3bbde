"""`livesight serve`: every route on a real uvicorn server on loopback (tiny-random, CPU), bad requests
answered with a 4xx naming the field while the server stays healthy, SSE resumed with Last-Event-ID,
the OpenAI client, and /metrics as Prometheus parses it."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from livesight.errors import InputError
from livesight.serve.cli import make_app, read_token
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.engine import Engine
from livesight.streaming.options import DEFAULTS, build_config

TOKEN = "s3cret-token-0123456789"
SERVER = {**DEFAULTS, "vision_window": 4.0, "narrate_tokens": 3, "answer_tokens": 8, "offload_ram_gb": 0.01,
          "offload_disk_gb": 0.0}


class Server:
    """The API on a real uvicorn server on a free loopback port, its engine stepping in a thread."""

    def __init__(self, tiny, folder: str, token: str | None = None, max_streams: int = 3, page: bool = False):
        self.engine = Engine(QwenVLAdapter(tiny), build_config(SERVER), max_streams)
        self.stop = threading.Event()
        self.stepping = threading.Thread(target=self.engine.run, args=(self.stop,), daemon=True)
        self.stepping.start()
        os.makedirs(os.path.join(folder, "media", "clips"), exist_ok=True)
        self.media = os.path.join(folder, "media")
        ui = (os.path.join(folder, "gradio"), os.path.join(folder, "exports"), "tiny-random") if page else None
        self.app, self.streams, self.registry = make_app(self.engine, SERVER, token, "127.0.0.1", self.media,
                                                         os.path.join(folder, "runs"), self.stepping.is_alive, ui)
        os.makedirs(os.path.join(folder, "runs"), exist_ok=True)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def close(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.streams.close_all()
        if self.registry is not None:
            self.registry.close_all()
        self.stop.set()
        self.stepping.join(10)


@pytest.fixture(scope="module")
def api(tiny, tmp_path_factory, clip):
    server = Server(tiny, str(tmp_path_factory.mktemp("serve")))
    shutil.copy(clip, os.path.join(server.media, "clips", "clip.mp4"))
    yield server
    server.close()


def wait_state(api, stream_id: str, states=("ended",), timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = api.client.get(f"/v1/streams/{stream_id}").json()
        if got["state"] in states:
            return got
        time.sleep(0.1)
    raise AssertionError(f"stream {stream_id} never reached {states}: {got}")


def sse(api, stream_id: str, count: int, last_id: int | None = None) -> list[tuple[int | None, str, dict]]:
    """The first `count` events (id, type, data) of the stream's SSE, resuming after last_id."""
    headers = {} if last_id is None else {"Last-Event-ID": str(last_id)}
    out, fields = [], {}
    with api.client.stream("GET", f"/v1/streams/{stream_id}/events", headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line == "":
                if fields:
                    out.append((int(fields["id"]) if "id" in fields else None, fields["event"],
                                json.loads(fields["data"])))
                    fields = {}
                if len(out) >= count:
                    return out
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
    return out


def test_stream_lifecycle_questions_transcript_and_events(api):
    made = api.client.post("/v1/streams", json={"source": "synthetic:shapes", "seconds": 4, "realtime": False})
    assert made.status_code == 201, made.text
    stream = made.json()
    sid = stream["id"]
    assert stream["settings"]["narrate_tokens"] == 3 and stream["kind"] == "synthetic"
    assert sid in {s["id"] for s in api.client.get("/v1/streams").json()["streams"]}
    assert api.client.get("/v1/replicas").json() == {"replicas": [{"replica": 0, "capacity": 3, "streams": 1,
                                                                    "ready": True}]}
    done = wait_state(api, sid)
    assert done["metrics"]["chunk"] == 3 and done["metrics"]["chunks_dropped"] == 0
    answer = api.client.post(f"/v1/streams/{sid}/questions", json={"text": "what moved?", "max_tokens": 4})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["question"] == "what moved?" and body["ttft_ms"] > 0 and 1 <= body["tokens"] <= 4
    assert isinstance(body["retrieved"], list)
    with api.client.stream("POST", f"/v1/streams/{sid}/questions", params={"stream": "true"},
                           json={"text": "and then?", "max_tokens": 8}) as streamed:
        kinds = [(line.split(": ", 1)[1]) for line in streamed.iter_lines() if line.startswith(("event", "data"))]
    parts = [(kinds[i], json.loads(kinds[i + 1])) for i in range(0, len(kinds), 2)]
    deltas, final = [d["text"] for k, d in parts if k == "delta"], parts[-1]
    assert final[0] == "answer" and final[1]["tokens"] == 8 and deltas
    assert "".join(deltas) == final[1]["answer"]  # the parts add up to the answer
    events = sse(api, sid, 10)
    assert [e[0] for e in events] == list(range(1, 11))
    assert [e[1] for e in events].count("metrics") == 4 and [e[1] for e in events][-2:] == ["answer", "answer"]
    assert all(e[2]["stream"] == sid for e in events)
    srt = api.client.get(f"/v1/streams/{sid}/transcript", params={"format": "srt"})
    vtt = api.client.get(f"/v1/streams/{sid}/transcript", params={"format": "vtt"}).text
    jsonl = [json.loads(line) for line in api.client.get(f"/v1/streams/{sid}/transcript").text.splitlines()]
    assert srt.status_code == 200 and srt.text.startswith("1\n00:00:00,000 --> ")
    assert vtt.startswith("WEBVTT") and [line.get("question") for line in jsonl[-2:]] == ["what moved?", "and then?"]
    assert api.client.delete(f"/v1/streams/{sid}").status_code == 204
    assert api.client.get(f"/v1/streams/{sid}").status_code == 404


def test_a_client_that_reconnects_with_last_event_id_gets_every_event_once(api):
    sid = api.client.post("/v1/streams", json={"source": "synthetic:busy", "seconds": 5, "realtime": False}).json()["id"]
    first = sse(api, sid, 3)  # then the client drops
    wait_state(api, sid)
    rest = sse(api, sid, 7, last_id=first[-1][0])  # 5 chunks: 10 events in all
    ids = [e[0] for e in first + rest]
    assert ids == list(range(1, 11)), ids
    assert sse(api, sid, 1, last_id=9)[0][0] == 10  # any point of resumption
    api.client.delete(f"/v1/streams/{sid}")


def test_openai_client_asks_a_stream(api):
    openai = pytest.importorskip("openai")
    sid = api.client.post("/v1/streams", json={"source": "synthetic:shapes", "seconds": 3, "realtime": False}).json()["id"]
    wait_state(api, sid)
    client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=f"livesight/{sid}", max_tokens=4,
                                           messages=[{"role": "user", "content": "what is on screen?"}])
    assert reply.choices[0].message.role == "assistant" and isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens <= 4
    streamed = client.chat.completions.create(model="any", extra_body={"stream_id": sid}, stream=True,
                                              messages=[{"role": "user", "content": "and now?"}])
    chunks = list(streamed)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert len(chunks) >= 3 and chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert chunks[0].choices[0].delta.role == "assistant" and isinstance(text, str)
    api.client.delete(f"/v1/streams/{sid}")


def test_metrics_parse_and_move(api):
    def values():
        text = api.client.get("/metrics").text
        return {s.name + json.dumps(s.labels, sort_keys=True): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}
    before = values()
    sid = api.client.post("/v1/streams", json={"source": "synthetic:quiet", "seconds": 3, "realtime": False}).json()["id"]
    wait_state(api, sid)
    api.client.post(f"/v1/streams/{sid}/questions", json={"text": "anything?", "max_tokens": 2})
    after = values()
    assert after["livesight_chunks_total{}"] == before["livesight_chunks_total{}"] + 3
    assert after["livesight_chunk_latency_seconds_count{}"] >= before["livesight_chunk_latency_seconds_count{}"] + 3
    assert after["livesight_question_ttft_seconds_count{}"] == before["livesight_question_ttft_seconds_count{}"] + 1
    assert after['livesight_streams{"state": "ended"}'] >= 1
    api.client.delete(f"/v1/streams/{sid}")


BAD = [  # (method, path, json or raw body, status, field)
    ("get", "/v1/streams/nope", None, 404, "stream_id"),
    ("post", "/v1/replicas", None, 409, "replicas"),  # one engine in-process: nothing to add
    ("delete", "/v1/streams/nope", None, 404, "stream_id"),
    ("post", "/v1/streams", b"{not json", 422, "body"),
    ("post", "/v1/streams", {"source": "ftp://example.com/a.mp4"}, 400, "source"),
    ("post", "/v1/streams", {"source": "file:///etc/passwd"}, 400, "source"),
    ("post", "/v1/streams", {"source": "../../etc/passwd"}, 400, "source"),
    ("post", "/v1/streams", {"source": "/etc/passwd"}, 400, "source"),
    ("post", "/v1/streams", {"source": "clips/missing.mp4"}, 400, "source"),
    ("post", "/v1/streams", {"source": "0"}, 400, "source"),
    ("post", "/v1/streams", {"source": "webcam:0"}, 400, "source"),
    ("post", "/v1/streams", {"source": "synthetic:nebula"}, 400, "source"),
    ("post", "/v1/streams", {"source": ""}, 400, "source"),
    ("post", "/v1/streams", {}, 422, "source"),
    ("post", "/v1/streams", {"source": "synthetic", "fps": -2}, 400, "fps"),
    ("post", "/v1/streams", {"source": "synthetic", "fps": "fast"}, 422, "fps"),
    ("post", "/v1/streams", {"source": "synthetic", "narrate_tokens": -1}, 400, "narrate_tokens"),
    ("post", "/v1/streams", {"source": "synthetic", "seconds": -5}, 400, "seconds"),
    ("post", "/v1/streams", {"source": "synthetic", "vision_window": 3000}, 400, "vision_window"),
    ("post", "/v1/streams", {"source": "synthetic", "colour": "red"}, 422, "colour"),
    ("post", "/v1/streams", b"x" * (70 * 1024), 413, "body"),
    ("post", "/v1/streams", b'{"source": "synthetic", "seconds": NaN}', 400, "seconds"),  # Python's JSON takes NaN
    ("post", "/v1/streams", b'{"source": "synthetic", "fps": Infinity}', 400, "fps"),
    ("post", "/v1/streams", {"source": "synthetic", "narrate_tokens": 10**30}, 400, "narrate_tokens"),
    ("post", "/v1/streams/{sid}/questions", b'{"text": "why?", "max_tokens": NaN}', 422, "max_tokens"),
    ("post", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 400,
     "model"),
    ("post", "/v1/chat/completions", {"model": "livesight/nope", "messages": [{"role": "user", "content": "hi"}]},
     404, "stream_id"),
    ("post", "/v1/chat/completions", {"model": "livesight/x", "messages": []}, 422, "messages"),
    ("get", "/v1/streams/{sid}/transcript?format=xml", None, 422, "format"),
    ("post", "/v1/streams/{sid}/questions", {"text": "   "}, 400, "text"),
    ("post", "/v1/streams/{sid}/questions", {"text": "why? " * 1000}, 422, "text"),
    ("post", "/v1/streams/{sid}/questions", {"text": "why?", "max_tokens": 0}, 422, "max_tokens"),
    ("post", "/v1/streams/{sid}/questions", {"txt": "why?"}, 422, "text"),
    ("post", "/v1/chat/completions", {"model": "livesight/{sid}", "messages": [{"role": "system", "content": "x"}]},
     400, "messages"),
]


def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_stays_up(api):
    os.symlink("/etc", os.path.join(api.media, "escape"))
    BAD.append(("post", "/v1/streams", {"source": "escape/passwd"}, 400, "source"))
    sid = api.client.post("/v1/streams", json={"source": "clips/clip.mp4", "seconds": 2, "realtime": False}).json()["id"]
    wait_state(api, sid)
    for method, path, body, status, field in BAD:
        path = path.replace("{sid}", sid)
        if isinstance(body, bytes):
            body = body.replace(b"{sid}", sid.encode())
            got = api.client.request(method, path, content=body, headers={"content-type": "application/json"})
        else:
            body = json.loads(json.dumps(body).replace("{sid}", sid)) if body is not None else None
            got = api.client.request(method, path, json=body)
        assert got.status_code == status, (method, path, body if not isinstance(body, bytes) else "bytes", got.text)
        error = got.json()["error"]
        assert error["field"] == field and error["message"], (path, error)
        assert api.client.get("/healthz").status_code == 200
    bad_id = api.client.get(f"/v1/streams/{sid}/events", headers={"Last-Event-ID": "99999"})
    assert bad_id.status_code == 400 and bad_id.json()["error"]["field"] == "last-event-id"
    assert api.client.delete(f"/v1/streams/{sid}").status_code == 204
    assert api.client.delete(f"/v1/streams/{sid}").status_code == 404  # a second DELETE
    full = [api.client.post("/v1/streams", json={"source": "synthetic", "seconds": 60}) for _ in range(4)]
    assert [r.status_code for r in full] == [201, 201, 201, 409] and full[3].json()["error"]["field"] == "source"
    for r in full[:3]:
        api.client.delete(f"/v1/streams/{r.json()['id']}")
    assert api.client.get("/readyz").json()["status"] == "ready"  # and a stream still runs to its end
    sid = api.client.post("/v1/streams", json={"source": "synthetic", "seconds": 2, "realtime": False}).json()["id"]
    assert wait_state(api, sid)["metrics"]["chunk"] == 1
    api.client.delete(f"/v1/streams/{sid}")


def test_a_token_guards_every_route_but_healthz(tiny, tmp_path):
    server = Server(tiny, str(tmp_path), token=TOKEN, max_streams=1)
    try:
        bare = httpx.Client(base_url=server.url)
        assert bare.get("/healthz").status_code == 200
        routes = [(method, route.path.replace("{stream_id}", "x")) for route in server.app.app.routes
                  if route.path.startswith("/v1/") or route.path in ("/readyz", "/metrics") for method in route.methods]
        assert ("POST", "/v1/replicas") in routes and len(routes) >= 11
        for method, path in routes:  # every route of the API, whatever it does, asks for the token first
            got = bare.request(method, path, json={})
            assert got.status_code == 401 and got.json()["error"]["field"] == "authorization", (method, path)
            assert got.headers["www-authenticate"] == "Bearer"
        wrong = bare.get("/v1/streams", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401
        assert server.client.get("/v1/streams").status_code == 200
        bare.close()
    finally:
        server.close()


def test_token_file_rules(tmp_path):
    with pytest.raises(InputError, match="--token-file"):
        read_token(None, "0.0.0.0")
    assert read_token(None, "127.0.0.1") is None
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    with pytest.raises(InputError, match="chmod 600"):
        read_token(str(path), "0.0.0.0")
    path.chmod(0o600)
    assert read_token(str(path), "0.0.0.0") == TOKEN
    path.write_text("short")
    with pytest.raises(InputError, match="at least 16"):
        read_token(str(path), "0.0.0.0")
    with pytest.raises(InputError, match="cannot read"):
        read_token(str(tmp_path / "missing"), "0.0.0.0")


def test_cli_refuses_an_exposed_bind_without_a_token(capsys):
    from livesight.app.cli import main
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 2
    assert "--token-file" in capsys.readouterr().err
    assert main(["serve", "--media-root", "/no/such/folder"]) == 2
    assert "--media-root" in capsys.readouterr().err


def httpx_get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


def test_sigterm_ends_the_server_quietly_and_a_busy_port_is_named():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    command = [sys.executable, "-m", "livesight", "serve", "--port", str(port), "--device", "cpu", "--no-ui"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "livesight serve: http://127.0.0.1" in server.stdout.readline()
        deadline = time.monotonic() + 30
        while httpx_get(f"http://127.0.0.1:{port}/healthz") != 200:  # uvicorn binds after the banner
            assert time.monotonic() < deadline and server.poll() is None, "the server did not come up"
            time.sleep(0.1)
        busy = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert busy.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in busy.stderr, busy.stderr[-2000:]
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 128 + signal.SIGTERM and "cannot serve" not in err and "Traceback" not in err, err


def test_an_answer_is_told_in_whole_characters_as_its_tokens_are_read(tiny):
    """Stream._teller: byte tokens read 4 at a time become text that never splits a character, and the
    parts add up to the answer."""
    from livesight.streaming.stream import Stream
    stream = Stream.__new__(Stream)
    stream.adapter = QwenVLAdapter(tiny)
    text = "héllo wörld ✓"
    ids = stream.adapter.tokenizer.encode(text, add_special_tokens=False)  # bytes: é is 2, ✓ is 3
    told = []
    read = stream._teller(told.append)
    for n in range(4, len(ids) + 4, 4):
        read(ids[:n])
    read(ids, final=True)
    assert all("\ufffd" not in part for part in told) and len(told) >= 3
    assert "".join(told) == text


def test_the_web_ui_is_mounted_on_the_same_engine(tiny, tmp_path):
    server = Server(tiny, str(tmp_path), max_streams=2, page=True)
    try:
        assert server.client.get("/ui/").status_code == 200
        assert server.client.get("/ui/config").json()["title"] == "LiveSight"
        assert server.registry.max_runs == server.engine.pool.num_slabs  # the page's runs take the same slabs
        made = server.client.post("/v1/streams", json={"source": "synthetic", "seconds": 2, "realtime": False})
        assert made.status_code == 201
        wait_state(server, made.json()["id"])
    finally:
        server.close()


def test_the_readmes_python_client_runs(api):
    """examples/api_client.py, as the README shows it: two streams narrated, a question answered."""
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "examples/api_client.py", api.url], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert sum(line.startswith("[") for line in lines) >= 4 and lines[-1].startswith("Q: What moved?  A: ")
    shown = {line[1:].split()[0] for line in lines if line.startswith("[")}
    assert len(shown) == 2 and not shown & {s["id"] for s in api.client.get("/v1/streams").json()["streams"]}


def test_a_replica_closes_a_stream_the_ingress_deleted_before_it_opened():
    """The ingress gives up waiting for a slow opening and deletes the id it chose: whichever of the two
    calls the replica runs first, the stream does not stay open there (it would hold a slab forever)."""
    import threading as _threading

    from livesight.serve.replica import EngineReplica
    from livesight.serve.streams import NotFound

    class Table:  # the replica's streams, as ApiStreams keeps them
        def __init__(self):
            self.open = {}

        def create(self, body, stream_id):
            self.open[stream_id] = type("S", (), {"describe": lambda s: {"id": stream_id}})()
            return self.open[stream_id]

        def delete(self, stream_id):
            if self.open.pop(stream_id, None) is None:
                raise NotFound(stream_id)

    replica = EngineReplica.__new__(EngineReplica)
    replica.streams, replica.cancelled, replica._ids = Table(), set(), _threading.Lock()
    body = {"source": "synthetic"}
    assert replica.delete("late")[0] == "error"  # the delete came first
    assert replica.create(body, "late")[:2] == ("error", 503) and replica.streams.open == {}
    assert replica.create(body, "kept") == ("ok", {"id": "kept"})
    assert replica.delete("kept") == ("ok", None) and replica.streams.open == {}
