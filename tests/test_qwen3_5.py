"""Qwen3.5's hybrid layers on the engine (models/qwen3_5.py, kvcache/linear.py): the linear layers' state
stays the same size however long the stream, an answer asked without a trace leaves every layer's state
bit for bit as it was, and going back returns to the state checkpointed before a step.
(The lockstep exactness test is in test_equivalence.py, the batched engine's in test_engine.py.)"""

import pytest
import torch

from conftest import make_chunks
from livesight.kvcache.linear import LinearState
from livesight.models.qwen3_5 import CHECKPOINTS
from livesight.models.registry import load_adapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import RetrievalConfig, SessionConfig
from livesight.streaming.session import Session
from livesight.streaming.stream import STOP_CHECK_EVERY


@pytest.fixture(scope="module")
def adapter():
    return load_adapter("tiny-random-qwen3.5", "cpu")


def _state(session) -> dict[str, torch.Tensor]:
    """Every layer's state a step reads: the full layers' valid keys and values, the linear layers'."""
    cache = session.cache
    n = cache.length
    return {"keys": cache.key_buffer[:, :, :, :n].clone(), "values": cache.value_buffer[:, :, :, :n].clone(),
            "conv": cache.linear.conv.clone(), "recurrent": cache.linear.recurrent.clone(),
            "seq": cache.table.seq.clone(), "pos": cache.table.pos.clone()}


def test_the_cache_keeps_the_full_layers_only_and_a_linear_state_per_stream(adapter):
    text = adapter.language_model.config
    assert text.layer_types == ["linear_attention", "full_attention"] * 2
    assert adapter.layer_of == {1: 0, 3: 1} and adapter.num_layers == 2
    cache = adapter.new_cache(64)
    assert cache.key_buffer.shape[0] == 2  # two layers of keys, not four
    assert cache.linear.conv.shape == (2, 128, 3) and cache.linear.recurrent.shape == (2, 4, 16, 16)
    assert cache.linear.nbytes == adapter.linear_state_bytes
    assert CHECKPOINTS > STOP_CHECK_EVERY  # every decode step a read can take back has its checkpoint


def test_thousands_of_chunks_leave_every_layers_state_bounded_and_a_traceless_answer_changes_nothing(adapter):
    """2,000 chunks with narration: the full layers' cache stays within its window, the linear state keeps
    its size and stays finite, the checkpoints stay at most CHECKPOINTS; at 500, 1,000 and 2,000 chunks an
    answer with remember=False leaves every layer bit for bit as it was."""
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=2, answer_tokens=3, text_sink=4, text_window=8,
                           system_prompt="s", retrieval=RetrievalConfig(enabled=False))
    session = Session(adapter, config, (32, 32))
    frames = [c.frames for c in make_chunks(4, size=(32, 32))]
    linear = session.cache.linear
    shapes, lengths, peaks = (linear.conv.shape, linear.recurrent.shape), [], []
    for i in range(2000):
        session.add_chunk(Chunk(frames[i % 4], float(i), float(i + 1), i))
        lengths.append(session.cache.length)
        peaks.append(float(linear.recurrent.abs().max()))
        assert len(linear._checkpoints) <= CHECKPOINTS
        if i + 1 in (500, 1000, 2000):
            before = _state(session)
            answer = session.ask("what is here?", remember=False)[-1]
            assert answer.type == "answer"
            after = _state(session)
            assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before
                                                                           if not torch.equal(before[k], after[k])]
    assert (linear.conv.shape, linear.recurrent.shape) == shapes
    # bounded: the last chunks hold no more than chunks 1000-1100 (their timestamps as long: "<1999.2 seconds>")
    assert max(lengths[1900:]) == max(lengths[1000:1100]) and max(lengths) <= session.cache.capacity
    assert all(torch.isfinite(torch.tensor(peaks))) and max(peaks[1000:]) <= 2 * max(peaks[:1000])
    assert int(session.cache.table.seq.max()) > 20 * len(session.cache.table)  # the stream is far longer than kept


def test_a_question_that_remembers_changes_the_linear_state(adapter):
    """The other side of the bit-for-bit test: with remember=True the exchange stays, in every layer."""
    config = SessionConfig(vision_window_s=2.0, narrate=False, text_sink=4, text_window=8, system_prompt="s",
                           retrieval=RetrievalConfig(enabled=False))
    session = Session(adapter, config, (32, 32))
    for chunk in make_chunks(3, size=(32, 32)):
        session.add_chunk(chunk)
    before = _state(session)
    session.ask("what is here?")
    after = _state(session)
    assert not torch.equal(before["recurrent"], after["recurrent"]) and not torch.equal(before["conv"], after["conv"])


def test_checkpoints_return_to_the_state_before_a_step_and_refuse_older_ones():
    state = LinearState.allocate(2, 6, 3, 2, 4, 4, torch.float32, "cpu", keep=3)
    seen = {}
    for length in range(0, 50, 10):  # five steps of 10 tokens
        state.checkpoint(length)
        seen[length] = state.snapshot()
        state.conv.add_(1.0)
        state.recurrent.normal_()
    state.back_to(30)  # two steps back
    assert torch.equal(state.conv, seen[30][0]) and torch.equal(state.recurrent, seen[30][1])
    with pytest.raises(RuntimeError, match="no linear-attention state kept for cache length 40"):
        state.back_to(40)  # dropped: it came after the one returned to
    with pytest.raises(RuntimeError, match="cache length 10"):
        state.back_to(10)  # older than the last three
    state.checkpoint(30)
    state.forget_checkpoints()  # the cache was compacted: lengths no longer name steps
    with pytest.raises(RuntimeError):
        state.back_to(30)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-linear-attention's kernels need a GPU")
