"""A head-wise cache (DuoAttention, kvcache/duo.py): each layer's KV heads split into retrieval heads, which keep
every slot of the cache, and streaming heads, which keep the first `sink` tokens of the stream and the `recent`
latest ones in a small storage of their own, so a streaming head costs sink + 2 x recent slots, not the window.

- HeadLayout: where a layer's heads live. Without streaming heads, today's layout: (layers, 1, KV heads, slots,
  D). With them, the retrieval heads of all layers side by side as one storage layer, (1, 1, R, slots, D), layer
  l's at flat heads offset[l] .. offset[l] + r[l]: compaction, re-rotation, offload and retrieval act on them
  as on any cache, while the streaming heads are left out of all of it.
- StreamingWindow: the streaming heads' keys and values, (S, sink + 2 x recent, D), S the streaming heads of all
  layers side by side. Slots 0 .. sink - 1 hold the sink, the next `recent` the latest tokens, the last
  `recent` a step's newest tokens until the step is recorded. In a step a streaming head attends to its sink,
  its recent tokens and the step's own tokens, causally (DuoAttention's chunked prefill); once the step is
  recorded, the latest `recent` of those stay. Keys are rotated at their tokens' positions in the cache's table,
  and turned when a compaction or a retrieval moves them (`sync`); a token the window evicted leaves here too.
"""

import torch

