"""8-bit keys and values: float8 e4m3 with a float32 scale per (head, token), as KIVI and ZipVL keep a
cache in fewer bits. A vector's largest element maps to e4m3's largest, 448, so each element keeps 3
mantissa bits of its own magnitude (at most 2^-4 of itself off).

The codes are stored as uint8 (the same bytes as float8_e4m3fn): indexing, copies and index_copy_ work on
them on every device, where float8 tensors lack some of these on the CPU.

`quantize_into` writes a step's keys and values into a cache's codes and scales: on a GPU one Triton launch
per layer, where the torch ops (a max, a division, a clamp, a cast and four indexed writes for keys and values)
are some twenty kernels, each a few microseconds of a CUDA graph's decode step.
"""

import torch
import triton
import triton.language as tl

from livesight.kernels.dispatch import report
from livesight.kernels.triton_support import check_device, on_gpu

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
TINY = torch.finfo(torch.float32).tiny
use_reference = False  # switch: route every call through the plain-torch reference


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D) -> codes (..., D) uint8 and scales (..., 1) float32, x ~ codes * scales."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    # divided by a tensor, not a Python number: CUDA torch multiplies by a number's reciprocal (1 ulp off at times)
    scale = (amax / torch.full((), FP8_MAX, device=amax.device)).clamp_min(TINY)
    codes = (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)
    return codes, scale


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """codes (..., D) uint8, scales (..., 1) -> values (..., D) in `dtype`."""
    return (codes.view(FP8).float() * scale).to(dtype)


def quantize_into_reference(keys: torch.Tensor, values: torch.Tensor, targets: tuple, slabs: torch.Tensor | None,
                            slots: torch.Tensor) -> None:
    """keys, values (H, n, D) -> targets (key codes, key scales, value codes, value scales): codes (B, H, C, D)
    uint8, scales (B, H, C, 1) float32; token i goes to slab slabs[i] (0 when None), slot slots[i]."""
    slabs = torch.zeros_like(slots) if slabs is None else slabs
    for x, codes, scales in ((keys, *targets[:2]), (values, *targets[2:])):
        q, s = quantize(x.transpose(0, 1))  # (n, H, D)
        codes[slabs, :, slots], scales[slabs, :, slots] = q, s


@triton.jit
def _e4m3_grid(y):
    """y (float32, |y| <= 448) rounded to the nearest e4m3 value, ties to even, in float32 arithmetic: 3 mantissa
    bits below the exponent, a fixed step of 2^-9 among the subnormals. The cast that follows is then exact, so
    the codes do not hang on how a backend casts (Triton's interpreter rounds its own way)."""
    exponent = tl.maximum(((y.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127, -6)
    step = ((exponent - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 2^(exponent - 3), a power of two
    steps = y * ((3 - exponent + 127) << 23).to(tl.float32, bitcast=True)  # y / step, exact; |steps| <= 16
    return ((steps + 12582912.0) - 12582912.0) * step  # adding 1.5 x 2^23 rounds to an integer, ties to even


@triton.jit
def quantize_row(X, Codes, Scales, d, d_ok):
    x = tl.load(X + d, mask=d_ok, other=0.0).to(tl.float32)
    scale = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), 0), 448.0), 1.1754943508222875e-38)
    codes = _e4m3_grid(tl.clamp(tl.math.div_rn(x, scale), -448.0, 448.0)).to(tl.float8e4nv)
    tl.store(Codes + d, codes.to(tl.uint8, bitcast=True), mask=d_ok)
    tl.store(Scales, scale)


@triton.jit
def _quantize_kernel(K, V, sx_h, sx_n, KCodes, KScales, VCodes, VScales, Slabs, Slots, sc_b, sc_h, sc_n, ss_b, ss_h,
                     ss_n, HAS_SLABS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (token i, head h, keys or values): one row's codes and scale."""
    i, h, which = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    slot = tl.load(Slots + i).to(tl.int64)
    slab = tl.load(Slabs + i).to(tl.int64) if HAS_SLABS else 0
    code_at = slab * sc_b + h * sc_h + slot * sc_n
    scale_at = slab * ss_b + h * ss_h + slot * ss_n
    row = h * sx_h + i * sx_n
    d = tl.arange(0, BLOCK_D)
    if which == 0:
        quantize_row(K + row, KCodes + code_at, KScales + scale_at, d, d < HEAD_DIM)
    else:
        quantize_row(V + row, VCodes + code_at, VScales + scale_at, d, d < HEAD_DIM)


def quantize_into_triton(keys: torch.Tensor, values: torch.Tensor, targets: tuple, slabs: torch.Tensor | None,
                         slots: torch.Tensor) -> None:
    check_device(keys)
    key_codes, key_scales, value_codes, value_scales = targets
    if keys.stride() != values.stride() or keys.stride(-1) != 1:
        keys, values = keys.contiguous(), values.contiguous()
    num_heads, n, dim = keys.shape
    assert key_codes.stride() == value_codes.stride() and key_scales.stride() == value_scales.stride()
    assert key_codes.stride(-1) == 1
    _quantize_kernel[(n, num_heads, 2)](keys, values, keys.stride(0), keys.stride(1), key_codes, key_scales,
                                        value_codes, value_scales, slots if slabs is None else slabs, slots,
                                        key_codes.stride(0), key_codes.stride(1), key_codes.stride(2),
                                        key_scales.stride(0), key_scales.stride(1), key_scales.stride(2),
                                        HAS_SLABS=slabs is not None, HEAD_DIM=dim,
                                        BLOCK_D=triton.next_power_of_2(dim))


def quantize_into(keys: torch.Tensor, values: torch.Tensor, targets: tuple, slabs: torch.Tensor | None,
                  slots: torch.Tensor) -> None:
    """Dispatch (quantize_into_reference's arguments): Triton for CUDA tensors, torch otherwise."""
    if on_gpu(keys) and not use_reference:
        report("quantize_into", "triton")
        return quantize_into_triton(keys, values, targets, slabs, slots)
    report("quantize_into", "reference")
    return quantize_into_reference(keys, values, targets, slabs, slots)
