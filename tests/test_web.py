"""The web UI: transcript formats, the run registry, LiveRun over the real engine, and the page itself
in headless Chromium (Debian's package, driven by Playwright; skipped with a reason where missing)."""

import html
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request

import pytest

from conftest import chromium, free_port, wait
from livesight.app.live import LiveRun
from livesight.app.registry import RunRegistry
from livesight.app.transcript import to_jsonl, to_srt, to_vtt
from livesight.errors import InputError
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import RetrievalConfig, SessionConfig
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event

ARTIFACTS = os.environ.get("LIVESIGHT_ARTIFACTS", os.path.join(os.path.dirname(__file__), "..", "test-artifacts"))


def test_transcript_formats():
    events = [Event("caption", 61.5, "a ball --> left"), Event("metrics", 62.0, None, {"chunk": 1}),
              Event("caption", 62.0, "still"),
              Event("answer", 62.5, "red", {"question": "what color?", "retrieved": [[1.0, 2.0]]}),
              Event("error", 3700.25, "lost rtsp://cam")]
    jsonl = to_jsonl(events).splitlines()
    assert len(jsonl) == 4 and '"type": "metrics"' not in "".join(jsonl)
    srt = to_srt(events)
    assert srt.startswith("1\n00:01:01,500 --> 00:01:02,000\na ball --> left\n\n2\n00:01:02,000 --> 00:01:02,500\n")
    assert "3\n00:01:02,500 --> 00:01:03,500\nQ: what color?\nA: red\n\n" in srt
    assert "4\n01:01:40,250 --> 01:01:41,250\n[error] lost rtsp://cam\n\n" in srt
    vtt = to_vtt(events)
    assert vtt.startswith("WEBVTT\n\n00:01:01.500 --> 00:01:02.000\na ball -> left\n")  # no cue arrow in a cue
    assert vtt.count(" --> ") == 4


class Dummy:
    """A run as the registry sees it: streaming until it ends or is closed."""

    def __init__(self):
        self.is_streaming, self.closed = True, False

    def close(self):
        self.is_streaming, self.closed = False, True


def test_registry_says_busy_past_its_limit_and_frees_a_slot():
    registry = RunRegistry(max_runs=2)
    a, b = registry.start("a", Dummy), registry.start("b", Dummy)
    with pytest.raises(InputError, match="busy"):
        registry.start("c", Dummy)
    again = registry.start("a", Dummy)  # a tab restarting replaces its own run, no slot needed
    assert a.closed and registry.get("a") is again
    registry.close("b")
    assert b.closed and registry.start("c", Dummy) is registry.get("c")


def test_registry_slots_count_only_streaming_runs_and_the_busy_message_says_how_many():
    registry = RunRegistry(max_runs=2)
    a, b = registry.start("a", Dummy), registry.start("b", Dummy)
    a.is_streaming = False  # ended: it may still answer questions, but holds no slot
    c = registry.start("c", Dummy)
    assert registry.get("c") is c and registry.get("b") is b
    assert a.closed and registry.get("a") is None  # closed for the room: at most 2 runs hold a slab
    assert "room" in registry.note("a")
    with pytest.raises(InputError) as busy:
        registry.start("d", Dummy)
    assert "2 streams are running" in str(busy.value) and "--max-streams is 2" in str(busy.value)
    b.is_streaming = c.is_streaming = False
    registry.start("d", Dummy), registry.start("e", Dummy)  # each takes an ended run's room
    assert b.closed and c.closed and registry.counts() == (2, 2)
    with pytest.raises(InputError, match="2 streams are running"):
        registry.start("f", Dummy)


