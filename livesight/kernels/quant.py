"""8-bit keys and values: float8 e4m3 with a float32 scale per (head, token), as KIVI and ZipVL keep a
cache in fewer bits. A vector's largest element maps to e4m3's largest, 448, so each element keeps 3
mantissa bits of its own magnitude (at most 2^-4 of itself off).

The codes are stored as uint8 (the same bytes as float8_e4m3fn): indexing, copies and index_copy_ work on
them on every device, where float8 tensors lack some of these on the CPU.
"""

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) -> codes (..., D) uint8 and scales (..., 1) float32, x ~ codes * scales."""
    scale = (x.float().abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    codes = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes (..., D) uint8, scales (..., 1) -> values (..., D) in `dtype`."""
    return (codes.view(FP8).float() * scale).to(dtype)
