"""Generated video: moving coloured shapes over a gradient and a visible clock."""

import cv2
import numpy as np

from livesight.errors import InputError


def render(t: float, width: int = 640, height: int = 360) -> np.ndarray:
    """The frame at stream time t seconds: (height, width, 3) uint8 RGB. Deterministic in t."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = np.stack([40 + 40 * y + 0 * x, 50 + 30 * x + 0 * y, 90 + 0 * x + 0 * y], axis=-1)
    img = np.ascontiguousarray(base.astype(np.uint8))
    s = min(width, height)
    cx = int(width * (0.5 + 0.35 * np.sin(0.6 * t)))
    cy = int(height * (0.5 + 0.3 * np.cos(0.9 * t)))
    cv2.circle(img, (cx, cy), s // 8, (230, 60, 50), -1)
    rx = int((0.1 + 0.8 * ((0.15 * t) % 1.0)) * width)
    cv2.rectangle(img, (rx - s // 10, height // 5), (rx + s // 10, height // 5 + s // 5), (60, 200, 80), -1)
    angle = 0.8 * t
    tri = np.array([[np.cos(angle + k * 2.094), np.sin(angle + k * 2.094)] for k in range(3)])
    tri = (tri * s / 7 + [width * 0.3, height * 0.7]).astype(np.int32)
    cv2.fillPoly(img, [tri], (240, 210, 40))
    minutes, seconds = divmod(t, 60.0)
    cv2.putText(img, f"{int(minutes):02d}:{seconds:04.1f}", (10, height - 12), cv2.FONT_HERSHEY_SIMPLEX,
                s / 360, (255, 255, 255), max(1, s // 180), cv2.LINE_AA)
    return img


def write_video(path: str, seconds: float, fps: float = 30.0, width: int = 640, height: int = 360) -> int:
    """Write `seconds` of synthetic video to `path` (MPEG-4); returns the number of frames."""
    if seconds <= 0 or fps <= 0:
        raise InputError(f"synthetic video needs positive --seconds and --fps, got {seconds} and {fps}")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise InputError(f"cannot write a video to {path}: check the folder exists and the name ends in .mp4")
    count = int(round(seconds * fps))
    for i in range(count):
        writer.write(cv2.cvtColor(render(i / fps, width, height), cv2.COLOR_RGB2BGR))
    writer.release()
    return count
