"""One preallocated KV pool for many streams: every stream's cache is a fixed slab of it.

A stream's policy bounds its cache, so a slab of `slab_capacity` slots holds it for as long as the
stream lives: no paging, no fragmentation. A stream's StreamCache is a view of its slab, and does
everything it does alone (compaction, retrieval, snapshots) in place. A batched step writes the new
tokens of many streams at once, token i at (slab[i], slot[i]), and hands attention the whole layer;
the slab attention kernel keeps each token to its own slab. One extra slab past the streams' takes
the padding rows of fixed-shape (graph-captured) steps, so they never touch a stream's slots.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from livesight.kernels.kv_write import HeadwiseTargets, headwise_write
from livesight.kernels.quant import quantize_into
from livesight.kernels.span_attention import Fp8Span, StreamingSpan
from livesight.kvcache.cache import StreamCache
from livesight.kvcache.duo import DuoHeads
from livesight.kvcache.headwise import SLACK, HeadLayout, WindowStorage
from livesight.kvcache.linear import LinearPool, LinearState
from livesight.kvcache.storage import Fp8Buffers, Fp8KV, PlainKV, unturned


class PoolFullError(RuntimeError):
    pass


class PoolLayer(CacheLayerMixin):
    is_compileable = False

    def __init__(self, pool: "KVPool", layer_idx: int):
        super().__init__()
        self.pool, self.layer_idx = pool, layer_idx
        self.at = pool.layout.at(layer_idx)  # (storage layer, heads): the layer's retrieval heads if head-wise
        layer, heads = self.at
        # (S + 1, h, C, D)
        self.keys, self.values = pool.key_buffer[layer][:, heads], pool.value_buffer[layer][:, heads]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # preallocated

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states: (1, Hkv, N, D) of a batched step -> the layer's whole pool
        (S + 1, Hkv, C, D); token i lands at slot slots[i] of slab slabs[i]. An fp8 pool's come back as codes,
        and pool.fp8_span says how to read them. A head-wise pool's streaming heads write theirs to their slab's
        step area (row i at area_slots[i]), pool.streaming_span says how to read them, and the retrieval heads' come
        back."""
        pool, layer, (at, heads), fp8 = self.pool, self.layer_idx, self.at, self.pool.fp8
        slabs, slots, area_slots = pool.write
        retrieval = (self.keys, self.values) if fp8 is None else tuple(x[at][:, heads] for x in (
            fp8.keys, fp8.key_scale, fp8.values, fp8.value_scale))
        if pool.window is not None:  # both kinds in one write: the streaming heads' rows to their slab's step area
            window, mine, device = pool.window, pool.layout.stream_heads(layer), key_states.device
            targets = HeadwiseTargets(retrieval, (window.keys[:, mine], window.values[:, mine]),
                                      *pool.layout.write_map(layer, device))
            headwise_write(key_states[0], value_states[0], targets, slabs, slots, area_slots)
            pool.streaming_span = StreamingSpan(window.keys[:, mine], window.values[:, mine], window.held_bias,
                                                pool.window_area, pool.layout.kv_map(layer, device),
                                                *pool.layout.query_index(layer, pool.num_q_heads, device))
        elif fp8 is None:
            self.keys[slabs, :, slots] = key_states[0].transpose(0, 1)
            self.values[slabs, :, slots] = value_states[0].transpose(0, 1)
        else:
            quantize_into(key_states[0], value_states[0], retrieval, slabs, slots)
        if fp8 is None:
            return self.keys, self.values
        if layer == 0:  # a new key is at the position it was written at (device tensors: a CUDA graph captures this)
            fp8.shift[slabs, slots] = torch.zeros(slabs.shape, dtype=fp8.shift.dtype, device=slabs.device)
            fp8.turn[:, slabs, slots] = unturned(slabs.shape[0], fp8.turn.shape[-1], slabs.device)
        pool.fp8_span = Fp8Span(fp8.key_scale[at][:, heads], fp8.value_scale[at][:, heads], fp8.shift, pool.inv_freq,
                                fp8.turn[0], fp8.turn[1])
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return query_length, 0  # no mask is built: the slab plan says what each row sees

    def get_seq_length(self) -> int:
        return 0

    def get_max_length(self) -> int:
        return self.pool.slab_capacity


