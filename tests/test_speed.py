"""`livesight bench speed` on the CPU with tiny-random: the baselines compute what the engine does
where they must agree, their contexts grow (full) or stay put (window), and the report holds."""

import argparse
import json
import time

import pytest
import torch

from conftest import DEVICES, make_chunks
from livesight.eval import speed_report
from livesight.eval.baselines import PlainStream
from livesight.eval.speed import SpeedConfig, summarize
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import DEFAULT_SYSTEM_PROMPT, CompressionConfig, SessionConfig
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session


def test_a_baseline_chunk_equals_the_engine_chunk(tiny):
    """Before anything is evicted, plain transformers (its tower, SDPA, DynamicCache) and the engine
    (its tower, attention and cache) give the same logits, chunk after chunk, and the window baseline
    the same as long as its window holds the whole stream."""
    adapter = QwenVLAdapter(tiny)
    config = SessionConfig(narrate=False, vision_window_s=8.0, retrieval=RetrievalConfig(enabled=False),
                           compression=CompressionConfig(reuse=False, prune=False))
    session = Session(adapter, config, (180, 320))
    logits, forward = [], session.stepper.forward
    session.stepper.forward = lambda *a, **k: logits.append(forward(*a, **k)) or logits[-1]
    full = PlainStream(adapter, session.size, 2, session.temporal_stride, DEFAULT_SYSTEM_PROMPT, 0)
    window = PlainStream(adapter, session.size, 2, session.temporal_stride, DEFAULT_SYSTEM_PROMPT, 0, window_chunks=8)
    for chunk in make_chunks(3):
        session.add_chunk(chunk)
        full.step(chunk)
        window.step(chunk)
        for plain in (full, window):
            assert float((plain.last_logits - logits[-1]).abs().max() / logits[-1].abs().max()) < 1e-4
    assert adapter.language_model.config._attn_implementation == "livesight", "the engine's attention is back"


def test_bench_speed_reports_engine_and_baselines(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    speed_report.add_arguments(parser)
    args = parser.parse_args(["--model", "tiny-random", "--device", "cpu", "--seconds", "20", "--baseline-seconds",
                              "10", "--window", "3", "--ask-every", "6", "--narrate-tokens", "2", "--out",
                              str(tmp_path)])
    assert speed_report.main(args) == 0
    result = json.loads((tmp_path / "speed.json").read_text())
    assert (tmp_path / "speed.png").stat().st_size > 10_000 and "| real-time factor" in capsys.readouterr().out
    engine, full, window = result["engine"]["rows"], result["baselines"]["full"]["rows"], \
        result["baselines"]["window"]["rows"]
    assert len(engine) == 20 and len(full) == len(window) == 10
    grow = [b["context_tokens"] - a["context_tokens"] for a, b in zip(full, full[1:])]
    assert len(set(grow)) == 1 and grow[0] > 0, "the full context grows by one chunk (and its prompt) each chunk"
    assert len({r["context_tokens"] for r in window[3:]}) == 1
    assert window[3]["context_tokens"] < full[-1]["context_tokens"]
    assert max(r["kv_tokens"] for r in engine[4:]) <= 2 * min(r["kv_tokens"] for r in engine[4:])  # bounded
    s = result["summary"]
    # the warm-up question once the window (3 s) is full and 10 s more offloaded, then every 6 s, and at the end
    assert [q["t"] for q in s["questions"]] == [13.0, 18.0, 20.0] and s["questions"][0]["offloaded_blocks"] >= 8
    assert set(s["split_ms_p50"]) == {"vision_ms", "prune_ms", "prefill_ms", "decode_ms", "evict_ms"}
    assert all(r["wall_ms"] >= r["chunk_ms"] for r in engine)
    assert s["decode_ms_per_token_p50"] > 0 and s["chunk_ms_p99"] >= s["chunk_ms_p50"] > 0
    assert [(c["from_s"], c["to_s"]) for c in s["compare"]] == [(3.0, 10.0)]
    assert all(c["full_ratio"] > 0 and c["window_ratio"] > 0 for c in s["compare"])
    assert torch.isfinite(torch.tensor([r["prefill_tflops"] for r in engine])).all()
    config = {k: v for k, v in result["config"].items()}
    assert summarize(result["engine"], {}, SpeedConfig(**config))["compare"] == []  # no baselines, no ratios


@pytest.mark.parametrize("device", DEVICES)
def test_stage_times_add_up_to_the_chunk(tiny, device):
    """The stages are timed without waiting for the device between them (events on a GPU): each is
    positive, and together they are the chunk's wall time but for the host work outside them."""
    from livesight.streaming.events import CHUNK_PARTS, chunk_ms
    from livesight.models.loader import load_model
    loaded = tiny if device == "cpu" else load_model("tiny-random", device)
    config = SessionConfig(vision_window_s=2.0, narrate_tokens=3, retrieval=RetrievalConfig(top_k=2))
    session = Session(QwenVLAdapter(loaded), config, (180, 320))
    shares = []
    for chunk in make_chunks(8):
        start = time.perf_counter()
        metrics = session.add_chunk(chunk)[-1].data
        wall = (time.perf_counter() - start) * 1000
        assert all(metrics[part] > 0 for part in CHUNK_PARTS), metrics
        assert chunk_ms(metrics) <= wall + 0.5
        shares.append(chunk_ms(metrics) / wall)
    assert len(session.offloaded.store) > 0  # evictions offloaded blocks
    assert sorted(shares)[len(shares) // 2] > 0.8, shares
    session.close()
