"""Re-rotation of cached keys when the window slides.

Shifting all three M-RoPE axes of a token by the same delta is one ordinary 1-D rotary rotation
by that delta (every frequency sees the same shift), so a slide moves kept keys with one pass.
"""

import torch

from livesight.kernels.dispatch import report


def rotation_tables(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """delta: (n,) position shift per token; inv_freq: (D/2,) -> cos, sin: (n, D) in float32."""
    angles = delta.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def rotate_keys_reference(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """keys: (..., n, D) with rotary applied at some positions -> the same keys at positions + delta."""
    cos, sin = rotation_tables(delta.to(keys.device), inv_freq.to(keys.device))
    k = keys.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated_half * sin).to(keys.dtype)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Dispatcher; the plain-torch path is the only one until a fused kernel lands."""
    report("rotate_keys", "torch")
    return rotate_keys_reference(keys, delta, inv_freq)
