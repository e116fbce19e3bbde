"""The frames training reads: worlds rendered once, resized as the engine resizes them, kept on the device.

A bank holds every frame (at `fps`) of `seconds` seconds of each training seed's world, (N, 3, h, w)
uint8, plus which merged-token cells of each chunk changed since the chunk before (what pruning keeps).
Rendering runs in threads, one span of one world each; the device resizes.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from livesight.vision.preprocess import fit_size, resize_frames
from livesight.vision.world import World

SPAN_S = 150  # seconds of one world a worker renders per task
CHANGED = 0.02  # mean absolute pixel change (0..1) of a merged cell that counts as changed (the reuse threshold)


def _render(seed: int, start: float, seconds: float, fps: float, source: tuple[int, int]) -> np.ndarray:
    """(seconds * fps, H, W, 3) uint8: world `seed` from `start` on. OpenCV's drawing releases the GIL, so
    threads render in parallel and the device resizes."""
    world = World(seed)
    return np.stack([world.render(start + i / fps, source[1], source[0]) for i in range(round(seconds * fps))])


@dataclass
class FrameBank:
    frames: torch.Tensor  # (num_seeds, seconds * fps, 3, h, w) uint8
    changed: torch.Tensor  # (num_seeds, seconds, cells) bool, on the CPU
    seeds: list[int]
    fps: float

    @property
    def seconds(self) -> int:
        return self.changed.shape[1]

    def chunk_frames(self, pairs: torch.Tensor) -> torch.Tensor:
        """pairs (n, 2) of (seed index, second) -> their frames (n * fps, 3, h, w) in [0, 1], chunk after chunk."""
        per = int(self.fps)
        idx = pairs[:, 1:2] * per + torch.arange(per, device=pairs.device)
        return self.frames[pairs[:, :1].expand(-1, per), idx].flatten(0, 1).float() / 255


def render_bank(seeds: list[int], seconds: int, device: str, max_pixels: int, source: tuple[int, int],
                cell: int = 28, fps: float = 2.0, workers: int = 1) -> FrameBank:
    size = fit_size(*source, max_pixels, cell)
    per = int(fps)
    frames = torch.empty(len(seeds), seconds * per, 3, *size, dtype=torch.uint8, device=device)
    changed = torch.empty(len(seeds), seconds, (size[0] // cell) * (size[1] // cell), dtype=torch.bool)
    tasks = [(i, s, start, min(SPAN_S, seconds - start))
             for i, s in enumerate(seeds) for start in range(0, seconds, SPAN_S)]
    with ThreadPoolExecutor(workers) as pool:
        # each span but the first starts a chunk early: the chunk before its first, to tell what changed
        spans = pool.map(lambda task: _render(task[1], max(task[2] - 1, 0), task[3] + (task[2] > 0), fps, source),
                         tasks)
        for (i, _, start, n), raw in zip(tasks, spans):
            x = resize_frames(torch.from_numpy(raw).to(device), size)  # (T, 3, h, w) in [0, 1]
            pairs = x.view(-1, per, *x.shape[1:]).mean(1)  # each chunk's frames averaged
            if start == 0:  # the stream's first chunk is all new
                pairs = torch.cat([torch.full_like(pairs[:1], -1.0), pairs])
            diff = (pairs[1:] - pairs[:-1]).abs().mean(1)  # (n, h, w)
            moved = torch.nn.functional.avg_pool2d(diff[:, None], cell)[:, 0] > CHANGED
            frames[i, start * per:(start + n) * per] = (x[-n * per:] * 255).round().to(torch.uint8)
            changed[i, start:start + n] = moved.flatten(1).cpu()
    return FrameBank(frames, changed, list(seeds), fps)
