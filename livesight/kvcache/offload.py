"""Evicted blocks outside the GPU: RAM first (pageable: see _to_ram), then disk, both under hard byte budgets.

A block is the keys and values (all layers) of one evicted group of tokens, with the TokenTable
rows that say where its keys are rotated to and which stream moment it shows. Its representative
(the mean key before rotary, per layer and KV head) stays on the device in a preallocated buffer,
so scoring needs no transfer and device memory does not grow with the stream.
"""

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from livesight.kvcache.table import TokenTable

# One thread for the whole process finishes the copies to RAM (see OffloadStore._to_ram)
_COPIER = ThreadPoolExecutor(1, thread_name_prefix="livesight-offload")


@dataclass
class Block:
    index: int  # eviction order (time order)
    slot: int  # row in the representatives buffer
    rows: TokenTable
    time_range: tuple[float, float]  # the stream moment it shows, [t_start, t_end]
    keys: torch.Tensor | None  # (L, Hkv, n, D) on the CPU while in RAM
    values: torch.Tensor | None
    shift: torch.Tensor | None = None  # (n,) how far each key must still turn (8-bit blocks), kept in RAM
    path: str | None = None  # the file while on disk
    nbytes: int = 0
    copying: Future | None = None  # keys and values are complete once this is done

    def settle(self) -> None:
        if self.copying is not None:
            self.copying.result()
            self.copying = None


@dataclass
class OffloadStats:
    ram_bytes: int = 0
    disk_bytes: int = 0
    dropped: int = 0
    skipped: int = 0  # evicted groups larger than a block (not stored)
    errors: list[str] = field(default_factory=list)


class OffloadStore:
    def __init__(self, folder: str, ram_bytes: int, disk_bytes: int, block_bytes: int, rep_shape: tuple[int, int, int],
                 device: torch.device | str):
        """block_bytes: the size of one block (keys + values); rep_shape: (L, Hkv, D)."""
        if ram_bytes < 0 or disk_bytes < 0:
            raise ValueError("offload budgets must be >= 0")
        self.folder, self.ram_budget, self.disk_budget = folder, ram_bytes, disk_bytes
        self.capacity = max(1, (ram_bytes + disk_bytes) // max(1, block_bytes))
        self.representatives = torch.zeros((self.capacity, *rep_shape), dtype=torch.float32, device=device)
        self.blocks: list[Block] = []  # oldest first
        self.stats = OffloadStats()
        self._free = list(range(self.capacity - 1, -1, -1))
        self._next = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def put(self, keys: torch.Tensor, values: torch.Tensor, rows: TokenTable, representative: torch.Tensor,
            time_range: tuple[float, float], shift: torch.Tensor | None = None) -> None:
        """keys, values: (L, Hkv, n, W) on any device, as the cache stores them (storage.py: `stored`);
        representative: (L, Hkv, D); shift: (n,) their keys' pending turns, or None."""
        nbytes = keys.nbytes + values.nbytes
        if nbytes > max(self.ram_budget, self.disk_budget):
            self.stats.dropped += 1
            return
        if not self._free:
            self._drop(self.blocks[0])
        (keys_cpu, values_cpu, *owed), copying = self._to_ram(keys, values, *([] if shift is None else [shift]))
        block = Block(self._next, self._free.pop(), rows, time_range, keys_cpu, values_cpu, owed[0] if owed else None,
                      nbytes=nbytes, copying=copying)
        self.representatives[block.slot] = representative.float()
        self._next += 1
        self.blocks.append(block)
        self.stats.ram_bytes += nbytes
        while self.stats.ram_bytes > self.ram_budget:
            self._spill(next(b for b in self.blocks if b.keys is not None))

    @staticmethod
    def _to_ram(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], Future | None]:
        """Pageable copies of `tensors` (complete once the future, if any, is done). From a GPU the engine
        does not wait for the device here: each goes first into pinned memory without blocking (torch's
        caching host allocator hands the same buffers out again; allocating pinned memory for every
        block cost ~0.4 ms per MB), then the copy thread waits for it and moves it to pageable RAM,
        which a process can hold far more of."""
        if not tensors[0].is_cuda:
            return [t.to("cpu", copy=True) for t in tensors], None
        staged = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for buffer, t in zip(staged, tensors):
            buffer.copy_(t, non_blocking=True)
        arrived = torch.cuda.Event()
        arrived.record()
        homes = [torch.empty(t.shape, dtype=t.dtype) for t in tensors]

        def finish() -> None:
            arrived.synchronize()
            for home, buffer in zip(homes, staged):
                home.copy_(buffer)
        return homes, _COPIER.submit(finish)

    def _spill(self, block: Block) -> None:
        """Move the oldest RAM block to disk, dropping the oldest disk blocks to make room."""
        block.settle()
        self.stats.ram_bytes -= block.nbytes
        while self.stats.disk_bytes + block.nbytes > self.disk_budget:
            on_disk = [b for b in self.blocks if b.path is not None]
            if not on_disk:
                self._drop(block, counted_in_ram=False)
                return
            self._drop(on_disk[0])
        path = os.path.join(self.folder, f"block-{block.index:08d}.safetensors")
        try:
            save_file({"keys": block.keys.contiguous(), "values": block.values.contiguous()}, path)
        except (OSError, SafetensorError) as err:
            reason = getattr(err, "strerror", None) or str(err).split(":")[-1].strip()
            self.stats.errors.append(f"offload folder {self.folder} is unusable ({reason}); block dropped")
            self._drop(block, counted_in_ram=False)
            return
        block.path, block.keys, block.values = path, None, None
        self.stats.disk_bytes += block.nbytes

    def _drop(self, block: Block, counted_in_ram: bool = True) -> None:
        self.blocks.remove(block)
        self._free.append(block.slot)
        self.stats.dropped += 1
        if block.path is not None:
            self.stats.disk_bytes -= block.nbytes
            try:
                os.remove(block.path)
            except OSError:
                pass
        elif block.keys is not None and counted_in_ram:
            self.stats.ram_bytes -= block.nbytes

    def live_representatives(self) -> torch.Tensor:
        """(B, L, Hkv, D) for the blocks in `self.blocks`, in that order."""
        slots = torch.tensor([b.slot for b in self.blocks], device=self.representatives.device)
        return self.representatives.index_select(0, slots)

    def load(self, block: Block, layers: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]] | None:
        """The block's keys and values (Hkv, n, D) on the CPU for each of `layers` (views while
        in RAM); None, with an error recorded, when its file is gone."""
        if block.keys is not None:
            block.settle()
            return {i: (block.keys[i], block.values[i]) for i in layers}
        try:
            with safe_open(block.path, framework="pt") as f:
                keys, values = f.get_slice("keys"), f.get_slice("values")
                return {i: (keys[i:i + 1][0], values[i:i + 1][0]) for i in layers}
        except (OSError, RuntimeError, SafetensorError) as err:
            self.stats.errors.append(f"offloaded block {block.index} could not be read from {block.path} ({err}); "
                                     f"answering without it")
            self._drop(block)
            return None
