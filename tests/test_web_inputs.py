"""The web server's rules on what a client sends, checked without a server: the --allow-sources
policy, the page's settings, uploads, exports and the `web` flags. A client can send anything; each
test states what must hold for every such value."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from livesight.app.source_policy import KINDS, SourcePolicy, is_loopback_host, is_public, parse_allowed
from livesight.app.web_inputs import GROWS_CACHE, SETTINGS, offered, server_values, settings_config, source_choice, \
    upload_file
from livesight.errors import InputError
from livesight.streaming.options import DEFAULTS, build_config, flag

EXPOSED = "0.0.0.0"


def refused(policy: SourcePolicy, text: str) -> str:
    with pytest.raises(InputError) as err:
        policy.camera(text)
    return str(err.value)


# --- --allow-sources

def test_default_policy_is_everything_on_loopback_and_narrow_beyond_it():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback_host(host) and SourcePolicy.for_host(None, host).allowed == frozenset(KINDS), host
    for host in ("0.0.0.0", "::", "192.168.1.10", "8.8.8.8"):
        assert not is_loopback_host(host)
        assert SourcePolicy.for_host(None, host).allowed == {"upload", "webcam", "urls"}, host
    explicit = parse_allowed("upload")
    assert SourcePolicy.for_host(explicit, "127.0.0.1").allowed == {"upload"}  # the flag wins on loopback too


def test_allow_sources_syntax():
    assert parse_allowed("auto") is None
    assert parse_allowed("all") == frozenset(KINDS) == parse_allowed("upload,all")
    assert parse_allowed(" Upload , webcam ") == {"upload", "webcam"}
    assert parse_allowed("private-urls") == {"urls", "private-urls"}  # any host includes public hosts
    for bad in ("", "uploads", "upload,,nope", "auto,upload"):
        with pytest.raises(ValueError, match="auto, all, or a comma list"):
            parse_allowed(bad)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/internal-admin", "http://localhost/", "rtsp://[::1]:554/x", "http://2130706433/",
    "http://0x7f.1/", "http://0.0.0.0:80/", "http://10.1.2.3/", "http://192.168.0.1/", "http://172.16.0.1/",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://[::ffff:127.0.0.1]/",
    "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/", "http://100.64.0.1/", "http://224.0.0.1/",
    "rtsps://user:secret@127.0.0.1/stream"])
def test_exposed_default_refuses_urls_to_addresses_that_are_not_public(url):
    message = refused(SourcePolicy.for_host(None, EXPOSED), url)
    assert "does not open camera URL" in message and "not a public address" in message
    assert "--allow-sources upload,webcam,urls,private-urls" in message  # the flag that would allow it
    assert SourcePolicy.for_host(parse_allowed("all"), EXPOSED).camera(url) == url  # the operator may allow it


def test_a_name_is_refused_when_any_address_it_resolves_to_is_not_public():
    answers = {"cam.example": ["93.184.216.34", "2606:2800:220:1::1"], "mixed.example": ["93.184.216.34", "10.0.0.7"],
               "inside.example": ["192.168.5.5"]}
    policy = SourcePolicy.for_host(None, EXPOSED, resolve=lambda host, port: answers[host])
    assert policy.camera(" rtsp://cam.example:8554/live ") == "rtsp://cam.example:8554/live"
    assert "mixed.example resolves to 10.0.0.7" in refused(policy, "http://mixed.example/")
    assert "inside.example resolves to 192.168.5.5" in refused(policy, "https://inside.example/")

    def no_dns(host, port):
        raise OSError("no such name")
    assert "does not resolve" in refused(SourcePolicy.for_host(None, EXPOSED, resolve=no_dns), "rtsp://nowhere/")


@pytest.mark.parametrize("text", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://h/", "javascript:alert(1)",
                                  "/etc/passwd", "synthetic", "webcam:0", "http://a b/", "http://h\\@127.0.0.1/",
                                  "http://h\n/", "http://:80/", "http://[zz]/", "http://h:99999/", "http://h_%00/"])
def test_only_plain_rtsp_and_http_urls_reach_a_reader_whatever_the_policy(text):
    message = refused(SourcePolicy.for_host(parse_allowed("all"), "127.0.0.1"), text)
    assert "camera" in message and "Traceback" not in message


def test_refused_kinds_name_the_source_and_the_flag():
    narrow = SourcePolicy.for_host(parse_allowed("urls"), EXPOSED)
    message = refused(narrow, "0")
    assert "camera 0 attached to the server" in message and "--allow-sources urls,camera-index" in message
    for kind, value in (("Video file", None), ("Browser webcam", None)):
        with pytest.raises(InputError, match="--allow-sources") as err:
            source_choice(kind, value, None, 2.0, narrow, "/nowhere")
        assert ("upload" if kind == "Video file" else "webcam") in str(err.value)
    assert SourcePolicy.for_host(None, "127.0.0.1").camera("0") == "webcam:0"


def test_public_addresses():
    for address in ("8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"):
        assert is_public(address), address
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fe80::1%eth0", "::ffff:10.0.0.1", "0.0.0.0", "::", "::127.0.0.1",
                    "255.255.255.255", "ff02::1"):
        assert not is_public(address), address


# --- the page's settings

HOSTILE = ["16", "abc", float("nan"), float("inf"), -float("inf"), 1e300, -1e300, [1], {"a": 1}, None, True, False,
           2 ** 80]


def test_page_defaults_are_the_engine_defaults_where_they_overlap():
    assert [s.default for s in offered(DEFAULTS)] == [s.default for s in SETTINGS]  # a server given no engine flags
    config = settings_config([s.default for s in SETTINGS], DEFAULTS)
    assert config == build_config({s.dest: s.default for s in SETTINGS}) == build_config(DEFAULTS)
    assert config.vision_window_s == 16.0 and config.retrieval.top_k == 8 and config.fps == 2.0


# a server's engine flags (by dest): the defaults, smaller ones, and some beyond the page's own ranges
SERVERS = [{}, {"fps": 4.0, "vision_window": 8.0, "text_window": 128, "narrate_tokens": 5, "retrieve_top_k": 2},
           {"retrieve": False, "vision_window": 120.0, "text_window": 8192, "narrate_tokens": 0, "keep_ratio": 0.01,
            "chunk_seconds": 2.0, "fps": 3.0}]


def highest(setting) -> object:
    """The largest value the page offers for a setting."""
    if setting.control == "checkbox":
        return setting.default if setting.dest in GROWS_CACHE else True
    return max(setting.choices) if setting.control == "choice" else setting.high


@pytest.mark.parametrize("flags", SERVERS)
def test_the_page_offers_each_server_its_flags_and_nothing_its_slabs_cannot_hold(tiny, flags, tmp_path):
    """The engine's slabs are sized from the server's flags: a run left at the page's defaults is the
    server's own config, the largest the page offers needs no more cache, and a value beyond the
    server's is refused naming the flag to raise."""
    from livesight.models.qwen2_5_vl import QwenVLAdapter
    from livesight.streaming.stream import slab_tokens
    adapter, server = QwenVLAdapter(tiny), server_values(flags, str(tmp_path))
    slab, _ = slab_tokens(adapter, build_config(server))
    settings = offered(server)
    assert settings_config([s.default for s in settings], server) == build_config(server)
    largest = settings_config([highest(s) for s in settings], server)
    assert slab_tokens(adapter, largest)[0] <= slab
    for i, setting in enumerate(settings):
        if setting.dest not in GROWS_CACHE:
            continue
        above = {"slider": setting.high + setting.step, "checkbox": True,
                 "choice": max(SETTINGS[i].choices + (setting.default,)) * 2}[setting.control]
        if setting.control == "checkbox" and setting.default:
            continue  # on is the most there is
        values = [s.default for s in settings]
        values[i] = above
        named = f"--(no-)?{flag(setting.dest)[2:]}"  # a switch held off is named as the server gave it
        with pytest.raises(InputError, match=f"^{re.escape(setting.label)}: .*this server.*{named}"):
            settings_config(values, server)


