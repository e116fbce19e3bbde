"""Compressed visual tokens: encoder reuse and token pruning keep what they promise."""

import numpy as np
import pytest
import torch

from conftest import make_chunks
from livesight.kernels import (chunk_attention, chunk_attention_reference, segment_attention,
                               segment_attention_reference, token_change, token_change_reference, token_novelty,
                               token_novelty_reference)
from livesight.kvcache import Segment
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.streaming.tokens import StepBuilder
from livesight.vision.prune import select_tokens
from test_equivalence import run_lockstep

SIZE = (360, 640)


def test_similarity_kernels_match_their_references():
    g = torch.Generator().manual_seed(0)
    frames, ref = torch.rand(4, 3, 56, 84, generator=g), torch.rand(4, 3, 56, 84, generator=g)
    assert torch.allclose(token_change(frames, ref, 28, 2), token_change_reference(frames, ref, 28, 2), atol=1e-6)
    assert token_change(frames, frames, 28, 2).abs().max() == 0
    tokens, refs = torch.randn(50, 16, generator=g), torch.randn(3, 50, 16, generator=g)
    refs[1, :5] = tokens[:5] * 2.0  # same direction: novelty 0
    refs[2, 5:7] = 0  # an empty reference is no match
    got, want = token_novelty(tokens, refs), token_novelty_reference(tokens, refs)
    assert torch.allclose(got, want, atol=1e-5) and got[:5].abs().max() < 1e-5
    q, k, v = (torch.randn(2, n, 8, generator=g) for n in (6, 20, 20))
    q_seg, k_seg = torch.tensor([0, 0, 1, 2, 2, 2]), torch.arange(20) % 3
    assert torch.allclose(segment_attention(q, k, v, q_seg, k_seg, 0.3),
                          segment_attention_reference(q, k, v, q_seg, k_seg, 0.3), atol=1e-5)


def test_masked_keys_are_as_if_absent():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(1, 4, 3, 8, generator=g), torch.randn(1, 2, 12, 8, generator=g), torch.randn(1, 2, 12, 8, generator=g)
    valid = torch.ones(12, dtype=torch.bool)
    valid[2:5] = False
    keep = valid.nonzero().squeeze(1)
    want = chunk_attention_reference(q, k[:, :, keep], v[:, :, keep], 0.35)
    for fn in (chunk_attention, chunk_attention_reference):
        assert torch.allclose(fn(q, k, v, 0.35, valid), want, atol=1e-5)


def test_selection_rule():
    n = 20
    novelty, change, none = torch.linspace(0, 1, n), torch.ones(n), torch.zeros(n, dtype=torch.bool)
    everything_new = select_tokens(torch.ones(n), change, none, 1.0, 0.25, 0.02)
    assert everything_new.tolist() == list(range(n))
    capped = select_tokens(novelty, change, none, 0.25, 0.1, 0.02)  # the 5 most novel
    assert capped.tolist() == list(range(15, 20))
    floored = select_tokens(torch.zeros(n), change, none, 1.0, 0.25, 0.02)  # all redundant but all changed
    assert len(floored) == 5
    static = select_tokens(torch.zeros(n), torch.zeros(n), none, 1.0, 0.25, 0.02)
    assert len(static) == 0
    forced = none.clone()
    forced[3] = True
    assert select_tokens(torch.zeros(n), torch.zeros(n), forced, 1.0, 0.25, 0.02).tolist() == [3]


def test_kept_tokens_keep_their_full_grid_positions():
    full, pruned = StepBuilder(7, 0, 0), StepBuilder(7, 0, 0)
    grid, kept = (1, 3, 5), torch.tensor([0, 4, 9, 14])
    before, after = torch.zeros(2, 4), torch.zeros(3, 4)
    full.vision(before, torch.zeros(15, 4), grid, after, 0.0, 2)
    pruned.vision(before, torch.zeros(4, 4), grid, after, 0.0, 2, kept)
    (_, a), (_, b) = full.build(), pruned.build()
    rows = torch.cat([torch.arange(2), 2 + kept, torch.arange(17, 20)])
    assert torch.equal(b.pos, a.pos[:, rows])
    assert pruned.next_pos == full.next_pos  # the group spans the whole grid, pruned or not


