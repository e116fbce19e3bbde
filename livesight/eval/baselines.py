"""The baselines `livesight bench speed` measures the engine against, in plain transformers: its own
vision tower, its SDPA attention and DynamicCache, no CUDA graphs.

- full: the whole stream stays in context, chunk after chunk (a VLM streaming with no cache
  policy), until memory runs out or the cap;
- window: StreamingVLM's comparison: every chunk, the system prompt and the last W seconds of
  video are prefilled again from scratch (each chunk's vision tower runs once).

Both narrate greedily after each chunk like the engine, the narration left out of the context (a
hybrid model's linear-attention layers, which cannot be cut back, by a copy of their state taken before).
Positions are the engine's (StepBuilder), contiguous from 0.
"""

import time
from collections import deque
from contextlib import contextmanager

import torch
from transformers import DynamicCache
from transformers.cache_utils import LinearAttentionCacheLayerMixin

from livesight.kvcache import Segment
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.tokens import StepBuilder


@contextmanager
def plain_attention(adapter: QwenVLAdapter):
    """transformers' own SDPA attention (and mask), norms and rotary for the language model and the
    vision tower while inside."""
    configs = [adapter.language_model.config, adapter.visual.config]
    previous = [config._attn_implementation for config in configs]
    for config in configs:
        config._attn_implementation = "sdpa"
    adapter.fuse(False)
    try:
        yield
    finally:
        adapter.fuse(True)
        for config, name in zip(configs, previous):
            config._attn_implementation = name


class PlainStream:
    """One baseline stream. window_chunks None: the full context; else re-prefill that many chunks."""

    def __init__(self, adapter: QwenVLAdapter, size: tuple[int, int], frames_per_chunk: int, temporal_stride: int,
                 system_prompt: str, narrate_tokens: int, window_chunks: int | None = None):
        self.adapter, self.size, self.narrate_tokens = adapter, size, narrate_tokens
        self.grid = adapter.merged_grid(size, frames_per_chunk)
        self.patch_grid = adapter.patch_grid(size, frames_per_chunk)
        self.stride, self.window_chunks = temporal_stride, window_chunks
        enc = lambda text: adapter.embed_ids(adapter.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        self.sink = enc(f"<|im_start|>system\n{system_prompt}<|im_end|>\n")
        self.open, self.close = enc("<|im_start|>user\n<|vision_start|>"), enc("<|vision_end|><|im_end|>\n")
        self.assistant = enc("<|im_start|>assistant\n")
        self.chunks: deque = deque(maxlen=window_chunks)  # the window's visual tokens
        self.cache = self._new_cache()
        self.builder = StepBuilder(0, 0, 0, adapter.flat_positions)
        self._prefill([], with_sink=True)

    def _new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.adapter.language_model.config)  # a hybrid model's linear layers too

    def _sync(self) -> None:
        if self.adapter.device.type == "cuda":
            torch.cuda.synchronize()

    def _prefill(self, visuals: list[torch.Tensor], with_sink: bool) -> torch.Tensor:
        """Run the sink (if asked) and these chunks' groups into self.cache -> last logits."""
        builder = self.builder
        if with_sink:
            builder.text(self.sink, Segment.SINK, 0.0)
        for visual in visuals:
            builder.vision(self.open, visual, self.grid, self.close, 0.0, self.stride)
        if self.narrate_tokens:
            builder.text(self.assistant, Segment.TEXT, 0.0)
        embeds, table = builder.build()
        builder.embeds, builder.rows = [], []
        return self._forward(embeds, table.pos)

    def _forward(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.adapter.logits(self.adapter.run_layers(embeds, positions, self.cache)[-1])

    @torch.inference_mode()
    def step(self, chunk: Chunk) -> dict:
        """One chunk: tower, prefill, narration; -> timings (ms) and the context's length in tokens."""
        adapter = self.adapter
        with plain_attention(adapter):
            self._sync()
            t0 = time.perf_counter()
            _, pixels = adapter.to_pixels(torch.from_numpy(chunk.frames), self.size)
            visual = adapter.tower(pixels, self.patch_grid)
            self._sync()
            t1 = time.perf_counter()
            if self.window_chunks is None:
                logits = self._prefill([visual], with_sink=False)
            else:
                self.chunks.append(visual)
                self.cache, self.builder = self._new_cache(), StepBuilder(0, 0, 0, adapter.flat_positions)
                logits = self._prefill(list(self.chunks), with_sink=True)
            context, self.last_logits = self.cache.get_seq_length(), logits
            self._sync()
            t2 = time.perf_counter()
            self._narrate(logits)
            self._sync()
            t3 = time.perf_counter()
        return {"vision_ms": (t1 - t0) * 1000, "prefill_ms": (t2 - t1) * 1000, "decode_ms": (t3 - t2) * 1000,
                "context_tokens": context}

    def _narrate(self, logits: torch.Tensor) -> None:
        """Greedy tokens, then the cache cut back to the chunk (narration stays out of the context)."""
        if not self.narrate_tokens:
            return
        length, next_pos = self.cache.get_seq_length(), self.builder.next_pos
        linear = {layer: [{k: x.clone() for k, x in states.items() if x is not None}
                          for states in (layer.conv_states, layer.recurrent_states)]
                  for layer in self.cache.layers if isinstance(layer, LinearAttentionCacheLayerMixin)}
        for _ in range(self.narrate_tokens):
            token = self.adapter.embed_ids([int(logits.argmax())])
            logits = self._forward(token, torch.full((3, 1), self.builder.next_pos, dtype=torch.int64))
            self.builder.next_pos += 1
        for layer in self.cache.layers:
            if layer in linear:
                layer.conv_states.update(linear[layer][0])
                layer.recurrent_states.update(linear[layer][1])
            else:
                layer.crop(length - layer.get_seq_length())  # a negative count: tokens to drop
        self.builder.next_pos = next_pos
