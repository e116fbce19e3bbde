"""Qwen2.5-VL through transformers, with LiveSight's cache and attention function.

The adapter is the only place that knows the model's module names. It speaks tensors: embeddings
in, logits out, positions built by the caller. `load_adapter` is how entry points get one.
"""

import functools
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from livesight.kernels import (VISION_ATTENTION_NAME, chunk_attention, slab_attention, span_attention,
                               vision_attention)
from livesight.kernels.fused import rms_norm, rotary, rotary_reference
from livesight.kvcache import StreamCache
from livesight.kvcache.pool import KVPool
from livesight.errors import InputError
from livesight.streaming.models import SMOLLM2, LoadedModel, load_model
from livesight.vision.encoder import EncodeStats, VisionEncoder, encode_batch
from livesight.vision.preprocess import resize_frames, to_patches
from livesight.vision.tower import align_tower

ATTENTION_NAME = "livesight"


_captured_queries: dict[int, torch.Tensor] | None = None


@contextmanager
def capture_queries():
    """Within the block, every layer's attention records its queries (Hq, n, D), rotary applied,
    in the yielded dict by layer index: the question's query vectors that score offloaded blocks."""
    global _captured_queries
    _captured_queries = {}
    try:
        yield _captured_queries
    finally:
        _captured_queries = None


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: q (B, Hq, Lq, D), k/v (B, Hkv, Lk, D) -> (B, Lq, Hq, D).

    The mask is ignored on purpose: the adapter passes none, and chunk_attention aligns the causal
    part bottom-right over the compact cache."""
    if _captured_queries is not None:
        _captured_queries[module.layer_idx] = query[0]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    start, key_valid, plan = kwargs.get("livesight_start"), kwargs.get("livesight_key_valid"), kwargs.get("livesight_plan")
    if plan is not None:  # a batched step: packed rows of many streams, each over its own slab of the pool
        key_bias = kwargs.get("livesight_key_bias")  # (L, S + 1, C): padding in retrieved slots
        out = slab_attention(query, key, value, scale, plan, None if key_bias is None else key_bias[module.layer_idx])
    elif start is not None:  # a static step: fixed key span, rows written from slot `start` on
        key_bias = kwargs.get("livesight_key_bias")  # (L, capacity): padding in retrieved slots
        out = span_attention(query, key, value, scale, start,
                             None if key_bias is None else key_bias[module.layer_idx, :key.shape[-2]])
    else:
        out = chunk_attention(query, key, value, scale,
                              None if key_valid is None else key_valid[module.layer_idx, :key.shape[-2]])
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """Mask builder for our attention: none is needed, causality is bottom-right inside the kernel.
    Registered so transformers' mask factory does not build (and then discard) a dense mask."""
    return None


def _norm_forward(module, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, module.weight, module.variance_epsilon)


