"""Generated video: coloured shapes over a gradient and a visible clock, in four scenes.

- static: nothing moves and no clock (every frame identical);
- quiet: a mostly static scene, one small ball drifting and the clock ticking;
- shapes: three shapes moving across the frame and the clock (the default);
- busy: the shapes over a scrolling texture with fresh noise, so every region changes every frame;
- world: vision/world.py's world of seed 0 (shapes of five kinds come and go, texts, backgrounds, a clock).
"""

import functools

import cv2
import numpy as np

from livesight.errors import InputError
from livesight.vision.world import World


SCENES = ("static", "quiet", "shapes", "busy")  # the generated scenes above
LIVE_SCENES = SCENES + ("world",)  # and the world of vision/world.py (seed 0), what toy-vlm was trained to watch


def render(t: float, width: int = 640, height: int = 360, scene: str = "shapes") -> np.ndarray:
    """The frame at stream time t seconds: (height, width, 3) uint8 RGB. Deterministic in t."""
    if scene == "world":
        return _world().render(t, width, height)
    if scene not in SCENES:
        raise InputError(f"unknown synthetic scene '{scene}': use one of {', '.join(LIVE_SCENES)}")
    if scene == "busy":
        y, x = _axes(width, height)
        noise = np.random.default_rng(int(round(t * 1000))).standard_normal((height, width, 1), dtype=np.float32)
        wave = 40 * np.sin(40 * x + 25 * y - np.float32(6 * t))
        img = np.clip(_gradient(width, height) + (wave[..., None] + 12 * noise), 0, 255).astype(np.uint8)
    else:
        img = _background(width, height).copy()
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


@functools.cache
def _world() -> World:
    return World(0)


@functools.lru_cache(maxsize=8)
def _axes(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.linspace(0, 1, height, dtype=np.float32)[:, None], np.linspace(0, 1, width, dtype=np.float32)[None, :])


@functools.lru_cache(maxsize=8)
def _gradient(width: int, height: int) -> np.ndarray:
    """The scenes' background, (height, width, 3) float32; read-only (cached)."""
    y, x = _axes(width, height)
    base = np.stack(np.broadcast_arrays(40 + 40 * y, 50 + 30 * x, np.float32(90) + 0 * x), axis=-1)
    base.setflags(write=False)
    return base


@functools.lru_cache(maxsize=8)
def _background(width: int, height: int) -> np.ndarray:
    """The gradient as uint8, computed once per size: a frame starts as a copy of it."""
    img = np.clip(_gradient(width, height), 0, 255).astype(np.uint8)
    img.setflags(write=False)
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
                scene: str = "shapes", frame_at=None) -> int:
    """Write `seconds` of synthetic video to `path` (MPEG-4); returns the number of frames. frame_at(t,
    width, height) -> an RGB frame: another generator's (vision/world.py), instead of `scene`'s."""
    if seconds <= 0 or fps <= 0:
        raise InputError(f"synthetic video needs positive --seconds and --fps, got {seconds} and {fps}")
    if frame_at is None and scene not in SCENES:
        raise InputError(f"unknown synthetic scene '{scene}': use one of {', '.join(SCENES)}")
    frame_at = frame_at or (lambda t, w, h: render(t, w, h, scene))
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write a video to {path}: check the folder exists and the name ends in .mp4")
    count = int(round(seconds * fps))
    for i in range(count):
        writer.write(cv2.cvtColor(frame_at(i / fps, width, height), cv2.COLOR_RGB2BGR))
    writer.release()
    return count
