"""The Triton kernels against their plain-torch references on random inputs: compiled on a GPU,
interpreted on the CPU (conftest sets TRITON_INTERPRET=1 there). Also the torch paths the
dispatchers take on the CPU, and the invariants each kernel's caller relies on."""

import importlib

import pytest
import torch

from livesight.kernels import (VISION_ATTENTION_NAME, rotate_keys_reference, score_blocks, score_blocks_reference,
                               span_attention, span_attention_reference, varlen_attention,
                               varlen_attention_reference)
from livesight.kernels.dispatch import last_path
from livesight.kernels.rope import rotate_keys_triton
from livesight.kernels.span_attention import TARGET_PROGRAMS, span_attention_triton, span_plan
from livesight.kernels.varlen_attention import varlen_attention_triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# float32 math in both; half precision differs by the output's rounding and the order of the sums
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def _cache(num_kv, capacity, dim, dtype, seed):
    """k, v as views of a larger buffer (the cache's slot stride, a span shorter than capacity)."""
    k = _randn(1, num_kv, capacity + 9, dim, dtype=dtype, seed=seed)[:, :, :capacity]
    v = _randn(1, num_kv, capacity + 9, dim, dtype=dtype, seed=seed + 1)[:, :, :capacity]
    return k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,span,start", [(1, 300, 137), (1, 64, 0), (3, 130, 127), (40, 256, 100)])
def test_span_attention_kernel_matches_reference(dtype, rows, span, start):
    q = _randn(1, 6, rows, 32, dtype=dtype, seed=rows)
    k, v = _cache(2, span, 32, dtype, seed=span)
    start_slot = torch.tensor([start], device=DEVICE)
    bias = torch.zeros(span, dtype=dtype, device=DEVICE)
    bias[min(5, start):min(9, start)] = float("-inf")  # padding slots from retrieval
    for key_bias in (None, bias):
        ref = span_attention_reference(q, k, v, 0.17, start_slot, key_bias)
        got = span_attention_triton(q, k, v, 0.17, start_slot, key_bias)
        torch.testing.assert_close(got, ref, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("path", ["triton", "dispatch"])
def test_span_attention_ignores_slots_past_each_row_and_reads_start_on_the_device(path):
    """Row i sees slots 0 .. start + i: stale slots past them change nothing, and one call shape
    serves every start (what lets one CUDA graph serve every cache length)."""
    fn = span_attention_triton if path == "triton" else span_attention
    q = _randn(1, 4, 3, 16, seed=1)
    k, v = _cache(2, 200, 16, torch.float32, seed=2)
    for start in (0, 61, 150, 197):
        start_slot = torch.tensor([start], device=DEVICE)
        got = fn(q, k, v, 0.25, start_slot)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, start + 3:], v2[:, :, start + 3:] = 1e4, -1e4
        torch.testing.assert_close(fn(q, k2, v2, 0.25, start_slot), got, atol=1e-5, rtol=1e-5)
        k3 = k.clone()
        k3[:, :, start + 1] = 1e4  # row 0 must not see row 1's slot; row 1 does
        changed = fn(q, k3, v, 0.25, start_slot)
        torch.testing.assert_close(changed[:, :, 0], got[:, :, 0], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed[:, :, 1], got[:, :, 1])