def _encoder_pair(tiny, threshold):
    adapter = QwenVLAdapter(tiny)
    probe = Session(adapter, SessionConfig(retrieval=RetrievalConfig(enabled=False)), SIZE)
    reusing, full = (adapter.vision_encoder(probe.size, 2, t) for t in (threshold, None))
    return adapter, probe.size, reusing, full


def test_full_pass_equals_transformers_tower(tiny):
    adapter, size, _, full = _encoder_pair(tiny, 0.0)
    for chunk in make_chunks(2, size=SIZE):
        x, pixels = adapter.to_pixels(torch.from_numpy(chunk.frames), size)
        with torch.inference_mode():
            want = adapter.visual(pixels, grid_thw=torch.tensor([adapter.patch_grid(size, 2)])).pooler_output
        got, stats = full.encode(x, pixels)
        assert stats.mode == "full" and torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("scene", ["shapes", "quiet"])
def test_threshold_zero_is_exactly_full_recomputation(tiny, scene):
    adapter, size, reusing, full = _encoder_pair(tiny, 0.0)
    chunks = make_chunks(6, size=SIZE, scene=scene)
    chunks.insert(3, chunks[2])  # a repeated chunk is reused, and reuse is exact
    modes = []
    for chunk in chunks:
        frames = torch.from_numpy(chunk.frames)
        (got, stats), (want, _) = adapter.encode_frames(frames, size, reusing), adapter.encode_frames(frames, size, full)
        modes.append(stats.mode)
        assert torch.equal(got, want), stats
    assert modes[3] == "reused" and "partial" not in modes


def test_partial_pass_of_every_token_is_the_full_pass(tiny):
    adapter, size, reusing, full = _encoder_pair(tiny, 0.02)
    first, second = make_chunks(2, size=SIZE)
    adapter.encode_frames(torch.from_numpy(first.frames), size, reusing)
    x, pixels = adapter.to_pixels(torch.from_numpy(second.frames), size)
    with torch.inference_mode():
        reusing._partial_pass(pixels, torch.arange(reusing.num_tokens))
    want, _ = full.encode(x, pixels)
    assert torch.allclose(reusing.output, want, atol=1e-5, rtol=1e-4)


def _stream(tiny, scene, seconds, compression, **config):
    config = SessionConfig(narrate_tokens=2, compression=compression, **{"retrieval": RetrievalConfig(enabled=False), **config})
    session = Session(QwenVLAdapter(tiny), config, SIZE)
    rows = [session.add_chunk(c)[-1].data for c in make_chunks(seconds, size=SIZE, scene=scene)]
    return session, rows


def test_static_video_skips_the_encoder_and_sends_almost_nothing(tiny):
    session, rows = _stream(tiny, "static", 40, CompressionConfig())
    grid = rows[0]["vision_tokens"]["grid"]
    assert rows[0]["encoder"] == "full" and rows[0]["vision_tokens"]["kept"] == grid
    assert all(r["encoder"] == "reused" and r["vision_tokens"]["encoded"] == 0 for r in rows[1:])
    sent = sum(r["vision_tokens"]["kept"] for r in rows[1:])
    # only the refresh that keeps every position inside the 16-s window: once per 15 s
    assert sent == 2 * grid and sent / (39 * grid) < 0.06


