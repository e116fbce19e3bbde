"""A head-wise cache (DuoAttention, kvcache/duo.py): each layer's KV heads split into retrieval heads, which keep
every slot of the cache, and streaming heads, which keep the first `sink` tokens of the stream and the `recent`
latest ones in a small storage of their own, so a streaming head costs sink + recent + SLACK slots, not the
window.

- HeadLayout: where a layer's heads live. Without streaming heads, today's layout: (layers, 1, KV heads, slots,
  D). With them, the retrieval heads of all layers side by side as one storage layer, (1, 1, R, slots, D), layer
  l's at flat heads offset[l] .. offset[l] + r[l]: compaction, re-rotation, offload and retrieval act on them
  as on any cache, while the streaming heads are left out of all of it.
- StreamingWindow: the streaming heads' keys and values, (S, sink + recent + SLACK, D), S the streaming heads of
  all layers side by side. Slots 0 .. sink - 1 hold the sink; the rest is a ring of the latest tokens. In a step
  a streaming head attends to its sink, its `recent` latest tokens and the step's own tokens, causally
  (DuoAttention's chunked prefill); once the step is recorded, the latest `recent` of those are the window. The
  ring keeps SLACK more, so that decode steps taken back past a stop token (at most STOP_CHECK_EVERY) find the
  tokens they pushed out still there. Keys are rotated at their tokens' positions in the cache's table, and
  turned when a compaction or a retrieval moves them (`sync`); a token the cache evicted leaves here too.
  A fixed-shape step (streaming/static_step.py, replayed from a CUDA graph) of up to `step_rows` rows writes its
  keys to a step area past the ring, and attends there with the sink and window through a bias (`begin_static`,
  `span`): shapes fixed, what is held told by device data. `record` then copies the step's tokens from the area.
  A stream's own cache gets its area from `reserve_steps` (when it first takes fixed-shape steps: STEP_ROWS rows,
  its only cost); a slab of a KVPool comes with one sized to a stream's largest step (WindowStorage).
"""

from typing import NamedTuple

import torch

from livesight.kernels import rotate_keys
from livesight.kernels.span_attention import StreamingSpan
from livesight.kvcache.checkpoints import Checkpoints
from livesight.kvcache.duo import DuoHeads
from livesight.kvcache.table import Segment, TokenTable

SLACK = 8  # ring slots past the window: tokens a take-back can bring back
STEP_ROWS = 256  # the step area a cache that takes fixed-shape steps reserves: the largest such step


