"""The language model's step at fixed shapes, so that on a GPU it replays from a CUDA graph.

A step of n tokens runs as a bucket of B >= n rows (powers of two up to 64, then multiples of 64)
against a fixed span of Kb cache slots (the next multiple of 512 past the step's end). The B - n
padding rows write their keys past the cache's end, where the next step overwrites them, and no
real query sees them (causal); slots past each query's own are masked. Shapes then depend only on
(B, Kb), and each pair is captured once and replayed after: without it, transformers' ~20 small
kernels per layer wait on the host launching them, and a step costs the same 25-40 ms for 20
tokens as for 264 (results/compression/h100). Elsewhere the same function runs eagerly (tests hold it equal
to the dynamic forward).
"""

import torch
import torch.nn.functional as F

from livesight.kernels.dispatch import report
from livesight.kernels.graphs import GraphReplay
from livesight.kvcache import StreamCache
from livesight.kvcache.headwise import STEP_ROWS
from livesight.models.text import TextAdapter

ROW_STEP = 64
KEY_BLOCK = 512


def row_bucket(num_tokens: int) -> int:
    """The rows a step of num_tokens runs as."""
    if num_tokens <= ROW_STEP:
        return 1 << (num_tokens - 1).bit_length()
    return -(-num_tokens // ROW_STEP) * ROW_STEP


class StaticStep:
    def __init__(self, adapter: TextAdapter, cache: StreamCache, graphs: bool):
        self.adapter, self.cache, self.graphs = adapter, cache, graphs
        self._replays: dict[tuple[int, int], GraphReplay] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None
        if cache.window is not None:  # a head-wise cache's streaming heads: a step area for these steps' rows
            cache.window.reserve_steps(min(STEP_ROWS, row_bucket(cache.capacity)))

    @property
    def num_graphs(self) -> int:
        return len(self._replays)

    def fits(self, num_tokens: int) -> bool:
        """Whether a step of num_tokens can run here: its padding must fit in the cache, and a model whose
        layers cannot take padding rows (a hybrid model's linear state folds in every row) runs only steps
        that need none (a decode step's one row, and steps of a bucket's size); a head-wise cache's step area holds
        the rows of one (headwise.py: STEP_ROWS)."""
        rows = row_bucket(num_tokens)
        return (self.cache.length + rows <= self.cache.capacity and (self.adapter.pad_rows or rows == num_tokens)
                and (self.cache.window is None or rows <= self.cache.window.step_rows))

    @torch.inference_mode()
    def __call__(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """embeds: (n, hidden); positions: (3, n) -> logits (vocab,) of the last token; appends to the cache."""
        cache, device = self.cache, self.cache.key_buffer.device
        num_tokens, start = embeds.shape[0], cache.length
        rows = row_bucket(num_tokens)
        num_keys = min(-(-(start + rows) // KEY_BLOCK) * KEY_BLOCK, cache.capacity)
        pad = rows - num_tokens
        embeds = F.pad(embeds.to(device, self.adapter.dtype), (0, 0, 0, pad))
        # host-to-device copies that do not wait for the GPU: the next step is prepared while it runs
        positions = torch.cat([positions, positions[:, -1:].expand(-1, pad)], dim=1).to(device, non_blocking=True)
        start_slot = torch.tensor([start]).to(device, non_blocking=True)
        padded = cache.key_valid is not None  # after retrieval of unequal blocks: a graph that adds the key bias
        if cache.window is not None:  # a head-wise cache's streaming heads: what they hold, as device data
            cache.window.begin_static(num_tokens)
        if self.graphs:
            report("lm_step", "cuda-graph")
            replay = self._replays.get((rows, num_keys, padded))
            if replay is None:
                step = lambda e, p, s: self.adapter.static_hidden(e, p, s, cache, num_keys, padded)  # noqa: E731
                linear = None if cache.linear is None else cache.linear.snapshot()
                replay = GraphReplay(step, [embeds, positions, start_slot], self._pool)
                if linear is not None:  # the capture's warm-up ran the step once: its state update undone
                    cache.linear.put(linear)
                self._replays[rows, num_keys, padded] = replay
            hidden = replay(embeds, positions, start_slot)
        else:
            report("lm_step", "static-eager")
            hidden = self.adapter.static_hidden(embeds, positions, start_slot, cache, num_keys, padded)
        cache.length = start + num_tokens
        return self.adapter.logits(hidden[num_tokens - 1])
