"""Retrieval of offloaded video KV: equivalence, tiers, ranking."""

import shutil

import pytest
import torch

from conftest import DEVICES, make_chunks
from livesight.kernels import rope_angles, score_blocks, select_blocks
from livesight.kernels.rope import rotate_by_angles_reference
from livesight.kvcache import TokenTable
from livesight.kvcache.offload import OffloadStore
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import SessionConfig
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.retrieval import probe
from livesight.streaming.session import Session
from test_equivalence import run_lockstep


def _config(**retrieval):
    return SessionConfig(vision_window_s=2.0, text_sink=4, text_window=12, narrate_tokens=3, answer_tokens=4,
                         system_prompt="sys", retrieval=RetrievalConfig(**retrieval))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_every_block_retrieved_equals_plain_forward_over_whole_history(tiny, scope):
    """k >= the number of blocks: the answer attends to sink, every past chunk and the kept text,
    and its logits equal the stock model's over exactly those tokens at the assigned positions."""
    session, log = run_lockstep(tiny, _config(top_k=50, scope=scope), num_chunks=8, questions=[(7, "what moved?")])
    answer = log["answers"][-1]
    assert answer.type == "answer" and len(answer.data["retrieved"]) == 6  # chunks 0..5 left the 2-s window
    assert answer.data["retrieved"] == [[float(i), float(i + 1)] for i in range(6)]
    assert log["max_retrieved"] == 6 * session.tokens_per_chunk
    assert session.cache.table.counts()["retrieved"] == 0  # the slots are cleared after the answer
    assert log["max_err"] < 2e-5, log["max_err"]


def test_top_k_zero_equals_no_retrieval(tiny):
    _, with_k0 = run_lockstep(tiny, _config(top_k=0), num_chunks=6, questions=[(5, "and now?")])
    _, without = run_lockstep(tiny, _config(enabled=False), num_chunks=6, questions=[(5, "and now?")])
    assert with_k0["answers"][-1].data["retrieved"] == []
    assert with_k0["answers"][-1].text == without["answers"][-1].text
    assert len(with_k0["logits"]) == len(without["logits"])
    assert all(torch.equal(a, b) for a, b in zip(with_k0["logits"], without["logits"]))


def _rows(n, t):
    return TokenTable(torch.full((n,), 2), torch.arange(n) + 100 * int(t), torch.full((n,), int(t)),
                      torch.arange(n).expand(3, n) + 10 * int(t), torch.full((n,), t, dtype=torch.float64))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_disk_tier_is_bit_identical_and_budgets_hold(tmp_path, dtype, device):
    """From a GPU the copy to RAM is finished on a thread: spills and loads wait for it, and the device
    tensors may be overwritten as soon as put returns (eviction compacts the cache over them)."""
    shape = (3, 2, 5, 8)  # (L, Hkv, n, D)
    block_bytes = 2 * torch.zeros(shape, dtype=dtype).nbytes
    store = OffloadStore(str(tmp_path), ram_bytes=2 * block_bytes, disk_bytes=3 * block_bytes,
                         block_bytes=block_bytes, rep_shape=(3, 2, 8), device=device)
    originals = []
    for i in range(9):
        keys, values = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
        originals.append((keys, values))
        on_device = keys.to(device, copy=True), values.to(device, copy=True)
        store.put(*on_device, _rows(5, float(i)), torch.randn(3, 2, 8, device=device), (float(i), i + 1.0))
        for t in on_device:
            t.fill_(0)
        assert store.stats.ram_bytes <= 2 * block_bytes and store.stats.disk_bytes <= 3 * block_bytes
    assert [b.index for b in store.blocks] == [4, 5, 6, 7, 8] and store.stats.dropped == 4
    assert sum(b.path is not None for b in store.blocks) == 3 and len(list(tmp_path.iterdir())) == 3
    for block in store.blocks:
        parts = store.load(block, [0, 1, 2])
        keys, values = (torch.stack([parts[i][j] for i in range(3)]) for j in (0, 1))
        assert torch.equal(keys, originals[block.index][0]) and torch.equal(values, originals[block.index][1])
        assert torch.equal(store.load(block, [2])[2][0], originals[block.index][0][2])


def test_long_stream_keeps_both_budgets_and_a_deleted_folder_is_an_error_event(tiny, tmp_path):
    folder = tmp_path / "session"
    folder.mkdir()
    block = 2 * 3 * 2 * 25 * 16 * 4  # bytes: tiny-random's 3 layers, 2 KV heads, 25 tokens, 16 dims, fp32
    config = _config(top_k=2, ram_gb=3 * block / 2**30, disk_gb=4 * block / 2**30, folder=str(folder))
    session = Session(QwenVLAdapter(tiny), config, (180, 320))
    stats = session.offloaded.store.stats
    events = []
    for chunk in make_chunks(30):
        events += session.add_chunk(chunk)
        assert stats.ram_bytes <= 3 * block and stats.disk_bytes <= 4 * block and len(session.offloaded.store) <= 7
        if chunk.index == 20:
            shutil.rmtree(folder)  # the session folder disappears under a running session
    metrics = [e.data["offload"] for e in events if e.type == "metrics"]
    assert metrics[-1]["dropped"] > 0 and max(m["blocks"] for m in metrics) == 7
    errors = [e for e in events if e.type == "error"]
    assert errors and "unusable" in errors[0].text and str(folder) in errors[0].text
    answer_events = session.ask("what happened?")
    assert answer_events[-1].type == "answer"  # still answers, from RAM blocks and the window


def test_ranking_puts_the_block_built_from_the_question_first(tiny):
    session = Session(QwenVLAdapter(tiny), _config(top_k=1, scope="global"), (180, 320))
    for chunk in make_chunks(8):
        session.add_chunk(chunk)
    offloaded = session.offloaded
    embeds = session.adapter.embed_ids(session.chat.encode("where is the red circle?"))
    queries = probe(session.stepper, embeds)  # (L, Hq, n, D) before rotary
    num_layers, num_heads, _, dim = queries.shape
    num_kv = session.adapter.num_kv_heads
    target = queries.reshape(num_layers, num_kv, -1, dim).mean(2)  # (L, Hkv, D)
    rows = offloaded.store.blocks[0].rows
    rows = TokenTable(rows.segment, rows.seq + 10**6, rows.group + 10**6, rows.pos, rows.t)
    keys_pre = (5 * target)[:, :, None, :].expand(-1, -1, len(rows), -1)
    keys = rotate_by_angles_reference(keys_pre, rope_angles(rows.pos, session.cache.inv_freq, session.cache.rope_axes))
    offloaded.store.put(keys, torch.randn_like(keys), rows, session.cache.representative(keys, rows.pos), (99.0, 100.0))
    scores = score_blocks(queries, offloaded.store.live_representatives())
    assert bool((scores.argmax(dim=1) == len(offloaded.store) - 1).all())  # first in every layer
    assert select_blocks(scores, 1, "layer")[:, 0].tolist() == [len(offloaded.store) - 1] * num_layers
    answer = session.ask("where is the red circle?")[-1]
    assert answer.data["retrieved"] == [[99.0, 100.0]]
