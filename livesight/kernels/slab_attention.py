"""Attention of many streams' new tokens, packed into one batch of rows, each stream over its own slab of one KV pool.

The engine runs every ready stream in one language-model pass (DESIGN.md §1): a step packs the
streams' new tokens one after another into q, and every stream's cache is a fixed slab of one
preallocated pool. A segment (slab, row0, num_rows, start) says that rows row0 .. row0 + n - 1 were
just written at slots start .. start + n - 1 of that slab; row row0 + i sees slots 0 .. start + i of
its own slab only (span attention's rule, per stream). Rows no segment covers (a fixed-shape step's
padding) come out zero.

The Triton kernel is span attention's (folded query heads, splits over keys, one merge), driven by a
plan: a device table with one entry per program block, padded with empty entries to a fixed size,
so one CUDA graph serves every set of segments that fits, with the table as a graph input. Off the
Triton path, each segment is the single-stream chunk attention on its slab: the same call, so the
same bits, as a stream that runs alone.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from livesight.kernels.attention import chunk_attention, chunk_attention_reference
from livesight.kernels.dispatch import report
from livesight.kernels.span_attention import (Fp8Span, StreamingSpan, attend_split, head_kind, merge_splits,
                                              split_keys)
from livesight.kernels.triton_support import check_device, dot_type, half_on_gpu

use_reference = False  # switch: route every call through the plain-torch reference


class Segment(NamedTuple):
    """Rows row0 .. row0 + num_rows - 1 of q: the tokens written at slots start .. of `slab`."""
    slab: int
    row0: int
    num_rows: int
    start: int


@dataclass(frozen=True)
class SlabPlan:
    """One step's segments, for every path. table: (num_blocks, 5) int32 on the device, one
    (slab, row0, num_rows, start, first folded row) per program block, then empty entries
    (num_rows 0). A CUDA graph captured with one plan replays another of the same launch_key with
    the new table copied into the captured one."""
    segments: tuple[Segment, ...]
    table: torch.Tensor
    num_rows: int
    groups: int
    capacity: int
    num_kv: int
    block_m: int
    num_splits: int
    keys_per_split: int

    @property
    def launch_key(self) -> tuple[int, ...]:
        """What fixes the kernels' launch: the shapes, the table's size (slab_plan_blocks), and BLOCK_M
        (is_decode: every segment one row)."""
        return (self.num_rows, self.groups, self.capacity, self.num_kv, self.table.shape[0], self.block_m,
                self.num_splits, self.keys_per_split)


def _block_m(groups: int, is_decode: bool) -> int:
    """A decode step's one row per stream x g heads fills a block of 16 (g <= 16); else 64 rows."""
    return 16 if is_decode and groups <= 16 else 64


