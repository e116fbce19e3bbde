"""toy-vlm: a Qwen2.5-VL of a few million parameters that LiveSight trains on its synthetic world.

Same architecture as the real models (so the same adapter, kernels and tests serve it), with the
byte tokenizer of tiny-random plus a token for each of the world's answer words, and a small frame
size (168 x 308 from a 16:9 source: 66 tokens per 1-s chunk) at which the world's clock, shapes and
large print stay readable. Every vision block attends fully within its frame pair (no window
attention), which training runs as one batched attention over equal chunks.
"""

import json
import os

import torch
from tokenizers import AddedToken
from transformers import AttentionInterface, AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from livesight.kernels.attention import segment_attention
from livesight.kernels.varlen_attention import segments_of
from livesight.models.configs import qwen_vl_config
from livesight.models.loader import CLIP_MEAN, CLIP_STD, build_byte_tokenizer
from livesight.vision.preprocess import fit_size, to_patches
from livesight.vision.world import BACKGROUNDS, COLOURS, TEXTS

MAX_PIXELS = 168 * 336  # a 640 x 360 source is fit into 168 x 308: 6 x 11 = 66 tokens per chunk
SOURCE_SIZE = (360, 640)  # (height, width) of the world's frames in training, as `livesight synth` writes them
MERGED = 28  # pixels per language-model token's side: patch 14 x spatial merge 2
FRAME_SIZE = fit_size(*SOURCE_SIZE, MAX_PIXELS, MERGED)  # (168, 308)
GRID = (1, FRAME_SIZE[0] // MERGED, FRAME_SIZE[1] // MERGED)  # one 1-s chunk at 2 fps: (1, 6, 11) tokens
TEMPORAL_STRIDE = 2  # M-RoPE temporal positions between chunks at 2 fps (tokens_per_second 2 x temporal patch 2 / 2)
TEXT = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=288, tie_word_embeddings=False)
VISION = dict(depth=4, hidden_size=128, intermediate_size=384, num_heads=4, patch_size=14, spatial_merge_size=2,
              temporal_patch_size=2, window_size=112, tokens_per_second=2, fullatt_block_indexes=[0, 1, 2, 3],
              hidden_act="silu")
WORDS = tuple(w for w in (*COLOURS, *BACKGROUNDS, *TEXTS) if len(w) > 1)  # answers longer than a byte
TRAIN_VISION_ATTENTION = "livesight_flash_train"  # "flash" in the name: the tower passes its varlen metadata


def toy_config() -> Qwen2_5_VLConfig:
    return qwen_vl_config(TEXT, VISION, 32768)


def toy_tokenizer():
    """tiny-random's byte tokenizer plus one token per answer word of the world (WORDS, matched as whole
    words only), in the vocabulary's spare rows: an answer is one decision, not a spelling that can go
    wrong half-way ("oreen")."""
    tokenizer = build_byte_tokenizer()
    tokenizer.add_tokens([AddedToken(w, single_word=True) for w in WORDS])
    if len(tokenizer) > TEXT["vocab_size"]:
        raise AssertionError(f"{len(tokenizer)} tokens do not fit toy-vlm's vocabulary of {TEXT['vocab_size']}")
    return tokenizer


def adopt_words(model: Qwen2_5_VLForConditionalGeneration) -> None:
    """Start the word tokens of a model trained on bytes alone from their spelling: a word's input
    embedding is the mean of its bytes', its output row its first byte's (so it is first as likely as
    the spelling it replaces)."""
    tokenizer, spell = toy_tokenizer(), build_byte_tokenizer()
    embed, head = model.get_input_embeddings().weight, model.lm_head.weight
    with torch.no_grad():
        for word in WORDS:
            row, letters = tokenizer.convert_tokens_to_ids(word), spell.encode(word, add_special_tokens=False)
            embed[row] = embed[letters].mean(0)
            head[row] = head[letters[0]]


def new_model(seed: int) -> Qwen2_5_VLForConditionalGeneration:
    """The untrained model, float32, its initialization drawn from `seed`."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration._from_config(toy_config(), dtype=torch.float32)
    AttentionInterface.register(TRAIN_VISION_ATTENTION, train_vision_attention)
    model.model.visual.config._attn_implementation = TRAIN_VISION_ATTENTION
    model.model.language_model.config._attn_implementation = "sdpa"
    return model


def load_saved(folder: str, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """new_model(seed), with training's attention implementations, holding the weights saved in `folder` (a
    model trained on bytes alone gets the word tokens, adopt_words)."""
    model = new_model(seed)
    # transformers' loader reads a saved folder's names into the model's
    saved = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    model.load_state_dict(saved.state_dict())
    if WORDS[0] not in AutoTokenizer.from_pretrained(folder).get_vocab():  # trained on bytes alone
        adopt_words(model)
    return model


def vision_tokens(model: Qwen2_5_VLForConditionalGeneration, frames: torch.Tensor) -> torch.Tensor:
    """frames (chunks * 2, 3, h, w) in [0, 1], chunk after chunk -> the tower's tokens (chunks * grid tokens,
    hidden), chunk after chunk."""
    pixels, (gt, gh, gw) = to_patches(frames, CLIP_MEAN, CLIP_STD)
    grid = torch.tensor([[1, gh, gw]], device=frames.device).expand(gt, 3)
    visual = model.model.visual(pixels, grid_thw=grid)
    return getattr(visual, "pooler_output", visual)  # older transformers: the tensor


def embed_with_vision(model: Qwen2_5_VLForConditionalGeneration, ids: torch.Tensor, visual: torch.Tensor
                      ) -> torch.Tensor:
    """ids (B, L), vision tokens as -(1 + row of `visual`) (train/layouts.py) -> the language model's input
    embeddings (B, L, hidden)."""
    embeds = model.model.language_model.embed_tokens(ids.clamp(min=0))
    is_vision = ids < 0
    return embeds.masked_scatter(is_vision[..., None], visual[(-ids[is_vision] - 1)].to(embeds.dtype))


def train_vision_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                           cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """The tower's attention for training, with gradients: q, k, v (1, H, N, D), segments from
    cu_seq_lens_q. Equal segments (every chunk of one frame size) run as one batched SDPA call."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    _, heads, n, dim = query.shape
    lengths = cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    if n % lengths.numel() == 0 and bool((lengths == n // lengths.numel()).all()):
        q, k, v = (x[0].view(heads, lengths.numel(), -1, dim).transpose(0, 1) for x in (query, key, value))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)  # (S, H, L, D)
        return out.transpose(0, 1).reshape(heads, n, dim).transpose(0, 1)[None], None
    segment = segments_of(cu_seq_lens_q, n)
    out = segment_attention(query[0], key[0], value[0], segment, segment, scale)
    return out.transpose(0, 1)[None], None


def save(model: Qwen2_5_VLForConditionalGeneration, folder: str) -> None:
    """Weights in bf16 safetensors, the tokenizer and the preprocessing, loadable by load_model(folder)."""
    os.makedirs(folder, exist_ok=True)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(folder, state_dict={k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    toy_tokenizer().save_pretrained(folder)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump({"image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                   "max_pixels": MAX_PIXELS}, f, indent=1)
