"""Slab attention: the packed rows of many streams, each over its own slab of one KV pool. The Triton
kernel (compiled on a GPU, interpreted on the CPU) against the reference; the CPU path against each
stream's own chunk attention, bit for bit; the isolation of streams, and the fixed plan size that
lets one CUDA graph serve every step, which the engine's batching relies on."""

import importlib
import itertools
import random

import pytest
import torch
from test_triton_kernels import DEVICE, DTYPES, TOLERANCE, _randn

from livesight.kernels import chunk_attention, slab_attention, slab_attention_reference, slab_plan, slab_plan_blocks
from livesight.kernels.dispatch import last_path
from livesight.kernels.slab_attention import slab_attention_triton

NUM_KV, GROUPS, NUM_SLABS = 2, 3, 4
# slabs out of order; one row (at start 137), three rows at start 0, 40 rows (two blocks of 64 folded
# rows); rows 44 and 45 are padding that no segment covers
SEGMENTS = [(2, 0, 1, 137), (0, 1, 3, 0), (3, 4, 40, 100)]
NUM_ROWS = 46


def _pool(capacity, dim, dtype, seed):
    """k, v: (S, Hkv, C, D), layer 1 of a (2, S, Hkv, C + 9, D) pool: the strides of the engine's views."""
    k = _randn(2, NUM_SLABS, NUM_KV, capacity + 9, dim, dtype=dtype, seed=seed)[1, :, :, :capacity]
    v = _randn(2, NUM_SLABS, NUM_KV, capacity + 9, dim, dtype=dtype, seed=seed + 1)[1, :, :, :capacity]
    return k, v


def _bias(capacity, dtype):
    """(S, C): retrieval padding among slab 3's visible slots; slab 2's only past its segment's."""
    bias = torch.zeros(NUM_SLABS, capacity, dtype=dtype, device=DEVICE)
    bias[3, 5:9] = bias[2, 150:] = bias[1] = float("-inf")
    return bias


