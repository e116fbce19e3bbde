"""Frames to 1-second chunks (by default), passing source notices through in order."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from livesight.vision.sources import Frame, SourceEvent


@dataclass
class Chunk:
    """frames: (T, H, W, 3) uint8 RGB; [t_start, t_end) in stream seconds."""

    frames: np.ndarray
    t_start: float
    t_end: float
    index: int


def chunk_frames(items: Iterable[Frame | SourceEvent], frames_per_chunk: int, fps: float) -> Iterator[Chunk | SourceEvent]:
    """Group consecutive frames; a short last chunk repeats its last frame to a full one."""
    frames: list[Frame] = []
    index = 0
    for item in items:
        if isinstance(item, SourceEvent):
            yield item
            continue
        frames.append(item)
        if len(frames) == frames_per_chunk:
            yield _chunk(frames, index, fps)
            frames, index = [], index + 1
    if frames:
        frames += [frames[-1]] * (frames_per_chunk - len(frames))
        yield _chunk(frames, index, fps)


def _chunk(frames: list[Frame], index: int, fps: float) -> Chunk:
    shape = frames[0].image.shape
    images = [f.image if f.image.shape == shape else _fit(f.image, shape) for f in frames]
    return Chunk(np.stack(images), frames[0].t, frames[-1].t + 1.0 / fps, index)


def _fit(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A live source may change resolution on reconnect; keep every chunk one size."""
    import cv2
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