class TextAdapter:
    """A decoder-only language model (Llama family, 1-D RoPE) on LiveSight's cache and attention.

    Positions arrive as (3, n) like every row of the cache's TokenTable; a 1-D model reads row 0."""

    def __init__(self, loaded: LoadedModel):
        AttentionInterface.register(ATTENTION_NAME, _attention)
        AttentionMaskInterface.register(ATTENTION_NAME, _no_mask)
        self.loaded, self.tokenizer = loaded, loaded.tokenizer
        self.language_model, self.lm_head = self._modules(loaded.model)
        self.language_model.config._attn_implementation = ATTENTION_NAME
        text = self.language_model.config
        self.num_layers, self.num_kv_heads = text.num_hidden_layers, text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.dtype, self.device = loaded.model.dtype, loaded.model.device

    @staticmethod
    def _modules(model):
        return model.model, model.lm_head

    @staticmethod
    def _position_ids(positions: torch.Tensor) -> torch.Tensor:
        return positions[:1]  # (1, n)

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.language_model.rotary_emb.inv_freq

    def new_cache(self, capacity: int) -> StreamCache:
        return StreamCache(self.num_layers, self.num_kv_heads, self.head_dim, capacity, self.inv_freq,
                           self.dtype, self.device, self.mrope_section)

    @property
    def mrope_section(self) -> list[int] | None:
        """Which position axis each rotary frequency reads (None: 1-D rotary)."""
        return getattr(self.language_model.rotary_emb, "mrope_section", None)

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
        return self.embed_tokens(torch.tensor(ids).to(self.device, non_blocking=True))

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (n,) on the device -> (n, hidden), with no wait on the GPU."""
        return self.language_model.embed_tokens(ids)

    def _hidden(self, embeds: torch.Tensor, positions: torch.Tensor, cache: StreamCache, **kwargs) -> torch.Tensor:
        """embeds: (n, hidden); positions: (3, n) -> last hidden states (n, hidden); appends to `cache`."""
        out = self.language_model(inputs_embeds=embeds[None].to(self.dtype),
                                  position_ids=self._position_ids(positions).to(self.device, non_blocking=True),
                                  past_key_values=cache, use_cache=True, **kwargs)
        return out.last_hidden_state[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., hidden) -> float logits (..., vocab)."""
        return self.lm_head(hidden).float()

    @torch.inference_mode()
    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: StreamCache,
                all_logits: bool = False) -> torch.Tensor:
        """embeds: (n, hidden); positions: (3, n) -> logits (vocab,) of the last token, or (n, vocab).

        Appends the step's keys and values to `cache`."""
        hidden = self._hidden(embeds, positions, cache, livesight_key_valid=cache.key_valid)
        return self.logits(hidden if all_logits else hidden[-1])

    def static_hidden(self, embeds: torch.Tensor, positions: torch.Tensor, start: torch.Tensor,
                      cache: StreamCache, num_keys: int, padded: bool = False) -> torch.Tensor:
        """The step at fixed shapes (streaming/static_step.py): embeds (n, hidden) and positions
        (3, n) are written to cache slots start .. start + n - 1 (start: (1,) on the device), and
        attend to cache slots 0 .. num_keys - 1, causally. Shapes depend only on (n, num_keys).
        padded: retrieved slots hold padding, which cache.key_bias hides layer by layer.
        -> last hidden states (n, hidden). The cache's length is left to the caller."""
        slots = start + torch.arange(embeds.shape[0], device=start.device)
        cache.static_write = (slots, num_keys)
        try:
            return self._hidden(embeds, positions, cache, livesight_start=start,
                                livesight_key_bias=cache.key_bias if padded else None)
        finally:
            cache.static_write = None


    def pool_hidden(self, embeds: torch.Tensor, positions: torch.Tensor, pool: KVPool, slabs: torch.Tensor,
                    slots: torch.Tensor, plan, padded: bool = False) -> torch.Tensor:
        """A batched step (streaming/batch_step.py): the packed tokens of many streams, embeds (N, hidden)
        and positions (3, N), token i written to slot slots[i] of slab slabs[i] of `pool` and attending to
        its own slab as the slab plan says (kernels/slab_attention.py). padded: some slab's retrieved slots
        hold padding, which pool.key_bias hides. -> last hidden states (N, hidden)."""
        pool.write = (slabs, slots)
        try:
            return self._hidden(embeds, positions, pool, livesight_plan=plan,
                                livesight_key_bias=pool.key_bias if padded else None)
        finally:
            pool.write = None


@dataclass(frozen=True)
class ChatIds:
    """The chat template's pieces a stream is built of, as token ids, and the ids that end a turn."""

    system_open: list[int]
    system_close: list[int]
    chunk_open: list[int]  # a user turn holding one chunk's video
    chunk_close: list[int]
    user_open: list[int]
    turn_close: list[int]
    assistant: list[int]  # the assistant's turn opened
    stop_ids: frozenset[int]
    encode: Callable[[str], list[int]]

    def system(self, prompt: str) -> list[int]:
        return self.system_open + self.encode(prompt) + self.system_close


def qwen_chat_ids(tok) -> ChatIds:
    """Qwen's ChatML, with a chunk's video between vision delimiters."""
    enc = functools.partial(tok.encode, add_special_tokens=False)
    stop = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")}
    return ChatIds(enc("<|im_start|>system\n"), enc("<|im_end|>\n"), enc("<|im_start|>user\n<|vision_start|>"),
                   enc("<|vision_end|><|im_end|>\n"), enc("<|im_start|>user\n"), enc("<|im_end|>\n"),
                   enc("<|im_start|>assistant\n"), frozenset(i for i in stop if i is not None), enc)