@pytest.mark.parametrize("seed", range(5))
def test_registry_invariants_under_random_use(seed):
    """Whatever clients do: at most max_runs runs hold a slab, a start is refused only when max_runs
    runs stream, the message counts them, a closed run is never handed out, room is made least
    recently used first, and a run unused past the idle timeout is closed before anyone is refused."""
    import random
    rng, clock = random.Random(seed), [0.0]
    registry = RunRegistry(max_runs=3, idle_timeout_s=50.0, clock=lambda: clock[0])
    runs: dict[str, Dummy] = {}
    used: dict[str, float] = {}  # the model's own record of when each key's run was last used
    order: dict[str, int] = {}  # and in which order (clock ties)
    for step in range(400):
        key, action = f"k{rng.randrange(8)}", rng.choice(["start", "start", "end", "get", "close", "wait"])
        held = {k: r for k, r in runs.items() if not r.closed and k != key and clock[0] - used[k] <= 50.0}
        if action == "start":
            streaming = sum(r.is_streaming for r in held.values())
            ended = sorted((k for k, r in held.items() if not r.is_streaming), key=order.get)
            try:
                runs[key], used[key], order[key] = registry.start(key, Dummy), clock[0], step
            except InputError as err:
                assert streaming == 3 and "3 streams are running" in str(err), (streaming, err)
            else:
                assert streaming < 3
                room = [k for k in ended if runs[k].closed]
                assert room == ended[:len(room)]  # least recently used first
        elif action == "end" and key in runs:
            runs[key].is_streaming = False
        elif action == "get":
            run = registry.get(key)
            assert run is None or not run.closed
            if run is not None:
                used[key], order[key] = clock[0], step
        elif action == "close":
            registry.close(key)
        else:
            clock[0] += rng.choice([1.0, 30.0, 60.0])
        live = [r for r in runs.values() if not r.closed]
        assert registry.counts() == (sum(r.is_streaming for r in live), len(live))
        assert len(live) <= 3


def test_registry_closes_a_run_no_client_used_for_the_idle_timeout():
    clock = [0.0]
    registry = RunRegistry(max_runs=1, idle_timeout_s=60.0, clock=lambda: clock[0])
    a = registry.start("api-client", Dummy)  # started and abandoned: no tab ever refreshes it
    clock[0] = 59.0
    assert registry.reap() == [] and not a.closed
    with pytest.raises(InputError, match="busy"):
        registry.start("b", Dummy)
    clock[0] = 61.0
    b = registry.start("b", Dummy)  # the abandoned run is gone: its slot is free
    assert a.closed and registry.get("api-client") is None and "--idle-timeout" in registry.note("api-client")
    for t in (100.0, 150.0, 200.0):  # a page that keeps refreshing keeps its run
        clock[0] = t
        assert registry.get("b") is b
        assert registry.reap() == [] and not b.closed
    clock[0] = 261.0
    assert registry.reap() == ["b"] and b.closed


SMALL_OFFLOAD = RetrievalConfig(ram_gb=0.05, disk_gb=0.1)  # the engine reserves host memory for every slab's budget


@pytest.fixture
def engines(tiny):
    """make(max_streams, config) -> an Engine over tiny-random, stepping in its own thread (as the
    server's) until the test ends."""
    running = []

    def make(max_streams: int = 2, config: SessionConfig = SessionConfig(retrieval=SMALL_OFFLOAD)) -> Engine:
        engine, stop = Engine(QwenVLAdapter(tiny), config, max_streams), threading.Event()
        thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        thread.start()
        running.append((stop, thread))
        return engine
    yield make
    for stop, thread in running:
        stop.set()
        thread.join()


def test_live_run_streams_answers_after_the_end_and_keeps_thumbnails(engines, clip):
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=3, answer_tokens=4,
                           retrieval=RetrievalConfig(top_k=2))
    run = LiveRun(engines(), config, clip, realtime=False)
    try:
        assert wait(lambda: run.state == "ended"), run.state
        events, history = run.snapshot()
        assert len(history) == 8 and all(e.type != "metrics" for e in events)  # metrics rows: the plots' history
        assert any(e.type == "caption" for e in events)
        (answer,) = run.ask("what happened at the start?")
        assert answer.type == "answer" and answer.data["retrieved"], answer
        a, b = answer.data["retrieved"][0]
        thumb = run.thumbnail(a)
        assert thumb is not None and thumb.shape[1] == 160 and thumb.shape[2] == 3
        assert run.thumbnail(1e6) is None
        t, view = run.latest_frame()  # what the page shows as being watched: the last chunk's first frame
        assert t == 7.0 and view.shape == (180, 320, 3)
    finally:
        run.close()
    assert run.ask("anyone there?")[0].type == "error"


