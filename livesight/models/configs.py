"""The configs of the models LiveSight builds itself: tiny ones with random weights for tests, the real
published sizes with random weights for speed work on a GPU, and toy-vlm's. Special token ids match the
locally built byte tokenizer (loader.build_byte_tokenizer)."""

from transformers import PretrainedConfig, Qwen2_5_VLConfig, Qwen3_5Config, Qwen3VLConfig, SmolVLMConfig

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
SMOLVLM_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]  # after SPECIAL_TOKENS

# The real Qwen2.5-VL architectures (from their released config.json files).
_VISION_REAL = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                    spatial_merge_size=2, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                    fullatt_block_indexes=[7, 15, 23, 31], hidden_act="silu")
_TEXT_REAL = {
    "random-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                      num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "random-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
}
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=288, tie_word_embeddings=False)
_TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                    temporal_patch_size=2, window_size=56, tokens_per_second=2, fullatt_block_indexes=[1],
                    hidden_act="silu")


# Qwen3-VL-8B-Instruct's architecture (its released config.json): 8.8B parameters
_QWEN3_VL_8B_TEXT = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False)
_QWEN3_VL_8B_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh")
_QWEN3_VL_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=288, tie_word_embeddings=False)
_QWEN3_VL_TINY_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                             spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                             deepstack_visual_indexes=[0, 1], hidden_act="gelu_pytorch_tanh")
# SmolVLM2-2.2B-Instruct's architecture: SmolLM2-1.7B, SigLIP-so400m at 384 px, 3 x 3 pixel shuffle (81 tokens a frame)
_SMOLVLM2_TEXT = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=49280, tie_word_embeddings=False, rope_theta=273768.0)
_SMOLVLM2_VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                        patch_size=14, image_size=384)
_SMOLVLM2_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=288, tie_word_embeddings=False, rope_theta=1e5)
_SMOLVLM2_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             patch_size=8, image_size=64)
# Qwen3.5-9B's architecture (transformers' Qwen3_5Config defaults): 32 layers, 3 Gated DeltaNet to 1 full attention,
# full attention 16 query / 4 KV heads of 256 (a quarter of each rotary), Qwen3-VL's tower without DeepStack
_QWEN3_5_9B_TEXT = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=32, num_attention_heads=16,
                        num_key_value_heads=4, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32,
                        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
                        vocab_size=248320, tie_word_embeddings=False)
_QWEN3_5_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                       spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       hidden_act="gelu_pytorch_tanh")
# tiny: linear and full layers in turn (two of each, so the cache's compact indices differ from the model's),
# grouped value heads (4 value heads over 2 key heads) as at full size
_QWEN3_5_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
                          linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
                          layer_types=["linear_attention", "full_attention"] * 2, vocab_size=288,
                          tie_word_embeddings=False)
_QWEN3_5_TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                            spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                            hidden_act="gelu_pytorch_tanh")
RANDOM = {  # name -> the config of a model with random weights
    "tiny-random": lambda: qwen_vl_config(_TINY_TEXT, _TINY_VISION, 128000),
    "random-3b": lambda: qwen_vl_config(_TEXT_REAL["random-3b"], _VISION_REAL, 128000),
    "random-7b": lambda: qwen_vl_config(_TEXT_REAL["random-7b"], _VISION_REAL, 128000),
    "tiny-random-qwen3-vl": lambda: qwen3_vl_config(_QWEN3_VL_TINY_TEXT, _QWEN3_VL_TINY_VISION),
    "random-qwen3-vl-8b": lambda: qwen3_vl_config(_QWEN3_VL_8B_TEXT, _QWEN3_VL_8B_VISION),
    "tiny-random-smolvlm2": lambda: smolvlm_config(_SMOLVLM2_TINY_TEXT, _SMOLVLM2_TINY_VISION, 2),
    "random-smolvlm2-2.2b": lambda: smolvlm_config(_SMOLVLM2_TEXT, _SMOLVLM2_VISION, 3),
    "tiny-random-qwen3.5": lambda: qwen3_5_config(_QWEN3_5_TINY_TEXT, _QWEN3_5_TINY_VISION),
    "random-qwen3.5-9b": lambda: qwen3_5_config(_QWEN3_5_9B_TEXT, _QWEN3_5_VISION),
}


