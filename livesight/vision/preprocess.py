"""Frames to the vision tower's input: resize to a patch-aligned size, normalize, cut into patches.

The patch layout is Qwen2-VL's: each row holds one (temporal x patch x patch) cube of one channel
set, ordered so that every `merge x merge` block of patches is consecutive.
"""

import math

import torch
import torch.nn.functional as F


def fit_size(height: int, width: int, max_pixels: int, factor: int = 28) -> tuple[int, int]:
    """The largest (h, w), multiples of `factor`, with the source's aspect ratio and h * w <= max_pixels."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    scale = min(1.0, math.sqrt(max_pixels / (height * width)))
    h = max(factor, int(height * scale / factor) * factor)
    w = max(factor, int(width * scale / factor) * factor)
    return h, w


def resize_frames(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """frames: (T, H, W, 3) uint8 -> (T, 3, h, w) float32 in [0, 1]."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
    return x


def to_patches(frames: torch.Tensor, mean, std, patch: int = 14, merge: int = 2,
               temporal: int = 2) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """frames: (T, 3, H, W) float in [0, 1], H and W multiples of patch * merge.

    Returns pixel_values (grid_t * grid_h * grid_w, 3 * temporal * patch * patch) and the patch grid
    (grid_t, grid_h, grid_w). A frame count that is not a multiple of `temporal` repeats the last frame.
    """
    num_frames, channels, height, width = frames.shape
    assert height % (patch * merge) == 0 and width % (patch * merge) == 0, (height, width)
    if num_frames % temporal:
        frames = torch.cat([frames, frames[-1:].expand(temporal - num_frames % temporal, -1, -1, -1)])
    mean_t = torch.tensor(mean, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    x = (frames - mean_t) / std_t
    gt, gh, gw = x.shape[0] // temporal, height // patch, width // patch
    x = x.reshape(gt, temporal, channels, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, channels * temporal * patch * patch), (gt, gh, gw)
