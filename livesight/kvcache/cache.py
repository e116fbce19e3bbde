"""The streaming KV cache: one preallocated buffer for all layers, compacted once per step.

Layout of the valid prefix of every layer's buffer after `compact`:
    [ sink | retrieved | vision window | text window ]   and a step appends its new tokens after.
Keys are stored with rotary applied at each token's current position; `compact` gathers the kept
tokens into that layout and re-rotates those whose position moved, in one pass over all layers.
"""

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from livesight.kernels import unrotate
from livesight.kernels.kv_write import HeadwiseTargets, headwise_write
from livesight.kvcache.duo import DuoHeads
from livesight.kvcache.headwise import HeadLayout, StreamingWindow, WindowStorage
from livesight.kvcache.linear import LinearState
from livesight.kvcache.storage import Fp8KV, PlainKV
from livesight.kvcache.table import Segment, TokenTable, compaction_shift


class CacheFullError(RuntimeError):
    pass


class StreamLayer(CacheLayerMixin):
    """One layer's view into the shared buffer; `update` appends a step's keys and values."""

    is_compileable = False

    def __init__(self, owner: "StreamCache", layer_idx: int):
        super().__init__()
        self.owner, self.layer_idx = owner, layer_idx
        self.at = owner.layout.at(layer_idx)  # (storage layer, heads): the layer's retrieval heads if head-wise
        self.keys = owner.key_buffer[self.at[0], :, self.at[1]]
        self.values = owner.value_buffer[self.at[0], :, self.at[1]]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        pass  # preallocated

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """key_states, value_states: (1, Hkv, n, D) -> all valid keys and values (1, Hkv, L + n, D).

        In a static step (owner.static_write = (slots (n,), num_keys)) they go to the given slots,
        the length is left to the caller, and the first num_keys slots come back, whatever they hold."""
        kv, (layer, heads), window = self.owner.kv, self.at, self.owner.window
        if self.owner.static_write is not None:
            slots, num_keys = self.owner.static_write
            if self.layer_idx == 0:
                kv.fresh(slots)
            if window is None:
                kv.write(layer, slots, key_states, value_states, heads)
            else:  # both kinds in one write: the streaming heads' rows to their step area
                rows, device = key_states.shape[2], key_states.device
                targets = HeadwiseTargets(kv.targets(layer, heads), window.step_targets(self.layer_idx),
                                          *self.owner.layout.write_map(self.layer_idx, device))
                headwise_write(key_states[0], value_states[0], targets, None, slots, window.area_slots(rows))
            if isinstance(kv, Fp8KV):  # the codes: the span kernel decodes them as it loads them
                keys, values, self.owner.fp8_span = kv.span(layer, num_keys, heads)
                return keys, values
            return kv.read(layer, num_keys, heads)
        if window is not None:  # the streaming heads' share goes to their own storage
            retrieval, streaming = self.owner.layout.kv_index(self.layer_idx, key_states.device)
            window.write(self.layer_idx, key_states[:, streaming], value_states[:, streaming])
            key_states, value_states = key_states[:, retrieval], value_states[:, retrieval]
        start = self.owner.length
        end = start + key_states.shape[-2]
        if end > self.owner.capacity:
            raise CacheFullError(f"step of {key_states.shape[-2]} tokens overflows the cache "
                                 f"({start}/{self.owner.capacity})")
        if self.layer_idx == 0:
            kv.fresh(slice(start, end))
        kv.write(layer, slice(start, end), key_states, value_states, heads)
        if self.layer_idx == self.owner.num_layers - 1:
            self.owner.length = end
        return kv.read(layer, end, heads)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.length

    def get_max_length(self) -> int:
        return self.owner.capacity