class HeadLayout:
    """Layer l's heads in a cache's storage: `at(l)` -> (storage layer, slice of its heads); the KV heads of each
    kind and the query heads that read them (grouped query heads of a KV head stay together, in order)."""

    def __init__(self, num_layers: int, num_kv_heads: int, duo: DuoHeads | None = None):
        self.num_layers, self.num_kv_heads = num_layers, num_kv_heads
        streaming = torch.zeros(num_layers, num_kv_heads, dtype=torch.bool) if duo is None else duo.streaming
        assert streaming.shape == (num_layers, num_kv_heads)
        self.headwise = bool(streaming.any())
        self.retrieval = [torch.nonzero(~row).squeeze(1) for row in streaming]
        self.streaming = [torch.nonzero(row).squeeze(1) for row in streaming]
        counts = [len(r) for r in self.retrieval]
        self.offset = [sum(counts[:layer]) for layer in range(num_layers)]
        self.num_retrieval = sum(counts)
        stream_counts = [len(s) for s in self.streaming]
        self.stream_offset = [sum(stream_counts[:layer]) for layer in range(num_layers)]
        self.num_streaming = sum(stream_counts)
        self._query_index: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._kv_index: dict[tuple, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}

    def storage_shape(self, capacity: int, head_dim: int, slabs: int = 1) -> tuple[int, ...]:
        """The keys' (or values') storage: (storage layers, slabs, heads, capacity, D); a KVPool's has a slab per
        stream and one for padding rows, a stream's own one."""
        if not self.headwise:
            return (self.num_layers, slabs, self.num_kv_heads, capacity, head_dim)
        return (1, slabs, self.num_retrieval, capacity, head_dim)

    def at(self, layer: int) -> tuple[int, slice]:
        if not self.headwise:
            return layer, slice(None)
        return 0, slice(self.offset[layer], self.offset[layer] + len(self.retrieval[layer]))

    def stream_heads(self, layer: int) -> slice:
        return slice(self.stream_offset[layer], self.stream_offset[layer] + len(self.streaming[layer]))

    def kv_index(self, layer: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s retrieval KV heads and its streaming ones, on `device` (made once: a CUDA graph's
        capture takes no copy from the host)."""
        key = (layer, str(device))
        if key not in self._kv_index:
            self._kv_index[key] = (self.retrieval[layer].to(device), self.streaming[layer].to(device))
        return self._kv_index[key]

    def kv_map(self, layer: int, device) -> torch.Tensor:
        """The model's KV head of each of layer `layer`'s retrieval heads then its streaming heads, int32 on
        `device` (the span and slab kernels' order of programs)."""
        key = ("map", layer, str(device))
        if key not in self._kv_index:
            self._kv_index[key] = torch.cat([self.retrieval[layer], self.streaming[layer]]).to(device, torch.int32)
        return self._kv_index[key]

    def write_map(self, layer: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each of layer `layer`'s KV heads: its kind (0 retrieval, 1 streaming) and its place among its kind's
        heads, int32 on `device` (kernels/kv_write.py)."""
        key = ("write", layer, str(device))
        if key not in self._kv_index:
            kind = torch.zeros(self.num_kv_heads, dtype=torch.int32)
            index = torch.zeros(self.num_kv_heads, dtype=torch.int32)
            for k, heads in enumerate((self.retrieval[layer], self.streaming[layer])):
                kind[heads] = k
                index[heads] = torch.arange(len(heads), dtype=torch.int32)
            self._kv_index[key] = (kind.to(device), index.to(device))
        return self._kv_index[key]

    def query_index(self, layer: int, num_q_heads: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The query heads that read layer `layer`'s retrieval heads, and those that read its streaming heads, on
        `device`; each KV head's grouped query heads together, in order (made once per layer)."""
        key = (layer, num_q_heads, str(device))
        if key not in self._query_index:
            groups = num_q_heads // self.num_kv_heads
            self._query_index[key] = tuple(
                (heads[:, None] * groups + torch.arange(groups)[None, :]).flatten().to(device)
                for heads in (self.retrieval[layer], self.streaming[layer]))
        return self._query_index[key]

    def assemble(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Each layer's (h, ...) -> the storage layout (storage layers, storage heads, ...)."""
        return torch.stack(parts) if not self.headwise else torch.cat(parts)[None]


class WindowStorage(NamedTuple):
    """The streaming heads' keys and values, (slabs, S, W, D), W = sink + recent + SLACK + step rows, and each
    slab's held bias (slabs, W): a fixed-shape step's additive bias over the slots, 0 held (sink, window, step
    area), -inf not. One stream's (slab) or a KVPool's (a slab per stream and one for padding rows)."""
    keys: torch.Tensor
    values: torch.Tensor
    held_bias: torch.Tensor
    own: bool = True  # a stream's own (reserve_steps may grow it), not a pool's slab

    @classmethod
    def allocate(cls, slabs: int, num_streaming: int, sink: int, recent: int, step_rows: int, head_dim: int,
                 dtype: torch.dtype, device) -> "WindowStorage":
        width = sink + recent + SLACK + step_rows
        keys = torch.zeros(slabs, num_streaming, width, head_dim, dtype=dtype, device=device)
        return cls(keys, torch.zeros_like(keys), torch.zeros(slabs, width, dtype=dtype, device=device))

    @staticmethod
    def slab_bytes(num_streaming: int, sink: int, recent: int, step_rows: int, head_dim: int, itemsize: int) -> int:
        return (sink + recent + SLACK + step_rows) * (2 * num_streaming * head_dim + 1) * itemsize

    def slab(self, slab: int, own: bool = True) -> "WindowStorage":
        return WindowStorage(self.keys[slab], self.values[slab], self.held_bias[slab], own)


class StreamingWindow:
    """The streaming heads' storage of one stream (see the module's note). Tokens past the sink are numbered in
    the order they were recorded (since the last `sync`); number a sits in ring slot a % (recent + SLACK). A step
    rolled back before it was recorded leaves nothing here: its keys wait in `attending` until `record`."""

    def __init__(self, layout: HeadLayout, sink: int, recent: int, head_dim: int, dtype: torch.dtype, device,
                 inv_freq: torch.Tensor, keep: int = 5, storage: "WindowStorage | None" = None):
        """storage: views to hold the window in (a slab of a KVPool's: WindowStorage.slab), its step area
        reserved; None: allocated here, without one (reserve_steps adds it)."""
        self.layout, self.sink, self.recent, self.keep, self.inv_freq = layout, sink, recent, keep, inv_freq
        self.ring = recent + SLACK
        self.area = sink + self.ring  # the step area's first slot
        if storage is None:
            storage = WindowStorage.allocate(1, layout.num_streaming, sink, recent, 0, head_dim, dtype, device).slab(0)
        self.keys, self.values, self.held_bias = storage[:3]
        assert self.keys.shape[:2] == (layout.num_streaming, self.held_bias.shape[0])
        assert self.keys.shape[1] >= self.area
        self.step_rows = self.keys.shape[1] - self.area  # the step area's rows
        self._own = storage.own
        self.seq = torch.full((sink + self.ring,), -1, dtype=torch.int64)  # each slot's token (stream index)
        self.pos = torch.zeros(sink + self.ring, dtype=torch.int64)  # the position its key is rotated at
        self.num_sink = 0
        self.count = 0  # tokens recorded past the sink since the last sync: the next one's number
        self.low = 0  # the oldest number the ring still holds
        self._step: tuple[int, int, int] | None = None  # the unrecorded step: (tokens, to the sink, to the ring)
        self.attending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> its step's keys, values
        self._checkpoints = Checkpoints(keep, "streaming-head state")  # (num_sink, count) before each step
        self._held: tuple[tuple[int, int, int], torch.Tensor] | None = None  # (counts, slots on the device)
        self._static = False  # the unrecorded step is a fixed-shape one: its tokens are in the step area
        self._area_slots: dict[int, torch.Tensor] = {}
        self._cyclic: torch.Tensor | None = None  # _ring_view's table

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes + self.held_bias.nbytes

    def _slots(self, first: int, end: int) -> torch.Tensor:
        """The slots of numbers first .. end - 1."""
        return self.sink + torch.arange(first, end) % self.ring

    def _ring_view(self, first: int, n: int) -> torch.Tensor:
        """The slots of numbers first .. first + n - 1 (n <= recent), on the device: a view of a table made once,
        so that recording a step neither copies to the device nor, indexing the host's tables, waits for it."""
        if self._cyclic is None:
            self._cyclic = self.sink + torch.arange(2 * self.ring, device=self.keys.device) % self.ring
        return self._cyclic[first % self.ring:first % self.ring + n]

    def _window(self) -> torch.Tensor:
        """The window's slots: the latest `recent` numbers the ring holds."""
        return self._slots(max(self.low, self.count - self.recent), self.count)

    def _held_slots(self) -> torch.Tensor:
        """The slots a step sees, the sink's then the window's, on the device: made once per step, not per layer."""
        counts = (self.num_sink, self.count, self.low)
        if self._held is None or self._held[0] != counts:
            slots = torch.cat([torch.arange(self.num_sink), self._window()])
            self._held = counts, slots.to(self.keys.device, non_blocking=True)
        return self._held[1]

    def reserve_steps(self, rows: int) -> None:
        """Make room for fixed-shape steps of up to `rows` rows (before any CUDA graph reads the buffers)."""
        if rows <= self.step_rows:
            return
        assert self._own, "a pool's window has its step area already"
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[0], self.area + rows, old.shape[2])
            new[:, :self.area] = old[:, :self.area]
            setattr(self, name, new)
        self.held_bias = self.held_bias.new_zeros(self.area + rows)
        self.step_rows = rows

    def _plan(self, n: int) -> None:
        to_sink = min(n, self.sink - self.num_sink)
        self._step = (n, to_sink, min(n - to_sink, self.recent))

    def begin_static(self, n: int) -> None:
        """Before a fixed-shape step of n tokens (on the host, outside any CUDA graph): held_bias says what its
        streaming heads see, and `record` will take the step's tokens from the step area."""
        assert n <= self.step_rows, f"a fixed-shape step of {n} rows overflows the step area ({self.step_rows})"
        bias = torch.full(self.held_bias.shape, float("-inf"), dtype=self.held_bias.dtype)
        bias[torch.cat([torch.arange(self.num_sink), self._window()])] = 0
        bias[self.area:] = 0
        self.held_bias.copy_(bias, non_blocking=True)
        self._plan(n)
        self._static = True

    def step_targets(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `layer`'s streaming heads, (1, s, W, D) keys and values: where a fixed-shape step writes its rows
        (at area_slots) (kernels/kv_write.py)."""
        heads = self.layout.stream_heads(layer)
        return self.keys[heads][None], self.values[heads][None]

    def area_slots(self, rows: int) -> torch.Tensor:
        """The step area's first `rows` slots, on the device (made once per size: a CUDA graph reads them)."""
        if rows not in self._area_slots:
            self._area_slots[rows] = torch.arange(self.area, self.area + rows, device=self.keys.device)
        return self._area_slots[rows]

    def span(self, layer: int, rows: int, num_q_heads: int) -> StreamingSpan:
        """What the span kernel reads for layer `layer`'s streaming heads in a fixed-shape step of `rows` rows."""
        heads, end, device = self.layout.stream_heads(layer), self.area + rows, self.keys.device
        return StreamingSpan(self.keys[heads, :end][None], self.values[heads, :end][None], self.held_bias[:end],
                             self.area, self.layout.kv_map(layer, device),
                             *self.layout.query_index(layer, num_q_heads, device))

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A step's keys and values (1, s, n, D) of layer `layer`'s streaming heads -> `attending[layer]`: the
        held ones and these, what the step attends to (and what `record` keeps of it)."""
        self._plan(keys.shape[2])
        heads, held = self.layout.stream_heads(layer), self._held_slots()
        self.attending[layer] = tuple(torch.cat([buffer[heads][:, held][None], x], dim=2)
                                      for buffer, x in ((self.keys, keys), (self.values, values)))

    def record(self, rows: TokenTable) -> None:
        """The written step's tokens are the cache's now (rows: theirs, in the order they were written): the
        sink's newcomers join it, the step's latest `recent` tokens the ring."""
        step, static, self._step = self._step, self._static, None
        if step is None:
            return
        n, to_sink, to_ring = step
        assert len(rows) == n, f"recorded {len(rows)} tokens, the streaming heads saw {n}"
        sink = slice(self.num_sink, self.num_sink + to_sink)
        ring, on_device = self._slots(self.count, self.count + to_ring), self._ring_view(self.count, to_ring)
        # every layer's heads at once from the step area, or each layer's from what it attended to
        steps = ([(slice(None), (buffer[None, :, self.area:self.area + n] for buffer in (self.keys, self.values)))]
                 if static else [(self.layout.stream_heads(layer), pair) for layer, pair in self.attending.items()])
        for heads, pair in steps:
            for buffer, x in zip((self.keys, self.values), pair):
                new = x[0, :, x.shape[2] - n:]
                buffer[heads, sink] = new[:, :to_sink]
                buffer[heads, :self.area].index_copy_(1, on_device, new[:, n - to_ring:])  # not over the area
        self.discard()
        self.seq[sink], self.pos[sink] = rows.seq[:to_sink], rows.pos[0, :to_sink]
        self.seq[ring], self.pos[ring] = rows.seq[n - to_ring:], rows.pos[0, n - to_ring:]
        self.num_sink += to_sink
        self.count += to_ring
        self.low = max(self.low, self.count - self.ring)

    def sync(self, table: TokenTable) -> None:
        """The cache's table changed (compaction, retrieval): held keys turn to their tokens' new positions, and
        tokens no longer in the cache (retrieved copies aside) leave. The window is renumbered from 0."""
        self.discard()
        live = torch.nonzero(table.segment != Segment.RETRIEVED).squeeze(1)
        order = torch.argsort(table.seq[live])
        seqs, positions = table.seq[live][order], table.pos[0, live][order]
        kept = []
        for slots, start in ((torch.arange(self.num_sink), 0), (self._window(), self.sink)):
            if len(seqs) and len(slots):
                held = self.seq[slots]
                where = torch.searchsorted(seqs, held).clamp(max=len(seqs) - 1)
                found = torch.nonzero(seqs[where] == held).squeeze(1)
                slots, delta = slots[found], positions[where[found]] - self.pos[slots[found]]
            else:
                slots, delta = slots[:0], torch.zeros(0, dtype=torch.int64)
            index = slots.to(self.keys.device, non_blocking=True)
            keys, values = self.keys[:, index], self.values[:, index]
            if bool((delta != 0).any()):
                keys = rotate_keys(keys, delta.to(self.keys.device, non_blocking=True), self.inv_freq)
            to = slice(start, start + len(slots))
            self.keys[:, to], self.values[:, to] = keys, values
            self.seq[to], self.pos[to] = self.seq[slots].clone(), self.pos[slots] + delta
            kept.append(len(slots))
        self.num_sink, self.count = kept
        self.low = 0

    def discard(self) -> None:
        """Forget a step written but not recorded (a probe rolled back)."""
        self._step, self._static = None, False
        self.attending.clear()

    def snapshot(self) -> tuple:
        return (self.keys[:, :self.area].clone(), self.values[:, :self.area].clone(), self.seq.clone(),
                self.pos.clone(), self.num_sink, self.count, self.low)

    def restore(self, state: tuple) -> None:
        keys, values, seq, pos, self.num_sink, self.count, self.low = state
        self.keys[:, :self.area] = keys
        self.values[:, :self.area] = values
        self.seq.copy_(seq)
        self.pos.copy_(pos)
        self.discard()
        self._checkpoints.clear()

    def checkpoint(self, length: int) -> None:
        """Before a step that starts at cache length `length`: two counts (the ring still holds what a few
        steps push out)."""
        self._checkpoints.put(length, (self.num_sink, self.count))

    def back_to(self, length: int) -> None:
        """As before the step that started at cache length `length` (decode steps taken back)."""
        num_sink, count = self._checkpoints.back_to(length)
        if max(0, count - self.recent) < self.low:
            raise RuntimeError(f"the streaming heads cannot go back to cache length {length}: more than {SLACK} "
                               f"tokens were recorded since")
        self.num_sink, self.count = num_sink, count
        self.discard()

    def forget_checkpoints(self) -> None:
        self._checkpoints.clear()

    def clear(self) -> None:
        self.seq.fill_(-1)
        self.num_sink = self.count = self.low = 0
        self.discard()
        self._checkpoints.clear()
