"""Many streams in one engine: each stream's logits equal the same stream run alone.

The engine packs every stream's step into one pass over one KV pool; nothing of a stream may leak
into another's attention, and a stream's state must not depend on who else was in its batches.
So the proof is a lockstep comparison: record every logits row the engine hands each stream, run
each stream alone (a Session, its own cache) over the same chunks and questions, and compare.
"""

import json

import pytest
import torch

from conftest import DEVICES, make_chunks
from livesight.errors import InputError
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.engine import Engine
from livesight.models.loader import load_model
from livesight.streaming.session import Session
from livesight.streaming.tokens import StepBuilder


def _record(stream, log: list[torch.Tensor]) -> None:
    """Wrap the stream's work so every logits row sent to it (in its StepResult) is appended to `log`."""
    for name in ("chunk_work", "ask_work"):
        original = getattr(stream, name)

        def recorded(*args, _original=original, **kwargs):
            work = _original(*args, **kwargs)
            try:
                item = next(work)
                while True:
                    result = yield item
                    if isinstance(item, StepBuilder):
                        log.append(result.logits.detach().clone())
                    item = work.send(result)
            except StopIteration as done:
                return done.value
        setattr(stream, name, recorded)


def _config(**kw) -> SessionConfig:
    base = dict(vision_window_s=3.0, narrate_tokens=3, answer_tokens=4, text_sink=8, text_window=24,
                retrieval=RetrievalConfig(top_k=2, ram_gb=0.001, disk_gb=0.01),
                compression=CompressionConfig(reuse_threshold=0.05))
    return SessionConfig(**(base | kw))


# stream: frame size, first round, chunks, (after chunk k: question), closed early after its last chunk
PLAN = {
    "a": ((180, 320), 0, 9, {3: "what moved?", 8: "where is the red circle?"}, False),
    "b": ((90, 160), 2, 6, {4: "what color is the square?"}, False),
    "c": ((120, 200), 3, 3, {}, True),
}


def _run_engine(adapter, config):
    engine = Engine(adapter, config, max_streams=3, max_pending=16)  # puts never wait: one thread
    logs, events, ids = {}, {}, {}
    chunks = {name: make_chunks(n, size=size, scene="shapes") for name, (size, _, n, _, _) in PLAN.items()}
    for round_ in range(12):
        for name, (size, first, n, questions, _) in PLAN.items():
            k = round_ - first
            if k == 0:
                ids[name] = engine.open(size, live=False)
                logs[name] = []
                _record(engine.lanes[ids[name]].stream, logs[name])
            if 0 <= k < n:
                engine.put(ids[name], chunks[name][k])
                if k in questions:
                    engine.ask(ids[name], questions[k], at=chunks[name][k].t_end)
            if k == n - 1:
                engine.end(ids[name])
        for _ in range(1 + round_ % 3):  # a varying number of steps: batches mix prefills and decodes
            engine.step()
    for name, (_, _, _, _, close_early) in PLAN.items():
        if close_early:
            while not engine.ended(ids[name]):
                engine.step()
            events[name] = _drain(engine, ids[name])
            engine.close(ids[name])
    engine.run(until_idle=True)
    for name in PLAN:
        if name not in events:
            events[name] = _drain(engine, ids[name])
    return engine, logs, events, ids


def _drain(engine, stream_id):
    out, box = [], engine.events(stream_id)
    while not box.empty():
        out.append(box.get_nowait())
    return out


def _run_alone(adapter, config, name):
    size, _, n, questions, _ = PLAN[name]
    session = Session(adapter, config, size)
    log, events = [], []
    _record(session, log)
    for k, chunk in enumerate(make_chunks(n, size=size, scene="shapes")):
        events += session.add_chunk(chunk)
        if k in questions:
            events += session.ask(questions[k])
    session.close()
    return log, events


@pytest.mark.parametrize("device", DEVICES)
def test_each_stream_in_the_engine_equals_the_stream_alone(tiny, device):
    _check_engine_equals_alone(QwenVLAdapter(tiny if device == "cpu" else load_model("tiny-random", device)))