def test_span_plan_covers_every_key_and_fills_the_gpu():
    for rows in (1, 8, 64, 320):
        for span in (64, 512, 5120, 70_000):
            block_m, splits, per_split = span_plan(rows, span, 4, 7)
            assert per_split % 64 == 0 and splits * per_split >= span
            assert (splits - 1) * per_split < span  # no split starts past the span
            programs = 4 * -(-7 * rows // block_m) * splits
            # rounding splits to whole key blocks loses at most half of them
            assert programs >= min(TARGET_PROGRAMS, 4 * -(-7 * rows // block_m) * -(-span // 64)) / 2


def test_span_attention_dispatch_and_reference_switch(monkeypatch):
    q = _randn(1, 4, 2, 16, seed=3)
    k, v = _cache(2, 40, 16, torch.float32, seed=4)
    start = torch.tensor([20], device=DEVICE)
    span_attention(q, k, v, 0.25, start)
    assert last_path["span_attention"] == "sdpa-masked"  # float32 (and the CPU) never take Triton
    monkeypatch.setattr(importlib.import_module("livesight.kernels.span_attention"), "use_reference", True)
    out = span_attention(q, k, v, 0.25, start)
    assert last_path["span_attention"] == "reference"
    assert torch.equal(out, span_attention_reference(q, k, v, 0.25, start))


@pytest.mark.skipif(DEVICE == "cpu", reason="the Triton path serves CUDA tensors (run on the device machine)")
def test_span_attention_takes_triton_on_a_gpu():
    q = _randn(1, 4, 2, 16, dtype=torch.bfloat16, seed=5)
    k, v = _cache(2, 40, 16, torch.bfloat16, seed=6)
    span_attention(q, k, v, 0.25, torch.tensor([20], device=DEVICE))
    assert last_path["span_attention"] == "triton"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_keys_kernel_matches_reference(dtype):
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 32, 2).float() / 32))
    keys = _randn(3, 1, 2, 11, 32, dtype=dtype, seed=7)
    delta = torch.randint(-30_000, 30_000, (11,), generator=torch.Generator().manual_seed(8))
    per_layer = torch.randint(-30_000, 30_000, (3, 1, 1, 11), generator=torch.Generator().manual_seed(9))
    strided = _randn(2, 3, 40, 32, dtype=dtype, seed=10)[:, :, 5:16]  # a slice of the cache's buffer
    for x, d in ((keys, delta), (keys, per_layer), (strided, delta)):
        ref = rotate_keys_reference(x, d.to(DEVICE), inv_freq.to(DEVICE))
        got = rotate_keys_triton(x, d, inv_freq)
        if dtype == torch.float32:
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
        else:  # at most one rounding step of the output apart
            assert float((got.float() - ref.float()).abs().max()) <= float(ref.float().abs().max()) * 2 ** -7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_keys_kernel_turns_only_the_rotary_part_of_a_partial_rotary_head(dtype):
    """Qwen3.5's heads: 64 of 256 dims rotary; the other 192 come back bit for bit."""
    inv_freq = 1.0 / (1e7 ** (torch.arange(0, 64, 2).float() / 64))
    keys = _randn(2, 1, 2, 13, 256, dtype=dtype, seed=11)
    delta = torch.randint(-30_000, 30_000, (13,), generator=torch.Generator().manual_seed(12))
    ref = rotate_keys_reference(keys, delta.to(DEVICE), inv_freq.to(DEVICE))
    got = rotate_keys_triton(keys, delta, inv_freq)
    assert torch.equal(got[..., 64:], keys[..., 64:]) and torch.equal(ref[..., 64:], keys[..., 64:])
    assert not torch.allclose(got[..., :64], keys[..., :64])
    tolerance = 1e-6 if dtype == torch.float32 else float(ref.float().abs().max()) * 2 ** -7
    assert float((got.float() - ref.float()).abs().max()) <= tolerance
    back = rotate_keys_reference(ref, -delta.to(DEVICE), inv_freq.to(DEVICE))
    if dtype == torch.float32:
        torch.testing.assert_close(back, keys, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen_attention_kernel_matches_reference(dtype):
    cu = torch.tensor([0, 50, 64, 130, 131, 200], dtype=torch.int32, device=DEVICE)  # one segment of 1, one > 64
    q, k, v = (_randn(3, 200, 40, dtype=dtype, seed=s) for s in (11, 12, 13))
    ref = varlen_attention_reference(q, k, v, cu, 0.2)
    torch.testing.assert_close(varlen_attention_triton(q, k, v, cu, 69, 0.2), ref, atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])
    torch.testing.assert_close(varlen_attention(q, k, v, cu, 69, 0.2), ref, atol=TOLERANCE[dtype],
                               rtol=TOLERANCE[dtype])


def test_varlen_attention_keeps_segments_apart():
    cu = torch.tensor([0, 30, 100], dtype=torch.int32, device=DEVICE)
    q, k, v = (_randn(2, 100, 16, seed=s) for s in (14, 15, 16))
    got = varlen_attention_triton(q, k, v, cu, 70, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, 30:], v2[:, 30:] = 1e3, -1e3
    changed = varlen_attention_triton(q, k2, v2, cu, 70, 0.25)
    torch.testing.assert_close(changed[:, :30], got[:, :30])
    assert not torch.allclose(changed[:, 30:], got[:, 30:])