@pytest.mark.parametrize("index", range(len(SETTINGS)), ids=[s.dest for s in SETTINGS])
def test_every_control_turns_any_bad_value_into_a_message_naming_it(index):
    setting = SETTINGS[index]
    bad = [v for v in HOSTILE if not (setting.control == "checkbox" and isinstance(v, bool))]
    if setting.control == "slider":
        bad += [setting.low - setting.step, setting.high + setting.step]
    for value in bad:
        values = [s.default for s in SETTINGS]
        values[index] = value
        with pytest.raises(InputError) as err:
            settings_config(values, DEFAULTS)
        assert str(err.value).startswith(f"{setting.label}: "), (value, str(err.value))
        assert len(str(err.value)) < 300


@pytest.mark.parametrize("flags", SERVERS)
def test_every_value_the_page_offers_is_accepted(flags, tmp_path):
    server = server_values(flags, str(tmp_path))
    settings = offered(server)
    for index, setting in enumerate(settings):
        if setting.control == "checkbox":
            choices = [True, False] if setting.interactive else [setting.default]
        elif setting.control == "choice":
            choices = list(setting.choices)
        else:
            count = int((setting.high - setting.low) / setting.step + 1e-9)
            choices = [round(setting.low + k * setting.step, 10) for k in range(count + 1)] + [setting.high]
        for value in choices:
            values = [s.default for s in settings]
            values[index] = value
            settings_config(values, server)