class StreamCache(Cache):
    """Preallocated K/V for `num_layers` layers plus the `TokenTable` describing each slot.

    key_buffer, value_buffer: (num_layers, 1, num_kv_heads, capacity, head_dim).

    A hybrid model (Qwen3.5) keeps here its full-attention layers only: `layer_of` maps the model's
    index of each to its index here, and `linear` holds its linear-attention layers' state, which every
    rollback, truncation, snapshot and restore below takes along.

    kv_dtype "fp8": keys and values in 8 bits with scales (storage.py: Fp8KV); key_buffer and value_buffer
    then hold the codes.

    duo: DuoAttention's streaming heads (headwise.py): the buffers then hold the retrieval heads alone, as one
    storage layer of all layers' (`layout`), and `window` the streaming heads' sink and recent tokens.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 inv_freq: torch.Tensor, dtype: torch.dtype, device: torch.device | str,
                 rope_axes: tuple[int, ...] | None = None,
                 buffers: tuple[PlainKV | Fp8KV, torch.Tensor] | None = None,
                 layer_of: dict[int, int] | None = None, linear: LinearState | None = None, kv_dtype: str = "model",
                 duo: DuoHeads | None = None, window_storage: WindowStorage | None = None):
        """buffers: (storage, key_bias) to use instead of allocating: a slab of a KVPool, its keys and values
        (PlainKV or Fp8KV, as kv_dtype says) over views of shape (num_layers, 1, num_kv_heads, capacity,
        head_dim) (head-wise: the retrieval heads' (1, 1, R, capacity, head_dim)), and a view (num_layers, capacity);
        window_storage: a head-wise slab's streaming heads (headwise.py: WindowStorage.slab)."""
        self.layout = HeadLayout(num_layers, num_kv_heads, duo)
        shape = self.layout.storage_shape(capacity, head_dim)
        self.inv_freq = inv_freq.float().to(device)
        self.window = None
        if self.layout.headwise:
            assert (buffers is None) == (window_storage is None), "a pool's slab brings both kinds of heads' storage"
            self.window = StreamingWindow(self.layout, duo.sink, duo.recent, head_dim, dtype, device, self.inv_freq,
                                          storage=window_storage)
        if buffers is not None:
            self.kv, self.key_bias = buffers
        else:
            self.kv = (Fp8KV.allocate(shape, dtype, device, self.inv_freq) if kv_dtype == "fp8" else
                       PlainKV(torch.zeros(shape, dtype=dtype, device=device),
                               torch.zeros(shape, dtype=dtype, device=device), self.inv_freq))
            self.key_bias = torch.zeros(num_layers, capacity, dtype=dtype, device=device)
        # what is stored (fp8: the codes; head-wise: the retrieval heads)
        self.key_buffer, self.value_buffer = self.kv.keys, self.kv.values
        self.dtype, self.kv_dtype = dtype, kv_dtype  # what attention reads, and how the cache stores it
        assert self.key_buffer.shape == shape and self.key_bias.shape == (num_layers, capacity)
        self.num_layers, self.capacity, self.length = num_layers, capacity, 0
        self.rope_axes = rope_axes
        self.table = TokenTable.empty()
        self.key_valid: torch.Tensor | None = None  # (L, capacity) bool while retrieved slots hold padding
        # key_bias: the same as an additive bias, 0 or -inf, in a buffer that lives as long as the cache
        # (CUDA graphs read it)
        self.static_write: tuple[torch.Tensor, int] | None = None  # set only during a static step
        self.fp8_span = None  # in a static step of an fp8 cache: the last layer's scales and shifts
        self.slab: int | None = None  # which slab of a KVPool the buffers are, if they are one
        self.layer_of, self.linear = layer_of, linear
        super().__init__(layers=[StreamLayer(self, i) for i in range(num_layers)])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """A layer's step, by the model's layer index (mapped to this cache's own for a hybrid model)."""
        index = layer_idx if self.layer_of is None else self.layer_of[layer_idx]
        return self.layers[index].update(key_states, value_states, *args, **kwargs)

    def begin_step(self) -> None:
        """Before a step's forward pass (on the host, outside any CUDA graph): a hybrid model's linear state
        is checkpointed, so that a rollback or truncation back to this length can return to it."""
        if self.linear is not None:
            self.linear.checkpoint(self.length)
        if self.window is not None:
            self.window.checkpoint(self.length)

    def linear_segments(self) -> list[tuple[int, int, LinearState]]:
        """(first row, rows, state) of each stream in a step: here the one stream, every row."""
        return [(0, -1, self.linear)]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes + (0 if self.window is None else self.window.nbytes)

    def record(self, tokens: TokenTable) -> None:
        """Describe the tokens the last forward appended."""
        self.table = self.table.cat(tokens)
        assert len(self.table) == self.length, f"table has {len(self.table)} tokens, buffer {self.length}"
        if self.window is not None:
            self.window.record(tokens)

    def compact(self, keep: torch.Tensor) -> int:
        """Keep the tokens where `keep` (n,) is true, in segment layout, positions contiguous.

        Returns how many tokens had their keys re-rotated.
        """
        assert keep.shape == (self.length,)
        if self.key_valid is not None:  # padding lives only in retrieved slots, which never stay
            assert not bool(keep[self.table.segment == Segment.RETRIEVED].any()), "padded retrieved slots kept"
            self._set_key_valid(None)
        kept = torch.nonzero(keep).squeeze(1)
        table = self.table.select(kept)
        by_time = torch.argsort(table.seq)
        delta = torch.empty_like(table.seq)
        delta[by_time] = compaction_shift(table.pos[:, by_time], table.group[by_time])
        order = torch.argsort(table.segment * (int(table.seq.max()) + 1 if len(table) else 1) + table.seq)
        kept, delta, table = kept[order], delta[order], table.select(order)
        table.pos = table.pos - delta
        n = kept.numel()
        index = kept.to(self.key_buffer.device, non_blocking=True)
        moved = int((delta != 0).sum())
        if n == self.length and moved == 0 and bool((kept == torch.arange(n)).all()):
            self.table = table
            return 0
        self._forget_checkpoints()
        self.kv.move(index, 0, -delta if moved else None)
        self.length, self.table = n, table
        if self.window is not None:
            self.window.sync(table)
        return moved

    def _forget_checkpoints(self) -> None:
        """The cache was rearranged: its old lengths no longer name steps."""
        for state in (self.linear, self.window):
            if state is not None:
                state.forget_checkpoints()

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Buffer slots `index` (n,) as an offloaded block keeps them -> keys, values (L, Hkv, n, W), copies, and
        each slot's pending turn (n,) or None (storage.py: `stored`; kv.unpack reads them)."""
        keys, values, shift = self.kv.stored(index.to(self.key_buffer.device, non_blocking=True))
        return keys[:, 0], values[:, 0], shift

    def representative(self, keys: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """keys (L, Hkv, n, D) rotated at positions (3, n) -> (L, Hkv, D): their mean before rotary."""
        return unrotate(keys, positions, self.inv_freq, self.rope_axes).float().mean(dim=2)

    def rollback(self, length: int) -> None:
        """Forget what a forward pass appended past `length` (a probe that must leave no trace)."""
        assert length <= self.length and len(self.table) == length
        self.length = length
        if self.linear is not None:
            self.linear.back_to(length)
        if self.window is not None:
            self.window.discard()

    def truncate(self, length: int) -> None:
        """Forget the recorded tokens past `length`; their slots are overwritten by the next step."""
        assert length <= self.length
        self.table = self.table.select(torch.arange(length))
        for state in (self.linear, self.window):
            if state is not None and length < self.length:
                state.back_to(length)
        self.length = length

    def snapshot(self) -> tuple:
        """The valid prefix and its description, copied, for `restore` (an answer that must leave
        no trace: retrieval moves keys, so a rollback of the length alone would not do)."""
        n = self.length
        return (n, self.table, self.kv.copy(n), self.key_valid,
                *(None if state is None else state.snapshot() for state in (self.linear, self.window)))

    def restore(self, snapshot: tuple) -> None:
        n, self.table, copied, key_valid, *states = snapshot
        self.kv.paste(copied)
        self.length = n
        self._set_key_valid(key_valid)
        for state, saved in zip((self.linear, self.window), states):
            if state is not None:
                state.restore(saved)

    def clear(self) -> None:
        """Empty, for a new stream; the buffers (and graphs captured over them) stay."""
        self.length, self.table = 0, TokenTable.empty()
        self._set_key_valid(None)
        for state in (self.linear, self.window):
            if state is not None:
                state.clear()

    def _set_key_valid(self, key_valid: torch.Tensor | None) -> None:
        self.key_valid = key_valid
        self.key_bias.zero_()
        if key_valid is not None:
            self.key_bias.masked_fill_(~key_valid, float("-inf"))

    def slots_start(self) -> tuple[int, int]:
        """(buffer index, position) where retrieved slots go: right after the sink, which compact()
        keeps first in the buffer."""
        num_sink = int((self.table.segment == Segment.SINK).sum())
        assert bool((self.table.segment[:num_sink] == Segment.SINK).all()), "compact() keeps the sink first"
        return num_sink, (int(self.table.pos[:, :num_sink].max()) + 1 if num_sink else 0)

    def insert_retrieved(self, keys: torch.Tensor, values: torch.Tensor, rows: TokenTable,
                         valid: torch.Tensor | None = None) -> None:
        """Place retrieved tokens right after the sink; every later token moves up by their extent.

        keys, values: (L, Hkv, R, D) already rotated to rows.pos, which start at the sink's end (in the
        storage's layout: a head-wise cache's are (1, retrieval heads, R, D), `layout.assemble`)
        valid: (L, R) bool, False where a layer's slots are padding (its blocks were smaller);
        attention masks those keys until the next compaction clears the slots."""
        num = keys.shape[2]
        if self.length + num > self.capacity:
            raise CacheFullError(f"{num} retrieved tokens overflow the cache ({self.length}/{self.capacity})")
        num_sink, start = self.slots_start()
        assert int(rows.pos.min()) == start, "retrieved slots must start right after the sink"
        extent = int(rows.pos.max()) + 1 - start
        end = self.length
        rest = torch.arange(num_sink, end, device=self.key_buffer.device)
        self.kv.move(rest, num_sink + num, torch.full((end - num_sink,), extent, dtype=torch.int64))
        self.kv.put(num_sink, keys, values)
        rest = self.table.select(torch.arange(num_sink, end))
        rest.pos = rest.pos + extent
        self.table = self.table.select(torch.arange(num_sink)).cat(rows).cat(rest)
        self.length = end + num
        self._forget_checkpoints()
        if self.window is not None:
            self.window.sync(self.table)
        if valid is not None and not bool(valid.all()):
            key_valid = torch.ones(self.num_layers, self.capacity, dtype=torch.bool,
                                   device=self.key_buffer.device)
            key_valid[:, num_sink:num_sink + num] = valid.to(self.key_buffer.device)
            self._set_key_valid(key_valid)
