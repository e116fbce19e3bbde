"""Rotary rotations of cached keys and captured queries.

Shifting all three M-RoPE axes of a token by the same delta is one ordinary 1-D rotary rotation
by that delta (every frequency sees the same shift), so a slide moves kept keys with one pass.
Undoing the rotary of a token at 3-D positions needs each frequency's own axis (`rope_angles`).
Partial rotary (Qwen3.5 rotates the first quarter of each head): a head's first 2 x len(inv_freq) dims
turn, the rest pass through unchanged.
"""

import torch
import triton
import triton.language as tl

from livesight.kernels.dispatch import report
from livesight.kernels.triton_support import check_device, on_gpu

use_reference = False  # switch: route every call through the plain-torch reference


def sectioned_axes(section: list[int]) -> tuple[int, ...]:
    """Qwen2-VL / Qwen2.5-VL M-RoPE: the frequencies in contiguous runs, `section[i]` of them reading
    axis i (t, h, w) -> the axis of each frequency."""
    return tuple(i % 3 for i, size in enumerate(section) for _ in range(size))


def interleaved_axes(section: list[int], num_freqs: int) -> tuple[int, ...]:
    """Qwen3-VL's interleaved M-RoPE: frequency j reads h where j % 3 == 1 and j < 3 * section[1], w
    where j % 3 == 2 and j < 3 * section[2], else t -> the axis of each frequency."""
    return tuple(j % 3 if j % 3 and j < 3 * section[j % 3] else 0 for j in range(num_freqs))


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor, axes: tuple[int, ...] | None) -> torch.Tensor:
    """positions: (3, n) t/h/w; inv_freq: (D/2,); axes: the position axis each frequency reads (None:
    1-D rotary, every frequency reads axis 0) -> (n, D/2) float64 angles."""
    axis = torch.tensor(axes if axes is not None else [0] * inv_freq.numel(), device=positions.device)
    return positions.to(torch.float64)[axis].T * inv_freq.to(positions.device, torch.float64)[None, :]


def rotate_by_angles_reference(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x: (..., n, D); angles: (n, R/2) -> x with its first R dims rotated (rotate-half layout), computed
    in float32; dims R .. D - 1 (partial rotary) unchanged."""
    half = angles.shape[-1]
    angles = torch.cat([angles, angles], dim=-1).to(x.device)
    cos, sin = angles.cos().float(), angles.sin().float()
    k = x[..., :2 * half].float()
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    turned = (k * cos + rotated_half * sin).to(x.dtype)
    return turned if 2 * half == x.shape[-1] else torch.cat([turned, x[..., 2 * half:]], dim=-1)


def rotate_keys_reference(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """keys: (..., n, D) with rotary applied at some positions -> the same keys at positions + delta,
    delta: (n,) or any shape that broadcasts against keys' leading dims and ends in n."""
    angles = delta.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
    return rotate_by_angles_reference(keys, angles)


@triton.jit
def _rotate_kernel(X, Out, Delta, InvFreq, num_rows, HALF: tl.constexpr, ROW: tl.constexpr, BLOCK_R: tl.constexpr,
                   BLOCK_H: tl.constexpr):
    """Rows of x (rotate-half layout; ROW elements apart, the first 2 x HALF rotary) turned by
    delta[row] * inv_freq, angles and their cosines in float64 as in the reference (positions reach 1e4,
    where float32 angles lose 1e-3 rad)."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    j = tl.arange(0, BLOCK_H)
    mask = (r < num_rows)[:, None] & (j < HALF)[None, :]
    delta = tl.load(Delta + r, mask=r < num_rows, other=0).to(tl.float64)
    angle = delta[:, None] * tl.load(InvFreq + j, mask=j < HALF, other=0.0).to(tl.float64)[None, :]
    cos, sin = tl.cos(angle).to(tl.float32), tl.sin(angle).to(tl.float32)
    first = X + r[:, None] * ROW + j[None, :]
    x1 = tl.load(first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(first + HALF, mask=mask, other=0.0).to(tl.float32)
    out = Out + r[:, None] * ROW + j[None, :]
    tl.store(out, (x1 * cos - x2 * sin).to(Out.dtype.element_ty), mask=mask)
    tl.store(out + HALF, (x2 * cos + x1 * sin).to(Out.dtype.element_ty), mask=mask)


def rotate_keys_triton(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """rotate_keys_reference's result in one pass over the keys (the reference makes about eight)."""
    check_device(keys)
    keys = keys.contiguous()
    half = inv_freq.numel()
    out = torch.empty_like(keys) if 2 * half == keys.shape[-1] else keys.clone()  # partial: the rest passes
    rows_delta = delta.to(keys.device, torch.int64).expand(keys.shape[:-1]).reshape(-1).contiguous()
    num_rows = rows_delta.numel()
    block_r = 32
    _rotate_kernel[(-(-num_rows // block_r),)](keys, out, rows_delta, inv_freq.to(keys.device, torch.float32),
                                               num_rows, HALF=half, ROW=keys.shape[-1], BLOCK_R=block_r,
                                               BLOCK_H=triton.next_power_of_2(half))
    return out


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Dispatch: the reference when switched on or on the CPU; the Triton kernel on a GPU."""
    if on_gpu(keys) and not use_reference:
        report("rotate_keys", "triton")
        return rotate_keys_triton(keys, delta, inv_freq)
    report("rotate_keys", "reference")
    return rotate_keys_reference(keys, delta.to(keys.device), inv_freq.to(keys.device))


def unrotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor,
             axes: tuple[int, ...] | None) -> torch.Tensor:
    """x: (..., n, D) rotated at `positions` (3, n) -> x before rotary embedding."""
    report("unrotate", "torch")
    return rotate_by_angles_reference(x, -rope_angles(positions, inv_freq, axes))