def test_every_position_stays_in_the_vision_window(tiny):
    """Pruning drops repeats, but the window always shows every part of the picture."""
    session, rows = _stream(tiny, "quiet", 30, CompressionConfig(), vision_window_s=6.0)
    table = session.cache.table
    assert rows[-1]["kv_tokens"]["vision"] < 6 * session.tokens_per_chunk  # fewer tokens than uncompressed
    # each kept grid token's (h, w) offset within its chunk: every offset of the grid is present
    offsets = set()
    for group in table.group[table.segment == Segment.VISION].unique().tolist():
        mine = (table.group == group) & (table.segment == Segment.VISION)
        start = int(table.pos[0, mine].min()) + len(session.chat.chunk_open)
        offsets |= {(h - start, w - start) for h, w in zip(table.pos[1, mine].tolist(), table.pos[2, mine].tolist())}
    gh, gw = session.grid[1:]
    assert {(h, w) for h in range(gh) for w in range(gw)} <= offsets, offsets


def test_busy_video_is_never_pruned_below_the_floor(tiny):
    compression = CompressionConfig(keep_ratio=0.1, keep_floor=0.4)
    _, rows = _stream(tiny, "busy", 8, compression)
    grid = rows[0]["vision_tokens"]["grid"]
    assert all(r["encoder"] == "full" for r in rows)
    assert all(r["vision_tokens"]["kept"] >= int(np.ceil(0.4 * grid)) for r in rows)


def test_engine_equivalence_holds_for_the_kept_sequence(tiny):
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=3, answer_tokens=4,
                           system_prompt="sys", retrieval=RetrievalConfig(enabled=False),
                           compression=CompressionConfig(keep_ratio=0.5))
    session, log = run_lockstep(tiny, config, num_chunks=9, questions=[(5, "what moved?")])
    kept = session.cache.table.counts()["vision"]
    assert kept < 3 * session.tokens_per_chunk, "nothing was pruned: the test would not exercise pruning"
    assert log["max_err"] < 2e-5, log


def test_retrieval_pads_unequal_blocks_and_masks_the_padding(tiny):
    """Per-layer retrieval of pruned (unequal) blocks: the padding is invisible to attention."""
    config = SessionConfig(vision_window_s=4.0, text_sink=4, text_window=12, narrate_tokens=2, answer_tokens=3,
                           system_prompt="sys", retrieval=RetrievalConfig(top_k=2, scope="layer"),
                           compression=CompressionConfig(keep_ratio=0.6, keep_floor=0.2))
    session = Session(QwenVLAdapter(tiny), config, (180, 320))
    for chunk in make_chunks(12, scene="shapes"):
        session.add_chunk(chunk)
    sizes = {len(b.rows) for b in session.offloaded.store.blocks}
    assert len(sizes) > 1, f"blocks all of one size {sizes}: nothing to pad"
    cache, stepper = session.cache, session.stepper
    answers = []
    original = cache.insert_retrieved

    def insert(keys, values, rows, valid=None):
        if valid is not None and poison[0]:
            keys, values = keys.clone(), values.clone()
            keys.transpose(1, 2)[~valid] = 1e4  # garbage in the padding must change nothing
            values.transpose(1, 2)[~valid] = -1e4
        original(keys, values, rows, valid)
        answers.append(None if valid is None else int((~valid).sum()))

    cache.insert_retrieved = insert
    state = (cache.key_buffer.clone(), cache.value_buffer.clone(), cache.length, cache.table, session.pending,
             stepper._pos, stepper._seq, stepper._group)
    logits = []
    real_forward = session.adapter.forward
    session.adapter.forward = lambda *a, **k: logits.append(real_forward(*a, **k)) or logits[-1]
    for poison in ([False], [True]):
        (cache.key_buffer[:], cache.value_buffer[:], cache.length, cache.table, session.pending,
         stepper._pos, stepper._seq, stepper._group) = state
        session.ask("what moved?")
    assert answers[0] and answers[0] > 0, "no layer needed padding"
    half = len(logits) // 2
    assert all(torch.equal(a, b) for a, b in zip(logits[:half], logits[half:]))
