"""Blocks that left a stream's window, and their return for a question (ReKV's idea, with bounded tiers).

A block (one vision chunk, or a run of text) leaving the window is stored with a representative per
layer and KV head (the mean of its keys before rotary): in pinned RAM, past a byte budget on disk
(offload.py). A question's query vectors (probed by the caller) score the representatives; the top k
per layer, or over all layers, come back in time order into the retrieved slots right after the sink,
at contiguous positions, and every later token moves up. The next compaction clears the slots.
"""

import weakref
from collections.abc import Callable
from contextlib import nullcontext

import torch

from livesight import scratch
from livesight.errors import InputError
from livesight.kernels import score_blocks, select_blocks
from livesight.kvcache.cache import StreamCache
from livesight.kvcache.offload import OffloadStore
from livesight.kvcache.table import Segment, TokenTable


class OffloadedBlocks:
    def __init__(self, cache: StreamCache, block_tokens: int, top_k: int, scope: str, ram_bytes: int,
                 disk_bytes: int, parent: str | None = None):
        """block_tokens: the most tokens a block holds (the retrieved slots hold top_k of them); scope:
        "layer" (each layer its own top k) or "global"; parent: where the stream's folder for spilled
        blocks is made (None: the temporary folder)."""
        self.cache, self.block_tokens, self.top_k, self.scope = cache, block_tokens, top_k, scope
        # a folder of its own, also inside a chosen --offload-dir (streams sharing one never meet);
        # folders there of processes killed outright are swept first. Removed by close(), when this
        # object is collected, or at exit
        if parent is not None:
            scratch.sweep(parent)
        try:
            self.folder = scratch.make("session", parent)
        except OSError as err:
            raise InputError(f"--offload-dir {parent}: cannot make a session folder there ({err.strerror}). "
                             f"Give a writable folder, or leave the flag out") from None
        self.close = weakref.finalize(self, scratch.remove, self.folder)
        shape = cache.key_buffer.shape  # (L, 1, Hkv, capacity, D)
        block_bytes = 2 * shape[0] * shape[2] * block_tokens * cache.kv.stored_width  # as gathered
        self.store = OffloadStore(self.folder, ram_bytes, disk_bytes, block_bytes, (shape[0], shape[2], shape[4]),
                                  cache.key_buffer.device)

    def offload(self, index: torch.Tensor, time_range: tuple[float, float]) -> None:
        """Store the tokens at buffer slots `index` (one block, at most block_tokens; pruned chunks
        are smaller) before eviction overwrites them."""
        if index.numel() > self.block_tokens:  # the retrieved slots could not hold it
            self.store.stats.skipped += 1
            return
        keys, values, shift = self.cache.gather(index)  # as the cache stores them: fp8 blocks stay 8-bit
        rows = self.cache.table.select(index)
        decoded = self.cache.kv.unpack(keys, values, shift)[0]
        self.store.put(keys, values, rows, self.cache.representative(decoded, rows.pos), time_range, shift)

    @property
    def can_retrieve(self) -> bool:
        return self.top_k > 0 and len(self.store) > 0

    def retrieve(self, queries: torch.Tensor) -> list[tuple[float, float]]:
        """queries: (L, Hq, n, D) the question's, before rotary. Fills the retrieved slots; -> the time
        ranges of the blocks any layer uses, in time order."""
        if not self.can_retrieve:
            return []
        blocks = list(self.store.blocks)
        chosen = select_blocks(self._scores(queries), self.top_k, self.scope).cpu()  # (L, k)
        loaded = self._load(chosen, blocks)
        if loaded is None:
            return []  # a lost file: the store recorded the error; answer from the window alone
        self._insert(chosen, blocks, loaded)
        return sorted({blocks[b].time_range for b in chosen.unique().tolist()})

    def _scores(self, queries: torch.Tensor) -> torch.Tensor:
        """queries (L, Hq, n, D) -> (L, blocks). A head-wise cache's blocks hold its retrieval heads alone: each
        layer scores with the query heads that read them (a layer with none scores 0)."""
        representatives, layout = self.store.live_representatives(), self.cache.layout
        if not layout.headwise:
            return score_blocks(queries, representatives)
        rows = []
        for layer in range(layout.num_layers):
            heads = layout.query_index(layer, queries.shape[1], queries.device)[0]
            part = representatives[:, None, *layout.at(layer)]  # (B, 1, r, D)
            rows.append(score_blocks(queries[layer:layer + 1, heads], part)[0] if heads.numel()
                        else representatives.new_zeros(representatives.shape[0]))
        return torch.stack(rows)

    def _load(self, chosen: torch.Tensor, blocks: list) -> dict | None:
        """Each chosen (block, layer) on the device: {block: {layer: (keys, values)}}, a layer's (h, n, D). On a
        GPU the copies are queued on a side stream while the next blocks are read. A block's pending turns (its
        keys' shifts, 8-bit blocks) go along as {block: {"shift": (n,)}}."""
        device = self.cache.key_buffer.device
        side = torch.cuda.Stream(device) if device.type == "cuda" else None
        loaded: dict[int, dict] = {}
        layout = self.cache.layout
        for b in chosen.unique().tolist():
            layers = (chosen == b).any(dim=1).nonzero().squeeze(1).tolist()
            part = self.store.load(blocks[b], sorted({layout.at(layer)[0] for layer in layers}))
            if part is None:
                return None
            with torch.cuda.stream(side) if side is not None else nullcontext():
                on_device = {i: (k.to(device, non_blocking=True), v.to(device, non_blocking=True))
                             for i, (k, v) in part.items()}
                loaded[b] = {layer: tuple(x[layout.at(layer)[1]] for x in on_device[layout.at(layer)[0]])
                             for layer in layers}
                shift = blocks[b].shift
                loaded[b]["shift"] = None if shift is None else shift.to(device, non_blocking=True)
        if side is not None:
            main = torch.cuda.current_stream(device)
            main.wait_stream(side)
            for per_layer in loaded.values():
                for x in per_layer.values():
                    for t in (x if isinstance(x, tuple) else () if x is None else (x,)):
                        t.record_stream(main)
        return loaded

    def _insert(self, chosen: torch.Tensor, blocks: list, loaded: dict) -> None:
        """Slot j of layer l holds block chosen[l, j], its keys re-rotated from where they were
        evicted to the slot's positions (every block spans the same positions, pruned or not).
        Blocks differ in size once pruning is on: each layer's slots are padded to the longest
        layer's, and the padding is masked. The TokenTable rows describe layer 0's blocks."""
        cache = self.cache
        _, start = cache.slots_start()
        first = blocks[int(chosen[0, 0])].rows.pos
        extent = int(first.max()) - int(first.min()) + 1
        starts = torch.tensor([int(b.rows.pos.min()) for b in blocks])
        shift = start + torch.arange(chosen.shape[1]) * extent - starts[chosen]  # (L, k)
        sizes = torch.tensor([len(b.rows) for b in blocks])[chosen]  # (L, k)
        total = int(sizes.sum(1).max())
        pad = total - sizes.sum(1)  # (L,)
        device = cache.key_buffer.device
        keys, values = [], []
        for layer, row in enumerate(chosen.tolist()):
            parts = [loaded[b][layer] for b in row]
            k, v = (self._padded([x[i] for x in parts], int(pad[layer])) for i in (0, 1))
            # each token's turn: its block's move, and what its stored key still owed (8-bit blocks)
            token_shift = torch.cat([shift[layer].repeat_interleave(sizes[layer]),
                                     torch.zeros(int(pad[layer]), dtype=torch.int64)]).to(device, non_blocking=True)
            owed = [loaded[b]["shift"] for b in row]
            if owed[0] is not None:
                token_shift = token_shift + torch.cat(owed + [token_shift.new_zeros(int(pad[layer]))])
            if k.numel():
                k, v = cache.kv.unpack(k, v, token_shift)
            else:  # a layer without retrieval heads (head-wise cache)
                k = v = k.new_empty(*k.shape[:-1], cache.key_buffer.shape[-1], dtype=cache.dtype)
            keys.append(k)
            values.append(v)
        keys = cache.layout.assemble(keys)
        valid = torch.arange(total)[None, :] < (total - pad)[:, None]  # (L, R)
        rows = TokenTable.empty()
        for j, b in enumerate(chosen[0].tolist()):
            r = blocks[b].rows
            rows = rows.cat(TokenTable(torch.full_like(r.segment, int(Segment.RETRIEVED)), r.seq, r.group,
                                       r.pos - int(r.pos.min()) + start + j * extent, r.t))
        num_pad = int(pad[0])  # layer 0's padding rows: masked slots at the region's first position
        rows = rows.cat(TokenTable(torch.full((num_pad,), int(Segment.RETRIEVED)), torch.full((num_pad,), -1),
                                   torch.full((num_pad,), -1), torch.full((3, num_pad), start),
                                   torch.zeros(num_pad, dtype=torch.float64)))
        cache.insert_retrieved(keys, cache.layout.assemble(values), rows, valid)

    @staticmethod
    def _padded(parts: list[torch.Tensor], num_pad: int) -> torch.Tensor:
        """(Hkv, n_i, D) pieces -> (Hkv, sum n_i + num_pad, D), zeros at the end."""
        if num_pad:
            parts = parts + [parts[0].new_zeros(parts[0].shape[0], num_pad, parts[0].shape[2])]
        return torch.cat(parts, dim=1)



def vision_blocks(evicted: TokenTable, index: torch.Tensor, wrapper_tokens: Callable[[float], int],
                  seconds: float) -> list[tuple[torch.Tensor, tuple[float, float]]]:
    """The evicted tokens (their rows and buffer slots `index`) -> each vision chunk among them as one
    block: (its slots, its time range of `seconds`), unless pruning left it no more tokens than its
    delimiters, wrapper_tokens(its start time) (a block that shows nothing to retrieve)."""
    is_vision = evicted.segment == Segment.VISION
    out = []
    for group in evicted.group[is_vision].unique().tolist():
        mine = is_vision & (evicted.group == group)
        t0 = float(evicted.t[mine].min())
        if int(mine.sum()) > wrapper_tokens(t0):
            out.append((index[mine], (t0, t0 + seconds)))
    return out
