"""`livesight bench api`: the load generator against a real `livesight serve` (uvicorn on loopback,
tiny-random on the CPU): every chunk of the window accounted for by bench streams' rule, each question
answered, the streams deleted after; a disrupting command's report of each stream's fate; bad input."""

import json
import time
from types import SimpleNamespace

import pytest
from test_serve import Server

from livesight.app.cli import main as cli_main
from livesight.eval.api_load import fates


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    server = Server(tiny, str(tmp_path_factory.mktemp("bench-api")), max_streams=3)
    yield server
    server.close()


def test_the_load_is_measured_by_bench_streams_rule_and_leaves_no_stream(server, tmp_path, capsys):
    out = tmp_path / "api"
    assert cli_main(["bench", "api", "--url", server.url, "--streams", "1,3", "--narrate-tokens", "3",
                     "--seconds", "3", "--warmup-seconds", "2", "--ask-every", "1", "--out", str(out)]) == 0
    result = json.loads((out / "api.json").read_text())
    assert result["finished"] and [r["streams"] for r in result["runs"]] == [1, 3]
    for run in result["runs"]:
        chunks = run["chunks"]
        assert chunks["expected"] == 3 * run["streams"]
        assert chunks["captioned"] + chunks["dropped"] + chunks["missing"] == chunks["expected"]
        assert chunks["missing"] == 0 and run["num_errors"] == 0, run
        assert run["ttft_ms"]["n"] == 2, "a question every second of the window but its last"
        assert run["answer_round_trip_ms"]["p50"] >= run["ttft_ms"]["p50"]
        assert run["narrated_tokens_per_s"] <= 3 * run["streams"] + 1e-9, "at most 3 narrated tokens a chunk"
        assert run["kept_real_time"] == (chunks["dropped"] == 0 and run["latency_ms"]["p99"] <= 2000
                                         and chunks["shortened"] <= 0.01 * chunks["expected"])
    assert "| 3 | 3 |" in (out / "api.md").read_text()
    assert "Headline" in capsys.readouterr().out
    assert server.client.get("/v1/streams").json()["streams"] == [], "the bench deletes what it added"


def test_a_disrupting_command_runs_and_every_stream_is_accounted_for(server, tmp_path):
    out = tmp_path / "disrupt"
    flag = tmp_path / "ran"
    assert cli_main(["bench", "api", "--url", server.url, "--streams", "2", "--narrate-tokens", "0", "--seconds", "3",
                     "--warmup-seconds", "1", "--disrupt", f"touch {flag}", "--disrupt-after", "1",
                     "--out", str(out)]) == 0
    assert flag.exists()
    fate = json.loads((out / "api.json").read_text())["runs"][0]["disrupt"]
    assert fate["exit"] == 0 and fate["streams"] == 2 and fate["moved"] == 0 and fate["lost"] == 0
    assert all(s["captions_after"] >= 1 for s in fate["per_stream"])


def test_fates_time_each_move_from_the_command():
    at = 100.0

    def follower(*events):
        return SimpleNamespace(events=[(now, {"type": kind}) for now, kind in events])
    moved = follower((99.0, "metrics"), (101.5, "migrated"), (101.2, "metrics"), (102.0, "metrics"),
                     (115.0, "metrics"))
    stayed = follower((99.5, "metrics"), (100.5, "metrics"), (115.5, "metrics"))
    silent = follower((99.0, "metrics"), (100.2, "error"))
    out = fates([moved, stayed, silent], {"at": at, "command": "c", "exit": 0, "output": ""}, end=116.0)
    first, second, third = out["per_stream"]
    assert first["moved"] and first["to_migrated_s"] == 1.5 and first["to_first_caption_s"] == 2.0, \
        "the first caption after the move, not one from before it"
    assert not second["moved"] and not second["lost"] and second["captions_after"] == 2
    assert third["lost"] and third["errors"] == [""]
    assert out["moved"] == 1 and out["lost"] == 1 and out["to_first_caption_s"]["p50"] == 2.0


@pytest.mark.parametrize("extra,message", [
    (["--url", "http://127.0.0.1:9"], "--url http://127.0.0.1:9: no server answers"),
    (["--streams", "4"], "--streams up to 4: the server has room for 3 more streams"),
    (["--in-process", "/nonexistent.json"], "--in-process /nonexistent.json: not a bench streams result"),
])
def test_bad_input_is_named(server, tmp_path, capsys, extra, message):
    args = ["bench", "api", "--url", server.url, "--streams", "1", "--out", str(tmp_path / "x"), *extra]
    start = time.monotonic()
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - start < 30


def test_a_server_that_stops_answering_is_named_not_a_traceback(tmp_path, capsys):
    """A server that answers /readyz and then is gone: the first POST fails to connect."""
    import socket
    import threading
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer_once():
        connection, _ = listener.accept()
        connection.recv(65536)
        body = json.dumps({"status": "ready", "streams": 0, "capacity": 4}).encode()
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        connection.close()
        listener.close()
    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    code = cli_main(["bench", "api", "--url", f"http://127.0.0.1:{port}", "--streams", "1", "--out",
                     str(tmp_path / "x")])
    thread.join(5)
    err = capsys.readouterr().err
    assert code == 2 and f"the server at http://127.0.0.1:{port} stopped answering" in err, err
    assert "Traceback" not in err
