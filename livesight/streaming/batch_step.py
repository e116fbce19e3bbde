"""One language-model pass over the steps of many streams: the weights are read once for all of them.

Each stream's step (a chunk's prefill, a question, one decode token) is packed after the others';
token i is written to its stream's slab of the KV pool and attends only to that slab
(kernels/slab_attention.py). On a GPU, a step of up to GRAPH_MAX_ROWS rows runs at a bucketed
shape (rows, streams) replayed from a CUDA graph, its padding rows written to the pool's spare slab:
eagerly, a 7B step waits on the host launching ~700 kernels, 20-50 ms, whether it carries one token
or a thousand. Larger steps are compute-bound and run eagerly.
"""

import dataclasses

import torch
import torch.nn.functional as F

from livesight.kernels.dispatch import report
from livesight.kernels.graphs import GraphReplay
from livesight.kernels.slab_attention import slab_plan, slab_plan_blocks
from livesight.kvcache.cache import CacheFullError
from livesight.kvcache.pool import KVPool
from livesight.models.text import TextAdapter
from livesight.streaming.static_step import row_bucket
from livesight.streaming.step_output import StepResult, step_results
from livesight.streaming.stepper import CacheStepper
from livesight.streaming.tokens import StepBuilder

# the largest captured step: an eager step waits on the host launching its ~700 kernels (measured on an
# H200 at random-7b: 55 ms for a step of ~700 rows whose matmuls take ~14), so graphs pay until a step's
# compute outweighs that; past 512 rows the buckets are multiples of WIDE_ROW_STEP (fewer graphs to capture)
GRAPH_MAX_ROWS, WIDE_ROW_STEP = 4096, 256


