"""Rotary rotations of cached keys and captured queries.

Shifting all three M-RoPE axes of a token by the same delta is one ordinary 1-D rotary rotation
by that delta (every frequency sees the same shift), so a slide moves kept keys with one pass.
Undoing the rotary of a token at 3-D positions needs each frequency's own axis (`rope_angles`).
"""

import torch

from livesight.kernels.dispatch import report


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor, mrope_section: list[int] | None) -> torch.Tensor:
    """positions: (3, n) t/h/w; inv_freq: (D/2,) -> (n, D/2) float64 angles. Frequency j of M-RoPE
    section i reads axis i; without sections (1-D rotary) every frequency reads axis 0."""
    section = mrope_section or [inv_freq.numel()]
    axis = torch.cat([torch.full((size,), i % 3) for i, size in enumerate(section)]).to(positions.device)
    return positions.to(torch.float64)[axis].T * inv_freq.to(positions.device, torch.float64)[None, :]


def rotate_by_angles_reference(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x: (..., n, D); angles: (n, D/2) -> x rotated (rotate-half layout), computed in float32."""
    angles = torch.cat([angles, angles], dim=-1).to(x.device)
    cos, sin = angles.cos().float(), angles.sin().float()
    k = x.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated_half * sin).to(x.dtype)


def rotate_keys_reference(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """keys: (..., n, D) with rotary applied at some positions -> the same keys at positions + delta,
    delta: (n,) or any shape that broadcasts against keys' leading dims and ends in n."""
    angles = delta.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
    return rotate_by_angles_reference(keys, angles)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Dispatcher; the plain-torch path is the only one until a fused kernel lands."""
    report("rotate_keys", "torch")
    return rotate_keys_reference(keys, delta.to(keys.device), inv_freq.to(keys.device))


def unrotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
             mrope_section: list[int] | None) -> torch.Tensor:
    """x: (..., n, D) rotated at `positions` (3, n) -> x before rotary embedding."""
    report("unrotate", "torch")
    return rotate_by_angles_reference(x, -rope_angles(positions, inv_freq, mrope_section))
