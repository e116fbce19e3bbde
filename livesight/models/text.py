"""A decoder-only language model (Llama family, 1-D RoPE) through transformers, on LiveSight's cache and
attention: the base of every family's adapter. The adapter is the only place that knows a model's
module names. It speaks tensors: embeddings in, logits out, positions built by the caller.
"""

import functools
from contextlib import contextmanager


import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from livesight.kernels import chunk_attention, headwise_attention, slab_attention, span_attention
from livesight.kernels.fused import rms_norm
from livesight.kvcache import StreamCache
from livesight.kvcache.duo import DuoHeads
from livesight.kvcache.linear import LinearPool, LinearState
from livesight.kvcache.pool import KVPool
from livesight.models.loader import LoadedModel

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
    part bottom-right over the compact cache. A hybrid model's cache holds its full-attention layers
    only, under the indices livesight_layer_of gives."""
    layer_of = kwargs.get("livesight_layer_of")
    layer = module.layer_idx if layer_of is None else layer_of[module.layer_idx]
    if _captured_queries is not None:
        _captured_queries[layer] = query[0]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    start, key_valid = kwargs.get("livesight_start"), kwargs.get("livesight_key_valid")
    plan = kwargs.get("livesight_plan")
    cache = kwargs.get("livesight_cache")  # an fp8 cache's or pool's keys arrive as codes, with their scales and turns
    fp8 = None if cache is None else cache.fp8_span
    window = kwargs.get("livesight_window")  # a head-wise cache's streaming heads (kvcache/headwise.py)
    if plan is not None:  # a batched step: packed rows of many streams, each over its own slab of the pool
        key_bias = kwargs.get("livesight_key_bias")  # (L, S + 1, C): padding in retrieved slots
        streaming = None if cache is None else cache.streaming_span  # a head-wise pool's streaming heads
        out = slab_attention(query, key, value, scale, plan, None if key_bias is None else key_bias[layer], fp8,
                             streaming)
    elif start is not None:  # a static step: fixed key span, rows written from slot `start` on
        key_bias = kwargs.get("livesight_key_bias")  # (L, capacity): padding in retrieved slots
        streaming = None if window is None else window.span(layer, query.shape[2], query.shape[1])
        out = span_attention(query, key, value, scale, start,
                             None if key_bias is None else key_bias[layer, :key.shape[-2]], fp8, streaming)
    else:
        key_valid = None if key_valid is None else key_valid[layer, :key.shape[-2]]
        if window is not None:
            out = headwise_attention(query, key, value, *window.attending[layer],
                                     *window.layout.query_index(layer, query.shape[1], query.device), scale, key_valid)
        else:
            out = chunk_attention(query, key, value, scale, key_valid)
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args, **kwargs):
    """Mask builder for our attention: none is needed, causality is bottom-right inside the kernel.
    Registered so transformers' mask factory does not build (and then discard) a dense mask."""
    return None


def fused_norm_forward(module, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, module.weight, module.variance_epsilon)


def fuse_norms(model: torch.nn.Module, on: bool) -> None:
    """Route the RMSNorms of `model` (this instance's modules only) through livesight.kernels.fused (on),
    or back to transformers' own (off: the plain baselines)."""
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            if on:
                module.forward = functools.partial(fused_norm_forward, module)
            else:
                module.__dict__.pop("forward", None)


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

    def new_cache(self, capacity: int, kv_dtype: str = "model", duo: DuoHeads | None = None) -> StreamCache:
        """A stream's cache of `capacity` slots; kv_dtype "fp8": keys and values in 8 bits (kvcache/storage.py);
        duo: which KV heads stream (kvcache/duo.py, headwise.py)."""
        return StreamCache(self.num_layers, self.num_kv_heads, self.head_dim, capacity, self.inv_freq,
                           self.dtype, self.device, self.rope_axes, layer_of=self.layer_of,
                           linear=self.new_linear_state(), kv_dtype=kv_dtype, duo=duo)

    def new_pool(self, num_slabs: int, slab_capacity: int, kv_dtype: str = "model", duo: DuoHeads | None = None,
                 step_rows: int = 0) -> KVPool:
        """The batched engine's pool: a cache slab for each of `num_slabs` streams, keys and values in kv_dtype;
        duo: which KV heads stream, each slab's streaming heads with a step area of step_rows rows (the most one
        stream's step packs)."""
        return KVPool(num_slabs, self.num_layers, self.num_kv_heads, self.head_dim, slab_capacity, self.inv_freq,
                      self.dtype, self.device, self.rope_axes, layer_of=self.layer_of,
                      linear_pool=self.new_linear_pool(num_slabs), kv_dtype=kv_dtype, duo=duo, step_rows=step_rows,
                      num_q_heads=self.language_model.config.num_attention_heads)

    # A hybrid model's (qwen3_5.py): the model's index of each full-attention layer -> the cache's, and the
    # linear-attention layers' state per stream (a stream's own, a pool's for many, its bytes)
    layer_of: dict[int, int] | None = None

    def new_linear_state(self) -> LinearState | None:
        return None

    def new_linear_pool(self, num_slabs: int) -> LinearPool | None:
        return None

    linear_state_bytes = 0
    pad_rows = True  # a step may carry padding rows (fixed-shape steps for CUDA graphs)
    sees_video = False  # a vision-language family's adapter takes chunks of video (vision_encoder, ...)
    flat_positions = True  # 1-D rotary: a vision grid's tokens take consecutive positions (StepBuilder)

    @property
    def rope_axes(self) -> tuple[int, ...] | None:
        """The position axis (t, h, w) each rotary frequency reads; None: 1-D rotary."""
        return None

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

    def run_layers(self, embeds: torch.Tensor, positions: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        """embeds: (n, row width); positions: (3, n) -> last hidden states (n, hidden); appends to `cache`
        (LiveSight's, or transformers' DynamicCache for the plain baselines)."""
        if self.layer_of is not None:  # the full-attention layers told their index in the cache
            kwargs["livesight_layer_of"] = self.layer_of
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
        hidden = self.run_layers(embeds, positions, cache, livesight_key_valid=cache.key_valid,
                                 livesight_window=cache.window)
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
            return self.run_layers(embeds, positions, cache, livesight_start=start,
                                   livesight_key_bias=cache.key_bias if padded else None,
                                   livesight_cache=cache if cache.kv_dtype == "fp8" else None,
                                   livesight_window=cache.window)
        finally:
            cache.static_write = None


    def pool_hidden(self, embeds: torch.Tensor, positions: torch.Tensor, pool: KVPool, slabs: torch.Tensor,
                    slots: torch.Tensor, plan, padded: bool = False,
                    area_slots: torch.Tensor | None = None) -> torch.Tensor:
        """A batched step (streaming/batch_step.py): the packed tokens of many streams, embeds (N, hidden)
        and positions (3, N), token i written to slot slots[i] of slab slabs[i] of `pool` and attending to
        its own slab as the slab plan says (kernels/slab_attention.py). padded: some slab's retrieved slots
        hold padding, which pool.key_bias hides. area_slots: a head-wise pool's, where token i's streaming heads
        go in its slab's step area. -> last hidden states (N, hidden)."""
        pool.write = (slabs, slots, area_slots)
        try:
            return self.run_layers(embeds, positions, pool, livesight_plan=plan,
                                   livesight_key_bias=pool.key_bias if padded else None, livesight_cache=pool)
        finally:
            pool.write = None
