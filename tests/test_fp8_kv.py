"""8-bit keys and values (kernels/quant.py, kvcache/storage.py: Fp8KV): the rounding of one quantization,
and no more however often a key moves; every cache operation (steps, slides, retrieval, snapshots) works on
the codes as on plain keys; the bytes halve."""

import pytest
import torch

from conftest import make_chunks
from livesight.kernels import rotate_keys
from livesight.kernels.quant import dequantize, quantize
from livesight.kvcache.pool import KVPool
from livesight.kvcache.storage import Fp8KV
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import RetrievalConfig, SessionConfig
from livesight.streaming.session import Session


def test_each_element_keeps_three_mantissa_bits_of_its_own_magnitude():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 50, 64, generator=g) * torch.logspace(-3, 3, 50)[:, None]  # rows of any scale
    codes, scale = quantize(x)
    assert codes.dtype == torch.uint8 and scale.shape == (4, 3, 50, 1)
    back = dequantize(codes, scale, torch.float32)
    amax = x.abs().amax(-1, keepdim=True)
    assert bool(((back - x).abs() <= x.abs() * 2 ** -4 + amax * 2 ** -16).all())
    torch.testing.assert_close(back.abs().amax(-1, keepdim=True), amax, rtol=1e-6, atol=0)  # the largest kept
    again = dequantize(*quantize(back), torch.float32)
    torch.testing.assert_close(again, back, rtol=1e-6, atol=0)  # decoded values are representable: no drift
    zero_codes, zero_scale = quantize(torch.zeros(2, 8))
    assert torch.equal(dequantize(zero_codes, zero_scale, torch.float32), torch.zeros(2, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pooled", [False, True])
def test_the_quantize_and_write_kernel_writes_the_references_bytes(dtype, pooled):
    """kernels/quant.py: quantize_into's one launch (interpreted here, compiled on a GPU) writes the same codes
    and scales as quantize() and indexed writes, bit for bit: a single cache's slots, or a pool's (slab, slot)
    pairs; strided inputs (a layer's step transposed); rows of any scale, zeros included; other slots untouched."""
    from livesight.kernels.quant import quantize_into_reference, quantize_into_triton
    device = "cuda" if torch.cuda.is_available() else "cpu"  # compiled on a GPU, interpreted on the CPU
    g = torch.Generator().manual_seed(3)
    keys = (torch.randn(7, 3, 48, generator=g) * torch.logspace(-4, 4, 7)[:, None, None]).to(device, dtype)
    keys = keys.transpose(0, 1)
    values = torch.randn(3, 7, 48, generator=g).to(device, dtype)
    values[1, 2] = 0
    slabs = torch.tensor([0, 2, 2, 1, 0, 2, 1], device=device) if pooled else None
    slots = torch.tensor([5, 0, 9, 3, 11, 4, 6], device=device)
    made = []
    for write in (quantize_into_reference, quantize_into_triton):
        targets = tuple(torch.full((3, 3, 12, width), fill, dtype=dtype, device=device)
                        for width, fill, dtype in ((48, 7, torch.uint8), (1, -1.0, torch.float32)) * 2)
        write(keys, values, targets, slabs, slots)
        made.append(targets)
    for want, got in zip(*made):
        assert torch.equal(want, got)
    first = slabs if pooled else torch.zeros_like(slots)
    assert torch.equal(made[1][1][first, :, slots], quantize(keys.transpose(0, 1))[1])
    assert int((made[1][0] == 7).all(-1).sum()) == 3 * 3 * 12 - 7 * 3  # the rest untouched


def test_a_key_moved_many_times_is_rounded_once():
    """Keys moved 32 times (a window's slides) decode to the exactly turned keys within one rounding: the
    codes stay as written and only the slot's shift grows. Quantizing after each turn would drift."""
    inv_freq = 1.0 / (1e4 ** (torch.arange(0, 32, 2).float() / 32))
    keys = torch.randn(2, 1, 2, 40, 32, generator=torch.Generator().manual_seed(1))
    values = torch.randn_like(keys)
    store = Fp8KV.allocate(keys.shape, torch.float32, "cpu", inv_freq)
    for layer in range(2):
        store.write(layer, slice(0, 40), keys[layer], values[layer])
    first = store.take(torch.arange(40))[0]
    once = float(((first - keys).norm(dim=-1) / keys.norm(dim=-1)).mean())
    from livesight.kernels import rotate_keys_reference
    exact = keys
    for _ in range(32):
        store.move(torch.arange(40), 0, torch.full((40,), -3))
        exact = rotate_keys_reference(exact, torch.full((40,), -3), inv_freq)
    got, got_values = store.take(torch.arange(40))
    err = float(((got - exact).norm(dim=-1) / exact.norm(dim=-1)).mean())
    assert once < 0.04 and abs(err - once) < 1e-3, (once, err)  # 16 quantizations would give about 0.11
    assert torch.equal(got_values, dequantize(*quantize(values), torch.float32))


def test_keys_put_where_moved_keys_were_are_read_unturned():
    """Retrieval's insertion writes new keys into slots whose earlier tokens had moved: the new keys come back
    at the positions they were put at (one rounding), not turned by what the slots held before."""
    inv_freq = 1.0 / (1e4 ** (torch.arange(0, 32, 2).float() / 32))
    g = torch.Generator().manual_seed(2)
    store = Fp8KV.allocate((2, 1, 2, 40, 32), torch.float32, "cpu", inv_freq)
    store.put(0, torch.randn(2, 2, 40, 32, generator=g), torch.randn(2, 2, 40, 32, generator=g))
    store.move(torch.arange(10, 30), 20, torch.full((20,), 9))  # slots 20 .. 39 turned by 9
    keys, values = torch.randn(2, 2, 10, 32, generator=g), torch.randn(2, 2, 10, 32, generator=g)
    store.put(25, keys, values)  # into slots whose shift is 9
    got, got_values = store.take(torch.arange(25, 35))
    torch.testing.assert_close(got[:, 0], dequantize(*quantize(keys), torch.float32))
    torch.testing.assert_close(got_values[:, 0], dequantize(*quantize(values), torch.float32))
    assert bool((store.shift[25:35] == 0).all()) and bool((store.shift[20:25] == 9).all())


def _session(tiny, kv_dtype: str, **changes) -> Session:
    settings = dict(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=4,
                    system_prompt="sys", retrieval=RetrievalConfig(top_k=2, scope="global"), kv_dtype=kv_dtype)
    config = SessionConfig(**(settings | changes))
    return Session(QwenVLAdapter(tiny), config, (180, 320))


def test_an_fp8_stream_slides_retrieves_and_answers_close_to_the_plain_one(tiny):
    """The same chunks and question through an fp8 cache and a float32 one, without narration (so the
    tokens are the same whatever the logits): the first layer's keys and values, which only rounding
    separates, stay within one rounding through every slide and the retrieval; the logits stay close."""
    caches, logits = {}, {}
    for kv_dtype in ("model", "fp8"):
        session = _session(tiny, kv_dtype, narrate=False)
        seen, forward = [], session.stepper.forward
        session.stepper.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
        for chunk in make_chunks(9):
            session.add_chunk(chunk)
            if chunk.index == 6:
                answer = session.ask("what moved?", remember=False)[-1]
                assert answer.data["retrieved"], "nothing was retrieved"
        caches[kv_dtype], logits[kv_dtype] = session.cache, seen
    plain, fp8 = caches["model"], caches["fp8"]
    assert fp8.kv.shift.abs().max() > 0, "no slot moved"
    assert torch.equal(plain.table.seq, fp8.table.seq) and torch.equal(plain.table.pos, fp8.table.pos)
    index = torch.arange(plain.length)
    (k0, v0), (k1, v1) = plain.kv.take(index), fp8.kv.take(index)
    for want, got in ((k0[0], k1[0]), (v0[0], v1[0])):  # layer 0: no earlier layer's rounding in its input
        assert float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max()) < 0.045  # requantizing: 0.09
    for a, b in zip(logits["fp8"], logits["model"]):
        assert float((a - b).abs().max() / b.abs().max()) < 0.05


def test_fp8_blocks_are_offloaded_as_the_caches_own_codes_in_half_the_bytes(tiny, tmp_path):
    """An fp8 stream's evicted blocks keep the codes, scales and pending turns the cache held (no decode, no
    second rounding): unpacked, each equals the keys and values the cache read at eviction, bit for bit, in RAM
    and after a spill to disk; each takes (D + 4) / (4 D) of a float32 block's bytes."""
    session = _session(tiny, "fp8", retrieval=RetrievalConfig(top_k=2, scope="global", ram_gb=2e-5,
                                                              folder=str(tmp_path)))
    offloaded, held, by_seq = session.offloaded, [], {}
    offload = offloaded.offload

    def offload_seen(index, time_range):
        held.append(session.cache.kv.take(index))
        table = session.cache.table
        for j, i in enumerate(index.tolist()):
            by_seq[int(table.seq[i])] = (held[-1][0][:, 0, :, j], int(table.pos[0, i]))
        offload(index, time_range)
    offloaded.offload = offload_seen
    for chunk in make_chunks(9):
        session.add_chunk(chunk)
    store, kv = offloaded.store, session.cache.kv
    d = kv.keys.shape[-1]
    assert len(store.blocks) == len(held) >= 3 and store.stats.disk_bytes > 0 and store.stats.ram_bytes > 0
    assert any(float(b.shift.abs().max()) > 0 for b in store.blocks), "no offloaded key was owed a turn"
    for block, (keys, values) in zip(store.blocks, held):
        assert block.nbytes == 2 * keys.numel() * (d + 4) // d  # one byte per element, four per scale
        stored = store.load(block, list(range(keys.shape[0])))
        for layer, (k, v) in stored.items():
            assert k.dtype == torch.uint8 and k.shape[-1] == d + 4
            got_k, got_v = kv.unpack(k, v, block.shift)
            assert torch.equal(got_k, keys[layer, 0]) and torch.equal(got_v, values[layer, 0])
    inserted = []
    insert = session.cache.insert_retrieved
    session.cache.insert_retrieved = lambda keys, values, rows, valid=None: inserted.append((keys, rows)) or insert(
        keys, values, rows, valid)
    answer = session.ask("what moved?")[-1]
    assert answer.data["retrieved"] and inserted, "nothing was retrieved"
    keys, rows = inserted[0]  # global scope: layer 0's rows describe every layer's slots
    real = torch.nonzero(rows.seq >= 0).squeeze(1)
    for j in real.tolist():  # each brought back turned from where it left to its slot: the owed turn and the move
        evicted_key, evicted_pos = by_seq[int(rows.seq[j])]
        want = rotate_keys(evicted_key, torch.tensor([int(rows.pos[0, j]) - evicted_pos]), kv.inv_freq)
        torch.testing.assert_close(keys[:, :, j], want, atol=1e-5, rtol=1e-5)


def test_fp8_snapshot_and_restore_leave_the_cache_bit_for_bit(tiny):
    session = _session(tiny, "fp8")
    for chunk in make_chunks(5):
        session.add_chunk(chunk)
    kv = session.cache.kv
    before = [t.clone() for t in (kv.keys, kv.key_scale, kv.values, kv.value_scale, kv.shift)]
    n = session.cache.length
    session.ask("what moved?", remember=False)
    after = (kv.keys, kv.key_scale, kv.values, kv.value_scale, kv.shift)
    assert session.cache.length == n
    assert all(torch.equal(a[..., :n, :] if a.dim() > 1 else a[:n], b[..., :n, :] if b.dim() > 1 else b[:n])
               for a, b in zip(after, before))


def test_fp8_halves_the_bytes_of_a_cache_and_of_a_pools_slab(tiny):
    adapter = QwenVLAdapter(tiny)
    plain, fp8 = adapter.new_cache(1000), adapter.new_cache(1000, "fp8")
    d = plain.key_buffer.shape[-1]  # 16 at tiny: 16 one-byte codes and a 4-byte scale against 16 floats of 4 bytes
    # and per slot (all layers): its shift (8 bytes), its turn's cos and sin (2 x 2 bytes x d / 2)
    assert fp8.nbytes == plain.nbytes * (d + 4) // (4 * d) + 1000 * (8 + 2 * d)
    pool = adapter.new_pool(3, 1000, "fp8")
    allocated = sum(t.nbytes for t in pool.fp8) + pool.key_bias.nbytes
    assert allocated == 4 * KVPool.slab_bytes(adapter.num_layers, adapter.num_kv_heads, d, 1000, 4, "fp8", d // 2)
    with pytest.raises(ValueError, match="--kv-dtype must be model or fp8"):
        SessionConfig(kv_dtype="int4")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotary_dims", [32, 16])  # full rotary, and a partial one (Qwen3.5 turns a quarter)
def test_the_span_kernel_decodes_and_turns_8_bit_keys_as_it_loads_them(dtype, rotary_dims):
    """Triton (the interpreter here, compiled on a GPU) against the reference: codes decoded with their scales,
    keys turned by their slots' turn tables after two moves (the reference turns by the shifts, in float64), rows
    past `start` unseen, a padding slot masked."""
    from livesight.kernels.span_attention import span_attention_reference, span_attention_triton
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(3)
    inv_freq = (1.0 / (1e4 ** (torch.arange(0, rotary_dims, 2).float() / rotary_dims))).to(device)
    store = Fp8KV.allocate((1, 1, 2, 150, 32), dtype, device, inv_freq)
    store.write(0, slice(0, 150), torch.randn(1, 2, 150, 32, generator=g).to(device, dtype),
                torch.randn(1, 2, 150, 32, generator=g).to(device, dtype))
    store.move(torch.arange(20, 150, device=device), 10, torch.full((130,), -7))  # a slide: tokens move down
    store.move(torch.arange(40, 140, device=device), 40, torch.full((100,), 300))  # a retrieval makes room
    assert store.shift[:140].unique().numel() == 3
    end = 130
    codes_k, codes_v, fp8 = store.span(0, end)
    q = torch.randn(1, 6, 3, 32, generator=g).to(device, dtype)
    start = torch.tensor([end - 3], device=device)
    bias = torch.zeros(end, dtype=dtype, device=device)
    bias[12] = float("-inf")
    for key_bias in (None, bias):
        ref = span_attention_reference(q, *fp8.decode(codes_k, codes_v, dtype), 0.2, start, key_bias)
        got = span_attention_triton(q, codes_k, codes_v, 0.2, start, key_bias, fp8)
        # float32: the turn tables' float16 cos and sin (5e-4 apart at most) separate the two
        torch.testing.assert_close(got, ref, atol=1e-3 if dtype == torch.float32 else 2e-2,
                                   rtol=1e-3 if dtype == torch.float32 else 2e-2)
    keys, _ = fp8.decode(codes_k, codes_v, torch.float32)  # past the rotary dims, a key is never turned
    plain = dequantize(codes_k, fp8.key_scale, torch.float32)
    assert torch.equal(keys[..., rotary_dims:], plain[..., rotary_dims:])
    assert not torch.allclose(keys[..., :rotary_dims], plain[..., :rotary_dims])


def test_an_fp8_static_step_reads_the_codes_and_equals_the_dynamic_one(tiny):
    """The fixed-shape step (what a GPU's CUDA graphs replay) hands the span kernel the codes with their scales and
    shifts; run eagerly here, through slides and a retrieval, its logits equal the dynamic step's."""
    from livesight.streaming.static_step import StaticStep
    logits = {}
    for static in (False, True):
        session = _session(tiny, "fp8", narrate=True)
        if static:
            session.stepper.static = StaticStep(session.adapter, session.cache, graphs=False)
        seen, forward = [], session.stepper.forward
        session.stepper.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
        for chunk in make_chunks(7):
            session.add_chunk(chunk)
            if chunk.index == 5:
                assert session.ask("what moved?", remember=False)[-1].data["retrieved"]
        logits[static] = seen
        assert session.cache.kv.shift.abs().max() > 0
    assert session.cache.fp8_span is not None  # the static step went through the codes
    assert len(logits[True]) == len(logits[False])
    for a, b in zip(logits[True], logits[False]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the span kernel compiled, and CUDA graphs, need a GPU")
def test_fp8_cuda_graph_steps_read_the_codes_in_the_kernel_and_stay_close_to_eager():
    """bf16 on a GPU: the graphs' decode steps go through the span kernel's fp8 path (codes decoded and turned as
    they load); the eager steps decode whole layers first (rounded to bf16 there). The two stay within bf16's
    rounding of each other through slides and a retrieval."""
    from livesight.kernels.dispatch import last_path
    from livesight.models.loader import load_model
    loaded = load_model("tiny-random", "cuda", torch.bfloat16)
    logits = {}
    for graphs in (True, False):
        session = Session(QwenVLAdapter(loaded), SessionConfig(
            vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=6, answer_tokens=4, system_prompt="sys",
            retrieval=RetrievalConfig(top_k=2, scope="global"), kv_dtype="fp8", cuda_graphs=graphs), (180, 320))
        seen, forward = [], session.stepper.forward
        session.stepper.forward = lambda *a, **k: seen.append(forward(*a, **k)) or seen[-1]
        for chunk in make_chunks(8):
            session.add_chunk(chunk)
            if chunk.index == 6:
                session.ask("what moved?", remember=False)
        logits[graphs] = seen
        if graphs:
            assert session.stepper.static.num_graphs > 0 and last_path["span_attention"] == "triton-fp8"
    assert len(logits[True]) == len(logits[False])
    worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(logits[True], logits[False]))
    assert worst < 0.05, worst