def slab_plan_blocks(num_rows: int, max_segments: int, groups: int, is_decode: bool = False) -> int:
    """The table size that serves every step of num_rows rows in at most max_segments segments
    (is_decode: each of one row): a CUDA graph bucket's num_blocks."""
    block_m = _block_m(groups, is_decode)
    if is_decode:
        return min(num_rows, max_segments) * -(-groups // block_m)
    # segment j needs ceil(g n_j / BLOCK_M) blocks, less than one block over its share g n_j / BLOCK_M
    return -(-groups * num_rows // block_m) + max_segments - 1


def _check_segments(segments: list[Segment], num_rows: int, capacity: int) -> None:
    covered = torch.zeros(num_rows, dtype=torch.bool)
    for s in segments:
        if s.slab < 0 or s.num_rows < 1 or s.start < 0 or s.start + s.num_rows > capacity:
            raise ValueError(f"segment {s}: needs slab >= 0, num_rows >= 1 and slots 0 .. {capacity - 1}")
        if s.row0 < 0 or s.row0 + s.num_rows > num_rows or covered[s.row0:s.row0 + s.num_rows].any():
            raise ValueError(f"segment {s}: rows outside 0 .. {num_rows - 1} or shared with another segment")
        covered[s.row0:s.row0 + s.num_rows] = True


def slab_plan(segments: Iterable[tuple[int, int, int, int]], num_rows: int, groups: int, capacity: int,
              num_kv: int, device: torch.device | str, num_blocks: int | None = None) -> SlabPlan:
    """segments: (slab, row0, num_rows, start) tuples; num_rows: q's N; groups: Hq // Hkv; capacity:
    the slab's C; num_blocks: the table size (a graph bucket's, slab_plan_blocks), or just enough."""
    segments = tuple(Segment(*s) for s in segments)
    _check_segments(list(segments), num_rows, capacity)
    block_m = _block_m(groups, all(s.num_rows == 1 for s in segments))
    entries = [(s.slab, s.row0, s.num_rows, s.start, first) for s in segments
               for first in range(0, groups * s.num_rows, block_m)]
    needed = max(len(entries), 1)  # an empty step: one empty entry
    num_blocks = needed if num_blocks is None else num_blocks
    if num_blocks < needed:
        raise ValueError(f"the segments need {len(entries)} blocks of {block_m} rows; the plan has {num_blocks}")
    table = torch.tensor(entries + [(0, 0, 0, 0, 0)] * (num_blocks - len(entries)), dtype=torch.int32)
    splits, per_split = split_keys(capacity, num_kv * num_blocks)
    return SlabPlan(segments, table.reshape(num_blocks, 5).to(device, non_blocking=True), num_rows, groups, capacity,
                    num_kv, block_m, splits, per_split)


def slab_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                             segments: Iterable[tuple[int, int, int, int]],
                             key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """q: (1, Hq, N, D); k, v: (S, Hkv, C, D); segments: (slab, row0, num_rows, start) tuples;
    key_bias: (S, C) additive (0 or -inf), or None -> (1, Hq, N, D), zero in rows no segment covers.
    Math in float32: per segment, the chunk attention over its slab's slots up to its last row's."""
    out = torch.zeros_like(q)
    for slab, row0, n, start in segments:
        valid = None if key_bias is None else key_bias[slab, :start + n] == 0
        out[:, :, row0:row0 + n] = chunk_attention_reference(q[:, :, row0:row0 + n], k[slab:slab + 1, :, :start + n],
                                                             v[slab:slab + 1, :, :start + n], scale, valid)
    return out


@triton.jit
def _slab_kernel(Q, K, V, Bias, Table, Out, Lse, sq_h, sq_m, sk_s, sk_h, sk_n, sv_s, sv_h, sv_n, sb_s, num_rows,
                 groups, keys_per_split, scale_log2, KScale, VScale, Cos, Sin, ss_s, ss_h, st_s, Ks, Vs, HeldBias,
                 KvMap, num_retrieval, sks_s, sks_h, sks_n, svs_s, svs_h, svs_n, shb_s, window_start,
                 HAS_BIAS: tl.constexpr, DOT: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr, HALF: tl.constexpr,
                 HEADWISE: tl.constexpr):
    """HEADWISE: programs kv < num_retrieval read K, V (the layer's retrieval heads), the others Ks, Vs (its
    streaming heads, each slab's window with the step's rows in its step area from window_start on)."""
    kv, block, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    entry = Table + block * 5
    slab = tl.load(entry).to(tl.int64)  # a pool's layer can pass 2**31 elements
    seg_rows = tl.load(entry + 2)
    rows, row0 = tl.load(entry + 4) + tl.arange(0, BLOCK_M), tl.load(entry + 1)
    num_heads = tl.num_programs(0) * groups
    kv_head, streaming = head_kind(KvMap, kv, num_retrieval, HEADWISE)
    if streaming:
        head = kv - num_retrieval
        attend_split(Q, Ks + slab * sks_s + head * sks_h, Vs + slab * svs_s + head * svs_h, HeldBias + slab * shb_s,
                     Out, Lse, rows, row0, seg_rows, window_start, kv_head, split, groups, num_heads, num_rows,
                     keys_per_split, sq_h, sq_m, sks_n, svs_n, scale_log2, KScale, VScale, Cos, Sin, True, DOT,
                     HEAD_DIM, BLOCK_M, BLOCK_N, BLOCK_D, False, 0)
    else:
        attend_split(Q, K + slab * sk_s + kv * sk_h, V + slab * sv_s + kv * sv_h, Bias + slab * sb_s, Out, Lse, rows,
                     row0, seg_rows, tl.load(entry + 3), kv_head, split, groups, num_heads, num_rows, keys_per_split,
                     sq_h, sq_m, sk_n, sv_n, scale_log2, KScale + slab * ss_s + kv * ss_h,
                     VScale + slab * ss_s + kv * ss_h, Cos + slab * st_s, Sin + slab * st_s, HAS_BIAS, DOT, HEAD_DIM,
                     BLOCK_M, BLOCK_N, BLOCK_D, FP8, HALF)


def slab_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, plan: SlabPlan,
                          key_bias: torch.Tensor | None = None, fp8: Fp8Span | None = None,
                          streaming: StreamingSpan | None = None) -> torch.Tensor:
    """slab_attention_reference's result from the Triton kernel, with no device sync (capturable in a
    CUDA graph). k, v: (S, Hkv, C, D) with any strides but a contiguous last dimension (a layer of
    the pool); key_bias: (S, C), last dimension contiguous. fp8: k, v are codes; scales (S, Hkv, C, 1), turns
    (S, C, HALF) contiguous: decoded and turned as the kernel loads them. streaming: k, v are a head-wise pool's
    retrieval heads, and these its streaming heads, in the same launch."""
    check_device(q)
    if fp8 is not None:
        assert k.dtype == torch.uint8 and fp8.key_scale.stride() == fp8.value_scale.stride()
        assert fp8.key_scale.stride(2) == 1 and fp8.cos.is_contiguous() and fp8.sin.is_contiguous()
    _, num_heads, num_q, dim = q.shape
    num_ret = k.shape[1]
    num_kv = num_ret + (0 if streaming is None else streaming.keys.shape[1])
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1
    assert (num_q, num_heads, num_kv, k.shape[2]) == (plan.num_rows, plan.num_kv * plan.groups, plan.num_kv,
                                                      plan.capacity), "plan made for other shapes"
    assert all(s.slab < k.shape[0] for s in plan.segments), "a segment's slab is outside the pool"
    assert plan.table.device == q.device, "plan made for another device"
    assert key_bias is None or key_bias.stride(-1) == 1
    out = torch.empty(plan.num_splits, num_heads, num_q, dim, dtype=torch.float32, device=q.device)
    lse = torch.full((plan.num_splits, num_heads, num_q), float("-inf"), device=q.device)  # padding rows stay so
    grid = (plan.num_kv, plan.table.shape[0], plan.num_splits)
    companions = (fp8.key_scale, fp8.value_scale, fp8.cos, fp8.sin) if fp8 is not None else (q, q, q, q)
    strides = (fp8.key_scale.stride(0), fp8.key_scale.stride(1), fp8.cos.stride(0)) if fp8 is not None else (0, 0, 0)
    if streaming is not None:
        ks, vs, held = streaming.keys, streaming.values, streaming.held_bias
        assert ks.stride(-1) == 1 and vs.stride(-1) == 1 and held.stride(-1) == 1
        most = streaming.start + max((s.num_rows for s in plan.segments), default=0)
        assert most <= min(ks.shape[2], plan.num_splits * plan.keys_per_split), "a step overflows the step area"
        heads = (ks, vs, held, streaming.kv_map, num_ret, *ks.stride()[:3], *vs.stride()[:3], held.stride(0),
                 streaming.start)
    else:
        heads = (q, q, q, q, num_kv, 0, 0, 0, 0, 0, 0, 0, 0)
    _slab_kernel[grid](q, k, v, key_bias if key_bias is not None else q, plan.table, out, lse, q.stride(1),
                       q.stride(2), k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
                       0 if key_bias is None else key_bias.stride(0), num_q, plan.groups, plan.keys_per_split,
                       scale * math.log2(math.e), *companions, *strides, *heads, HAS_BIAS=key_bias is not None,
                       DOT=dot_type(q.dtype), HEAD_DIM=dim, BLOCK_M=plan.block_m, BLOCK_N=64,
                       BLOCK_D=triton.next_power_of_2(max(dim, 16)), FP8=fp8 is not None,
                       HALF=0 if fp8 is None else fp8.inv_freq.numel(), HEADWISE=streaming is not None)
    return merge_splits(out, lse, q.dtype)


def _slab_chunks(q, k, v, scale, segments, key_bias):
    """Each segment through chunk_attention on its slab alone, as the single-stream step calls it:
    key_valid only where padding lies among the slab's visible slots."""
    out = torch.zeros_like(q)
    for slab, row0, n, start in segments:
        bias = None if key_bias is None else key_bias[slab, :start + n]
        valid = None if bias is None or bool((bias == 0).all()) else bias == 0
        out[:, :, row0:row0 + n] = chunk_attention(q[:, :, row0:row0 + n], k[slab:slab + 1, :, :start + n],
                                                   v[slab:slab + 1, :, :start + n], scale, valid)
    return out


def _by_kind(path, q, k, v, scale, segments, key_bias, streaming: StreamingSpan | None):
    """path (_slab_chunks' signature) for each kind of a head-wise pool's heads: the retrieval heads over their
    slabs, the streaming heads over their windows, each segment's rows in its step area (start = the area's)."""
    if streaming is None:
        return path(q, k, v, scale, segments, key_bias)
    out = torch.empty_like(q)
    windows = [(slab, row0, n, streaming.start) for slab, row0, n, _ in segments]
    for heads, keys, values, segs, bias in ((streaming.retrieval_q, k, v, segments, key_bias),
                                            (streaming.streaming_q, streaming.keys, streaming.values, windows,
                                             streaming.held_bias)):
        if heads.numel():
            out[:, heads] = path(q[:, heads], keys, values, scale, segs, bias)
    return out


def slab_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, plan: SlabPlan,
                   key_bias: torch.Tensor | None = None, fp8: Fp8Span | None = None,
                   streaming: StreamingSpan | None = None) -> torch.Tensor:
    """Dispatch: the reference when switched on; Triton for CUDA half precision; otherwise (the CPU,
    CUDA float32) a chunk_attention call per segment, which reads the plan's host segments (and
    syncs on key_bias: not for a graph). q: (1, Hq, N, D); k, v: (S, Hkv, C, D); key_bias: (S, C).
    fp8: k, v are an fp8 pool's codes; the Triton kernel decodes them as it loads them, the other paths first.
    streaming: a head-wise pool's streaming heads (k, v its retrieval heads): one launch for both on the Triton
    path, a call for each kind elsewhere."""
    if fp8 is not None and not (half_on_gpu(q) and not use_reference):
        k, v = fp8.decode(k, v, q.dtype)
    if use_reference:
        report("slab_attention", "reference")
        return _by_kind(lambda *a: slab_attention_reference(*a), q, k, v, scale, plan.segments, key_bias, streaming)
    if half_on_gpu(q):
        report("slab_attention", ("triton-fp8" if fp8 is not None else "triton")
               + ("-headwise" if streaming is not None else ""))
        return slab_attention_triton(q, k, v, scale, plan, key_bias, fp8, streaming)
    report("slab_attention", "chunk-per-segment")
    return _by_kind(_slab_chunks, q, k, v, scale, plan.segments, key_bias, streaming)
