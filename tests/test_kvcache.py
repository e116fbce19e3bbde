"""Position bookkeeping, the window policy and the cache's compaction."""

import torch

from livesight.kvcache import Segment, StreamCache, TokenTable, WindowPolicy
from livesight.kvcache.table import compaction_shift


def _text_table(n, segment=Segment.TEXT, seq0=0, pos0=0, t=0.0):
    return TokenTable(torch.full((n,), int(segment)), torch.arange(seq0, seq0 + n), torch.arange(seq0, seq0 + n),
                      torch.arange(pos0, pos0 + n).expand(3, n).clone(), torch.full((n,), t, dtype=torch.float64))


def test_compaction_closes_gaps_and_keeps_groups_whole():
    # group 0: text at 0; group 1: a vision block spanning 1..5; group 2: text at 6; group 3: text at 7
    pos = torch.tensor([[0, 1, 2, 2, 2, 6, 7], [0, 1, 2, 3, 5, 6, 7], [0, 1, 2, 5, 3, 6, 7]])
    group = torch.tensor([0, 1, 1, 1, 1, 2, 3])
    assert compaction_shift(pos, group).tolist() == [0] * 7  # already contiguous
    keep = torch.tensor([True, False, False, False, False, True, True])
    delta = compaction_shift(pos[:, keep], group[keep])
    assert delta.tolist() == [0, 5, 5]  # the block's extent (positions 1..5) closes up
    assert compaction_shift(pos[:, 1:], group[1:]).tolist() == [1] * 6  # everything slides to 0


def test_policy_keeps_sink_window_and_text_ends():
    sink = _text_table(3, Segment.SINK)
    vision = [TokenTable(torch.full((4,), int(Segment.VISION)), torch.arange(3 + 4 * i, 7 + 4 * i),
                         torch.full((4,), 3 + i), torch.full((3, 4), 3 + i), torch.full((4,), float(i), dtype=torch.float64))
              for i in range(10)]
    text = _text_table(30, seq0=43, pos0=13)
    table = sink
    for v in vision:
        table = table.cat(v)
    table = table.cat(text)
    keep = WindowPolicy(vision_window_s=3.0, text_sink=5, text_window=7).keep(table, now_s=10.0)
    kept = table.select(torch.nonzero(keep).squeeze(1))
    assert kept.counts() == {"sink": 3, "retrieved": 0, "vision": 12, "text": 12}
    assert sorted(kept.t[kept.segment == Segment.VISION].unique().tolist()) == [7.0, 8.0, 9.0]
    text_seq = kept.seq[kept.segment == Segment.TEXT].tolist()
    assert text_seq == list(range(43, 48)) + list(range(66, 73))


def test_compact_lays_out_segments_and_moves_keys_by_their_shift():
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 8, 2).float() / 8))
    cache = StreamCache(num_layers=2, num_kv_heads=1, head_dim=8, capacity=32, inv_freq=inv_freq,
                        dtype=torch.float32, device="cpu")
    # stream order: sink(2) text(3) vision-group(4 tokens at 5..6) text(2)
    vision = TokenTable(torch.full((4,), int(Segment.VISION)), torch.arange(5, 9), torch.full((4,), 99),
                        torch.tensor([[5, 5, 5, 5], [5, 5, 6, 6], [5, 6, 5, 6]]), torch.zeros(4, dtype=torch.float64))
    table = _text_table(2, Segment.SINK).cat(_text_table(3, seq0=2, pos0=2)).cat(vision).cat(_text_table(2, seq0=9, pos0=7))
    keys = torch.randn(2, 1, 1, 11, 8)
    for layer in cache.layers:
        layer.update(keys[layer.layer_idx], keys[layer.layer_idx] * 2)
    cache.record(table)
    keep = torch.ones(11, dtype=torch.bool)
    keep[3] = False  # evict one early text token: everything after it moves down by 1
    moved = cache.compact(keep)
    t = cache.table
    assert cache.length == 10 and moved == 7
    assert t.segment.tolist() == [0, 0, 2, 2, 2, 2, 3, 3, 3, 3]  # [sink | vision | text]
    assert t.seq.tolist() == [0, 1, 5, 6, 7, 8, 2, 4, 9, 10]
    assert t.pos[0].tolist() == [0, 1, 4, 4, 4, 4, 2, 3, 6, 7]
    from livesight.kernels import rotate_keys
    src = torch.tensor([0, 1, 5, 6, 7, 8, 2, 4, 9, 10])
    shift = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1, 1, 1])
    expected = rotate_keys(keys[:, :, :, src], -shift, inv_freq)
    assert torch.allclose(cache.key_buffer[:, :, :, :10], expected)
    assert torch.equal(cache.value_buffer[:, :, :, :10], keys[:, :, :, src] * 2)
