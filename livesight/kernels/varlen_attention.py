"""The vision tower's attention within windows (or frames) in one varlen call.

Patches are laid out segment after segment (cu_seqlens marks where each starts); a patch attends to
every patch of its own segment, not causally. The Triton kernel visits only each segment's own keys;
a dense call with a block mask reads every key for every query (18x the work at 112-pixel windows
of a 644x364 frame). Registered with transformers as VISION_ATTENTION_NAME: its Qwen2.5-VL tower
passes the varlen metadata only to implementations whose name contains "flash", and otherwise
loops one call per window.
"""

import math

import torch
import triton
import triton.language as tl

from livesight.kernels.attention import segment_attention, segment_attention_reference
from livesight.kernels.dispatch import report
from livesight.kernels.triton_support import check_device, dot_type, half_on_gpu, online_softmax_step

use_reference = False  # switch: route every call through the plain-torch reference
VISION_ATTENTION_NAME = "livesight_flash_varlen"


def segments_of(cu_seqlens: torch.Tensor, num_rows: int) -> torch.Tensor:
    """(S + 1,) boundaries -> (num_rows,) segment id of every row. The size is given, so no device
    sync is needed (none is allowed inside a CUDA graph's capture)."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=cu_seqlens.device), lengths,
                                   output_size=num_rows)


def varlen_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                               scale: float) -> torch.Tensor:
    """q, k, v: (H, N, D); cu_seqlens: (S + 1,) from 0 to N -> (H, N, D). Math in float32."""
    segment = segments_of(cu_seqlens, q.shape[1])
    return segment_attention_reference(q, k, v, segment, segment, scale)


@triton.jit
def _varlen_kernel(Q, K, V, Out, Cu, sq_h, sq_n, sk_h, sk_n, sv_h, sv_n, so_h, so_n, scale_log2,
                   DOT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    head, segment, m_block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    lo, hi = tl.load(Cu + segment), tl.load(Cu + segment + 1)
    first = lo + m_block * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)
    row_ok = rows < hi
    key_hi = tl.where(first < hi, hi, lo)  # a block past its segment's end does nothing
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(Q + head * sq_h + rows[:, None] * sq_n + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(lo, key_hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < key_hi
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + head * sk_h + n[:, None] * sk_n + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q.to(DOT), tl.trans(k.to(DOT)), input_precision="ieee") * scale_log2
        s = tl.where(n_ok[None, :], s, float("-inf"))
        v = tl.load(V + head * sv_h + n[:, None] * sv_n + d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(Out + head * so_h + rows[:, None] * so_n + d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None] & d_ok[None, :])


def varlen_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                            max_len: int, scale: float) -> torch.Tensor:
    """varlen_attention_reference's result from the Triton kernel; max_len: the longest segment."""
    check_device(q)
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    num_heads, _, dim = q.shape
    out = torch.empty_like(q)
    block_m = 64 if max_len > 32 else 32
    grid = (num_heads, cu_seqlens.numel() - 1, -(-max_len // block_m))
    _varlen_kernel[grid](q, k, v, out, cu_seqlens, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
                         v.stride(1), out.stride(0), out.stride(1), scale * math.log2(math.e), DOT=dot_type(q.dtype),
                         HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=64, BLOCK_D=triton.next_power_of_2(max(dim, 16)))
    return out


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int,
                     scale: float) -> torch.Tensor:
    """Dispatch: the reference when switched on; Triton for CUDA half precision; elsewhere the
    segment attention's one SDPA call with a block mask (the CPU)."""
    if use_reference:
        report("varlen_attention", "reference")
        return varlen_attention_reference(q, k, v, cu_seqlens, scale)
    if half_on_gpu(q):
        report("varlen_attention", "triton")
        return varlen_attention_triton(q, k, v, cu_seqlens, max_len, scale)
    report("varlen_attention", "sdpa-masked")
    segment = segments_of(cu_seqlens, q.shape[1])
    return segment_attention(q, k, v, segment, segment, scale)


def vision_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention signature, as its vision tower calls a "flash" implementation:
    q, k, v (1, H, N, D) with cu_seq_lens_q (S + 1,) -> ((1, N, H, D), None)."""
    assert cu_seq_lens_q is not None, f"{VISION_ATTENTION_NAME} serves varlen calls only (the vision tower)"
    max_len = int(max_length_q) if max_length_q is not None else int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = varlen_attention(query[0], key[0], value[0], cu_seq_lens_q, max_len, scale)
    return out.transpose(0, 1)[None].contiguous(), None