def test_vision_tower_through_the_registered_varlen_attention_equals_sdpa(tiny):
    """transformers' own tower forward, under our "flash" name, gets the varlen metadata and gives
    what its SDPA path gives; our encoder's full pass gives the same."""
    from conftest import make_chunks
    from livesight.eval.baselines import plain_attention
    from livesight.models.qwen2_5_vl import QwenVLAdapter
    adapter = QwenVLAdapter(tiny)
    assert adapter.visual.config._attn_implementation == VISION_ATTENTION_NAME
    size = (224, 336)  # 6 windows of 8 x 8 patches
    frames = torch.from_numpy(make_chunks(1, size=size)[0].frames)
    grid = torch.tensor([adapter.patch_grid(size, 2)])
    last_path.pop("varlen_attention", None)
    with torch.no_grad():
        _, pixels = adapter.to_pixels(frames, size)
        ours = adapter.visual(pixels, grid_thw=grid).pooler_output
        assert "varlen_attention" in last_path  # transformers called it, with the varlen metadata
        with plain_attention(adapter):
            plain = adapter.visual(pixels, grid_thw=grid).pooler_output
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-5)
    encoded, _ = adapter.encode_frames(frames, size, adapter.vision_encoder(size, 2, None, graphs=False))
    torch.testing.assert_close(encoded, plain, atol=1e-5, rtol=1e-5)


def test_block_scores_reduced_first_equal_the_reference():
    queries = _randn(5, 6, 7, 16, seed=17)
    reps = _randn(40, 5, 2, 16, seed=18)
    torch.testing.assert_close(score_blocks(queries, reps), score_blocks_reference(queries, reps),
                               atol=1e-5, rtol=1e-5)
    assert last_path["score_blocks"] == "torch-reduced"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_and_rotary_match_transformers(dtype):
    """The fused kernels against transformers' own modules, op for op: bf16 results may differ only
    where a float32 sum in another order rounds the other way."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm
    from livesight.kernels.fused import rms_norm_triton, rotary_reference, rotary_triton
    norm = Qwen2_5_VLRMSNorm(96, eps=1e-6).to(DEVICE, dtype)
    norm.weight.data = _randn(96, dtype=dtype, seed=20)
    x = _randn(3, 5, 96, dtype=dtype, seed=21) * 4
    with torch.no_grad():
        want = norm(x)
    got = rms_norm_triton(x, norm.weight, 1e-6)
    ulp = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert float((got.float() - want.float()).abs().max()) <= ulp * float(want.float().abs().max())
    q = _randn(1, 7, 9, 32, dtype=dtype, seed=22)  # (1, H, n, D)
    qkv = _randn(1, 9, 11, 32, dtype=dtype, seed=23).transpose(1, 2)  # a strided view, as transformers passes
    k = qkv[:, 7:]
    cos, sin = _randn(1, 9, 32, dtype=dtype, seed=24), _randn(1, 9, 32, dtype=dtype, seed=25)
    # transformers' function itself: its module attribute is ours once an adapter is built
    assert rotary_reference.__module__ == "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl"
    want_q, want_k = rotary_reference(q, k, cos, sin)
    got_q, got_k = rotary_triton(q, k, cos, sin)
    # a fused multiply-add skips one rounding; Triton's interpreter truncates casts to bfloat16
    ulps = 1e-6 if dtype == torch.float32 else 3 * 2 ** -8
    for got, want in ((got_q, want_q), (got_k, want_k)):
        assert float((got.float() - want.float()).abs().max()) <= ulps * float(want.float().abs().max())


def test_fused_ops_are_switched_on_for_the_engine_and_off_for_the_baselines(tiny):
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
    from livesight.eval.baselines import plain_attention
    from livesight.kernels.fused import rotary
    from livesight.models.qwen2_5_vl import QwenVLAdapter
    adapter = QwenVLAdapter(tiny)
    norms = [m for m in tiny.model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert norms and all("forward" in m.__dict__ for m in norms)
    assert modeling_qwen2_5_vl.apply_rotary_pos_emb is rotary
    with plain_attention(adapter):
        assert not any("forward" in m.__dict__ for m in norms)
        assert modeling_qwen2_5_vl.apply_rotary_pos_emb is not rotary
    assert all("forward" in m.__dict__ for m in norms) and modeling_qwen2_5_vl.apply_rotary_pos_emb is rotary
