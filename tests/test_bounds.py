"""A 10-minute stream costs what a short one does: capped segments, bounded positions, flat memory;
with two streams of different frame sizes in one engine at once, each held to its own bounds."""

import gc
import queue

import psutil

from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.engine import Engine
from livesight.streaming.feed import feed
from livesight.vision.sources import SyntheticSource

SECONDS = 600
SIZES = {"wide": (90, 160), "square": (112, 112)}


def test_ten_minute_streams_stay_bounded(tiny):
    # default windows: 16 s of vision, 512 + 512 text tokens; offload budgets small enough to fill:
    # about 100 blocks in RAM and 200 on disk, of 580 evicted (of the wide stream's blocks)
    block_gb = 2 * 3 * 2 * 25 * 16 * 4 / 2**30
    retrieval = RetrievalConfig(ram_gb=100.5 * block_gb, disk_gb=200.5 * block_gb)
    # compression off: every chunk is a full block, so the budgets' block counts are exact
    config = SessionConfig(narrate_tokens=4, retrieval=retrieval,
                           compression=CompressionConfig(reuse=False, prune=False))
    engine = Engine(QwenVLAdapter(tiny), config, max_streams=len(SIZES))
    events: queue.Queue = queue.Queue()
    asks = [(t, f"what happened at second {t}?") for t in range(60, SECONDS, 120)]
    for name, (height, width) in SIZES.items():
        engine.open((height, width), name=name, outbox=events)
        for t, question in asks:
            engine.ask(name, question, at=t)
        feed(engine, name, chunk_frames(SyntheticSource(config.fps, SECONDS, width, height), config.frames_per_chunk,
                                        config.fps))
    streams = {name: engine.lanes[name].stream for name in SIZES}
    caps = {name: s.policy.caps(s.tokens_per_chunk, config.chunk_seconds) for name, s in streams.items()}
    peak = {name: {"sink": 0, "vision": 0, "text": 0, "max_position": 0} for name in SIZES}
    rss, answers = {}, dict.fromkeys(SIZES, 0)

    def check(event) -> None:
        name = event.data["stream"]
        answers[name] += event.type == "answer"
        assert event.type != "error", event
        if event.type != "metrics":
            return
        kv, cap = event.data["kv_tokens"], caps[name]
        assert kv["vision"] <= cap["vision"] and kv["text"] <= cap["text"], (name, event.t, kv)
        assert sum(kv.values()) <= streams[name].capacity
        for key in ("sink", "vision", "text"):
            peak[name][key] = max(peak[name][key], kv[key])
        peak[name]["max_position"] = max(peak[name]["max_position"], event.data["max_position"])
        if name == "wide" and event.data["chunk"] % 100 == 99:
            gc.collect()
            rss[event.data["chunk"]] = psutil.Process().memory_info().rss / 2**20

    import threading
    runner = threading.Thread(target=engine.run, kwargs={"until_idle": True})
    runner.start()
    summaries = 0
    while summaries < len(SIZES):
        event = events.get(timeout=600)
        summaries += event.type == "summary"
        check(event)
    runner.join()
    for name, stream in streams.items():
        assert stream.num_chunks == SECONDS and answers[name] == len(asks)
        # the windows fill: vision at its cap, text at its cap, the sink untouched
        assert peak[name]["vision"] == caps[name]["vision"] and peak[name]["text"] == caps[name]["text"]
        # positions: kept tokens sit back to back, so the largest position is below the cache's capacity,
        # a bound set by the windows alone (not by the 600 s)
        assert peak[name]["max_position"] < stream.capacity
        positions = stream.cache.table.pos
        assert int(positions.max()) < stream.capacity and int(positions.min()) == 0
    stats = streams["wide"].offloaded.store.stats
    assert stats.ram_bytes <= retrieval.ram_gb * 2**30 and stats.disk_bytes <= retrieval.disk_gb * 2**30
    assert len(streams["wide"].offloaded.store) == 300 and stats.dropped == SECONDS - 16 - 300
    engine.shutdown()
    assert sorted(engine.pool.free) == [0, 1]
    # memory stops growing once the windows are full (text fills by ~100 s)
    growth = rss[SECONDS - 1] - rss[199]
    assert growth < 25, rss
