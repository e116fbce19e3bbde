"""A step's keys and values into a head-wise cache (kvcache/headwise.py) in one launch per layer: each KV head's rows
to its kind's storage, a retrieval head's at the tokens' cache slots (in 8 bits for an fp8 cache: kernels/quant.py),
a streaming head's at the step area's slots. In torch the split is four gathers and four indexed writes a layer,
each a kernel of a CUDA graph's decode step."""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from livesight.kernels.dispatch import report
from livesight.kernels.quant import quantize_row, quantize_into_reference
from livesight.kernels.triton_support import check_device, on_gpu

use_reference = False  # switch: route every call through the plain-torch reference


class HeadwiseTargets(NamedTuple):
    """Where a layer's heads go. retrieval: (keys, values) (B, r, C, D) in the model's dtype, or an fp8 cache's
    (key codes, key scales, value codes, value scales) (B, r, C, D) uint8 and (B, r, C, 1) float32; area: the
    streaming heads' (keys, values) (B, s, W, D). kind, index: (H,) int32 on the device, each KV head's kind (0
    retrieval, 1 streaming) and its place among its kind's heads (headwise.py: HeadLayout.write_map). B: slabs
    (a pool's), or 1."""
    retrieval: tuple
    area: tuple[torch.Tensor, torch.Tensor]
    kind: torch.Tensor
    index: torch.Tensor


def headwise_write_reference(keys: torch.Tensor, values: torch.Tensor, targets: HeadwiseTargets,
                             slabs: torch.Tensor | None, slots: torch.Tensor, area_slots: torch.Tensor) -> None:
    """keys, values (H, n, D): token i's rows to slab slabs[i] (0 when None), slot slots[i] of the retrieval
    heads, area slot area_slots[i] of the streaming heads."""
    kind = targets.kind.long()
    retrieval, streaming = torch.nonzero(kind == 0).squeeze(1), torch.nonzero(kind == 1).squeeze(1)
    first = torch.zeros_like(slots) if slabs is None else slabs
    for buffer, x in zip(targets.area, (keys, values)):
        buffer[first, :, area_slots] = x[streaming].transpose(0, 1)
    if len(targets.retrieval) == 4:  # fp8
        quantize_into_reference(keys[retrieval], values[retrieval], targets.retrieval, slabs, slots)
        return
    for buffer, x in zip(targets.retrieval, (keys, values)):
        buffer[first, :, slots] = x[retrieval].transpose(0, 1)


@triton.jit
def _copy_row(Src, Dst, d, d_ok):
    tl.store(Dst + d, tl.load(Src + d, mask=d_ok), mask=d_ok)


@triton.jit
def _write_kernel(K, V, sx_h, sx_n, Kind, Index, Slabs, Slots, AreaSlots, RK, RV, RKS, RVS, sr_b, sr_h, sr_n, ss_b,
                  ss_h, ss_n, AK, AV, sa_b, sa_h, sa_n, HAS_SLABS: tl.constexpr, FP8: tl.constexpr,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (token i, KV head h, keys or values): one row to its kind's storage."""
    i, h, which = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    slab = tl.load(Slabs + i).to(tl.int64) if HAS_SLABS else 0
    at = tl.load(Index + h).to(tl.int64)
    row = h * sx_h + i * sx_n
    if tl.load(Kind + h) == 1:  # a streaming head: the step area
        dst = slab * sa_b + at * sa_h + tl.load(AreaSlots + i).to(tl.int64) * sa_n
        if which == 0:
            _copy_row(K + row, AK + dst, d, d_ok)
        else:
            _copy_row(V + row, AV + dst, d, d_ok)
    else:
        slot = tl.load(Slots + i).to(tl.int64)
        dst = slab * sr_b + at * sr_h + slot * sr_n
        scale_at = slab * ss_b + at * ss_h + slot * ss_n
        if FP8:
            if which == 0:
                quantize_row(K + row, RK + dst, RKS + scale_at, d, d_ok)
            else:
                quantize_row(V + row, RV + dst, RVS + scale_at, d, d_ok)
        else:
            if which == 0:
                _copy_row(K + row, RK + dst, d, d_ok)
            else:
                _copy_row(V + row, RV + dst, d, d_ok)


def headwise_write_triton(keys: torch.Tensor, values: torch.Tensor, targets: HeadwiseTargets,
                          slabs: torch.Tensor | None, slots: torch.Tensor, area_slots: torch.Tensor) -> None:
    check_device(keys)
    if keys.stride() != values.stride() or keys.stride(-1) != 1:
        keys, values = keys.contiguous(), values.contiguous()
    fp8 = len(targets.retrieval) == 4
    rk, rks, rv, rvs = targets.retrieval if fp8 else (targets.retrieval[0], keys, targets.retrieval[1], keys)
    ak, av = targets.area
    assert rk.stride() == rv.stride() and ak.stride() == av.stride() and rk.stride(-1) == ak.stride(-1) == 1
    scale_strides = rks.stride()[:3] if fp8 else (0, 0, 0)
    num_heads, n, dim = keys.shape
    _write_kernel[(n, num_heads, 2)](keys, values, keys.stride(0), keys.stride(1), targets.kind, targets.index,
                                     slots if slabs is None else slabs, slots, area_slots, rk, rv, rks, rvs,
                                     *rk.stride()[:3], *scale_strides, ak, av, *ak.stride()[:3],
                                     HAS_SLABS=slabs is not None, FP8=fp8, HEAD_DIM=dim,
                                     BLOCK_D=triton.next_power_of_2(dim))


def headwise_write(keys: torch.Tensor, values: torch.Tensor, targets: HeadwiseTargets, slabs: torch.Tensor | None,
                   slots: torch.Tensor, area_slots: torch.Tensor) -> None:
    """Dispatch (headwise_write_reference's arguments): Triton for CUDA tensors, torch otherwise."""
    if on_gpu(keys) and not use_reference:
        report("headwise_write", "triton")
        return headwise_write_triton(keys, values, targets, slabs, slots, area_slots)
    report("headwise_write", "reference")
    return headwise_write_reference(keys, values, targets, slabs, slots, area_slots)
