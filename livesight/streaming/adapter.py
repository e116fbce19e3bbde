"""Qwen2.5-VL through transformers, with LiveSight's cache and attention function.

The adapter is the only place that knows the model's module names. It speaks tensors: embeddings
in, logits out, positions built by the caller.
"""

import torch
from transformers import AttentionInterface

from livesight.kernels import chunk_attention
from livesight.kvcache import StreamCache
from livesight.streaming.models import LoadedModel
from livesight.vision.preprocess import resize_frames, to_patches

ATTENTION_NAME = "livesight"


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D).

    The mask is ignored on purpose: the adapter passes none, and chunk_attention aligns the causal
    part bottom-right over the compact cache."""
    out = chunk_attention(query, key, value, scaling if scaling is not None else query.shape[-1] ** -0.5)
    return out.transpose(1, 2).contiguous(), None


class QwenVLAdapter:
    def __init__(self, loaded: LoadedModel):
        AttentionInterface.register(ATTENTION_NAME, _attention)
        self.loaded = loaded
        model = loaded.model
        self.language_model = model.model.language_model
        self.language_model.config._attn_implementation = ATTENTION_NAME
        self.visual, self.lm_head = model.model.visual, model.lm_head
        text, vision = model.config.text_config, model.config.vision_config
        self.num_layers, self.num_kv_heads = text.num_hidden_layers, text.num_key_value_heads
        self.head_dim = text.hidden_size // text.num_attention_heads
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        self.tokens_per_second = vision.tokens_per_second
        self.video_token_id = model.config.video_token_id
        self.dtype, self.device = model.dtype, model.device
        self.tokenizer = loaded.tokenizer

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.language_model.rotary_emb.inv_freq

    def new_cache(self, capacity: int) -> StreamCache:
        return StreamCache(self.num_layers, self.num_kv_heads, self.head_dim, capacity, self.inv_freq,
                           self.dtype, self.device)

    def merged_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """The language-model token grid (t, h, w) of one chunk of `num_frames` frames of `size`."""
        unit = self.patch * self.merge
        return (-(-num_frames // self.temporal), size[0] // unit, size[1] // unit)

    @torch.inference_mode()
    def encode_frames(self, frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """frames: (T, H, W, 3) uint8 -> visual token embeddings (t * h * w, hidden) for one chunk."""
        x = resize_frames(frames.to(self.device), size)
        pixels, grid = to_patches(x, self.loaded.image_mean, self.loaded.image_std, self.patch, self.merge, self.temporal)
        grid_thw = torch.tensor([grid], device=self.device)
        return self.visual(pixels.to(self.dtype), grid_thw=grid_thw).pooler_output

    def decode(self, ids: list[int]) -> str:
        """Token ids to text. Ids the tokenizer does not know (a random-weight model at real size has a
        larger vocabulary than the locally built tokenizer) show as <id> rather than vanishing."""
        known = len(self.tokenizer)
        parts, run = [], []
        for i in ids + [-1]:
            if 0 <= i < known:
                run.append(i)
                continue
            if run:
                parts.append(self.tokenizer.decode(run, skip_special_tokens=True))
                run = []
            if i >= known:
                parts.append(f"<{i}>")
        return "".join(parts).strip()

    @torch.inference_mode()
    def embed_ids(self, ids: list[int]) -> torch.Tensor:
        """ids -> (n, hidden)."""
        return self.language_model.embed_tokens(torch.tensor(ids, device=self.device))

    @torch.inference_mode()
    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: StreamCache,
                all_logits: bool = False) -> torch.Tensor:
        """embeds: (n, hidden); positions: (3, n) -> logits (vocab,) of the last token, or (n, vocab).

        Appends the step's keys and values to `cache`."""
        out = self.language_model(
            inputs_embeds=embeds[None].to(self.dtype), position_ids=positions[:, None].to(self.device),
            past_key_values=cache, attention_mask={"full_attention": None}, use_cache=True)
        hidden = out.last_hidden_state[0]
        return self.lm_head(hidden if all_logits else hidden[-1]).float()