def test_an_endless_run_holds_a_bounded_share_in_memory_and_its_whole_transcript_on_disk(engines, clip, tmp_path,
                                                                                       monkeypatch):
    import livesight.app.live as live
    monkeypatch.setattr(live, "MAX_EVENTS", 3)  # 8 chunks narrated: more lines than the page may hold
    monkeypatch.setattr(live, "MAX_HISTORY", 4)
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=2, answer_tokens=2)
    run = LiveRun(engines(), config, clip, realtime=False, parent=str(tmp_path))
    try:
        assert wait(lambda: run.state == "ended"), run.state
        run.ask("what happened?")
        events, history = run.snapshot()
        whole = run.transcript()
        assert len(events) == 3 and len(history) == 4  # the page's share is bounded
        captions = [e for e in whole if e.type == "caption"]
        assert len(captions) == 8 and [e.t for e in captions] == [float(t) for t in range(8)]  # none lost
        assert whole[-len(events):] == events and whole[-1].type == "answer"
        assert os.listdir(tmp_path) == [run.id]
    finally:
        run.close()
    assert os.listdir(tmp_path) == []  # the run's folder goes with it


@pytest.mark.parametrize("source,message", [("missing.mp4", "missing.mp4"),
                                            ("rtsp://127.0.0.1:9/none", "cannot open rtsp://127.0.0.1:9/none")])
def test_live_run_reports_a_bad_source_as_an_error_event(engines, tmp_path, source, message):
    engine = engines()
    run = LiveRun(engine, SessionConfig(), str(tmp_path / source) if source.endswith(".mp4") else source)
    try:
        assert wait(lambda: run.state == "failed", 30)
        errors = [e.text for e in run.snapshot()[0] if e.type == "error"]
        assert errors and message in errors[0], errors
        assert len(engine.pool.free) == 2  # no slab taken
    finally:
        run.close()


def test_an_ended_live_run_frees_its_slot_answers_until_room_is_needed_then_is_closed(engines, clip):
    engine, config = engines(max_streams=1), SessionConfig(narrate_tokens=2, answer_tokens=3)
    registry = RunRegistry(max_runs=engine.pool.num_slabs)
    first = registry.start("a", lambda: LiveRun(engine, config, clip, realtime=False))
    second = None
    try:
        assert wait(lambda: first.state == "ended"), first.state
        assert registry.counts() == (0, 1) and engine.pool.free == []  # ended: no slot, but it holds the slab
        assert first.ask("what was there?")[0].type == "answer"  # and it still answers
        second = registry.start("b", lambda: LiveRun(engine, config, clip, realtime=True))
        assert registry.get("a") is None and not first._thread.is_alive()  # closed for the room: its slab freed
        assert first.ask("still there?")[0].type == "error"
        assert wait(lambda: second.state == "running" and second.snapshot()[1], 30), second.state  # in that slab
        with pytest.raises(InputError, match=r"1 stream is running.*--max-streams is 1"):
            registry.start("c", lambda: LiveRun(engine, config, clip))
    finally:
        registry.close_all()
    assert second is not None and not second._thread.is_alive() and engine.pool.free == [0]


def recorded_passes(engine: Engine) -> list[set[str]]:
    """From now on, the ids of the streams each of the engine's language-model passes carries."""
    passes, batch = [], engine.batch

    def recorded(items):
        steppers = {id(stepper) for stepper, _ in items}
        passes.append({k for k, lane in list(engine.lanes.items()) if id(lane.stream.stepper) in steppers})
        return batch(items)
    engine.batch = recorded
    return passes


