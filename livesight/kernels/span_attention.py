"""Attention of a static step's rows over a fixed span of the cache, with the cache length on the device.

The language model's fixed-shape step (streaming/static_step.py) writes its n rows at cache slots
start .. start + n - 1 and attends to a fixed span of Lk slots; row i sees slots 0 .. start + i
(bottom-right causal over the compact cache), and what lies past start + n is stale. `start` is a
device tensor, so one CUDA graph serves every cache length.

The Triton kernel reads `start` and visits only the keys that exist, split over programs
(flash-decoding): a decode step of 1 row x 7 grouped heads would otherwise fill 4 programs of a GPU
with 132 SMs. The g query heads of a KV head are folded into its rows, so keys are read once per
KV head. Each split writes its normalised partial output and log-sum-exp; a second kernel merges them
(in torch, the merge was three reductions and a few elementwise kernels per layer: 0.6 ms a decode step).
Slab attention (many streams' rows, each over its own slab) shares the program's work, the merge and
the split arithmetic.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel

from livesight.kernels.attention import chunk_attention_reference
from livesight.kernels.dispatch import report
from livesight.kernels.quant import dequantize
from livesight.kernels.rope import rotate_keys_reference
from livesight.kernels.triton_support import check_device, dot_type, half_on_gpu, online_softmax_step

use_reference = False  # switch: route every call through the plain-torch reference
TARGET_PROGRAMS = 264  # two per SM of an H100: splits are added until a step has about this many


class Fp8Span(NamedTuple):
    """What reads 8-bit keys and values (kvcache/storage.py: Fp8KV) beside their codes: key_scale, value_scale
    (1, Hkv, Lk, 1) float32 (a slot's scales 1 apart), shift (Lk,) int64, how far each slot's key must turn,
    the rotary inv_freq (HALF,), and the turn's cos and sin (Lk, HALF) (float16; the kernel reads these)."""
    key_scale: torch.Tensor
    value_scale: torch.Tensor
    shift: torch.Tensor
    inv_freq: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    def decode(self, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes k, v (1, Hkv, Lk, D) uint8 -> keys turned to their slots' positions, values, in dtype. A pool's
        layer, (S, Hkv, C, D) with shifts (S, C), decodes every slab."""
        keys = dequantize(k, self.key_scale, dtype)
        shift = self.shift if self.shift.dim() == 1 else self.shift[:, None, :]
        return rotate_keys_reference(keys, shift, self.inv_freq), dequantize(v, self.value_scale, dtype)


class StreamingSpan(NamedTuple):
    """A head-wise cache's streaming heads in a static step (kvcache/headwise.py: StreamingWindow.span): keys,
    values (1, s, W, D), their sink and ring slots 0 .. start - 1 then the step's rows from slot `start` on;
    held_bias (W,) 0 for the sink and window slots and the step's, -inf for the ring's others; kv_map (r + s,)
    int32 the model's KV head of each of the layer's retrieval heads then its streaming heads; retrieval_q,
    streaming_q: the query heads that read each kind (headwise.py: HeadLayout.query_index)."""
    keys: torch.Tensor
    values: torch.Tensor
    held_bias: torch.Tensor
    start: int
    kv_map: torch.Tensor
    retrieval_q: torch.Tensor
    streaming_q: torch.Tensor


def span_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: torch.Tensor,
                             key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """q: (1, Hq, n, D); k, v: (1, Hkv, Lk, D); start: (1,) the slot of row 0; key_bias: (Lk,) additive
    (0 or -inf), or None -> (1, Hq, n, D). Math in float32: the chunk attention over the slots up to
    the last row's, which puts row i at slot start + i (bottom-right)."""
    end = int(start) + q.shape[2]
    return chunk_attention_reference(q, k[:, :, :end], v[:, :, :end], scale,
                                     None if key_bias is None else key_bias[:end] == 0)


def _span_sdpa(q, k, v, scale, start, key_bias):
    """One SDPA call with the mask built on the device (the CPU path, and the GPU path for float32).
    The grouped query heads are folded into rows, as the kernel does: the memory-efficient kernel
    takes any mask but not grouped heads."""
    batch, num_heads, num_q, dim = q.shape
    num_kv, num_k = k.shape[1], k.shape[2]
    slots = start + torch.arange(num_q, device=q.device)
    visible = torch.arange(num_k, device=q.device)[None, :] <= slots[:, None]
    bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill_(~visible, float("-inf"))
    if key_bias is not None:
        bias = bias + key_bias.to(q.dtype)
    folded = q.reshape(batch, num_kv, num_heads // num_kv * num_q, dim)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        out = F.scaled_dot_product_attention(folded, k, v, attn_mask=bias.repeat(num_heads // num_kv, 1), scale=scale)
    return out.reshape(batch, num_heads, num_q, dim)


@triton.jit
def _decoded(X, Scale, n, n_ok, cols, mask, s_n):
    """8-bit codes (float8 e4m3 bits) of rows n, columns cols, times each row's scale -> float32."""
    codes = tl.load(X + n[:, None] * s_n + cols[None, :], mask=mask, other=0)
    return codes.to(tl.float8e4nv, bitcast=True).to(tl.float32) * tl.load(Scale + n, mask=n_ok, other=0.0)[:, None]


@triton.jit
def _turned_keys(K, KScale, Cos, Sin, n, n_ok, d, d_ok, sk_n, HALF: tl.constexpr):
    """Keys kept as 8-bit codes at the positions they were written at, decoded and turned by their slot's
    shift (kvcache/storage.py: Fp8KV): rotate-half rotary on the first 2 x HALF dims, the cos and sin of each
    slot's turn read from its tables (Lk, HALF)."""
    mask = n_ok[:, None] & d_ok[None, :]
    rotary = d < 2 * HALF
    k = _decoded(K, KScale, n, n_ok, d, mask, sk_n)
    partner = _decoded(K, KScale, n, n_ok, tl.where(d < HALF, d + HALF, d - HALF), mask & rotary[None, :], sk_n)
    turn = n[:, None] * HALF + tl.where(d < HALF, d, d - HALF)[None, :]
    cos = tl.load(Cos + turn, mask=mask & rotary[None, :], other=1.0).to(tl.float32)
    sin = tl.load(Sin + turn, mask=mask & rotary[None, :], other=0.0).to(tl.float32)
    return k * cos + tl.where(d < HALF, -1.0, 1.0)[None, :] * partner * sin


@triton.jit
def head_kind(KvMap, kv, num_retrieval, HEADWISE: tl.constexpr):
    """Program kv's KV head in the model's order, and whether it is a streaming head (HEADWISE: KvMap lists the
    layer's retrieval heads, then its streaming heads; else program kv is KV head kv)."""
    kv_head = kv
    streaming = False
    if HEADWISE:
        kv_head = tl.load(KvMap + kv)
        streaming = kv >= num_retrieval
    return kv_head, streaming


@triton.jit
def attend_split(Q, K, V, Bias, Out, Lse, r, row0, seg_rows, start, kv_head, split, groups, num_heads, num_rows,
                 keys_per_split, sq_h, sq_m, sk_n, sv_n, scale_log2, KScale, VScale, Cos, Sin,
                 HAS_BIAS: tl.constexpr, DOT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr = False, HALF: tl.constexpr = 0):
    """One program's share (span and slab attention): folded rows r of seg_rows tokens, q rows
    row0 .. written at slots start .., against split `split` of the keys of one KV head (K, V, Bias
    point at its slots) -> the split's normalised partial output and log2-sum-exp in Out, Lse.
    FP8: K and V hold 8-bit codes, KScale and VScale a scale per slot, Cos and Sin each slot's turn (Lk, HALF)."""
    row_ok = r < groups * seg_rows
    head = kv_head * groups + r // tl.maximum(seg_rows, 1)  # query head kv_head * g + r // n, token r % n
    tok = r % tl.maximum(seg_rows, 1)  # (a padding entry of the slab plan has no rows)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    q = tl.load(Q + head[:, None] * sq_h + (row0 + tok)[:, None] * sq_m + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, start + seg_rows)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < hi
        kv_mask = n_ok[:, None] & d_ok[None, :]
        if FP8:
            k = _turned_keys(K, KScale, Cos, Sin, n, n_ok, d, d_ok, sk_n, HALF)
        else:
            k = tl.load(K + n[:, None] * sk_n + d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q.to(DOT), tl.trans(k.to(DOT)), input_precision="ieee") * scale_log2
        if HAS_BIAS:
            s += tl.load(Bias + n, mask=n_ok, other=0.0).to(tl.float32)[None, :] * 1.4426950408889634
        s = tl.where(n_ok[None, :] & (n[None, :] <= start + tok[:, None]), s, float("-inf"))
        if FP8:
            v = _decoded(V, VScale, n, n_ok, d, kv_mask, sv_n)
        else:
            v = tl.load(V + n[:, None] * sv_n + d[None, :], mask=kv_mask, other=0.0)
        m_i, l_i, acc = online_softmax_step(s, v, m_i, l_i, acc, DOT)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out_row = (split * num_heads + head) * num_rows + row0 + tok
    tl.store(Out + out_row[:, None] * HEAD_DIM + d[None, :], acc / l_safe[:, None],
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(Lse + out_row, tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf")), mask=row_ok)


@triton.jit
def _span_kernel(Q, K, V, Bias, Start, Out, Lse, sq_h, sq_m, sk_h, sk_n, sv_h, sv_n, num_rows, groups,
                 keys_per_split, scale_log2, KScale, VScale, Cos, Sin, ss_h, Ks, Vs, HeldBias, KvMap, num_retrieval,
                 sks_h, sks_n, svs_h, svs_n, window_start, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 FP8: tl.constexpr, HALF: tl.constexpr, HEADWISE: tl.constexpr):
    """HEADWISE: programs kv < num_retrieval read K, V (the layer's retrieval heads), the others Ks, Vs (its
    streaming heads: StreamingSpan); KvMap gives each program's KV head in the model's order."""
    kv, m_block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    num_heads = tl.num_programs(0) * groups
    kv_head, streaming = head_kind(KvMap, kv, num_retrieval, HEADWISE)
    if streaming:  # its sink and window (HeldBias 0, the ring's other slots -inf), then the step's rows
        head = kv - num_retrieval
        attend_split(Q, Ks + head * sks_h, Vs + head * svs_h, HeldBias, Out, Lse, rows, 0, num_rows, window_start,
                     kv_head, split, groups, num_heads, num_rows, keys_per_split, sq_h, sq_m, sks_n, svs_n,
                     scale_log2, KScale, VScale, Cos, Sin, True, DOT, HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, 0)
    else:
        attend_split(Q, K + kv * sk_h, V + kv * sv_h, Bias, Out, Lse, rows, 0, num_rows, tl.load(Start), kv_head,
                     split, groups, num_heads, num_rows, keys_per_split, sq_h, sq_m, sk_n, sv_n, scale_log2,
                     KScale + kv * ss_h, VScale + kv * ss_h, Cos, Sin, HAS_BIAS, DOT, HEAD_DIM, BLOCK_M, BLOCK_N,
                     BLOCK_D, FP8, HALF)


@triton.jit
def _merge_kernel(Out, Lse, Merged, num_splits, num_rows, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """One (head, token) row: the splits' partial outputs weighted by their share of the softmax."""
    row = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    lse = tl.load(Lse + s * num_rows + row, mask=s < num_splits, other=float("-inf"))
    # a split past the row's keys has lse -inf, and so has every split of a row no program wrote
    # (slab attention's padding rows): weight 0, its output unread, and a row of none comes out 0
    top = tl.max(lse, 0)
    weight = tl.exp2(lse - tl.where(top > float("-inf"), top, 0.0))
    d = tl.arange(0, BLOCK_D)
    mask = (lse > float("-inf"))[:, None] & (d < HEAD_DIM)[None, :]
    out = tl.load(Out + (s[:, None] * num_rows + row) * HEAD_DIM + d[None, :], mask=mask, other=0.0)
    total = tl.sum(weight, 0)
    merged = tl.sum(out * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Merged + row * HEAD_DIM + d, merged.to(Merged.dtype.element_ty), mask=d < HEAD_DIM)


def merge_splits(out: torch.Tensor, lse: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """out: (splits, H, n, D) float32 partial outputs; lse: (splits, H, n) their log2-sum-exp
    -> (1, H, n, D) in dtype."""
    splits, num_heads, num_q, dim = out.shape
    merged = torch.empty(1, num_heads, num_q, dim, dtype=dtype, device=out.device)
    _merge_kernel[(num_heads * num_q,)](out, lse, merged, splits, num_heads * num_q, HEAD_DIM=dim,
                                        BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=triton.next_power_of_2(dim))
    return merged


def split_keys(num_keys: int, num_programs: int) -> tuple[int, int]:
    """-> (number of splits, keys per split): key blocks of 64 shared out over splits until
    num_programs x splits is about TARGET_PROGRAMS, fixed by the shapes alone (graph-safe)."""
    key_blocks = -(-num_keys // 64)
    splits = max(1, min(key_blocks, -(-TARGET_PROGRAMS // num_programs)))
    blocks_per_split = -(-key_blocks // splits)
    return -(-key_blocks // blocks_per_split), blocks_per_split * 64


def span_plan(num_rows: int, num_keys: int, num_kv: int, groups: int) -> tuple[int, int, int]:
    """-> (BLOCK_M, number of splits, keys per split), fixed by the shapes alone (graph-safe)."""
    block_m = 16 if groups * num_rows <= 16 else 64
    return block_m, *split_keys(num_keys, num_kv * -(-groups * num_rows // block_m))


def span_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: torch.Tensor,
                          key_bias: torch.Tensor | None = None, fp8: Fp8Span | None = None,
                          streaming: StreamingSpan | None = None) -> torch.Tensor:
    """span_attention_reference's result from the Triton kernel. k, v may be views with any head and
    slot strides (the cache's buffers); the last dimension must be contiguous. fp8: k and v are 8-bit codes,
    decoded and turned as the kernel loads them. streaming: k, v are the layer's retrieval heads, and these its
    streaming heads, in the same launch."""
    check_device(q)
    if fp8 is not None:
        assert k.dtype == torch.uint8 and fp8.key_scale.stride(2) == 1 and fp8.value_scale.stride(2) == 1
        assert fp8.key_scale.stride(1) == fp8.value_scale.stride(1)
        assert fp8.cos.is_contiguous() and fp8.sin.is_contiguous() and fp8.cos.shape[-1] == fp8.inv_freq.numel()
    _, num_heads, num_q, dim = q.shape
    num_ret, num_k = k.shape[1], k.shape[2]
    num_kv = num_ret if streaming is None else num_ret + streaming.keys.shape[1]
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and q.stride(-1) == 1 and k.shape[0] == 1
    groups = num_heads // num_kv
    span_keys = num_k if streaming is None else max(num_k, streaming.keys.shape[2])
    block_m, splits, per_split = span_plan(num_q, span_keys, num_kv, groups)
    out = torch.empty(splits, num_heads, num_q, dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(splits, num_heads, num_q, dtype=torch.float32, device=q.device)
    grid = (num_kv, -(-groups * num_q // block_m), splits)
    companions = (fp8.key_scale, fp8.value_scale, fp8.cos, fp8.sin) if fp8 is not None else (q, q, q, q)
    if streaming is not None:
        ks, vs = streaming.keys, streaming.values
        assert ks.stride(-1) == 1 and vs.stride(-1) == 1 and streaming.held_bias.shape[0] >= ks.shape[2]
        heads = (ks, vs, streaming.held_bias, streaming.kv_map, num_ret, ks.stride(1), ks.stride(2), vs.stride(1),
                 vs.stride(2), streaming.start)
    else:
        heads = (q, q, q, q, num_kv, 0, 0, 0, 0, 0)
    _span_kernel[grid](q, k, v, key_bias if key_bias is not None else q, start, out, lse,
                       q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1), v.stride(2),
                       num_q, groups, per_split, scale * math.log2(math.e), *companions,
                       0 if fp8 is None else fp8.key_scale.stride(1), *heads, HAS_BIAS=key_bias is not None,
                       DOT=dot_type(q.dtype), HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=64,
                       BLOCK_D=triton.next_power_of_2(max(dim, 16)), FP8=fp8 is not None,
                       HALF=0 if fp8 is None else fp8.inv_freq.numel(), HEADWISE=streaming is not None)
    return out[0][None].to(q.dtype) if splits == 1 else merge_splits(out, lse, q.dtype)


def span_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: torch.Tensor,
                   key_bias: torch.Tensor | None = None, fp8: Fp8Span | None = None,
                   streaming: StreamingSpan | None = None) -> torch.Tensor:
    """Dispatch: the reference when switched on; Triton for CUDA half precision; one masked SDPA call
    otherwise (the CPU). fp8: k, v are 8-bit codes; the Triton kernel decodes them as it loads them, the
    other paths first. streaming: a head-wise cache's layer (k, v its retrieval heads): one kernel launch for
    both kinds on the Triton path, one call for each elsewhere."""
    if fp8 is not None and not (half_on_gpu(q) and not use_reference):
        k, v = fp8.decode(k, v, q.dtype)
    if half_on_gpu(q) and not use_reference:
        report("span_attention", ("triton-fp8" if fp8 is not None else "triton")
               + ("-headwise" if streaming is not None else ""))
        return span_attention_triton(q, k, v, scale, start, key_bias, fp8, streaming)
    if streaming is None:
        return _span_torch(q, k, v, scale, start, key_bias)
    out = torch.empty_like(q)
    for heads, keys, values, first, bias in ((streaming.retrieval_q, k, v, start, key_bias),
                                             (streaming.streaming_q, streaming.keys, streaming.values,
                                              torch.full_like(start, streaming.start), streaming.held_bias)):
        if heads.numel():
            out[:, heads] = _span_torch(q[:, heads], keys, values, scale, first,
                                        None if bias is None else bias[:keys.shape[2]])
    return out


def _span_torch(q, k, v, scale, start, key_bias):
    if use_reference:
        report("span_attention", "reference")
        return span_attention_reference(q, k, v, scale, start, key_bias)
    report("span_attention", "sdpa-masked")
    return _span_sdpa(q, k, v, scale, start, key_bias)
