"""SmolVLM2's vision path: frames reach its tower as its own video processor normalizes them, one frame
at a time at the model's square size, and its visual tokens are the stock model's image features."""

import numpy as np
import pytest
import torch

from conftest import make_chunks
from livesight.models.registry import load_adapter


@pytest.fixture(scope="module")
def smol():
    return load_adapter("tiny-random-smolvlm2", "cpu")


def test_frames_are_normalized_as_the_smolvlm_video_processor_does(smol):
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor
    from transformers.video_utils import VideoMetadata
    frames = (np.random.default_rng(0).random((2, 64, 64, 3)) * 255).astype(np.uint8)
    meta = VideoMetadata(total_num_frames=2, fps=2.0, duration=1.0, frames_indices=[0, 1], height=64, width=64)
    official = SmolVLMVideoProcessor()(videos=[frames], video_metadata=[meta], do_resize=False, do_sample_frames=False,
                                       return_tensors="pt")["pixel_values"][0]
    _, pixels = smol.to_pixels(torch.from_numpy(frames), (64, 64))
    assert pixels.shape == official.shape and torch.allclose(pixels, official, atol=1e-6)


def test_visual_tokens_are_the_stock_image_features_frame_by_frame(smol):
    chunk = make_chunks(1, size=(180, 320))[0]
    size = smol.frame_size((180, 320), 10**9)
    assert size == (64, 64) and smol.merged_grid(size, 2) == (2, 4, 4)  # square, whatever the source or budget
    tokens, stats = smol.encode_frames(torch.from_numpy(chunk.frames), size, smol.vision_encoder(size, 2, None))
    _, pixels = smol.to_pixels(torch.from_numpy(chunk.frames), size)
    with torch.no_grad():
        stock = smol.loaded.model.model.get_image_features(pixels[None]).pooler_output[0]
    assert tokens.shape == (32, 64) and stats.mode == "full" and torch.equal(tokens, stock)


def test_the_chat_is_smolvlm2s_template(smol):
    chat, decode = smol.chat_ids(), smol.tokenizer.decode
    assert decode(chat.system("Watch.")) == "<|im_start|>System: Watch.<end_of_utterance>\n"
    assert decode(chat.chunk_open) == "User:<fake_token_around_image><global-img>"
    assert decode(chat.chunk_close) == "<fake_token_around_image><end_of_utterance>\n"
    assert decode(chat.assistant) == "Assistant:"
    assert chat.stop_ids == {smol.tokenizer.convert_tokens_to_ids("<end_of_utterance>"), smol.tokenizer.eos_token_id}