def test_two_runs_stream_at_once_through_one_engine_in_shared_passes(engines, clip):
    engine = engines()
    passes = recorded_passes(engine)
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=3, retrieval=SMALL_OFFLOAD)
    runs = [LiveRun(engine, config, clip, realtime=False) for _ in range(2)]
    try:
        assert wait(lambda: all(run.state == "ended" for run in runs)), [run.state for run in runs]
        ids = {run.stream_id for run in runs}
        assert len(ids) == 2 and any(ids <= carried for carried in passes), "no pass carried both streams"
        for run in runs:
            events, history = run.snapshot()
            assert len(history) == 8 and sum(e.type == "caption" for e in events) == 8
            assert {row["stream"] for row in history} == {run.stream_id}  # each run reads its own stream only
    finally:
        for run in runs:
            run.close()


def test_a_question_in_one_run_is_answered_while_another_streams(engines, clip):
    engine = engines()
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=2, answer_tokens=3, retrieval=SMALL_OFFLOAD)
    done = LiveRun(engine, config, clip, realtime=False)
    live = None
    try:
        assert wait(lambda: done.state == "ended"), done.state
        live = LiveRun(engine, config, clip, realtime=True)  # 8 s at the pace of the clip
        assert wait(lambda: live.snapshot()[1], 30), live.state
        (answer,) = done.ask("what was there?")
        seen = len(live.snapshot()[1])
        assert answer.type == "answer" and answer.data["stream"] == done.stream_id and live.state == "running"
        assert wait(lambda: len(live.snapshot()[1]) > seen, 10)  # and the other went on streaming
    finally:
        done.close()
        if live is not None:
            live.close()


def test_closing_a_run_frees_its_slab_and_its_offload_folder(engines, clip, tmp_path):
    engine = engines()
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=2,
                           retrieval=RetrievalConfig(ram_gb=0.05, disk_gb=0.1, folder=str(tmp_path)))
    run = LiveRun(engine, config, clip, realtime=False)
    try:
        assert wait(lambda: run.state == "ended"), run.state
        assert len(engine.pool.free) == 1  # ended, it holds its slab: it still answers
        assert [name.startswith("livesight-session-") for name in os.listdir(tmp_path)] == [True]
    finally:
        run.close()
    assert len(engine.pool.free) == 2 and os.listdir(tmp_path) == []


def test_a_run_whose_settings_need_more_than_a_slab_is_told_so(engines, clip, tmp_path):
    from types import SimpleNamespace
    engine = engines(config=SessionConfig(vision_window_s=4.0, retrieval=SMALL_OFFLOAD))
    run = LiveRun(engine, SessionConfig(vision_window_s=16.0), clip, realtime=False)
    try:
        assert wait(lambda: run.state == "failed", 30), run.state
        (error,) = [e.text for e in run.snapshot()[0] if e.type == "error"]
        assert "the engine's slabs hold" in error and len(engine.pool.free) == 2, error
    finally:
        run.close()
    handlers = handlers_for(RunRegistry(max_runs=2), tmp_path, engine, {"vision_window": 4.0})
    settings = {s.dest: s.default for s in handlers.settings}
    assert settings["vision_window"] == 4.0  # the page starts at the server's value: a default run fits
    settings["vision_window"] = 16
    status = handlers.start("Video file", None, "", True, list(settings.values()), SimpleNamespace(session_hash="t"))
    assert "Vision window (s): expected a whole number from 1 to 4 (at most this server's --vision-window" in \
        html.unescape(status), status