def random_config(name: str) -> PretrainedConfig:
    """The config of a random-weight model (a name of RANDOM)."""
    return RANDOM[name]()


def _token_ids() -> dict[str, int]:
    return {t: 256 + i for i, t in enumerate(SPECIAL_TOKENS)}


def smolvlm_config(text: dict, vision: dict, scale_factor: int, max_positions: int = 16384) -> SmolVLMConfig:
    """A SmolVLM (Idefics3 architecture) config: a Llama-family text model with 1-D RoPE, a SigLIP tower,
    a pixel-shuffle connector; token ids match the byte tokenizer with SMOLVLM_TOKENS added."""
    ids = _token_ids()
    text = {k: v for k, v in text.items() if k != "rope_theta"} | dict(
        model_type="llama", rope_parameters={"rope_type": "default", "rope_theta": text["rope_theta"]},
        max_position_embeddings=max_positions, rms_norm_eps=1e-5, bos_token_id=ids["<|endoftext|>"],
        eos_token_id=256 + len(SPECIAL_TOKENS) + 2, pad_token_id=ids["<|endoftext|>"])
    return SmolVLMConfig(text_config=text, vision_config=vision, scale_factor=scale_factor,
                         image_token_id=ids["<|image_pad|>"], pad_token_id=ids["<|endoftext|>"],
                         tie_word_embeddings=text["tie_word_embeddings"])


def qwen3_vl_config(text: dict, vision: dict, max_positions: int = 262144) -> Qwen3VLConfig:
    """A Qwen3-VL config from its text and vision sizes: interleaved M-RoPE [24, 20, 20] of a 128-wide head
    (scaled to the head), DeepStack from the vision layers `deepstack_visual_indexes`."""
    half = text["head_dim"] // 2
    section = [half - 2 * (half * 5 // 16), half * 5 // 16, half * 5 // 16]  # [24, 20, 20] at head_dim 128
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": section, "mrope_interleaved": True}
    return Qwen3VLConfig(**_qwen_parts(text, vision, rope, max_positions))


def qwen3_5_config(text: dict, vision: dict, max_positions: int = 262144) -> Qwen3_5Config:
    """A Qwen3.5 config: a quarter of each head rotary, interleaved M-RoPE [11, 11, 10] over it (at head_dim
    256), theta 1e7."""
    freqs = text["head_dim"] // 8  # rotary frequencies: a quarter of the head's dims, halved
    section = [freqs * 11 // 32, freqs * 11 // 32, freqs - 2 * (freqs * 11 // 32)]  # [11, 11, 10] at 32
    rope = {"rope_type": "default", "rope_theta": 1e7, "mrope_section": section, "mrope_interleaved": True,
            "partial_rotary_factor": 0.25}
    return Qwen3_5Config(**_qwen_parts(text, vision, rope, max_positions))


def qwen_vl_config(text: dict, vision: dict, max_positions: int) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config from its text and vision sizes; special token ids match `build_byte_tokenizer`."""
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]  # [16, 24, 24] at head_dim 128
    section[0] += head_dim // 2 - sum(section)
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section}
    return Qwen2_5_VLConfig(**_qwen_parts(text, vision, rope, max_positions))


def _qwen_parts(text: dict, vision: dict, rope: dict, max_positions: int) -> dict:
    """What a Qwen VL config is made of, for the byte tokenizer's special token ids."""
    ids = _token_ids()
    return dict(
        text_config=dict(text, rope_parameters=rope, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(vision, out_hidden_size=text["hidden_size"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=text["tie_word_embeddings"])