def _plan(segments, num_rows, capacity, num_blocks=None):
    return slab_plan(segments, num_rows, GROUPS, capacity, NUM_KV, DEVICE, num_blocks)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slab_attention_kernel_matches_reference(dtype):
    q = _randn(1, NUM_KV * GROUPS, NUM_ROWS, 32, dtype=dtype, seed=1)
    k, v = _pool(200, 32, dtype, seed=2)
    num_blocks = slab_plan_blocks(NUM_ROWS, NUM_SLABS, GROUPS)
    plan = _plan(SEGMENTS, NUM_ROWS, 200, num_blocks)
    assert plan.block_m == 64 and num_blocks > len(_plan(SEGMENTS, NUM_ROWS, 200).table)  # padded
    key_bias = _bias(200, dtype)  # (the other tests' calls go without)
    got = slab_attention_triton(q, k, v, 0.17, plan, key_bias)
    ref = slab_attention_reference(q, k, v, 0.17, SEGMENTS, key_bias)
    torch.testing.assert_close(got, ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    assert torch.equal(got[:, :, 44:], torch.zeros_like(got[:, :, 44:]))  # padding rows: zeros, not NaN


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_head_wise_pool_attends_both_kinds_of_heads_in_one_launch(dtype):
    """KV head 1 retrieval, KV head 0 streaming (DuoAttention): the retrieval heads' query heads as the reference
    over their slabs; the streaming heads' over each slab's window (its held slots, by held_bias) with the
    segment's rows in the step area from slot `area` on, causally. A mutation (a slot not held read as held)
    fails."""
    from livesight.kernels.span_attention import StreamingSpan
    q = _randn(1, NUM_KV * GROUPS, NUM_ROWS, 32, dtype=dtype, seed=11)
    k, v = _pool(200, 32, dtype, seed=12)
    k, v = k[:, 1:], v[:, 1:]  # the retrieval head's storage
    area, rows = 30, 40
    ks = _randn(NUM_SLABS, 1, area + rows + 5, 32, dtype=dtype, seed=13)[:, :, :area + rows]
    vs = _randn(NUM_SLABS, 1, area + rows + 5, 32, dtype=dtype, seed=14)[:, :, :area + rows]
    held = torch.zeros(NUM_SLABS, area + rows, dtype=dtype, device=DEVICE)
    held[:, 7:19] = float("-inf")  # ring slots outside each window
    held[2, 2] = float("-inf")  # a sink slot not filled yet
    retrieval_q = torch.arange(GROUPS, 2 * GROUPS, device=DEVICE)
    streaming_q = torch.arange(0, GROUPS, device=DEVICE)
    streaming = StreamingSpan(ks, vs, held, area, torch.tensor([1, 0], dtype=torch.int32, device=DEVICE),
                              retrieval_q, streaming_q)
    plan = _plan(SEGMENTS, NUM_ROWS, 200, slab_plan_blocks(NUM_ROWS, NUM_SLABS, GROUPS))
    key_bias = _bias(200, dtype)
    want = torch.zeros_like(q)
    want[:, retrieval_q] = slab_attention_reference(q[:, retrieval_q], k, v, 0.17, SEGMENTS, key_bias)
    windows = [(slab, row0, n, area) for slab, row0, n, _ in SEGMENTS]
    want[:, streaming_q] = slab_attention_reference(q[:, streaming_q], ks, vs, 0.17, windows, held)
    got = slab_attention_triton(q, k, v, 0.17, plan, key_bias, streaming=streaming)
    torch.testing.assert_close(got, want, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    torch.testing.assert_close(slab_attention(q, k, v, 0.17, plan, key_bias, streaming=streaming), want,
                               atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    held[:, 7:19] = 0
    assert not torch.allclose(slab_attention_triton(q, k, v, 0.17, plan, key_bias, streaming=streaming), want,
                              atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_one_plan_size_serves_every_step_that_fits():
    """A graph's replay: the call (shapes, BLOCK_M, splits) stays, only the table's contents change."""
    q = _randn(1, NUM_KV * GROUPS, 12, 16, dtype=torch.float16, seed=3)
    k, v = _pool(150, 16, torch.float16, seed=4)
    steps = {"decode": [[(3, 0, 1, 50), (0, 1, 1, 0), (1, 2, 1, 149)], [(2, 5, 1, 7), (0, 0, 1, 90)]],
             "mixed": [[(0, 0, 5, 10), (2, 5, 7, 30)], [(1, 0, 1, 3), (3, 2, 8, 142), (0, 10, 2, 0)]]}
    for kind, (first, second) in steps.items():
        num_blocks = slab_plan_blocks(12, 3, GROUPS, is_decode=kind == "decode")
        captured, replayed = _plan(first, 12, 150, num_blocks), _plan(second, 12, 150, num_blocks)
        assert captured.block_m == (16 if kind == "decode" else 64)
        assert captured.launch_key == replayed.launch_key
        torch.testing.assert_close(slab_attention_triton(q, k, v, 0.25, captured),
                                   slab_attention_reference(q, k, v, 0.25, first), atol=2e-3, rtol=2e-3)
        captured.table.copy_(replayed.table)
        torch.testing.assert_close(slab_attention_triton(q, k, v, 0.25, captured),
                                   slab_attention_reference(q, k, v, 0.25, second), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("path", ["triton", "dispatch"])
def test_a_row_sees_its_own_slab_up_to_its_own_slot_only(path):
    """Another stream's slab, and this slab's slots past a row's, change nothing in the row."""
    fn = slab_attention_triton if path == "triton" else slab_attention
    segments = [(2, 0, 3, 60), (0, 3, 2, 0)]  # slab 0's neighbours are read by slab 2's rows on a bug
    q = _randn(1, NUM_KV * GROUPS, 6, 16, seed=5)
    k, v = _pool(100, 16, torch.float32, seed=6)
    plan = _plan(segments, 6, 100)
    got = fn(q, k, v, 0.25, plan)
    for slab, row0, n, start in segments:
        rows = slice(row0, row0 + n)
        k2, v2 = k.clone(), v.clone()
        others = [s for s in range(NUM_SLABS) if s != slab]
        k2[others], v2[others] = 1e4, -1e4
        k2[slab, :, start + n:], v2[slab, :, start + n:] = 1e4, -1e4
        torch.testing.assert_close(fn(q, k2, v2, 0.25, plan)[:, :, rows], got[:, :, rows], atol=1e-5, rtol=1e-5)
        k3 = k.clone()
        k3[slab, :, start + 1] = 1e4  # row 0 must not see row 1's slot; row 1 does
        changed = fn(q, k3, v, 0.25, plan)[:, :, rows]
        torch.testing.assert_close(changed[:, :, 0], got[:, :, row0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed[:, :, 1], got[:, :, row0 + 1])


def test_cpu_path_is_each_streams_own_chunk_attention_bit_for_bit(monkeypatch):
    """What the engine's batching relies on: a stream's rows come out as if it had run alone, which
    passes key_valid only where retrieval left padding among the visible slots (a masked call may
    take another SDPA kernel; on the CPU both give the same bits, so the calls are watched too)."""
    q = _randn(1, NUM_KV * GROUPS, NUM_ROWS, 32, seed=7)
    k, v = _pool(200, 32, torch.float32, seed=8)
    key_bias = _bias(200, torch.float32)
    plan = _plan(SEGMENTS, NUM_ROWS, 200)
    masked = []

    def watched(q, k, v, scale, key_valid):
        masked.append(key_valid is not None)
        return chunk_attention(q, k, v, scale, key_valid)

    monkeypatch.setattr(importlib.import_module("livesight.kernels.slab_attention"), "chunk_attention", watched)
    got = slab_attention(q, k, v, 0.17, plan, key_bias)
    assert last_path["slab_attention"] == "chunk-per-segment"
    assert masked == [False, False, True]  # slab 2's padding lies past its rows' slots
    for slab, row0, n, start in SEGMENTS:
        valid = key_bias[slab, :start + n] == 0
        alone = chunk_attention(q[:, :, row0:row0 + n], k[slab:slab + 1, :, :start + n],
                                v[slab:slab + 1, :, :start + n], 0.17, None if valid.all() else valid)
        assert torch.equal(got[:, :, row0:row0 + n], alone), (slab, row0, n, start)
    assert torch.equal(got[:, :, 44:], torch.zeros_like(got[:, :, 44:]))


def test_slab_attention_reference_switch(monkeypatch):
    q = _randn(1, NUM_KV * GROUPS, 5, 16, seed=9)
    k, v = _pool(40, 16, torch.float32, seed=10)
    segments = [(1, 0, 2, 20), (3, 2, 3, 5)]
    monkeypatch.setattr(importlib.import_module("livesight.kernels.slab_attention"), "use_reference", True)
    out = slab_attention(q, k, v, 0.25, _plan(segments, 5, 40))
    assert last_path["slab_attention"] == "reference"
    assert torch.equal(out, slab_attention_reference(q, k, v, 0.25, segments))


@pytest.mark.skipif(DEVICE == "cpu", reason="the Triton path serves CUDA tensors (run on the device machine)")
def test_slab_attention_takes_triton_on_a_gpu():
    q = _randn(1, NUM_KV * GROUPS, 2, 16, dtype=torch.bfloat16, seed=11)
    k, v = _pool(40, 16, torch.bfloat16, seed=12)
    slab_attention(q, k, v, 0.25, _plan([(1, 0, 2, 20)], 2, 40))
    assert last_path["slab_attention"] == "triton"


def test_plan_block_count_bounds_every_step_of_a_bucket():
    """slab_plan_blocks(N, M) tables fit every split of up to N rows into up to M segments."""
    rng = random.Random(0)
    for num_rows, max_segments, groups in itertools.product((1, 7, 64, 300), (1, 3, 16), (1, 3, 7, 20)):
        for _ in range(20):
            cuts = sorted(rng.sample(range(1, num_rows), min(max_segments, num_rows) - 1))
            bounds = [0, *cuts, num_rows]
            segments = [(j, a, b - a, 0) for j, (a, b) in enumerate(zip(bounds, bounds[1:]))]
            size = slab_plan_blocks(num_rows, max_segments, groups)
            plan = slab_plan(segments, num_rows, groups, num_rows, 1, "cpu")
            assert plan.table.shape[0] <= size
        if num_rows >= max_segments:  # a decode step: a row per segment
            decode = [(j, j, 1, 0) for j in range(max_segments)]
            assert slab_plan(decode, num_rows, groups, 1, 1, "cpu").table.shape[0] == \
                slab_plan_blocks(num_rows, max_segments, groups, is_decode=True)


@pytest.mark.parametrize("segments,num_blocks", [([(0, 0, 3, 0), (1, 2, 2, 0)], None),  # rows shared
                                                 ([(0, 0, 3, 98)], None),  # past the slab's capacity
                                                 ([(0, 0, 4, 0), (1, 4, 4, 0)], 1)])  # more blocks than the plan
def test_slab_plan_refuses_what_it_cannot_serve(segments, num_blocks):
    with pytest.raises(ValueError):
        _plan(segments, 8, 100, num_blocks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slab_kernel_decodes_an_fp8_pool_as_it_loads_it(dtype):
    """An fp8 pool's layer (storage.py: Fp8Buffers): each slab's codes decoded with their scales and turned by
    their slots' turns, against the reference on the decoded keys and values (float16 turn tables apart)."""
    from livesight.kernels.quant import quantize
    from livesight.kernels.span_attention import Fp8Span
    from livesight.kvcache.storage import Fp8Buffers
    inv_freq = (1.0 / (1e4 ** (torch.arange(0, 32, 2).float() / 32))).to(DEVICE)
    buffers = Fp8Buffers.allocate((2, NUM_SLABS, NUM_KV, 200, 32), 16, DEVICE)
    for codes, scales, seed in ((buffers.keys, buffers.key_scale, 2), (buffers.values, buffers.value_scale, 3)):
        codes[1], scales[1] = quantize(_randn(NUM_SLABS, NUM_KV, 200, 32, seed=seed))
    buffers.shift[1:].random_(-500, 500, generator=torch.Generator(DEVICE).manual_seed(4))  # slab 0 unmoved
    angle = buffers.shift[..., None].double() * inv_freq.double()
    buffers.turn[0], buffers.turn[1] = angle.cos().half(), angle.sin().half()
    fp8 = Fp8Span(buffers.key_scale[1], buffers.value_scale[1], buffers.shift, inv_freq, buffers.turn[0],
                  buffers.turn[1])
    q = _randn(1, NUM_KV * GROUPS, NUM_ROWS, 32, dtype=dtype, seed=1)
    plan = _plan(SEGMENTS, NUM_ROWS, 200, slab_plan_blocks(NUM_ROWS, NUM_SLABS, GROUPS))
    key_bias = _bias(200, dtype)
    got = slab_attention_triton(q, buffers.keys[1], buffers.values[1], 0.17, plan, key_bias, fp8)
    ref = slab_attention_reference(q, *fp8.decode(buffers.keys[1], buffers.values[1], dtype), 0.17, SEGMENTS, key_bias)
    tolerance = 1e-3 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, ref, atol=tolerance, rtol=tolerance)
