"""A 10-minute stream costs what a short one does: capped segments, bounded positions, flat memory."""

import gc

import psutil

from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.streaming.loop import run_stream
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.vision.sources import SyntheticSource

SECONDS = 600


def test_ten_minute_stream_stays_bounded(tiny):
    # default windows: 16 s of vision, 512 + 512 text tokens; offload budgets small enough to fill:
    # about 100 blocks in RAM and 200 on disk, of 580 evicted
    block_gb = 2 * 3 * 2 * 25 * 16 * 4 / 2**30
    retrieval = RetrievalConfig(ram_gb=100.5 * block_gb, disk_gb=200.5 * block_gb)
    # compression off: every chunk is a full block, so the budgets' block counts are exact
    config = SessionConfig(narrate_tokens=4, retrieval=retrieval,
                           compression=CompressionConfig(reuse=False, prune=False))
    session = Session(QwenVLAdapter(tiny), config, (90, 160))
    caps = session.policy.caps(session.tokens_per_chunk, config.chunk_seconds)
    chunks = chunk_frames(SyntheticSource(config.fps, SECONDS, 160, 90), config.frames_per_chunk, config.fps)
    asks = [(t, f"what happened at second {t}?") for t in range(60, SECONDS, 120)]
    peak = {"sink": 0, "vision": 0, "text": 0, "max_position": 0}
    rss = {}
    answers = 0
    for event in run_stream(session, chunks, asks):
        if event.type == "answer":
            answers += 1
        if event.type != "metrics":
            continue
        kv = event.data["kv_tokens"]
        assert kv["vision"] <= caps["vision"] and kv["text"] <= caps["text"], (event.t, kv)
        assert sum(kv.values()) <= session.capacity
        for key in ("sink", "vision", "text"):
            peak[key] = max(peak[key], kv[key])
        peak["max_position"] = max(peak["max_position"], event.data["max_position"])
        if event.data["chunk"] % 100 == 99:
            gc.collect()
            rss[event.data["chunk"]] = psutil.Process().memory_info().rss / 2**20
    assert session.num_chunks == SECONDS and answers == len(asks)
    stats = session.retriever.store.stats
    assert stats.ram_bytes <= retrieval.ram_gb * 2**30 and stats.disk_bytes <= retrieval.disk_gb * 2**30
    assert len(session.retriever.store) == 300 and stats.dropped == SECONDS - 16 - 300
    session.close()
    # the windows fill: vision at its cap, text at its cap, the sink untouched
    assert peak["vision"] == caps["vision"] and peak["text"] == caps["text"]
    # positions: kept tokens sit back to back, so the largest position is below the cache's capacity,
    # a bound set by the windows alone (not by the 600 s)
    assert peak["max_position"] < session.capacity
    positions = session.cache.table.pos
    assert int(positions.max()) < session.capacity and int(positions.min()) == 0
    # memory stops growing once the windows are full (text fills by ~100 s)
    growth = rss[SECONDS - 1] - rss[199]
    assert growth < 25, rss