def test_flash_linear_attention_equals_the_torch_reference_stream_by_stream():
    """One varlen fla call over several streams' rows against transformers' torch code run stream by stream:
    outputs and every stream's final state. Prefill-sized, one-row and mixed segments; the states as
    tensors of their own, and as slabs of a pool (gathered and written back by index)."""
    from livesight.kvcache.linear import LinearPool
    from livesight.models import qwen3_5
    if qwen3_5.fla_chunk is None:
        pytest.skip("fla-core is not installed")
    g = torch.Generator().manual_seed(0)
    for lengths, in_pool in (([70, 1, 33], False), ([1, 1, 1], False), ([129], False), ([1, 40, 1, 1], True)):
        n, hk, hv, d = sum(lengths), 2, 4, 64
        q, k = (torch.randn(n, hk, d, generator=g).cuda() for _ in range(2))
        v = torch.randn(n, hv, d, generator=g).cuda()
        gate = -torch.rand(n, hv, generator=g).cuda()
        beta = torch.rand(n, hv, generator=g).cuda()
        pool = LinearPool(len(lengths) + 2, 1, 8, 3, hv, d, d, torch.float32, "cuda", 2)
        slabs = list(range(len(lengths) + 1, 1, -1))  # out of order, as a batched step's streams come
        states = ([pool.state(slab) for slab in slabs] if in_pool else
                  [LinearState.allocate(1, 8, 3, hv, d, d, torch.float32, "cuda", 2) for _ in lengths])
        for s in states:
            s.recurrent.normal_(generator=None).mul_(0.1)
        twins = [LinearState(s.conv.clone(), s.recurrent.clone(), 2) for s in states]
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        pooled = (pool, torch.tensor(slabs, device="cuda")) if in_pool else None
        got = qwen3_5.delta_rule(q, k, v, gate, beta, list(zip(starts, lengths, states)), 0, pooled=pooled)
        fla = qwen3_5.fla_chunk
        qwen3_5.fla_chunk = None  # the torch reference
        try:
            want = qwen3_5.delta_rule(q, k, v, gate, beta, list(zip(starts, lengths, twins)), 0)
        finally:
            qwen3_5.fla_chunk = fla
        scale = float(want.abs().max())
        assert float((got - want).abs().max()) <= 2e-3 * scale, lengths
        for s, t in zip(states, twins):
            assert float((s.recurrent - t.recurrent).abs().max()) <= 2e-3 * float(t.recurrent.abs().max()), lengths


def test_fixed_shape_steps_run_unpadded_and_equal_the_dynamic_forward(adapter):
    """The fixed-shape step CUDA graphs capture, run eagerly here: for Qwen3.5 only steps that need no
    padding row take it (decode steps above all), and a stream through narration and a traceless question
    gives the same logits and leaves the same linear state with it as without."""
    from livesight.streaming.static_step import StaticStep, row_bucket
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=4, answer_tokens=3, text_sink=4, text_window=8,
                           system_prompt="s", retrieval=RetrievalConfig(top_k=1, scope="global"))

    def run(static: bool):
        session = Session(adapter, config, (32, 32))
        sizes, logits, forward = [], [], session.stepper.forward
        if static:
            session.stepper.static = StaticStep(adapter, session.cache, graphs=False)
            call = session.stepper.static.__call__
            session.stepper.static = type("Counted", (), {"fits": session.stepper.static.fits, "__call__": staticmethod(
                lambda e, p: sizes.append(e.shape[0]) or call(e, p))})()
        session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
        for chunk in make_chunks(8, size=(32, 32)):
            session.add_chunk(chunk)
            if chunk.index == 5:
                session.ask("what is here?", remember=False)
        return session, logits, sizes

    dynamic, want, _ = run(False)
    static, got, sizes = run(True)
    assert sizes.count(1) > 10 and all(row_bucket(n) == n for n in sizes)
    assert len(got) == len(want) > 30
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, want)) < 1e-5
    assert torch.allclose(static.cache.linear.recurrent, dynamic.cache.linear.recurrent, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run on the device machine)")
def test_cuda_graph_decode_steps_equal_the_eager_stream():
    """On a GPU, Qwen3.5's unpadded steps (decodes) replay CUDA graphs: the capture's warm-up run must not
    advance the linear state twice, so the graphed stream equals the eager one, logits and state."""
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=6, answer_tokens=4, text_sink=4, text_window=8,
                           system_prompt="s", retrieval=RetrievalConfig(top_k=1, scope="global"))
    from livesight.models.loader import load_model
    from livesight.models.qwen3_5 import Qwen3_5Adapter
    gpu = Qwen3_5Adapter(load_model("tiny-random-qwen3.5", "cuda", torch.float32))  # float32: exact to 1e-4
    results = {}
    for graphs in (True, False):
        session = Session(gpu, SessionConfig(**{**config.__dict__, "cuda_graphs": graphs}), (32, 32))
        logits, forward = [], session.stepper.forward
        session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
        for chunk in make_chunks(8, size=(32, 32)):
            session.add_chunk(chunk)
            if chunk.index == 5:
                session.ask("what is here?", remember=False)
        results[graphs] = (session, logits)
    (graphed, got), (eager, want) = results[True], results[False]
    assert 0 < graphed.stepper.static.num_graphs < len(got) / 2
    assert len(got) == len(want)
    assert max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, want)) < 1e-4
    torch.testing.assert_close(graphed.cache.linear.recurrent, eager.cache.linear.recurrent, atol=1e-4, rtol=1e-3)