class KVPool(Cache):
    """key_buffer, value_buffer: (num_layers, num_slabs + 1, num_kv_heads, slab_capacity, head_dim);
    key_bias: (num_layers, num_slabs + 1, slab_capacity), each slab's padding mask (StreamCache.key_bias).
    kv_dtype "fp8": the buffers hold 8-bit codes, `fp8` (storage.py: Fp8Buffers) their scales, shifts and turns.
    duo: DuoAttention's streaming heads (headwise.py): the buffers hold the retrieval heads, (1, num_slabs + 1, R,
    slab_capacity, head_dim), and `window` each slab's streaming heads, with a step area of `step_rows` rows (the
    most a stream's step packs)."""

    def __init__(self, num_slabs: int, num_layers: int, num_kv_heads: int, head_dim: int, slab_capacity: int,
                 inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device | str,
                 rope_axes: tuple[int, ...] | None = None, layer_of: dict[int, int] | None = None,
                 linear_pool: LinearPool | None = None, kv_dtype: str = "model", duo: DuoHeads | None = None,
                 step_rows: int = 0, num_q_heads: int = 0):
        """layer_of, linear_pool: a hybrid model's (StreamCache): the model's index of each full-attention
        layer -> its index here, and every stream's linear-attention state, a slab of it per cache taken.
        num_q_heads: the model's query heads (a head-wise pool's attention reads them by kind)."""
        self.layout, self.duo, self.num_q_heads = HeadLayout(num_layers, num_kv_heads, duo), duo, num_q_heads
        shape = self.layout.storage_shape(slab_capacity, head_dim, num_slabs + 1)
        self.window = None if not self.layout.headwise else WindowStorage.allocate(
            num_slabs + 1, self.layout.num_streaming, duo.sink, duo.recent, step_rows, head_dim, dtype, device)
        self.window_area = 0 if duo is None else duo.sink + duo.recent + SLACK  # the step area's first slot
        self.streaming_span: StreamingSpan | None = None  # in a head-wise pool's step: the layer's streaming heads
        inv_freq = inv_freq.float().to(device)
        self.fp8 = Fp8Buffers.allocate(shape, inv_freq.numel(), device) if kv_dtype == "fp8" else None
        self.fp8_span: Fp8Span | None = None  # in a step: the layer's scales and turns
        self.kv_dtype = kv_dtype
        if self.fp8 is not None:
            self.key_buffer, self.value_buffer = self.fp8.keys, self.fp8.values
        else:
            self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)
            self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.key_bias = torch.zeros(num_layers, num_slabs + 1, slab_capacity, dtype=dtype, device=device)
        self.num_slabs, self.slab_capacity, self.num_layers = num_slabs, slab_capacity, num_layers
        self.spec = (num_layers, num_kv_heads, head_dim, inv_freq, dtype, device, rope_axes)
        self.inv_freq = inv_freq
        self.free = list(range(num_slabs))
        # during a step: (slabs (N,), slots (N,), a head-wise pool's step-area slots (N,) or None)
        self.write: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self.layer_of, self.linear_pool = layer_of, linear_pool
        self.caches: dict[int, StreamCache] = {}  # slab -> the cache over it
        self._segments: list[tuple[int, int, int, int]] = []
        self.step_memo: dict = {}  # what a step's layers derive from its segments once, for all layers
        super().__init__(layers=[PoolLayer(self, i) for i in range(num_layers)])

    @property
    def segments(self) -> list[tuple[int, int, int, int]]:
        """(slab, first row, rows, start) of each stream during a step."""
        return self._segments

    @segments.setter
    def segments(self, segments: list[tuple[int, int, int, int]]) -> None:
        self._segments, self.step_memo = segments, {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        index = layer_idx if self.layer_of is None else self.layer_of[layer_idx]
        return self.layers[index].update(key_states, value_states, *args, **kwargs)

    def linear_segments(self) -> list[tuple[int, int, LinearState]]:
        """(first row, rows, state) of each stream of the step running."""
        return [(row, n, self.caches[slab].linear) for slab, row, n, _ in self.segments]

    def linear_slabs(self) -> list[int]:
        """Each stream's slab of linear_pool, in linear_segments' order."""
        return [slab for slab, _, _, _ in self.segments]

    @property
    def dump_slab(self) -> int:
        """The slab that takes padding rows."""
        return self.num_slabs

    @staticmethod
    def slab_bytes(num_layers: int, num_kv_heads: int, head_dim: int, slab_capacity: int, itemsize: int,
                   kv_dtype: str = "model", half: int = 0, duo: DuoHeads | None = None, step_rows: int = 0) -> int:
        """Device bytes of one slab: keys, values and the key bias (fp8: codes, scales, shifts, turns; half: the
        rotary frequencies); duo: the retrieval heads' and the streaming heads' window with its step area."""
        streaming = 0 if duo is None else int(duo.streaming.sum())
        heads, window = num_layers * num_kv_heads - streaming, 0
        if streaming:
            window = WindowStorage.slab_bytes(streaming, duo.sink, duo.recent, step_rows, head_dim, itemsize)
        if kv_dtype == "fp8":
            return slab_capacity * (Fp8Buffers.slot_bytes(1, heads, head_dim, half) + num_layers * itemsize) + window
        return slab_capacity * (2 * heads * head_dim + num_layers) * itemsize + window

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    def take(self, capacity: int) -> StreamCache:
        """A cache of `capacity` slots over a free slab (cache.slab)."""
        if capacity > self.slab_capacity:
            raise PoolFullError(f"a cache of {capacity:,} tokens does not fit a slab of {self.slab_capacity:,}")
        if not self.free:
            raise PoolFullError(f"all {self.num_slabs} slabs are in use")
        slab = self.free.pop(0)
        num_layers, num_kv_heads, head_dim, inv_freq, dtype, device, mrope = self.spec
        if self.fp8 is not None:
            storage = Fp8KV(self.fp8.slab(slab, capacity), dtype, inv_freq)
        else:
            storage = PlainKV(self.key_buffer[:, slab:slab + 1, :, :capacity],
                              self.value_buffer[:, slab:slab + 1, :, :capacity], inv_freq)
        key_bias = self.key_bias[:, slab, :capacity]
        key_bias.zero_()
        cache = StreamCache(num_layers, num_kv_heads, head_dim, capacity, inv_freq, dtype, device, mrope,
                            (storage, key_bias), self.layer_of,
                            None if self.linear_pool is None else self.linear_pool.state(slab), self.kv_dtype,
                            self.duo, None if self.window is None else self.window.slab(slab, own=False))
        cache.slab = slab
        self.caches[slab] = cache
        return cache

    def give_back(self, cache: StreamCache) -> None:
        slab = cache.slab
        assert 0 <= slab < self.num_slabs and slab not in self.free, f"slab {slab} is not in use"
        self.key_bias[:, slab].zero_()
        self.caches.pop(slab, None)
        self.free.append(slab)
