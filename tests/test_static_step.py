"""The language model's fixed-shape step (streaming/static_step.py) against the dynamic forward,
which test_equivalence holds equal to a plain transformers forward. On the CPU the static step
runs eagerly; on a GPU the same function is what the CUDA graphs capture."""

import pytest
import torch

from conftest import make_chunks
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.streaming.static_step import StaticStep, row_bucket


def test_row_buckets_cover_every_step_with_bounded_padding():
    for n in range(1, 2000):
        rows = row_bucket(n)
        assert rows >= n
        assert rows < 2 * n or rows - n < 64
        assert row_bucket(rows) == rows  # a bucket is its own bucket: no chain of graphs


def run(tiny, config, static: bool, num_chunks: int, ask_at: int):
    """Stream with the static step on or off; -> the session, every step's logits, the events."""
    session = Session(QwenVLAdapter(tiny), config, (180, 320))
    assert session.stepper.static is None, "no CUDA graphs on the CPU"
    if static:  # the same fixed-shape function the graphs capture, run eagerly
        session.stepper.static = StaticStep(session.adapter, session.cache, graphs=False)
    logits, forward = [], session.stepper.forward
    session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
    events = []
    for chunk in make_chunks(num_chunks):
        events += session.add_chunk(chunk)
        if chunk.index == ask_at:
            events += session.ask("what moved?")
    return session, logits, events


@pytest.mark.parametrize("retrieval", [False, True])
def test_static_step_equals_the_dynamic_forward(tiny, retrieval):
    """Through slides, evictions, narration, questions and (with retrieval) unequal retrieved blocks:
    every step's logits agree, and the cache's contents and positions are the same."""
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=5,
                           system_prompt="sys", retrieval=RetrievalConfig(enabled=retrieval, top_k=2),
                           compression=CompressionConfig(keep_ratio=0.6, keep_floor=0.2))
    dynamic, want, want_events = run(tiny, config, False, 9, ask_at=6)
    calls = []
    static_call = StaticStep.__call__

    def counted(self, embeds, positions):
        calls.append((embeds.shape[0], self.cache.length, self.cache.key_valid is not None))
        return static_call(self, embeds, positions)

    StaticStep.__call__ = counted
    try:
        static, got, got_events = run(tiny, config, True, 9, ask_at=6)
    finally:
        StaticStep.__call__ = static_call
    assert len(calls) > 30 and any(row_bucket(n) > n for n, _, _ in calls), "the static step did not run padded"
    assert not retrieval or any(padded for _, _, padded in calls), "no static step after unequal retrieved blocks"
    assert len(got) == len(want)
    assert not retrieval or any(e.data.get("retrieved") for e in got_events), "nothing was retrieved"
    for a, b in zip(got, want):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5
    assert [(e.type, e.text, e.data.get("retrieved")) for e in got_events] == [(e.type, e.text, e.data.get("retrieved")) for e in want_events]
    n = dynamic.cache.length
    assert static.cache.length == n and torch.equal(static.cache.table.pos, dynamic.cache.table.pos)
    torch.testing.assert_close(static.cache.key_buffer[..., :n, :], dynamic.cache.key_buffer[..., :n, :],
                               atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
@pytest.mark.parametrize("retrieval", [False, True])
def test_cuda_graph_steps_equal_the_dynamic_forward(retrieval):
    """With retrieval, a question after chunk 6 brings back pruned blocks of unequal size: the
    steps after it replay graphs that add the padding's key bias."""
    from livesight.models.loader import load_model
    loaded = load_model("tiny-random", "cuda")
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=5,
                           system_prompt="sys", retrieval=RetrievalConfig(enabled=retrieval, top_k=2),
                           compression=CompressionConfig(keep_ratio=0.6, keep_floor=0.2))
    results = {}
    for graphs in (True, False):
        session = Session(QwenVLAdapter(loaded), SessionConfig(**{**config.__dict__, "cuda_graphs": graphs}), (180, 320))
        logits, forward = [], session.stepper.forward
        session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
        for chunk in make_chunks(9):
            session.add_chunk(chunk)
            if chunk.index == 6:
                session.ask("what moved?")
        results[graphs] = (session, logits)
    (graphed, got), (eager, want) = results[True], results[False]
    assert graphed.stepper.static is not None and eager.stepper.static is None
    assert 0 < graphed.stepper.static.num_graphs < len(got) / 2, "graphs were not captured, or not replayed"
    assert not retrieval or any(padded for _, _, padded in graphed.stepper.static._replays), "no padded graph"
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert float((a - b).abs().max() / b.abs().max()) < 1e-4


def test_decode_steps_past_a_stop_token_leave_no_trace(tiny):
    """Decode reads its ids only every few steps, so it feeds tokens past a stop token before it sees
    it: those must be taken back, leaving the cache a session that stopped right there would have."""
    def narrate(stop_ids: set[int], num_tokens: int):
        config = SessionConfig(narrate_tokens=num_tokens, retrieval=RetrievalConfig(enabled=False),
                               compression=CompressionConfig(reuse=False, prune=False))
        session = Session(QwenVLAdapter(tiny), config, (180, 320))
        session.stop_ids, captured, generate = stop_ids, [], session._generate

        def recorded(*args):
            captured.append((yield from generate(*args)))
            return captured[-1]
        session._generate = recorded
        session.add_chunk(make_chunks(1)[0])
        return session, captured[0]

    _, free = narrate(set(), 8)
    stop = next(i for i in range(1, 8) if free[i] not in free[:i])
    stopped, ids = narrate({free[stop]}, 8)
    assert ids == free[:stop] and stopped.pending == stopped.chat.turn_close
    reference, ref_ids = narrate(set(), stop + 1)  # feeds free[:stop], keeps free[stop] pending
    assert ref_ids == free[:stop + 1] and reference.pending == [free[stop]] + reference.chat.turn_close
    n = reference.cache.length
    assert stopped.cache.length == n and torch.equal(stopped.cache.table.pos, reference.cache.table.pos)
    assert torch.equal(stopped.cache.key_buffer[..., :n, :], reference.cache.key_buffer[..., :n, :])