class BatchStep:
    def __init__(self, adapter: TextAdapter, pool: KVPool, graphs: bool):
        self.adapter, self.pool = adapter, pool
        # graphs need the slab attention's Triton path (half precision on a GPU): the others sync
        # and a model whose every layer may take padding rows (a hybrid model's linear state would fold them in)
        self.graphs = (graphs and pool.key_buffer.is_cuda and adapter.dtype in (torch.float16, torch.bfloat16)
                       and adapter.pad_rows)
        self.groups = adapter.language_model.config.num_attention_heads // adapter.num_kv_heads
        self._replays: dict[tuple, GraphReplay] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.graphs else None

    @property
    def num_graphs(self) -> int:
        return len(self._replays)

    @torch.inference_mode()
    def __call__(self, steps: list[tuple[CacheStepper, StepBuilder]]) -> list[StepResult]:
        """Run every stream's step in one pass -> each step's last logits and greedy token, in order;
        the steppers record their tokens as if each had run alone. A step that would overflow its
        stream's cache raises CacheFullError before anything runs."""
        tables = [builder.table() for _, builder in steps]
        segments, row = [], 0
        for (stepper, _), table in zip(steps, tables):
            cache, n = stepper.cache, len(table)
            if cache.length + n > cache.capacity:
                raise CacheFullError(f"step of {n} tokens overflows the cache ({cache.length}/{cache.capacity})")
            if cache.window is not None and n > cache.window.step_rows:
                raise CacheFullError(f"step of {n} tokens overflows the streaming heads' step area "
                                     f"({cache.window.step_rows} rows)")
            segments.append((cache.slab, row, n, cache.length))
            row += n
        embeds = self._embeds([piece for _, builder in steps for piece in builder.embeds])
        positions = torch.cat([table.pos for table in tables], dim=1)
        padded = any(stepper.cache.key_valid is not None for stepper, _ in steps)
        for (stepper, _), (_, _, n, _) in zip(steps, segments):
            stepper.cache.begin_step()
            if stepper.cache.window is not None:  # a head-wise pool's streaming heads: what each holds
                stepper.cache.window.begin_static(n)
        self.pool.segments = segments  # a hybrid model's linear layers run each stream's rows on its own state
        try:
            hidden = self._hidden(embeds, positions, segments, padded)
        finally:
            self.pool.segments = []
        last = torch.tensor([r + n - 1 for _, r, n, _ in segments]).to(hidden.device, non_blocking=True)
        outputs = step_results(self.adapter.logits(hidden[last]))
        for (stepper, builder), table, (_, _, n, start) in zip(steps, tables, segments):
            stepper.cache.length = start + n
            stepper.commit(builder, table)
        return outputs

    def _embeds(self, pieces: list[torch.Tensor]) -> torch.Tensor:
        """The steps' pieces in order -> (N, hidden); the pieces given as token ids (decode steps feed
        the previous step's tokens) are embedded in one call for all streams."""
        ids = [piece for piece in pieces if piece.dim() == 1]
        if ids:
            embedded = iter(self.adapter.embed_tokens(torch.cat(ids)).split([piece.shape[0] for piece in ids]))
            pieces = [next(embedded) if piece.dim() == 1 else piece for piece in pieces]
        return torch.cat(pieces).to(self.adapter.dtype)

    def _hidden(self, embeds: torch.Tensor, positions: torch.Tensor, segments: list[tuple[int, int, int, int]],
                padded: bool) -> torch.Tensor:
        """-> hidden states (N, hidden) of the packed rows."""
        num_rows, device = embeds.shape[0], self.pool.key_buffer.device
        if self.graphs and num_rows <= GRAPH_MAX_ROWS:
            return self._replayed(embeds, positions, segments, padded)[:num_rows]
        report("lm_batch", "eager")
        slabs, slots, area_slots = self._slots(segments, 0)
        plan = slab_plan(segments, num_rows, self.groups, self.pool.slab_capacity, self.adapter.num_kv_heads, device)
        return self.adapter.pool_hidden(embeds.to(device, non_blocking=True), positions.to(device, non_blocking=True),
                                        self.pool, slabs, slots, plan, padded, area_slots)

    def _replayed(self, embeds, positions, segments, padded: bool) -> torch.Tensor:
        """The step at (rows, segments) rounded up to buckets, from a CUDA graph captured once per bucket
        (and per kind: a batched decode, every segment one token, runs other kernels than a step with
        prefills)."""
        num_rows, device = embeds.shape[0], self.pool.key_buffer.device
        decode = all(n == 1 for _, _, n, _ in segments)
        rows = row_bucket(num_rows) if num_rows <= 512 else -(-num_rows // WIDE_ROW_STEP) * WIDE_ROW_STEP
        # a table for as many streams as the pool holds: one graph per row bucket, whatever the mix of streams
        num_blocks = slab_plan_blocks(rows, min(rows, self.pool.num_slabs), self.groups, decode)
        plan = slab_plan(segments, rows, self.groups, self.pool.slab_capacity, self.adapter.num_kv_heads, device,
                         num_blocks)
        pad = rows - num_rows
        slabs, slots, area_slots = self._slots(segments, pad)
        embeds = F.pad(embeds, (0, 0, 0, pad)).to(device, non_blocking=True)
        positions = F.pad(positions, (0, pad)).to(device, non_blocking=True)
        key = (rows, num_blocks, plan.block_m, padded)
        report("lm_batch", "cuda-graph")
        replay = self._replays.get(key)
        inputs = [embeds, positions, slabs, slots, plan.table] + ([] if area_slots is None else [area_slots])
        if replay is None:
            def step(e, p, sl, so, table, area=None):
                return self.adapter.pool_hidden(e, p, self.pool, sl, so, dataclasses.replace(plan, table=table), padded,
                                                area)
            replay = GraphReplay(step, inputs, self._pool)
            self._replays[key] = replay
        return replay(*inputs)

    def _slots(self, segments: list[tuple[int, int, int, int]], pad: int) -> tuple[torch.Tensor, ...]:
        """Where each row's key and value go -> (slabs (N + pad,), slots (N + pad,), and a head-wise pool's slots
        of its streaming heads' step area (N + pad,), else None) on the device; padding rows go to the pool's
        spare slab."""
        pool, device = self.pool, self.pool.key_buffer.device
        slabs = [torch.full((n,), slab) for slab, _, n, _ in segments] + [torch.full((pad,), pool.dump_slab)]
        slots = [torch.arange(start, start + n) for _, _, n, start in segments]
        slots.append(torch.arange(pad) % pool.slab_capacity)
        area = None
        if pool.window is not None:  # each stream's rows fill its step area from its first slot
            rows = pool.window.keys.shape[2] - pool.window_area
            area = torch.cat([torch.arange(n) for _, _, n, _ in segments] + [torch.arange(pad) % rows])
            area = (area + pool.window_area).to(device, non_blocking=True)
        return torch.cat(slabs).to(device, non_blocking=True), torch.cat(slots).to(device, non_blocking=True), area

