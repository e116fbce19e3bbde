"""`livesight web` as a hostile client meets it: one server started the way an exposed one is
(--allow-sources upload,webcam,urls, --max-streams 1), with TMPDIR and its working folder fresh and
every DNS lookup it makes recorded, then driven through Gradio's HTTP API (no browser) and, for
the webcam, through Chromium's fake camera. What must hold: nothing is looked up beyond loopback
at start, no client string becomes a path, no refused source is ever connected to, every bad value
is a message, the server stays up, a closed tab frees its stream, and nothing is left after SIGTERM.
"""

import html
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

from conftest import chromium, free_port, wait
from livesight.app.web_inputs import SETTINGS

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# test-only: the server runs through this, so every name it resolves is written down
WRAPPER = """
import json, os, socket, sys
_log = open(os.environ["LIVESIGHT_TEST_DNS_LOG"], "a", buffering=1)
def _recorded(real):
    def lookup(host, *args, **kwargs):
        _log.write(json.dumps(host if isinstance(host, str) else repr(host)) + "\\n")
        return real(host, *args, **kwargs)
    return lookup
for _name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
    setattr(socket, _name, _recorded(getattr(socket, _name)))
from livesight.app.cli import main
sys.exit(main(sys.argv[1:]))
"""
CLIP_SECONDS = 2.0


class Canary:
    """A TCP listener on loopback that records every connection: an 'internal' service the server must
    never be made to reach."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    tmpdir: str
    cwd: str
    dns_log: str
    canary: Canary
    log: str
    clip: str = ""
    uploads: dict = field(default_factory=dict)

    def folder(self) -> str:
        (name,) = [n for n in os.listdir(self.tmpdir) if n.startswith("livesight-web-")]
        return os.path.join(self.tmpdir, name)

    def lookups(self) -> list[str]:
        with open(self.dns_log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def assert_up(self):
        assert self.proc.poll() is None, open(self.log).read()[-3000:]
        assert urllib.request.urlopen(self.url, timeout=10).status == 200

    def call(self, name: str, data: list, session_hash: str, timeout_s: float = 60.0):
        """Gradio's HTTP API: -> ('complete', outputs) or ('error', message)."""
        body = json.dumps({"data": data, "session_hash": session_hash}).encode()  # NaN goes as NaN
        request = urllib.request.Request(f"{self.url}gradio_api/call/{name}", body,
                                         {"Content-Type": "application/json"})
        event_id = json.load(urllib.request.urlopen(request, timeout=timeout_s))["event_id"]
        with urllib.request.urlopen(f"{self.url}gradio_api/call/{name}/{event_id}", timeout=timeout_s) as r:
            text = r.read().decode()
        kind = [line[7:] for line in text.splitlines() if line.startswith("event: ")][-1]
        payload = [line[6:] for line in text.splitlines() if line.startswith("data: ")][-1]
        return kind, json.loads(payload)

    def upload(self, filename: str, content: bytes) -> str:
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"{self.url}gradio_api/upload", body,
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        (path,) = json.load(urllib.request.urlopen(request, timeout=30))
        return path

    def start(self, session_hash: str, kind="Video file", upload=None, url="", settings=None, realtime=False):
        """-> ('complete', the status the page shows, unescaped) or ('error', Gradio's message)."""
        values = [s.default for s in SETTINGS] if settings is None else settings
        kind, outputs = self.call("start", [kind, upload, url, realtime, *values], session_hash)
        return kind, html.unescape(outputs[0]) if kind == "complete" else outputs

    def status(self, session_hash: str) -> str:
        kind, outputs = self.call("refresh", [], session_hash)
        assert kind == "complete", outputs
        return html.unescape(outputs[-1]) if isinstance(outputs[-1], str) else ""


