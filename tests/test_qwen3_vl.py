"""Qwen3-VL's vision path: the frames reach its tower as its own video processor lays them out, the
adapter's visual rows are the tower's merged tokens followed by its DeepStack features, and a chunk is
reused whole only while its pixels stay put."""

import numpy as np
import pytest
import torch

from conftest import make_chunks
from livesight.models.registry import load_adapter


@pytest.fixture(scope="module")
def qwen3():
    return load_adapter("tiny-random-qwen3-vl", "cpu")


def test_patch_rows_are_the_qwen3_vl_video_processors():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import VideoMetadata
    from livesight.vision.preprocess import to_patches
    frames = (np.random.default_rng(0).random((2, 64, 128, 3)) * 255).astype(np.uint8)
    meta = VideoMetadata(total_num_frames=2, fps=2.0, duration=1.0, frames_indices=[0, 1], height=64, width=128)
    official = Qwen3VLVideoProcessor(cap_pixels_per_frame=True)(
        videos=[frames], video_metadata=[meta], do_resize=False, do_sample_frames=False, return_tensors="pt")
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    rows, grid = to_patches(x, (0.5,) * 3, (0.5,) * 3, 16, 2, 2)
    assert grid == tuple(official["video_grid_thw"][0].tolist())
    assert torch.allclose(rows, official["pixel_values_videos"], atol=1e-6)


def test_visual_rows_are_the_towers_tokens_then_its_deepstack_features(qwen3):
    chunk = make_chunks(1, size=(64, 128))[0]
    encoder = qwen3.vision_encoder((64, 128), 2, None)
    rows, stats = qwen3.encode_frames(torch.from_numpy(chunk.frames), (64, 128), encoder)
    _, pixels = qwen3.to_pixels(torch.from_numpy(chunk.frames), (64, 128))
    with torch.no_grad():
        out = qwen3.visual(pixels, grid_thw=torch.tensor([[1, 4, 8]]))
    hidden = qwen3.hidden_size
    assert rows.shape == (8, hidden * 3) and stats.mode == "full"
    assert torch.equal(rows[:, :hidden], out.pooler_output)
    for level, feature in enumerate(out.deepstack_features, start=1):
        assert torch.equal(rows[:, level * hidden:(level + 1) * hidden], feature)
    text = qwen3.embed_ids([257, 10])
    assert text.shape == (2, hidden * 3) and not text[:, hidden:].any()  # text rows carry no DeepStack


def test_a_chunk_is_reused_whole_only_while_its_pixels_stay(qwen3):
    chunks = make_chunks(3, size=(64, 128))
    same = torch.from_numpy(chunks[0].frames)
    exact = qwen3.vision_encoder((64, 128), 2, 0.0)
    first, a = qwen3.encode_frames(same, (64, 128), exact)
    again, b = qwen3.encode_frames(same.clone(), (64, 128), exact)
    assert (a.mode, b.mode) == ("full", "reused") and torch.equal(first, again)
    moved, c = qwen3.encode_frames(torch.from_numpy(chunks[2].frames), (64, 128), exact)
    never = qwen3.vision_encoder((64, 128), 2, None)
    fresh, _ = qwen3.encode_frames(torch.from_numpy(chunks[2].frames), (64, 128), never)
    assert c.mode == "full" and torch.equal(moved, fresh)
    exact.reset()
    assert qwen3.encode_frames(same, (64, 128), exact)[1].mode == "full"
    assert [qwen3.encode_frames(same, (64, 128), never)[1].mode for _ in range(2)] == ["full", "full"]


def test_more_than_one_frame_pair_per_chunk_is_refused_by_name(qwen3):
    from livesight.errors import InputError
    with pytest.raises(InputError, match="Qwen3-VL takes one frame pair per chunk; 4 frames make 2"):
        qwen3.merged_grid((64, 128), 4)


def test_each_chunk_opens_with_qwen3_vls_own_timestamp_of_its_frame_pair(qwen3):
    """Qwen3-VL writes each frame pair's time before it, as its processor computes it (the mean of the
    pair's frame times, one decimal); the cache is sized for the longest stamp the stream will write."""
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from livesight.streaming.config import RetrievalConfig, SessionConfig
    from livesight.streaming.session import Session
    config = SessionConfig(narrate=False, vision_window_s=2.0, text_window=4, retrieval=RetrievalConfig(enabled=False))
    session = Session(qwen3, config, (64, 64))
    chat, openings = session.chat, []
    embed = qwen3.embed_ids
    try:
        qwen3.embed_ids = lambda ids: (openings.append(list(ids)), embed(ids))[1]
        for chunk in make_chunks(25, size=(64, 64)):
            session.add_chunk(chunk)
    finally:
        del qwen3.embed_ids
    openings = [ids for ids in openings if ids[:len(chat.user_open)] == chat.user_open and ids != chat.user_open]
    assert len(openings) == 25
    for i, ids in enumerate(openings):  # chunk i: frames 2i and 2i + 1 at 2 fps
        stamp = Qwen3VLProcessor._calculate_timestamps(None, [2 * i, 2 * i + 1], 2.0, 2)[0]
        text = qwen3.tokenizer.decode(ids)
        assert text == f"<|im_start|>user\n<{stamp:.1f} seconds><|vision_start|>", text
    assert qwen3.tokenizer.decode(openings[24]).endswith("<24.2 seconds><|vision_start|>")  # (24 + 24.5) / 2
    assert chat.chunk_open_bound == len(openings[0]) + 7  # "0.2" to "99999999.9": 7 more digits
    assert max(len(ids) for ids in openings) <= chat.chunk_open_bound
