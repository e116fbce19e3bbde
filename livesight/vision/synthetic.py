"""Generated video: coloured shapes over a gradient and a visible clock, in four scenes.

- static: nothing moves and no clock (every frame identical);
- quiet: a mostly static scene, one small ball drifting and the clock ticking;
- shapes: three shapes moving across the frame and the clock (the default);
- busy: the shapes over a scrolling texture with fresh noise, so every region changes every frame.
"""

import cv2
import numpy as np

from livesight.errors import InputError


SCENES = ("static", "quiet", "shapes", "busy")


def render(t: float, width: int = 640, height: int = 360, scene: str = "shapes") -> np.ndarray:
    """The frame at stream time t seconds: (height, width, 3) uint8 RGB. Deterministic in t."""
    if scene not in SCENES:
        raise InputError(f"unknown synthetic scene '{scene}': use one of {', '.join(SCENES)}")
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = np.stack([40 + 40 * y + 0 * x, 50 + 30 * x + 0 * y, 90 + 0 * x + 0 * y], axis=-1)
    if scene == "busy":
        noise = np.random.default_rng(int(round(t * 1000))).normal(0, 12, (height, width, 1))
        base = base + 40 * np.sin(40 * x + 25 * y - 6 * t)[..., None] + noise
    img = np.ascontiguousarray(np.clip(base, 0, 255).astype(np.uint8))
    s = min(width, height)
    if scene in ("static", "quiet"):
        _still_life(img, s)
        if scene == "static":
            return img
        bx, by = int(width * (0.15 + 0.2 * ((0.05 * t) % 1.0))), int(height * 0.15)
        cv2.circle(img, (bx, by), s // 24, (230, 60, 50), -1)
        _clock(img, t, s)
        return img
    cx = int(width * (0.5 + 0.35 * np.sin(0.6 * t)))
    cy = int(height * (0.5 + 0.3 * np.cos(0.9 * t)))
    cv2.circle(img, (cx, cy), s // 8, (230, 60, 50), -1)
    rx = int((0.1 + 0.8 * ((0.15 * t) % 1.0)) * width)
    cv2.rectangle(img, (rx - s // 10, height // 5), (rx + s // 10, height // 5 + s // 5), (60, 200, 80), -1)
    angle = 0.8 * t
    tri = np.array([[np.cos(angle + k * 2.094), np.sin(angle + k * 2.094)] for k in range(3)])
    tri = (tri * s / 7 + [width * 0.3, height * 0.7]).astype(np.int32)
    cv2.fillPoly(img, [tri], (240, 210, 40))
    _clock(img, t, s)
    return img


def _still_life(img: np.ndarray, s: int) -> None:
    height, width = img.shape[:2]
    cv2.circle(img, (width // 2, height // 2), s // 8, (200, 90, 60), -1)
    cv2.rectangle(img, (width // 8, height // 2), (width // 8 + s // 5, height // 2 + s // 5), (60, 200, 80), -1)


def _clock(img: np.ndarray, t: float, s: int) -> None:
    height = img.shape[0]
    minutes, seconds = divmod(t, 60.0)
    cv2.putText(img, f"{int(minutes):02d}:{seconds:04.1f}", (10, height - 12), cv2.FONT_HERSHEY_SIMPLEX,
                s / 360, (255, 255, 255), max(1, s // 180), cv2.LINE_AA)


def write_video(path: str, seconds: float, fps: float = 30.0, width: int = 640, height: int = 360,
                scene: str = "shapes") -> int:
    """Write `seconds` of synthetic video to `path` (MPEG-4); returns the number of frames."""
    if seconds <= 0 or fps <= 0:
        raise InputError(f"synthetic video needs positive --seconds and --fps, got {seconds} and {fps}")
    if scene not in SCENES:
        raise InputError(f"unknown synthetic scene '{scene}': use one of {', '.join(SCENES)}")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write a video to {path}: check the folder exists and the name ends in .mp4")
    count = int(round(seconds * fps))
    for i in range(count):
        writer.write(cv2.cvtColor(render(i / fps, width, height, scene), cv2.COLOR_RGB2BGR))
    writer.release()
    return count