def test_live_run_names_an_upload_by_its_file_name_not_the_server_path(engines, tmp_path):
    folder = tmp_path / "uploads" / "3f9a0c"
    folder.mkdir(parents=True)
    broken = folder / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    run = LiveRun(engines(), SessionConfig(), str(broken), name="broken.mp4")
    try:
        assert wait(lambda: run.state == "failed", 30)
        (error,) = [e.text for e in run.snapshot()[0] if e.type == "error"]
        assert "broken.mp4" in error and str(tmp_path) not in error and "3f9a0c" not in error, error
    finally:
        run.close()


class FakeRun:
    """What the export and refresh handlers read of a run."""

    def __init__(self):
        import secrets
        self.id, self.config, self.state, self.name = secrets.token_hex(8), SessionConfig(), "ended", "clip.mp4"
        self.is_streaming = False

    def snapshot(self):
        return [Event("answer", 1.0, "chosen by the caller", {"question": "q", "ttft_ms": 1.0})], []

    def transcript(self):
        return self.snapshot()[0]

    def close(self):
        pass


def handlers_for(registry, tmp_path, engine=None, flags=None):
    """The page's handlers on a server started with `flags` (engine flags by dest; default: none given)."""
    from livesight.app.source_policy import SourcePolicy
    from livesight.app.web_handlers import PageHandlers
    from livesight.app.web_inputs import server_values
    return PageHandlers(engine, registry, SourcePolicy.for_host(None, "127.0.0.1"), str(tmp_path / "uploads"),
                        str(tmp_path / "server" / "exports"), server_values(flags or {}, str(tmp_path)))


@pytest.mark.parametrize("session_hash", ["../../escape", "../escape", "/tmp/livesight-escape", "..", ".", "",
                                          "a/../../b", "x" * 5000, "nul\x00byte", "C:\\escape"])
def test_export_writes_only_under_the_run_id_whatever_the_session_hash(tmp_path, session_hash):
    from types import SimpleNamespace
    registry = RunRegistry(max_runs=1)
    handlers = handlers_for(registry, tmp_path)
    request = SimpleNamespace(session_hash=session_hash)
    assert handlers.export("JSONL", request) is None  # no run: nothing to write
    run = registry.start(session_hash, FakeRun)
    for fmt, suffix in (("JSONL", "jsonl"), ("SRT", "srt"), ("WebVTT", "vtt")):
        path = handlers.export(fmt, request)
        assert path == os.path.join(handlers.export_dir, run.id, f"livesight-transcript.{suffix}")
        assert "chosen by the caller" in open(path, encoding="utf-8").read()
    assert handlers.export("../../x", request) is None
    written = [os.path.join(root, f) for root, _, files in os.walk(tmp_path) for f in files]
    assert written and all(w.startswith(os.path.join(handlers.export_dir, run.id) + os.sep) for w in written), written
    assert not os.path.exists("/tmp/livesight-escape")


def test_a_page_is_told_why_its_run_was_closed(tmp_path):
    from types import SimpleNamespace
    clock = [0.0]
    registry = RunRegistry(max_runs=1, idle_timeout_s=10.0, clock=lambda: clock[0])
    handlers = handlers_for(registry, tmp_path)
    registry.start("tab", FakeRun)
    clock[0] = 11.0
    registry.reap()
    status = handlers.refresh(SimpleNamespace(session_hash="tab"))[-1]
    assert "closed" in status and "--idle-timeout" in status
    registry.start("other", FakeRun).is_streaming = True
    with pytest.raises(InputError, match="busy"):  # pressing Start again: the note gives way to what Start says
        registry.start("tab", FakeRun)
    assert not isinstance(handlers.refresh(SimpleNamespace(session_hash="tab"))[-1], str)  # left as Start put it


def test_a_refused_start_replaces_the_old_run_so_its_message_stays(tmp_path):
    from types import SimpleNamespace

    from livesight.app.web_inputs import SETTINGS
    registry = RunRegistry(max_runs=2)
    handlers, tab = handlers_for(registry, tmp_path), SimpleNamespace(session_hash="tab")
    registry.start("tab", FakeRun)
    settings = [s.default for s in SETTINGS]
    settings[1] = "sixteen"
    status = handlers.start("Video file", None, "", True, settings, tab)
    assert "Vision window (s): expected" in status and registry.get("tab") is None
    assert not isinstance(handlers.refresh(tab)[-1], str)  # the refresh leaves the message alone


