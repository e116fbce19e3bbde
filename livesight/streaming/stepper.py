"""One step of the engine's cache cycle, shared by the video Session and text-only drivers:
build a step's tokens, run the model over them into the cache, then evict and compact."""

import time

import torch

from livesight.kvcache import StreamCache, TokenTable
from livesight.kvcache.duo import DuoHeads
from livesight.models.text import TextAdapter
from livesight.streaming.static_step import StaticStep
from livesight.streaming.tokens import StepBuilder


class CacheStepper:
    def __init__(self, adapter: TextAdapter, policy, capacity: int, offload=None, graphs: bool = True,
                 cache: StreamCache | None = None, kv_dtype: str = "model", duo: DuoHeads | None = None):
        """policy: anything with keep(table, now_s) -> (n,) bool. offload(evicted: TokenTable,
        index: (n,) buffer slots) is called before eviction with the tokens about to leave.
        graphs: on a GPU, run steps at fixed shapes replayed from CUDA graphs (static_step.py).
        cache: the cache to fill (a slab of an engine's pool), else one of `capacity` is allocated, its keys
        and values in kv_dtype ("model", or "fp8": kvcache/storage.py), its KV heads of the kinds `duo` says
        (kvcache/duo.py)."""
        self.adapter, self.policy, self.offload = adapter, policy, offload
        self.cache: StreamCache = adapter.new_cache(capacity, kv_dtype, duo) if cache is None else cache
        use_graphs = graphs and self.cache.key_buffer.is_cuda
        self.static: StaticStep | None = StaticStep(adapter, self.cache, graphs=True) if use_graphs else None
        self._pos = self._seq = self._group = 0

    @property
    def next_seq(self) -> int:
        """The stream index the next step's first token gets: indices only grow, also past tokens taken
        back (a truncation) or a pass rolled back (a probe reuses the indices of the step after it)."""
        return self._seq

    def builder(self) -> StepBuilder:
        """A builder whose positions, stream indices and groups continue from the cache."""
        return StepBuilder(self._pos, self._seq, self._group, self.adapter.flat_positions)

    def forward(self, builder: StepBuilder, all_logits: bool = False) -> torch.Tensor:
        """Run the step; -> logits of its last token (vocab,), or of every token (n, vocab)."""
        embeds, table = builder.build(self.adapter.embed_tokens)
        self.cache.begin_step()
        if self.static is not None and not all_logits and self.static.fits(len(table)):
            logits = self.static(embeds, table.pos)
        else:
            logits = self.adapter.forward(embeds, table.pos, self.cache, all_logits=all_logits)
        self.commit(builder, table)
        return logits

    def commit(self, builder: StepBuilder, table: TokenTable) -> None:
        """Record the step's tokens, which its forward pass appended to the cache."""
        self.cache.record(table)
        self._pos, self._seq, self._group = builder.next_pos, builder.next_seq, builder.next_group

    def evict(self, now_s: float) -> int:
        """Apply the policy once; -> the number of re-rotated tokens. Queues the device's work
        without waiting for it."""
        keep = self.policy.keep(self.cache.table, now_s)
        if self.offload is not None and not bool(keep.all()):
            evicted = torch.nonzero(~keep).squeeze(1)
            self.offload(self.cache.table.select(evicted), evicted)
        moved = self.cache.compact(keep)
        self.resync()
        return moved

    def snapshot(self) -> tuple:
        return self.cache.snapshot(), (self._pos, self._seq, self._group)

    def restore(self, snapshot: tuple) -> None:
        """Back to the state `snapshot` saw, bit for bit."""
        cache_state, (self._pos, self._seq, self._group) = snapshot
        self.cache.restore(cache_state)

    def reset(self) -> None:
        self.cache.clear()
        self._pos = self._seq = self._group = 0

    def truncate(self, length: int) -> None:
        """Forget the tokens past `length` (decode steps taken past a stop token)."""
        self.cache.truncate(length)
        self.resync()

    def resync(self) -> None:
        """Continue positions from the cache after it was rearranged."""
        self._pos = self.cache.table.next_position()

    def sync(self) -> None:
        """Wait for this stream's work (retrieval's side-stream loads join it before they are used)."""
        if self.cache.key_buffer.is_cuda:
            torch.cuda.current_stream().synchronize()


class StageClock:
    """A chunk's stage times without waiting for the device between stages (a wait there keeps the
    host from preparing the next stage while the GPU runs this one). On a GPU: events on the stream,
    read after the chunk's one wait, so a stage's time is its span on the GPU's timeline and the
    stages add up to the chunk; on the CPU: the host clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.names: list[str] = []
        self.marks: list = []
        self._mark()

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def lap(self, name: str) -> None:
        """The stage `name` ends here."""
        self.names.append(name)
        self._mark()

    def times(self) -> dict[str, float]:
        """Milliseconds per stage; on a GPU only after the stream was synchronized."""
        spans = zip(self.marks, self.marks[1:])
        ms = [a.elapsed_time(b) if self.cuda else (b - a) * 1000 for a, b in spans]
        return dict(zip(self.names, ms))