@pytest.mark.parametrize("name", ["tiny-random-qwen3-vl", "tiny-random-smolvlm2", "tiny-random-qwen3.5"])
def test_other_families_streams_in_the_engine_equal_each_stream_alone(name):
    """The batched pass carries Qwen3-VL's wide rows (DeepStack) and SmolVLM2's 1-D positions for every
    stream of a step, and runs Qwen3.5's linear layers on each stream's rows with that stream's state."""
    from livesight.models.registry import load_adapter
    _check_engine_equals_alone(load_adapter(name, "cpu"))


def _check_engine_equals_alone(adapter, **settings):
    config = _config(**settings)
    engine, logs, events, ids = _run_engine(adapter, config)
    assert engine.pool.free == [2], "the stream closed early gave its slab back; the others hold theirs"
    assert engine.stage_ms["streams"] > engine.stage_ms["steps"], "no step packed more than one stream"
    for name in PLAN:
        want, want_events = _run_alone(adapter, config, name)
        got = logs[name]
        assert len(got) == len(want) > 0, name
        for a, b in zip(got, want):
            assert float((a - b).abs().max() / b.abs().max()) < 1e-5, name
        said = [(e.type, e.text) for e in events[name] if e.type in ("caption", "answer")]
        assert said == [(e.type, e.text) for e in want_events if e.type in ("caption", "answer")], name
        assert events[name][-1].type == "summary" and {e.data["stream"] for e in events[name]} == {ids[name]}
    answers = [e for name in PLAN for e in events[name] if e.type == "answer"]
    assert len(answers) == 3 and any(e.data["retrieved"] for e in answers), "retrieval never ran"



def test_an_fp8_pool_serves_each_stream_as_its_own_fp8_cache_would(tiny):
    """Keys and values in 8 bits in the engine's pool: each stream's slab holds the codes, scales and shifts its own
    cache would, through slides, retrieval and narration, so every step's logits equal the stream alone's."""
    _check_engine_equals_alone(QwenVLAdapter(tiny), kv_dtype="fp8")


@pytest.mark.parametrize("kv_dtype", ["model", "fp8"])
def test_a_head_wise_pool_serves_each_stream_as_its_own_head_wise_cache_would(tiny, tmp_path, kv_dtype):
    """Half the KV heads streaming (DuoAttention) in the engine's pool: each slab's retrieval heads and its streaming
    heads' window with its step area hold what the stream's own head-wise cache would, through slides, retrieval
    and narration, so every step's logits equal the stream alone's (and with keys and values in 8 bits)."""
    _check_engine_equals_alone(QwenVLAdapter(tiny), kv_dtype=kv_dtype, duo_gates=_duo_gates(tmp_path, tiny),
                               duo_sparsity=0.5)


def _duo_gates(folder, loaded) -> str:
    """Random gates (seed 0) for `loaded`'s KV heads, sink 3 and recent 12, in folder/duo_gates.json -> folder."""
    text = loaded.model.config.get_text_config()
    gates = torch.rand(text.num_hidden_layers, text.num_key_value_heads, generator=torch.Generator().manual_seed(0))
    (folder / "duo_gates.json").write_text(json.dumps({"gates": gates.tolist(), "settings": {"sink": 3, "recent": 12}}))
    return str(folder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton slab kernel and batched CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ["model", "fp8", "duo", "duo-fp8"])