from livesight.kernels import rotate_keys
from livesight.kvcache.duo import DuoHeads
from livesight.kvcache.table import Segment, TokenTable


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

    def storage_shape(self, capacity: int, head_dim: int) -> tuple[int, ...]:
        if not self.headwise:
            return (self.num_layers, 1, self.num_kv_heads, capacity, head_dim)
        return (1, 1, self.num_retrieval, capacity, head_dim)

    def at(self, layer: int) -> tuple[int, slice]:
        if not self.headwise:
            return layer, slice(None)
        return 0, slice(self.offset[layer], self.offset[layer] + len(self.retrieval[layer]))

    def stream_heads(self, layer: int) -> slice:
        return slice(self.stream_offset[layer], self.stream_offset[layer] + len(self.streaming[layer]))

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

    def part(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x (storage layers, storage heads, ...) -> layer `layer`'s heads (h, ...)."""
        storage_layer, heads = self.at(layer)
        return x[storage_layer, heads]

    def assemble(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Each layer's (h, ...) -> the storage layout (storage layers, storage heads, ...)."""
        return torch.stack(parts) if not self.headwise else torch.cat(parts)[None]


class StreamingWindow:
    """The streaming heads' storage of one stream (see the module's note). Going back follows the cache: a step
    rolled back before it was recorded leaves nothing here; decode steps taken back return to a copy taken before
    the step (`checkpoint`, the last `keep` kept)."""

    def __init__(self, layout: HeadLayout, sink: int, recent: int, head_dim: int, dtype: torch.dtype, device,
                 inv_freq: torch.Tensor, keep: int = 5):
        self.layout, self.sink, self.recent, self.keep, self.inv_freq = layout, sink, recent, keep, inv_freq
        shape = (layout.num_streaming, sink + 2 * recent, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        held = sink + recent
        self.seq = torch.full((held,), -1, dtype=torch.int64)  # each held slot's token (stream index), -1: empty
        self.pos = torch.zeros(held, dtype=torch.int64)  # the position its key is rotated at
        self.num_sink = self.num_recent = 0
        self._step: tuple[int, int, int] | None = None  # the unrecorded step: (tokens, to the sink, to recent)
        self.attending: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> its step's keys, values
        self._checkpoints: dict[int, tuple] = {}

    @property
    def nbytes(self) -> int:
        """The storage and the copies its checkpoints hold at most."""
        per_slot = (self.keys.nbytes + self.values.nbytes) // max(1, self.keys.shape[1])
        return per_slot * (self.keys.shape[1] + (self.sink + self.recent) * self.keep)

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """A step's keys and values (1, s, n, D) of layer `layer`'s streaming heads: what they attend to in this
        step is left in `attending[layer]`; the sink's newcomers and the step's last `recent` tokens are put
        aside until `record`."""
        n = keys.shape[2]
        to_sink = min(n, self.sink - self.num_sink)
        to_recent = min(n - to_sink, self.recent)
        self._step = (n, to_sink, to_recent)
        heads = self.layout.stream_heads(layer)
        held = (torch.cat([self.keys[heads, :self.num_sink], self.keys[heads, self.sink:self.sink + self.num_recent]],
                          dim=1),
                torch.cat([self.values[heads, :self.num_sink],
                           self.values[heads, self.sink:self.sink + self.num_recent]], dim=1))
        self.attending[layer] = tuple(torch.cat([h[None], x], dim=2) for h, x in zip(held, (keys, values)))
        aside = self.sink + self.recent
        for buffer, x in ((self.keys, keys[0]), (self.values, values[0])):
            buffer[heads, self.num_sink:self.num_sink + to_sink] = x[:, :to_sink]
            buffer[heads, aside:aside + to_recent] = x[:, n - to_recent:]

    def record(self, rows: TokenTable) -> None:
        """The written step's tokens are the cache's now (rows: theirs, in the order they were written)."""
        self.attending.clear()
        if self._step is None:
            return
        n, to_sink, to_recent = self._step
        self._step = None
        assert len(rows) == n, f"recorded {len(rows)} tokens, the streaming heads saw {n}"
        sink = slice(self.num_sink, self.num_sink + to_sink)
        self.seq[sink], self.pos[sink] = rows.seq[:to_sink], rows.pos[0, :to_sink]
        self.num_sink += to_sink
        drop = max(0, self.num_recent + to_recent - self.recent)
        base, aside = self.sink, self.sink + self.recent
        kept = self.num_recent - drop
        for buffer in (self.keys, self.values):
            buffer[:, base:base + kept] = buffer[:, base + drop:base + self.num_recent].clone()
            buffer[:, base + kept:base + kept + to_recent] = buffer[:, aside:aside + to_recent]
        self.seq[base:base + kept] = self.seq[base + drop:base + self.num_recent].clone()
        self.pos[base:base + kept] = self.pos[base + drop:base + self.num_recent].clone()
        self.seq[base + kept:base + kept + to_recent] = rows.seq[n - to_recent:]
        self.pos[base + kept:base + kept + to_recent] = rows.pos[0, n - to_recent:]
        self.num_recent = kept + to_recent

    def sync(self, table: TokenTable) -> None:
        """The cache's table changed (compaction, retrieval): held keys turn to their tokens' new positions, and
        tokens no longer in the window (retrieved copies aside) leave."""
        self.attending.clear()
        self._step = None
        live = torch.nonzero(table.segment != Segment.RETRIEVED).squeeze(1)
        order = torch.argsort(table.seq[live])
        seqs, positions = table.seq[live][order], table.pos[0, live][order]
        if len(seqs) == 0:
            self.num_sink = self.num_recent = 0
            return
        for start, count, attr in ((0, self.num_sink, "num_sink"), (self.sink, self.num_recent, "num_recent")):
            if count == 0:
                continue
            held = self.seq[start:start + count]
            where = torch.searchsorted(seqs, held).clamp(max=len(seqs) - 1)
            found = seqs[where] == held
            delta = torch.where(found, positions[where] - self.pos[start:start + count], 0)
            index = torch.nonzero(found).squeeze(1)
            slots = start + index.to(self.keys.device)
            keys = self.keys[:, slots]
            if bool((delta != 0).any()):
                keys = rotate_keys(keys, delta[index].to(self.keys.device), self.inv_freq)
            self.keys[:, start:start + len(index)] = keys
            self.values[:, start:start + len(index)] = self.values[:, slots].clone()
            self.seq[start:start + len(index)] = held[index].clone()
            self.pos[start:start + len(index)] = self.pos[start:start + count][index] + delta[index]
            setattr(self, attr, len(index))

    def discard(self) -> None:
        """Forget a step written but not recorded (a probe rolled back)."""
        self._step = None
        self.attending.clear()

    def _state(self) -> tuple:
        held = self.sink + self.recent
        return (self.keys[:, :held].clone(), self.values[:, :held].clone(), self.seq.clone(), self.pos.clone(),
                self.num_sink, self.num_recent)

    def _put(self, state: tuple) -> None:
        keys, values, seq, pos, self.num_sink, self.num_recent = state
        held = keys.shape[1]
        self.keys[:, :held], self.values[:, :held] = keys, values
        self.seq.copy_(seq)
        self.pos.copy_(pos)
        self._step = None
        self.attending.clear()

    def snapshot(self) -> tuple:
        return self._state()

    def restore(self, state: tuple) -> None:
        self._put(state)
        self._checkpoints.clear()

    def checkpoint(self, length: int) -> None:
        """The storage as it is before a step that starts at cache length `length`."""
        self._checkpoints.pop(length, None)
        self._checkpoints[length] = self._state()
        while len(self._checkpoints) > self.keep:
            self._checkpoints.pop(next(iter(self._checkpoints)))

    def back_to(self, length: int) -> None:
        """As before the step that started at cache length `length` (decode steps taken back)."""
        if length not in self._checkpoints:
            raise RuntimeError(f"no streaming-head state kept for cache length {length} "
                               f"(kept: {sorted(self._checkpoints)})")
        self._put(self._checkpoints[length])
        for later in [n for n in self._checkpoints if n >= length]:
            del self._checkpoints[later]

    def forget_checkpoints(self) -> None:
        self._checkpoints.clear()

    def clear(self) -> None:
        self.seq.fill_(-1)
        self.num_sink = self.num_recent = 0
        self._step = None
        self.attending.clear()
        self._checkpoints.clear()