def test_sessions_spill_into_the_server_folder_within_what_its_disk_holds(tmp_path):
    config = settings_config([s.default for s in SETTINGS], server_values({"offload_disk_gb": 1e6}, str(tmp_path)))
    assert config.retrieval.folder == str(tmp_path)
    assert 0 < config.retrieval.disk_gb <= shutil.disk_usage(tmp_path).total / 2 ** 30


def test_settings_need_every_value():
    with pytest.raises(InputError, match="settings: expected"):
        settings_config([2], DEFAULTS)


# --- uploads

def test_an_upload_must_be_a_video_in_the_upload_folder_and_is_named_by_its_file_name(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "3f").mkdir(parents=True)
    video = uploads / "3f" / "clip.mp4"
    video.write_bytes(b"x")
    path, name = upload_file({"path": str(video), "orig_name": "../../etc/clip.mp4"}, str(uploads))
    assert path == os.path.realpath(video) and name == "clip.mp4"
    assert upload_file({"path": str(video), "orig_name": "C:\\Users\\me\\clip.mp4"}, str(uploads))[1] == "clip.mp4"
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"x")
    (uploads / "3f" / "link.mp4").symlink_to(outside)
    for value in ({"path": str(outside)}, {"path": str(uploads / "3f" / ".." / ".." / "elsewhere.mp4")},
                  {"path": str(uploads / "3f" / "link.mp4")}):
        with pytest.raises(InputError, match="not an upload to this server"):
            upload_file(value, str(uploads))
    for value in (None, {}, {"path": 5}, "clip.mp4", [str(video)]):
        with pytest.raises(InputError):
            upload_file(value, str(uploads))
    text = uploads / "3f" / "notes.txt"
    text.write_text("x")
    with pytest.raises(InputError, match="'notes.txt' is not a video file"):
        upload_file({"path": str(text)}, str(uploads))


@pytest.mark.parametrize("value", [None, 5, ["rtsp://x"], "x" * 5000])
def test_camera_field_and_source_kind_refuse_what_is_not_text(value):
    policy = SourcePolicy.for_host(None, "127.0.0.1")
    with pytest.raises(InputError, match="Camera URL"):
        source_choice("Camera URL", None, value, 2.0, policy, "/nowhere")
    with pytest.raises(InputError, match="Source: expected one of"):
        source_choice(value, None, "0", 2.0, policy, "/nowhere")


# --- the `web` flags

def parse_web(*flags):
    from livesight.app.cli import build_parser
    return build_parser().parse_args(["web", *flags])


@pytest.mark.parametrize("flags", [["--port", "0"], ["--port", "65536"], ["--port", "80.5"], ["--max-streams", "0"],
                                   ["--max-streams", "nan"], ["--max-upload-mb", "-1"], ["--idle-timeout", "0"],
                                   ["--idle-timeout", "inf"], ["--idle-timeout", "nan"], ["--allow-sources", "evrything"]])
def test_web_flags_refuse_bad_values_naming_the_bound(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_web(*flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and flags[0] in err and "Traceback" not in err
    assert "expected" in err or "unknown source kind" in err


def test_web_flags_defaults_and_help():
    args = parse_web()
    assert (args.host, args.port, args.max_streams, args.idle_timeout, args.allow_sources) == (
        "127.0.0.1", 7860, 2, 600.0, None)
    assert parse_web("--idle-timeout", "2.5", "--allow-sources", "all").idle_timeout == 2.5
    from livesight.app import web
    parser = argparse.ArgumentParser()
    web.add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "default" in action.help, action.dest


def test_building_the_parser_imports_neither_gradio_nor_torch():
    code = ("import sys; from livesight.app import web; web.add_arguments(__import__('argparse').ArgumentParser());"
            "heavy = lambda: [m for m in ('gradio', 'torch', 'transformers') if m in sys.modules];"
            "web_only = heavy(); from livesight.app import cli; cli.build_parser();"
            "print(__import__('json').dumps([web_only, heavy()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=os.path.join(os.path.dirname(__file__), ".."))
    web_only, whole_parser = json.loads(out.stdout.strip().splitlines()[-1])
    assert web_only == [] and whole_parser == [], out.stderr[-2000:]


def test_gradio_temp_dir_is_set_for_the_server_and_put_back(monkeypatch):
    from livesight.app.web import gradio_temp_dir
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/before")
    with gradio_temp_dir("/server/folder"):
        assert os.environ["GRADIO_TEMP_DIR"] == "/server/folder"
    assert os.environ["GRADIO_TEMP_DIR"] == "/before"
    monkeypatch.delenv("GRADIO_TEMP_DIR")
    with pytest.raises(RuntimeError), gradio_temp_dir("/server/folder"):
        raise RuntimeError
    assert "GRADIO_TEMP_DIR" not in os.environ

