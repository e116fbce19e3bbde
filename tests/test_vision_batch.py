"""One vision pass over many streams' chunks equals each stream's own encode, and leaves the same state."""

import numpy as np
import pytest
import torch

from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.vision.encoder import encode_batch
from livesight.vision.synthetic import render

# two frame sizes, so two grids (3 x 5 and 4 x 7 tokens), with windows cut short at the edges
SMALL, LARGE = (84, 140), (112, 196)
# name -> (frame size, reuse threshold)
STREAMS = {"a": (SMALL, 0.02), "b": (LARGE, 0.02), "c": (SMALL, None), "d": (LARGE, 0.02), "e": (LARGE, None)}
# each round, what each stream's next chunk is: "new" (every token changes), "same" (the last chunk
# again) or "poke" (the last chunk with one token's pixels changed); and the mode that must follow
ROUNDS = [
    ({name: "new" for name in STREAMS}, dict(a="full", b="full", c="full", d="full", e="full")),
    (dict(a="poke", b="same", c="new", d="new", e="new"), dict(a="partial", b="reused", c="full", d="full", e="full")),
    (dict(a="same", b="poke", c="same", d="poke", e="new"),
     dict(a="reused", b="partial", c="full", d="partial", e="full")),
]


def _next_frames(last: np.ndarray | None, kind: str, size: tuple[int, int], t: float) -> np.ndarray:
    """(2, H, W, 3) uint8: the stream's next chunk of `kind`."""
    if kind == "new":
        return np.stack([render(t + k / 2, size[1], size[0], "busy") for k in range(2)])
    frames = last.copy()
    if kind == "poke":
        frames[:, 28:56, 56:84] = 255 - frames[:, 28:56, 56:84]  # exactly one token's pixel cube
    return frames


def _assert_same_state(got, want):
    assert got.stale == want.stale
    assert (got.ref is None) == (want.ref is None)
    if want.ref is not None:
        assert torch.equal(got.ref, want.ref)
    if want.threshold is not None:
        for name in ("keys", "values", "hidden", "output"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5, atol=1e-6)


def test_batch_equals_each_encoders_own_encode(tiny):
    adapter = QwenVLAdapter(tiny)
    batched, alone = ({name: adapter.vision_encoder(size, 2, threshold) for name, (size, threshold) in STREAMS.items()}
                      for _ in range(2))
    rows = []
    hook = adapter.visual.patch_embed.register_forward_hook(lambda module, args, out: rows.append(out.shape[0]))
    last = dict.fromkeys(STREAMS)
    try:
        for r, (kinds, modes) in enumerate(ROUNDS):
            inputs = {}
            for name, (size, _) in STREAMS.items():
                last[name] = _next_frames(last[name], kinds[name], size, 10.0 * r)
                inputs[name] = adapter.to_pixels(torch.from_numpy(last[name]), size)
            want = {name: alone[name].encode(*inputs[name]) for name in STREAMS}
            rows.clear()
            got = encode_batch([(batched[name], *inputs[name]) for name in STREAMS])
            full = [name for name in STREAMS if modes[name] == "full"]
            # one tower pass over every full chunk, then one partial pass per partial chunk
            assert rows[0] == sum(batched[name].num_patches for name in full)
            assert len(rows) == 1 + sum(mode == "partial" for mode in modes.values())
            for name, (tokens, stats) in zip(STREAMS, got):
                assert stats == want[name][1] and stats.mode == modes[name], (r, name, stats)
                torch.testing.assert_close(tokens, want[name][0], rtol=1e-5, atol=1e-6)
                _assert_same_state(batched[name], alone[name])
    finally:
        hook.remove()


def test_batch_of_one_and_bad_batches(tiny):
    adapter = QwenVLAdapter(tiny)
    one, twin, other = (adapter.vision_encoder(size, 2, 0.02) for size in (SMALL, SMALL, LARGE))
    x, pixels = adapter.to_pixels(torch.from_numpy(_next_frames(None, "new", SMALL, 0.0)), SMALL)
    assert encode_batch([]) == []
    [(got, stats)] = encode_batch([(one, x, pixels)])
    want, want_stats = twin.encode(x, pixels)
    assert stats == want_stats and torch.equal(got, want)
    with pytest.raises(ValueError, match="appears twice"):
        encode_batch([(one, x, pixels), (one, x, pixels)])
    with pytest.raises(ValueError, match="patch rows"):
        encode_batch([(one, x, pixels), (other, x, pixels)])


def test_without_partial_passes_a_changed_chunk_is_encoded_in_full_and_an_unchanged_one_reused(tiny):
    """--no-partial: no per-stream store of the tower's keys and values; a chunk that changed at all
    equals the full recomputation exactly, one that did not is the cached output."""
    adapter = QwenVLAdapter(tiny)
    encoder, full = adapter.vision_encoder(SMALL, 2, 0.02, partial=False), adapter.vision_encoder(SMALL, 2, None)
    assert encoder.keys is None and encoder.hidden is None
    last = None
    for kind, mode in [("new", "full"), ("poke", "full"), ("same", "reused"), ("new", "full")]:
        last = _next_frames(last, kind, SMALL, 3.0)
        inputs = adapter.to_pixels(torch.from_numpy(last), SMALL)
        (got, stats), (want, _) = encoder.encode(*inputs), full.encode(*inputs)
        assert stats.mode == mode
        assert torch.equal(got, want)


def test_frames_batch_resizes_chunks_of_a_shape_together_as_each_alone(tiny):
    """encode_frames_batch resizes and cuts same-shaped chunks in one call: each chunk's result and
    its encoder's state equal encode_frames on it alone (sizes mixed, sources of two shapes)."""
    adapter = QwenVLAdapter(tiny)
    plan = [((90, 160), SMALL), ((90, 160), SMALL), ((120, 200), LARGE), ((90, 160), SMALL), ((120, 200), LARGE),
            ((100, 150), SMALL)]
    batched, alone = ([adapter.vision_encoder(size, 2, 0.02) for _, size in plan] for _ in range(2))
    for r in range(2):
        frames = [torch.from_numpy(np.stack([render(3.0 * i + r + k / 2, shape[1], shape[0], "busy")
                                             for k in range(2)])) for i, (shape, _) in enumerate(plan)]
        got = adapter.encode_frames_batch([(f, size, enc) for f, (_, size), enc in zip(frames, plan, batched)])
        for f, (_, size), enc, want_enc, (tokens, stats) in zip(frames, plan, batched, alone, got):
            want_tokens, want_stats = adapter.encode_frames(f, size, want_enc)
            assert stats == want_stats
            torch.testing.assert_close(tokens, want_tokens, rtol=1e-5, atol=1e-6)
            _assert_same_state(enc, want_enc)
