"""What a web client sends, checked: every value becomes a SessionConfig, a source, or a clear
message naming the page's control. A Gradio client can send any JSON for any control (a string for
a slider, nan, 1e300, a list, a path of its own choosing), so nothing here trusts the page's widgets;
the page's event for Start takes the values raw (preprocess=False) and this module is their only reader.
"""

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from livesight.app.source_policy import SourcePolicy
from livesight.errors import InputError
from livesight.streaming.config import GB, SessionConfig
from livesight.streaming.options import DEFAULTS, Bound, build_config, flag
from livesight.vision.sources import PushSource

VIDEO_TYPES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
SOURCES = ("Synthetic world", "Video file", "Browser webcam", "Camera URL")
WORLD_SPEC, WORLD_SECONDS = "synthetic:world", 3600.0  # the world toy-vlm was trained on: an hour of it
MAX_QUESTION_CHARS = 2000
MAX_URL_CHARS = 2000


@dataclass(frozen=True)
class Setting:
    """One control under Settings: `dest` is the engine flag's dest name (build_config's key); a slider's
    range [low, high] is what this page offers, checked on the server as well. `limit`: why the offer
    stops at the server's value (said in the message that refuses more)."""

    dest: str
    label: str
    control: str  # slider | checkbox | choice
    default: Any
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    choices: tuple = ()
    limit: str = ""

    @property
    def elem_id(self) -> str:
        return self.dest.replace("_", "-")

    @property
    def interactive(self) -> bool:
        """False for a switch the server's flag holds off (turned on, it would need more cache)."""
        return not (self.control == "checkbox" and self.limit and not self.default)

    @property
    def is_whole(self) -> bool:
        return self.control == "choice" or float(self.step).is_integer() and float(self.low).is_integer()


SETTINGS = (
    Setting("fps", "Frames per second", "choice", 2, choices=(2, 4, 6, 8)),
    Setting("vision_window", "Vision window (s)", "slider", 16, 1, 64, 1),
    Setting("text_window", "Text window (tokens)", "slider", 512, 0, 4096, 64),
    Setting("narrate", "Narrate", "checkbox", True),
    Setting("narrate_tokens", "Narration tokens per chunk", "slider", 20, 1, 64, 1),
    Setting("reuse", "Reuse unchanged encoder work", "checkbox", True),
    Setting("prune", "Prune redundant visual tokens", "checkbox", True),
    Setting("keep_ratio", "Keep ratio", "slider", 1.0, 0.05, 1.0, 0.05),
    Setting("retrieve", "Retrieve past moments for questions", "checkbox", True),
    Setting("retrieve_top_k", "Moments retrieved (top-k)", "slider", 8, 0, 32, 1),
)
LABELS = {s.dest: s.label for s in SETTINGS}
# Larger values of these make a stream's cache bigger (more visual tokens per chunk, longer windows, more
# narrated tokens, retrieved blocks). The engine's slabs are sized from the server's flags, so a run may
# choose at most the server's value; the rest (on/off switches, pruning) cost no cache.
GROWS_CACHE = frozenset({"fps", "vision_window", "text_window", "narrate_tokens", "retrieve", "retrieve_top_k"})


def server_values(flags: Mapping[str, Any], offload_dir: str) -> dict[str, Any]:
    """The server's engine flags by dest (its engine's config, and every run's starting point). Streams
    spill into the server's own folder, with a disk budget that disk can hold."""
    values = {dest: flags[dest] for dest in DEFAULTS if dest in flags}
    disk_gb = shutil.disk_usage(offload_dir).total / GB
    return values | {"offload_dir": offload_dir,
                     "offload_disk_gb": min(values.get("offload_disk_gb", DEFAULTS["offload_disk_gb"]), disk_gb)}


def offered(server: Mapping[str, Any]) -> tuple[Setting, ...]:
    """The Settings controls of a server started with the engine flags `server` (by dest): each starts at
    the server's value, so a run left at its defaults is the server's own and fits its engine; one that
    grows the cache goes no higher than the server's value."""
    return tuple(_offered(s, server) for s in SETTINGS)


def _offered(setting: Setting, server: Mapping[str, Any]) -> Setting:
    value = server.get(setting.dest, DEFAULTS[setting.dest])
    grows = setting.dest in GROWS_CACHE
    limit = f"at most this server's {flag(setting.dest)}, which sizes each stream's memory" if grows else ""
    if setting.control == "checkbox":
        return replace(setting, default=value, limit=limit)
    if setting.control == "choice":  # frames per second: those that make whole chunks at the server's chunk length
        value = int(value) if float(value).is_integer() else value
        choices = {c for c in setting.choices if (not grows or c <= value) and _accepted(server, setting.dest, c)}
        return replace(setting, default=value, choices=tuple(sorted(choices | {value})), limit=limit)
    low = min(setting.low, value)
    if setting.dest == "vision_window":  # it holds at least one chunk
        low = max(low, server.get("chunk_seconds", DEFAULTS["chunk_seconds"]))
    return replace(setting, default=value, low=low, high=value if grows else max(setting.high, value), limit=limit)