def file_data(path: str, name: str) -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("exposed")
    tmpdir, cwd = root / "tmp", root / "cwd"
    tmpdir.mkdir()
    cwd.mkdir()
    (root / "wrapper.py").write_text(WRAPPER)
    canary, port, log = Canary(), free_port(), str(root / "server.log")
    # the server's own settings must keep it quiet and in its folder, not the test's environment
    env = {k: v for k, v in os.environ.items()
           if k not in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
    env.update(TMPDIR=str(tmpdir), LIVESIGHT_TEST_DNS_LOG=str(root / "dns.log"),
               PYTHONPATH=os.pathsep.join([REPO, env.get("PYTHONPATH", "")]))
    open(root / "dns.log", "w").close()
    with open(log, "w") as out:  # a file, not a pipe nobody reads
        proc = subprocess.Popen([sys.executable, str(root / "wrapper.py"), "web", "--model", "tiny-random", "--device",
                                 "cpu", "--port", str(port), "--max-streams", "1", "--allow-sources",
                                 "upload,webcam,urls", "--idle-timeout", "300"],
                                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}/", str(tmpdir), str(cwd), str(root / "dns.log"), canary, log)

    def up():
        try:
            return urllib.request.urlopen(server.url, timeout=2).status == 200
        except OSError:
            return proc.poll() is not None

    try:
        assert wait(up, 180, 0.3) and proc.poll() is None, open(log).read()[-3000:]
        from livesight.vision.synthetic import write_video
        server.clip = str(root / "clip.mp4")
        write_video(server.clip, CLIP_SECONDS, 10.0, 160, 96)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        canary.close()


@pytest.fixture(scope="module")
def browser(server):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if chromium() is None:
        pytest.skip("no chromium: install Debian's package (apt-get install chromium), as .ci/run does")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


def is_loopback_lookup(host: str) -> bool:
    import ipaddress
    if host in ("", "None", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def test_no_lookup_beyond_loopback_at_start_or_on_a_page_load(server, browser):
    page = browser.new_context().new_page()
    page.goto(server.url)
    page.wait_for_selector("#start")
    page.wait_for_timeout(2000)  # a few of the page's refresh ticks
    page.context.close()
    outbound = [host for host in server.lookups() if not is_loopback_lookup(host)]
    assert outbound == [], outbound
    assert json.load(urllib.request.urlopen(f"{server.url}config", timeout=10))["analytics_enabled"] is False


def open_webcam_page(browser, url):
    context = browser.new_context(permissions=["camera"])
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#start")
    page.click("#source-kind >> text=Browser webcam")
    page.click("#webcam >> text=Click to Access Webcam")
    page.click("#webcam button[aria-label='capture photo']")  # start streaming frames
    return page


def test_browser_webcam_narrates_answers_and_a_closed_tab_frees_its_stream(server, browser):
    first = open_webcam_page(browser, server.url)
    first.click("#start")
    first.wait_for_function("document.querySelectorAll('#narration .caption').length >= 2", timeout=60000)
    assert "running · browser webcam" in first.inner_text("#status")
    first.fill("#question textarea", "What is on the screen?")
    first.press("#question textarea", "Enter")
    first.wait_for_selector("#chat >> text=first token", timeout=60000)

    second = open_webcam_page(browser, server.url)
    second.click("#start")
    second.wait_for_selector("#status >> text=busy", timeout=20000)
    assert "1 stream is running" in second.inner_text("#status")  # the one that is, under --max-streams 1
    first.context.close()  # the tab goes: its run must close and its slot come free

    def started():
        second.click("#start")
        second.wait_for_timeout(500)
        return "busy" not in second.inner_text("#status")
    assert wait(started, 20, 0), second.inner_text("#status")
    second.wait_for_function("document.querySelectorAll('#narration .caption').length >= 1", timeout=60000)
    assert "running · browser webcam" in second.inner_text("#status")
    second.context.close()
    server.assert_up()


def run_to_its_end(server: Server, session_hash: str, name: str) -> None:
    """Start a run of the upload `name` and wait for its end. The slot may still be held for a moment
    by a tab an earlier test closed (Gradio notices a closed tab on its own schedule): busy is retried."""
    said = []

    def started() -> bool:
        kind, status = server.start(session_hash, upload=file_data(server.uploads[name], name))
        said.append((kind, status))
        assert kind == "complete" and ("starting" in status or "busy" in status), status
        return "starting" in status
    assert wait(started, 30, 0.5), said[-1]
    assert wait(lambda: "ended" in server.status(session_hash), 60, 0.3), server.status(session_hash)


def written_files(top: str) -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(top) for f in files]


def test_hostile_session_hashes_never_name_a_path(server):
    tag = secrets.token_hex(4)
    root = os.path.dirname(server.tmpdir)
    hashes = [f"../../escape-{tag}", f"../escape-{tag}", f"{root}/abs-escape-{tag}", f"/tmp/livesight-escape-{tag}",
              "../" * 12 + f"tmp/deep-escape-{tag}", "x" * 3000]
    server.uploads["clip.mp4"] = server.upload("clip.mp4", open(server.clip, "rb").read())
    exports = []
    for session_hash in hashes:
        run_to_its_end(server, session_hash, "clip.mp4")
        kind, _ = server.call("ask", ["<script>written by the caller</script>", []], session_hash)
        assert kind == "complete"
        exports.append(server.call("export", ["JSONL"], session_hash))
    folder = server.folder()
    targets = {os.path.normpath(os.path.join(base, h)) for h in hashes
               for base in (folder, os.path.join(folder, "exports"), server.tmpdir, os.path.join(server.tmpdir, "gradio"))}
    assert [t for t in targets if os.path.exists(t)] == []
    assert [p for p, _, _ in os.walk(root) if "escape-" + tag in p] == []
    outside = [p for p in written_files(server.tmpdir) if not p.startswith(server.folder() + os.sep)]
    assert outside == [] and os.listdir(server.cwd) == [], (outside, os.listdir(server.cwd))
    # a run is still held (it answers questions): its session's folder is in the server's folder too
    assert [n for n in os.listdir(server.tmpdir) if not n.startswith("torchinductor_")] == [
        os.path.basename(folder)]
    assert any(n.startswith("livesight-session-") for n in os.listdir(os.path.join(folder, "offload")))
    for kind, outputs in exports:  # and each session got its own transcript, served from the server's folder
        assert kind == "complete" and outputs[0] is not None, outputs
        assert os.path.realpath(outputs[0]["path"]).startswith(server.folder() + os.sep), outputs
        assert "written by the caller" in open(outputs[0]["path"], encoding="utf-8").read()
    server.assert_up()


def test_hostile_camera_urls_are_refused_and_never_reached(server):
    port = server.canary.port
    urls = [f"http://127.0.0.1:{port}/internal-admin", f"http://localhost:{port}/", f"rtsp://127.0.0.1:{port}/x",
            f"http://2130706433:{port}/", f"http://[::ffff:127.0.0.1]:{port}/", "http://169.254.169.254/latest/",
            "http://10.0.0.1/", "file:///etc/passwd", f"ftp://127.0.0.1:{port}/", "0", "x" * 5000, 5, ["http://x"]]
    answers = [(url, *server.start(f"camera-attacker-{i}", kind="Camera URL", url=url)) for i, url in enumerate(urls)]
    wait(lambda: server.canary.connections > 0, 3.0)  # a reader the server started would connect by now
    assert server.canary.connections == 0
    for url, kind, status in answers:
        assert kind == "complete" and "class='error'" in status, (url, status)
        assert any(s in status for s in ("does not open", "give an rtsp", "Camera URL: expected")), status
    assert "allows only upload,webcam,urls" in server.start("c", kind="Camera URL", url="0")[1]
    server.assert_up()


def test_hostile_uploads_are_refused_or_named_by_their_file_name(server):
    text = server.upload("notes.txt", b"not a video")
    kind, status = server.start("uploader", upload=file_data(text, "notes.txt"))
    assert kind == "complete" and "'notes.txt' is not a video file" in status, status
    tag = secrets.token_hex(4)
    hostile = server.upload(f"../../escape-up-{tag}.mp4", b"this is not a video" * 100)
    assert os.path.realpath(hostile).startswith(server.folder() + os.sep), hostile
    server.start("uploader", upload=file_data(hostile, f"../../escape-up-{tag}.mp4"))
    assert wait(lambda: "failed" in server.status("uploader"), 30, 0.3)
    status = server.status("uploader")
    assert f"cannot decode escape-up-{tag}.mp4" in status and server.tmpdir not in status, status
    for path in ("/etc/passwd", server.clip):  # not uploads: Gradio refuses them before the page sees them
        kind, _ = server.start("uploader", upload=file_data(path, "x.mp4"))
        assert kind == "error"
    assert [p for p in written_files(os.path.dirname(server.tmpdir)) if f"escape-up-{tag}" in p
            and not p.startswith(server.folder())] == []
    server.assert_up()


@pytest.mark.parametrize("index", range(len(SETTINGS)), ids=[s.dest for s in SETTINGS])
def test_hostile_setting_values_become_messages(server, index):
    setting = SETTINGS[index]
    for value in ("12", float("nan"), 1e300, [1], {"v": 1}, None, (0 if setting.control == "checkbox" else True)):
        values = [s.default for s in SETTINGS]
        values[index] = value
        kind, status = server.start("settings-attacker", settings=values)
        assert kind == "complete" and f"{setting.label}: " in status, (value, status)
    server.assert_up()


def test_sigterm_leaves_nothing_behind(server):
    folder = server.folder()
    assert os.path.isdir(folder)
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    assert not os.path.exists(folder)
    left = [p for p in written_files(server.tmpdir)]
    assert left == [] and os.listdir(server.cwd) == [], left
    # torch makes an empty torchinductor_<user> folder when it is imported; nothing else may be there
    assert [n for n in os.listdir(server.tmpdir) if not n.startswith("torchinductor_")] == []