def test_batched_graphs_in_half_precision_follow_the_stream_alone(kind, tmp_path):
    """bfloat16 on a GPU: the engine's Triton slab attention and decode graphs against each stream alone
    (its own span kernel and graphs). Rounding differs, so logits agree to bf16 precision, step by step,
    until the first step where the two pick different tokens (from there the inputs differ). duo: half the KV
    heads streaming, both kinds in one slab-kernel launch."""
    loaded = load_model("tiny-random", "cuda", torch.bfloat16)
    adapter = QwenVLAdapter(loaded)
    duo = dict(duo_gates=_duo_gates(tmp_path, loaded), duo_sparsity=0.5) if kind.startswith("duo") else {}
    config = _config(narrate_tokens=8, kv_dtype="fp8" if kind.endswith("fp8") else "model", **duo)
    engine, logs, _, _ = _run_engine(adapter, config)
    assert engine.batch.num_graphs > 0, "no batched step replayed a CUDA graph"
    compared = 0
    for name in PLAN:
        want, _ = _run_alone(adapter, config, name)
        for a, b in zip(logs[name], want):
            assert float((a - b).abs().max() / b.abs().max()) < 3e-2, name
            compared += 1
            if int(a.argmax()) != int(b.argmax()):
                break
    assert compared >= 30


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_an_engine_on_the_second_gpu_works_there_as_on_the_first():
    """CUDA's current device is per thread and starts as the first GPU: an engine on cuda:1 (an evaluator's
    second process, a server given --device cuda:1) must capture and replay its graphs, and read its memory
    counters, on cuda:1, with the results it gives on cuda:0."""
    config = _config(narrate_tokens=8)
    runs = {}
    for device in ("cuda:1", "cuda:0"):  # cuda:1 first: cuda:0's counters hold nothing of it
        adapter = QwenVLAdapter(load_model("tiny-random", device, torch.bfloat16))
        engine, logs, events, _ = _run_engine(adapter, config)
        assert engine.batch.num_graphs > 0 and all(t.device == torch.device(device) for t in logs["a"])
        runs[device] = (logs, events)
        del engine, adapter
    (logs1, events1), (logs0, events0) = runs["cuda:1"], runs["cuda:0"]
    assert min(e.data["gpu_mem_mb"] for e in events1["a"] if e.type == "metrics") > 0, "cuda:1's memory, read there"
    for name in PLAN:
        assert [(e.type, e.text) for e in events1[name]] == [(e.type, e.text) for e in events0[name]], name
        assert all(float((a.cpu() - b.cpu()).abs().max()) <= 1e-3 * float(b.abs().max())
                   for a, b in zip(logs1[name], logs0[name])), name


def _small_engine(tiny, max_streams=2, **kw):
    config = _config(retrieval=RetrievalConfig(top_k=1, ram_gb=0.0001, disk_gb=0.01), **kw)
    return Engine(QwenVLAdapter(tiny), config, max_streams=max_streams, max_pending=16), config


def test_admission_refuses_one_stream_more_than_the_pool_holds_and_a_closed_stream_frees_its_slab(tiny):
    engine, config = _small_engine(tiny)
    a, b = engine.open((180, 320)), engine.open((90, 160))
    folder = engine.lanes[a].stream.offloaded.folder
    with pytest.raises(InputError, match="carrying 2 streams"):
        engine.open((180, 320))
    with pytest.raises(InputError, match="slabs hold"):  # settings that need a larger cache than a slab
        engine.close(b) or engine.open((180, 320), config=_config(vision_window_s=30.0))
    assert engine.pool.free == [1], "a refused stream gave its slab back"
    engine.close(a)
    assert sorted(engine.pool.free) == [0, 1] and not __import__("os").path.exists(folder)
    engine.open((180, 320))


def test_a_streams_failures_reach_only_its_own_events(tiny):
    """A bad question, a vanished offload folder and a source that dies: each is an error event of its
    stream; the other stream's events are the same as if it had run alone."""
    import shutil
    engine, config = _small_engine(tiny)
    a, b = engine.open((180, 320)), engine.open((180, 320))
    chunks = make_chunks(8)
    for k, chunk in enumerate(chunks):
        engine.put(a, chunk)
        engine.put(b, chunk)
        if k == 2:
            engine.ask(a, "   ")
            shutil.rmtree(engine.lanes[a].stream.offloaded.folder)
    engine.end(a, "the camera went away")
    engine.end(b)
    engine.run(until_idle=True)
    events = {sid: _drain(engine, sid) for sid in (a, b)}
    errors = [e.text for e in events[a] if e.type == "error"]
    assert any("empty question" in t for t in errors) and "the camera went away" in errors
    assert events[a][-1].data["error"] == "the camera went away"
    kinds = [e.type if e.type != "error" else e.text for e in events[a]]
    assert kinds.index("the camera went away") > max(i for i, k in enumerate(kinds) if k == "metrics"), \
        "the source's error comes after the chunks it delivered"
    assert not [e for e in events[b] if e.type == "error"] and "error" not in events[b][-1].data
    _, alone = _run_alone_chunks(engine.adapter, config, chunks)
    assert [(e.type, e.text) for e in events[b] if e.type == "caption"] == \
        [(e.type, e.text) for e in alone if e.type == "caption"]