# --- the page in a browser

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if chromium() is None:
        pytest.skip("no chromium: install Debian's package (apt-get install chromium), as .ci/run does")
    port = free_port()
    # the server's output goes to a file: a pipe nobody reads would block the server once its buffer fills
    log = open(tmp_path_factory.mktemp("web") / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "livesight", "web", "--model", "tiny-random", "--device", "cpu",
                             "--port", str(port), "--max-streams", "3"], stdout=log, stderr=subprocess.STDOUT,
                            text=True)
    url = f"http://127.0.0.1:{port}/"

    def up():
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    try:
        assert wait(up, 120), "the web server did not come up"
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(url)
    page.wait_for_selector("#start")
    return page


def start_file(page, path, vision_window=None):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    page.click("#source-kind >> text=Video file")  # the page opens on the synthetic world
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=20000)
    for attempt in range(3):  # on a loaded machine a fresh page's first upload was seen lost (CI): upload again
        page.set_input_files("#upload input[type=file]", path)
        try:
            page.wait_for_selector(f"#upload >> text={os.path.basename(path)}", timeout=20000)
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    if vision_window is not None:
        page.click("#settings >> text=Settings")
        box = page.locator("#vision-window input[type=number]")
        for _ in range(5):  # the slider's value reaches the server with some delay: Start until it did
            box.fill(str(vision_window))
            box.press("Enter")
            page.click("#status")  # blur: the slider commits its number box on change
            page.wait_for_timeout(500)
            page.click("#start")
            try:  # the run's own status, not the last run's still on the page (a loaded machine is slow to redraw)
                page.wait_for_selector(f"#status >> text=vision window {vision_window} s", timeout=20000)
                return
            except PlaywrightTimeout:
                continue
        raise AssertionError(f"the server never took vision window {vision_window}: {page.inner_text('#status')}")
    page.click("#start")


def ask(page, question):
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")


def test_page_narrates_answers_with_moments_and_shows_metrics(server, browser, tmp_path):
    from livesight.vision.synthetic import write_video
    video = str(tmp_path / "scene.mp4")
    write_video(video, 8.0, 10.0, 320, 180)
    page = open_page(browser, server[1])
    start_file(page, video, vision_window=2)
    page.wait_for_function("document.querySelectorAll('#narration .caption').length >= 3", timeout=60000)
    page.wait_for_selector("#status >> text=ended", timeout=60000)
    assert "Watching · 0:07.0" in page.inner_text("#frame")  # the frame being watched, at its stream time
    ask(page, "What happened at the start?")
    page.wait_for_selector("#chat >> text=first token", timeout=60000)
    assert "drew on" in page.inner_text("#chat")
    page.wait_for_function("document.querySelectorAll('#moments img').length >= 1", timeout=20000)
    assert "0:0" in page.inner_text("#moments")  # captions are the moments' stream times
    metrics = page.inner_text("#metrics")
    for label in ("ingest FPS", "real-time factor", "chunk latency", "time to first token", "tokens per second",
                  "KV tokens", "offload store", "GPU memory"):
        assert label in metrics
    page.click("#export")
    page.wait_for_selector("#export-file >> text=.jsonl", timeout=20000)
    href = page.get_attribute("#export-file a[href]", "href")
    exported = urllib.request.urlopen(urllib.parse.urljoin(server[1], href), timeout=10).read().decode()
    assert '"question": "What happened at the start?"' in exported and '"type": "caption"' in exported
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "web_ui.png"), full_page=True)
    assert server[0].poll() is None
    page.close()


