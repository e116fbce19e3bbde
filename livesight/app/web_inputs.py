"""What a web client sends, checked: every value becomes a SessionConfig, a source, or a clear
message naming the page's control. A Gradio client can send any JSON for any control (a string for
a slider, nan, 1e300, a list, a path of its own choosing), so nothing here trusts the page's widgets;
the page's event for Start takes the values raw (preprocess=False) and this module is their only reader.
"""

import os
import shutil
from dataclasses import dataclass
from typing import Any

from livesight.app.source_policy import SourcePolicy
from livesight.errors import InputError
from livesight.streaming.config import GB, SessionConfig
from livesight.streaming.options import DEFAULTS, Bound, build_config
from livesight.vision.sources import PushSource

VIDEO_TYPES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts")
SOURCES = ("Video file", "Browser webcam", "Camera URL")
MAX_QUESTION_CHARS = 2000
MAX_URL_CHARS = 2000


@dataclass(frozen=True)
class Setting:
    """One control under Settings: `dest` is the `livesight run` flag's dest name (build_config's key);
    a slider's range [low, high] is what this page offers, checked on the server as well."""

    dest: str
    label: str
    control: str  # slider | checkbox | choice
    default: Any
    low: float = 0.0
    high: float = 0.0
    step: float = 1.0
    choices: tuple = ()

    @property
    def elem_id(self) -> str:
        return self.dest.replace("_", "-")

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


def shown(value: Any, limit: int = 60) -> str:
    """A client's value as a message quotes it: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def checkbox(value: Any, label: str) -> bool:
    if not isinstance(value, bool):
        raise InputError(f"{label}: expected on or off (true or false), got {shown(value)}")
    return value


def number(setting: Setting, value: Any) -> int | float:
    """A slider's or choice's value: a finite number in the page's own range (whole where the control
    steps by whole numbers). The engine's bounds are build_config's to check; these are the page's offer."""
    if setting.control == "choice":
        if isinstance(value, bool) or value not in setting.choices:
            raise InputError(f"{setting.label}: expected one of {', '.join(map(str, setting.choices))}, "
                             f"got {shown(value)}")
        return value
    bound = Bound(int if setting.is_whole else float, setting.low, setting.high)
    if isinstance(value, str):  # Bound reads text (it parses flags too); a control sends a JSON number
        raise InputError(f"{setting.label}: expected {bound.describe()}, got {shown(value)}")
    return bound.check(value, setting.label)


def settings_config(values: list[Any], offload_dir: str | None = None) -> SessionConfig:
    """The Settings controls' values, in SETTINGS order -> a validated SessionConfig. offload_dir: where
    sessions make their folders for spilled blocks (the server's own folder), with a disk budget the
    disk can hold."""
    if len(values) != len(SETTINGS):
        raise InputError(f"settings: expected {len(SETTINGS)} values, got {len(values)}")
    checked = {s.dest: checkbox(v, s.label) if s.control == "checkbox" else number(s, v)
               for s, v in zip(SETTINGS, values)}
    if offload_dir is not None:
        disk_gb = shutil.disk_usage(offload_dir).total / GB
        checked.update(offload_dir=offload_dir, offload_disk_gb=min(DEFAULTS["offload_disk_gb"], disk_gb))
    return build_config(checked, LABELS)


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