class QwenVLAdapter(TextAdapter):
    """Qwen2.5-VL: the text model above with 3-D M-RoPE positions, plus the vision tower."""

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        model = loaded.model
        self.visual = model.model.visual
        AttentionInterface.register(VISION_ATTENTION_NAME, vision_attention)
        self.visual.config._attn_implementation = VISION_ATTENTION_NAME  # the tower's own forward, if called
        vision = model.config.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        self.tokens_per_second = vision.tokens_per_second
        self.video_token_id = model.config.video_token_id
        if self.device.type == "cuda":  # same outputs, GEMM shapes the GPU runs at full speed (vision/tower.py)
            align_tower(self.visual)
        self.fuse(True)

    def fuse(self, on: bool) -> None:
        """Route the model's RMSNorms and the text rotary through livesight.kernels.fused (on), or back
        to transformers' own (off: the plain baselines). The rotary is a module-level function of
        transformers' Qwen2.5-VL code, so this holds for every such model in the process."""
        for module in self.loaded.model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                if on:
                    module.forward = functools.partial(_norm_forward, module)
                else:
                    module.__dict__.pop("forward", None)
        modeling_qwen2_5_vl.apply_rotary_pos_emb = rotary if on else rotary_reference

    @staticmethod
    def _modules(model):
        return model.model.language_model, model.lm_head

    @staticmethod
    def _position_ids(positions: torch.Tensor) -> torch.Tensor:
        return positions[:, None]  # (3, 1, n)

    def chat_ids(self) -> ChatIds:
        return qwen_chat_ids(self.tokenizer)

    def patch_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """The vision tower's patch grid (t, h, w) of one chunk of `num_frames` frames of `size`."""
        return (-(-num_frames // self.temporal), size[0] // self.patch, size[1] // self.patch)

    def temporal_stride(self, fps: float) -> int:
        """M-RoPE temporal positions between consecutive chunks' frame pairs at `fps`."""
        return max(1, round(self.tokens_per_second * self.temporal / fps))

    def merged_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """The language-model token grid (t, h, w) of one chunk of `num_frames` frames of `size`."""
        t, h, w = self.patch_grid(size, num_frames)
        return (t, h // self.merge, w // self.merge)

    def vision_encoder(self, size: tuple[int, int], num_frames: int, reuse_threshold: float | None,
                       graphs: bool | None = None, partial: bool = True) -> VisionEncoder:
        """The encoder for chunks of `num_frames` frames of `size`; reuse_threshold None: no reuse;
        graphs: replay CUDA graphs (None: on a GPU); partial: re-encode only changed regions."""
        return VisionEncoder(self.visual, self.patch_grid(size, num_frames), reuse_threshold, graphs, partial)

    @torch.inference_mode()
    def to_pixels(self, frames: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (T, H, W, 3) uint8 -> the frames resized, (T', 3, h, w) in [0, 1] with T' a multiple
        of the tower's temporal patch (the last frame repeated), and their patch rows in model dtype."""
        x = resize_frames(frames.to(self.device, non_blocking=True), size)
        if x.shape[0] % self.temporal:
            x = torch.cat([x, x[-1:].expand(self.temporal - x.shape[0] % self.temporal, -1, -1, -1)])
        pixels, _ = to_patches(x, self.loaded.image_mean, self.loaded.image_std, self.patch, self.merge, self.temporal)
        return x, pixels.to(self.dtype)

    def encode_frames(self, frames: torch.Tensor, size: tuple[int, int],
                      encoder: VisionEncoder) -> tuple[torch.Tensor, EncodeStats]:
        """frames: (T, H, W, 3) uint8 -> visual tokens (t * h * w, hidden) row-major for one chunk."""
        return encoder.encode(*self.to_pixels(frames, size))

    def encode_frames_batch(self, items: list[tuple[torch.Tensor, tuple[int, int], VisionEncoder]]
                            ) -> list[tuple[torch.Tensor, EncodeStats]]:
        """encode_frames for the chunks of many streams, (frames, size, encoder) each, the full passes
        in one tower pass (vision/encoder.py: encode_batch)."""
        inputs = [None] * len(items)
        groups: dict[tuple, list[int]] = {}  # chunks of one shape and size are resized and cut together
        for i, (frames, size, _) in enumerate(items):
            groups.setdefault((tuple(frames.shape), tuple(size)), []).append(i)
        for (shape, size), members in groups.items():
            if len(members) == 1 or shape[0] % self.temporal:
                for i in members:
                    inputs[i] = self.to_pixels(items[i][0], size)
                continue
            frames, pixels = self.to_pixels(torch.cat([items[i][0] for i in members]), size)
            for i, x, rows in zip(members, frames.chunk(len(members)), pixels.chunk(len(members))):
                inputs[i] = (x, rows)
        return encode_batch([(encoder, *pair) for (_, _, encoder), pair in zip(items, inputs)])


# The adapter of each model family, by the loaded config's model_type: a new family is one more entry.
ADAPTERS: dict[str, type[TextAdapter]] = {"qwen2_5_vl": QwenVLAdapter, "llama": TextAdapter}


def load_adapter(spec: str, device: str, video: bool = True) -> TextAdapter:
    """The model `spec` names (see load_model: same specs, same InputError) on `device`, in its
    family's adapter. The family is read off what was loaded, not chosen by the caller, so entry
    points never name one. video: the caller streams video, so a text-only model is refused (before
    loading it, where the spec says so)."""
    text_only = (f"--model {spec} is a text-only model: watching video needs a vision-language model "
                 f"(tiny-random, random-3b, random-7b, a Qwen2.5-VL folder or hub id)")
    if video and spec == SMOLLM2:
        raise InputError(text_only)
    loaded = load_model(spec, device)
    model_type = loaded.model.config.model_type
    assert model_type in ADAPTERS, f"load_model gave a {model_type} model, which has no entry in ADAPTERS"
    adapter = ADAPTERS[model_type](loaded)
    if video and not isinstance(adapter, QwenVLAdapter):
        raise InputError(text_only)
    return adapter
