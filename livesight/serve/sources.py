"""Which sources an API client may make the server open, checked before anything is opened.

Allowed: rtsp(s):// and http(s):// cameras (beyond loopback only hosts with public addresses, as the
web UI's policy: app/source_policy.py), the synthetic scenes (`synthetic`, `synthetic:SCENE`), and
files under --media-root, named relative to it (no path that resolves outside it, symbolic links
included). Refused: file:// and any other scheme, cameras attached to the server, files without a
--media-root.
"""

import os

from livesight.app.source_policy import SourcePolicy
from livesight.errors import InputError
from livesight.vision.synthetic import LIVE_SCENES as SCENES

MAX_SOURCE_CHARS = 2048


class SourceCheck:
    def __init__(self, policy: SourcePolicy, media_root: str | None):
        self.policy = policy
        self.media_root = os.path.realpath(media_root) if media_root else None

    def __call__(self, text: str) -> tuple[str, str]:
        """The client's source -> (the spec the server opens, its kind: camera | synthetic | file);
        InputError naming what is wrong and what is allowed."""
        text = text.strip()
        if not text:
            raise InputError("empty source: give rtsp://…, http(s)://…, synthetic[:SCENE] or a file under the "
                             "server's --media-root")
        if len(text) > MAX_SOURCE_CHARS:
            raise InputError(f"source is {len(text)} characters long, at most {MAX_SOURCE_CHARS}")
        if text == "synthetic" or text.startswith("synthetic:"):
            scene = text.partition(":")[2] or "shapes"
            if scene not in SCENES:
                raise InputError(f"unknown synthetic scene '{scene[:40]}': use one of {', '.join(SCENES)}")
            return f"synthetic:{scene}", "synthetic"
        if "://" in text:
            scheme = text.partition("://")[0].lower()
            if scheme == "file":
                raise InputError("file:// sources are not served: name a file relative to the server's --media-root")
            if scheme not in ("rtsp", "rtsps", "http", "https"):
                raise InputError(f"unknown source scheme '{scheme[:20]}': use rtsp://, rtsps://, http:// or https://")
            return self.policy.camera(text), "camera"
        if text.isdigit() or text.startswith("webcam"):
            raise InputError("cameras attached to the server are not served over the API: give a camera URL")
        return self._file(text), "file"

    def _file(self, text: str) -> str:
        if self.media_root is None:
            raise InputError("this server serves no files: its operator can start it with --media-root DIR, and "
                             "then name files relative to DIR")
        if "\x00" in text:
            raise InputError("source has a NUL character")
        path = os.path.realpath(os.path.join(self.media_root, text))
        if os.path.commonpath([path, self.media_root]) != self.media_root:
            raise InputError(f"source '{text[:200]}' is outside the server's media folder: name a file inside it, "
                             f"relative to it")
        if not os.path.isfile(path):
            raise InputError(f"source '{text[:200]}': no such file in the server's media folder")
        return path