def _run_alone_chunks(adapter, config, chunks):
    session = Session(adapter, config, (180, 320))
    events = [e for chunk in chunks for e in session.add_chunk(chunk)]
    session.close()
    return session, events


def test_a_live_stream_behind_drops_its_oldest_chunks_and_shortens_narration(tiny):
    """Live sources never wait: past max_pending waiting chunks the oldest goes, and a chunk started
    with another waiting narrates half as many tokens; both are counted in the metrics."""
    engine = Engine(QwenVLAdapter(tiny), _config(narrate_tokens=6), max_streams=1, max_pending=2)
    live = engine.open((180, 320), live=True)
    for chunk in make_chunks(5):
        engine.put(live, chunk)  # never waits
    engine.end(live)
    engine.run(until_idle=True)
    metrics = [e.data for e in _drain(engine, live) if e.type == "metrics"]
    assert [m["chunk"] for m in metrics] == [3, 4], "the three oldest were dropped"
    assert metrics[-1]["chunks_dropped"] == 3 and metrics[0]["narrations_shortened"] == 1
    assert metrics[0]["tokens_out"] <= 3 and metrics[-1]["narrations_shortened"] == 1


def test_an_ended_stream_still_answers_and_a_closed_one_releases_a_waiting_feeder(tiny):
    import threading
    engine, _ = _small_engine(tiny)
    engine.max_pending = 1
    a, b = engine.open((180, 320)), engine.open((180, 320))
    engine.put(a, make_chunks(1)[0])
    engine.end(a)
    while engine.step():
        pass
    engine.ask(a, "what was there?")
    while engine.step():
        pass
    events = _drain(engine, a)
    assert [e.type for e in events][-2:] == ["summary", "answer"]
    engine.put(b, make_chunks(1)[0])
    failed = []
    waiting = threading.Thread(target=lambda: failed.append(_raises(lambda: engine.put(b, make_chunks(2)[1]))))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive(), "a file's feeder waits for room"
    engine.close(b)
    waiting.join(5)
    assert not waiting.is_alive() and failed == [True]


def _raises(fn) -> bool:
    try:
        fn()
    except InputError:
        return True
    return False


def test_live_chunks_arriving_apart_start_together_within_the_gather_window(tiny):
    """Live chunks wait up to gather_s so that one prefill and one vision pass serve them all; files do not
    wait, and the wait never passes gather_s."""
    import time
    engine = Engine(QwenVLAdapter(tiny), _config(narrate=False), max_streams=4, gather_s=0.3)
    a, b, f = engine.open((180, 320), live=True), engine.open((180, 320), live=True), engine.open((180, 320))
    c = engine.open((180, 320), live=True)  # a live stream whose chunk has not come yet
    chunk = make_chunks(1)[0]
    engine.put(a, chunk)
    engine.put(b, chunk)
    assert not engine.step(), "nothing is due yet: the live chunks wait for others"
    engine.put(f, chunk)
    assert engine.step() and len(engine.lanes[a].chunks) == 1, "the live chunks still wait"
    assert [e.type for e in _drain(engine, f)] == ["metrics"], "a file's chunk does not wait"
    while engine.step():
        pass
    time.sleep(0.3)
    steps, streams = engine.stage_ms["steps"], engine.stage_ms["streams"]
    assert engine.step()
    assert engine.stage_ms["steps"] == steps + 1 and engine.stage_ms["streams"] == streams + 2, \
        "both live chunks were prefilled in one step"
    while engine.step():
        pass
    for lane in (a, b, c):
        engine.put(lane, chunk)
    assert engine.step() and not any(engine.lanes[lane].chunks for lane in (a, b, c)), \
        "every live stream has its chunk: nothing is left to wait for"


def test_one_live_stream_does_not_wait_for_others_that_are_not_there(tiny):
    engine = Engine(QwenVLAdapter(tiny), _config(narrate=False), max_streams=8, gather_s=5.0)
    a = engine.open((180, 320), live=True)
    engine.put(a, make_chunks(1)[0])
    assert engine.step() and not engine.lanes[a].chunks, "the only live stream's chunk starts at once"