def test_two_browser_sessions_keep_separate_transcripts(server, browser, tmp_path):
    from livesight.vision.synthetic import write_video
    pages = []
    for i, scene in enumerate(("quiet", "busy")):
        video = str(tmp_path / f"{scene}.mp4")
        write_video(video, 4.0, 10.0, 320, 180, scene)
        context = browser.new_context()
        page = context.new_page()
        page.goto(server[1])
        page.wait_for_selector("#start")
        start_file(page, video)
        pages.append(page)
    for i, page in enumerate(pages):
        page.wait_for_selector("#status >> text=ended", timeout=60000)
        ask(page, f"question number {i}?")
        page.wait_for_selector("#chat >> text=first token", timeout=60000)
    for i, page in enumerate(pages):
        page.wait_for_selector(f"#narration >> text=question number {i}?", timeout=10000)
        narration = page.inner_text("#narration")
        assert f"question number {i}?" in narration and f"question number {1 - i}?" not in narration
        assert "quiet.mp4" in page.inner_text("#status") if i == 0 else "busy.mp4" in page.inner_text("#status")
        page.context.close()


def test_bad_upload_and_unreachable_camera_show_errors_and_the_server_stays_up(server, browser, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    page = open_page(browser, server[1])
    start_file(page, str(bad))
    page.wait_for_selector("#status >> text=failed", timeout=30000)
    status = page.inner_text("#status")
    assert "broken.mp4" in status and "livesight-web-" not in status and "/gradio/" not in status, status
    page.click("#source-kind >> text=Camera URL")
    page.fill("#url textarea, #url input", "rtsp://127.0.0.1:9/none")
    page.click("#start")
    page.wait_for_selector("#status >> text=cannot open rtsp://127.0.0.1:9/none", timeout=40000)
    page.fill("#url textarea, #url input", "ftp://camera")
    page.click("#start")
    page.wait_for_selector("#status >> text=give an rtsp:// or http(s):// URL", timeout=10000)
    assert "Traceback" not in page.content()
    assert server[0].poll() is None
    assert urllib.request.urlopen(server[1], timeout=5).status == 200
    page.close()


def test_push_source_yields_the_newest_frame_on_the_clock():
    import numpy as np

    from livesight.vision.sources import Frame, PushSource
    source = PushSource(fps=20.0, seconds=0.5)
    with pytest.raises(InputError, match="no frame from the webcam"):
        source.wait_first(0.05)
    with pytest.raises(InputError, match="RGB uint8"):
        source.put(np.zeros((4, 4), np.uint8))
    for value in (1, 2, 3):  # only the newest is taken
        source.put(np.full((8, 6, 3), value, np.uint8))
    assert source.wait_first(0.1) == (8, 6)
    frames = [item for item in source if isinstance(item, Frame)]
    assert len(frames) == 1 and int(frames[0].image[0, 0, 0]) == 3  # no new frame: nothing more yielded


def test_web_command_rejects_bad_input_with_a_message():
    bad_model = subprocess.run([sys.executable, "-m", "livesight", "web", "--model", "no-such-model"],
                               capture_output=True, text=True, timeout=120)
    assert bad_model.returncode == 2 and "unknown model 'no-such-model'" in bad_model.stderr
    assert "Traceback" not in bad_model.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run([sys.executable, "-m", "livesight", "web", "--port", str(port), "--device", "cpu"],
                              capture_output=True, text=True, timeout=180)
    assert busy.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in busy.stderr, busy.stderr[-2000:]
    assert "Traceback" not in busy.stderr
    # the engine sizes every stream's memory at start-up: 1024 streams at the default settings fit no machine here
    crowded = subprocess.run([sys.executable, "-m", "livesight", "web", "--device", "cpu", "--max-streams", "1024"],
                             capture_output=True, text=True, timeout=180)
    assert crowded.returncode == 2 and "1024 streams" in crowded.stderr and " GB" in crowded.stderr, crowded.stderr
    assert "Traceback" not in crowded.stderr and len(crowded.stderr.strip().splitlines()) == 1, crowded.stderr