def _accepted(server: Mapping[str, Any], dest: str, value: Any) -> bool:
    try:
        build_config({**server, dest: value})
    except InputError:
        return False
    return True


def shown(value: Any, limit: int = 60) -> str:
    """A client's value as a message quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def checkbox(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{label}: expected on or off (true or false), got {shown(value)}")
    return value


def switch(setting: Setting, value: Any) -> bool:
    """A checkbox's value; one that grows the cache may be on only where the server's is."""
    if checkbox(value, setting.label) and not setting.interactive:
        raise InputError(f"{setting.label}: expected off, got on (this server runs with "
                         f"{flag(setting.dest).replace('--', '--no-', 1)}, which sizes each stream's memory)")
    return value


def number(setting: Setting, value: Any) -> int | float:
    """A slider's or choice's value: a finite number in the page's own range (whole where the control
    steps by whole numbers). The engine's bounds are build_config's to check; these are the page's offer."""
    limit = f" ({setting.limit})" if setting.limit else ""
    if setting.control == "choice":
        if isinstance(value, bool) or value not in setting.choices:
            raise InputError(f"{setting.label}: expected one of {', '.join(map(str, setting.choices))}{limit}, "
                             f"got {shown(value)}")
        return value
    bound = Bound(int if setting.is_whole else float, setting.low, setting.high, why=setting.limit)
    if isinstance(value, str):  # Bound reads text (it parses flags too); a control sends a JSON number
        raise InputError(f"{setting.label}: expected {bound.describe()}, got {shown(value)}")
    return bound.check(value, setting.label)


def settings_config(values: list[Any], server: Mapping[str, Any]) -> SessionConfig:
    """The Settings controls' values, in SETTINGS order, over the server's engine flags (`server`, by
    dest) -> a validated SessionConfig that fits the server's engine."""
    if len(values) != len(SETTINGS):
        raise InputError(f"settings: expected {len(SETTINGS)} values, got {len(values)}")
    checked = {s.dest: switch(s, v) if s.control == "checkbox" else number(s, v)
               for s, v in zip(offered(server), values)}
    return build_config({**server, **checked}, LABELS)


def upload_file(value: Any, upload_dir: str) -> tuple[str, str]:
    """The File control's raw value (Gradio's FileData, a dict) -> (server path, file name to show).
    Gradio has already refused a path outside its upload folder; this checks it again, so that the
    rule does not rest on one library's version."""
    if not value:
        raise InputError("no video file: upload one (mp4, mkv, mov, avi, webm), then press Start")
    path = value.get("path") if isinstance(value, dict) else None
    if not isinstance(path, str) or not path:
        raise InputError("video file: expected an uploaded file, got something else; upload it again")
    given = value.get("orig_name")
    name = os.path.basename(str(given).replace("\\", "/")) if given else os.path.basename(path)
    name = "".join(c for c in name if c.isprintable())[:120] or "the upload"
    real, root = os.path.realpath(path), os.path.realpath(upload_dir)
    if os.path.commonpath([real, root]) != root:
        raise InputError(f"video file '{name}' is not an upload to this server: upload it through the page")
    if os.path.splitext(path)[1].lower() not in VIDEO_TYPES:
        raise InputError(f"'{name}' is not a video file: upload one of {', '.join(VIDEO_TYPES)}")
    return real, name


def source_choice(kind: Any, upload: Any, url: Any, fps: float, policy: SourcePolicy,
                  upload_dir: str) -> tuple[str | PushSource, str]:
    """The Source controls -> (what LiveRun opens, what the page calls it), once the policy allows it."""
    if kind == "Synthetic world":  # generated here: no file, device or network to allow
        return WORLD_SPEC, "synthetic world"
    if kind == "Video file":
        policy.check_upload()
        return upload_file(upload, upload_dir)
    if kind == "Browser webcam":
        policy.check_webcam()
        return PushSource(fps), "browser webcam"
    if kind == "Camera URL":
        if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
            raise InputError(f"Camera URL: expected a URL of at most {MAX_URL_CHARS} characters, got {shown(url)}")
        spec = policy.camera(url)
        return spec, spec
    raise InputError(f"Source: expected one of {', '.join(SOURCES)}, got {shown(kind)}")


def question_text(value: Any) -> str:
    if not isinstance(value, str):
        raise InputError(f"question: expected text, got {shown(value)}")
    if len(value) > MAX_QUESTION_CHARS:
        raise InputError(f"question: at most {MAX_QUESTION_CHARS} characters, got {len(value)}")
    return value.strip()
