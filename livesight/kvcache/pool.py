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

from livesight.kernels.quant import quantize_into
from livesight.kernels.span_attention import Fp8Span
from livesight.kvcache.cache import StreamCache
from livesight.kvcache.linear import LinearPool, LinearState
from livesight.kvcache.storage import Fp8Buffers, Fp8KV, PlainKV, unturned


class PoolFullError(RuntimeError):
    pass


class PoolLayer(CacheLayerMixin):
    is_compileable = False

    def __init__(self, pool: "KVPool", layer_idx: int):
        super().__init__()
        self.pool, self.layer_idx = pool, layer_idx
        self.keys, self.values = pool.key_buffer[layer_idx], pool.value_buffer[layer_idx]  # (S + 1, Hkv, C, D)
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # preallocated

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states: (1, Hkv, N, D) of a batched step -> the layer's whole pool
        (S + 1, Hkv, C, D); token i lands at slot slots[i] of slab slabs[i]. An fp8 pool's come back as codes,
        and pool.fp8_span says how to read them."""
        slabs, slots = self.pool.write
        fp8 = self.pool.fp8
        if fp8 is None:
            self.keys[slabs, :, slots] = key_states[0].transpose(0, 1)
            self.values[slabs, :, slots] = value_states[0].transpose(0, 1)
            return self.keys, self.values
        layer = self.layer_idx
        quantize_into(key_states[0], value_states[0], (fp8.keys[layer], fp8.key_scale[layer], fp8.values[layer],
                                                       fp8.value_scale[layer]), slabs, slots)
        if layer == 0:  # a new key is at the position it was written at (device tensors: a CUDA graph captures this)
            fp8.shift[slabs, slots] = torch.zeros(slabs.shape, dtype=fp8.shift.dtype, device=slabs.device)
            fp8.turn[:, slabs, slots] = unturned(slabs.shape[0], fp8.turn.shape[-1], slabs.device)
        self.pool.fp8_span = Fp8Span(fp8.key_scale[layer], fp8.value_scale[layer], fp8.shift, self.pool.inv_freq,
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
    kv_dtype "fp8": the buffers hold 8-bit codes, `fp8` (storage.py: Fp8Buffers) their scales, shifts and turns."""

    def __init__(self, num_slabs: int, num_layers: int, num_kv_heads: int, head_dim: int, slab_capacity: int,
                 inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device | str,
                 rope_axes: tuple[int, ...] | None = None, layer_of: dict[int, int] | None = None,
                 linear_pool: LinearPool | None = None, kv_dtype: str = "model"):
        """layer_of, linear_pool: a hybrid model's (StreamCache): the model's index of each full-attention
        layer -> its index here, and every stream's linear-attention state, a slab of it per cache taken."""
        shape = (num_layers, num_slabs + 1, num_kv_heads, slab_capacity, head_dim)
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
        self.write: tuple[torch.Tensor, torch.Tensor] | None = None  # (slabs (N,), slots (N,)) during a step
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
                   kv_dtype: str = "model", half: int = 0) -> int:
        """Device bytes of one slab: keys, values and the key bias (fp8: codes, scales, shifts, turns; half: the
        rotary frequencies)."""
        if kv_dtype == "fp8":
            return slab_capacity * (Fp8Buffers.slot_bytes(num_layers, num_kv_heads, head_dim, half)
                                    + num_layers * itemsize)
        return slab_capacity * num_layers * (2 * num_kv_heads * head_dim + 1) * itemsize

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
                            None if self.linear_pool is None else self.linear_pool.state(slab), self.kv_dtype)
        cache.slab = slab
        self.caches[slab] = cache
        return cache

    def give_back(self, cache: StreamCache) -> None:
        slab = cache.slab
        assert 0 <= slab < self.num_slabs and slab not in self.free, f"slab {slab} is not in use"
        self.key_bias[:, slab].zero_()
        self.caches.pop(slab, None)
        self.free.append(slab)
