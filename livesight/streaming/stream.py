"""One stream: its cache, compression and retrieval state, and what it does with a chunk or a question.

Per chunk: encode its frames, prefill [pending text | vision group | assistant prefix], narrate
greedily, then evict by the policy and compact the cache once (re-rotating moved keys). The last
generated token and the turn's closing tokens are fed at the start of the next step, so no
forward pass is spent on them alone.

The work that needs the model is written as generators: `chunk_work` and `ask_work` yield a
VisionWork (-> the chunk's visual tokens) or a StepBuilder (-> its StepResult: the step's last logits
and their greedy token) and are sent
its result; they return the events. Whoever drives them decides how the work runs: a Session runs
each item at once, alone; the Engine gathers the items of every stream and runs them in one batched
pass. The stream's logic, and so its result, is the same either way.
"""

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch

from livesight.errors import InputError
from livesight.kvcache import Segment, StreamCache, TokenTable, WindowPolicy
from livesight.kvcache.blocks import OffloadedBlocks, vision_blocks
from livesight.kvcache.duo import DuoHeads, load_duo
from livesight.kvcache.pool import KVPool
from livesight.kvcache.storage import stored_width
from livesight.models.chat import ChatIds
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import GB, SessionConfig
from livesight.streaming.events import Event
from livesight.models.loader import free_bytes
from livesight.streaming.retrieval import probe
from livesight.streaming.step_output import StepResult, StepTokens
from livesight.streaming.stepper import CacheStepper, StageClock
from livesight.streaming.tokens import StepBuilder
from livesight.vision.prune import TokenPruner

PENDING_MAX = 8  # the last generated token plus the closing "<|im_end|>\n"
STOP_CHECK_EVERY = 4  # decode steps between reads of the generated ids (a read waits for the GPU)


@dataclass
class VisionWork:
    """A chunk's frames for the stream's vision encoder -> (visual tokens (n, hidden), EncodeStats)."""

    stream: "Stream"
    frames: torch.Tensor  # (T, H, W, 3) uint8


Work = Generator[VisionWork | StepBuilder, Any, list[Event]]


def duo_heads(adapter: QwenVLAdapter, config: SessionConfig) -> DuoHeads | None:
    """The KV heads that stream (config.duo_gates at config.duo_sparsity), or None. With retrieval on, some must
    not: retrieval brings back what the retrieval heads keep."""
    if config.duo_gates is None:
        return None
    heads = load_duo(config.duo_gates, config.duo_sparsity, adapter.num_layers, adapter.num_kv_heads)
    if config.retrieval.enabled and bool(heads.streaming.all()):
        raise InputError(f"--duo-sparsity {config.duo_sparsity:g} makes every KV head a streaming head, which leaves "
                         f"retrieval nothing to bring back: give a smaller share, or turn retrieval off "
                         f"(--no-retrieve)")
    return heads


def stream_bytes(adapter: QwenVLAdapter, capacity: int, tokens_per_chunk: int, config: SessionConfig) -> dict[str, int]:
    """The device bytes one stream holds: its cache, and its offloaded blocks' representatives."""
    heads, element = adapter.num_layers * adapter.num_kv_heads, adapter.dtype.itemsize
    block = 2 * heads * tokens_per_chunk * stored_width(config.kv_dtype, adapter.head_dim, element)  # offloaded
    retrieval = config.retrieval
    budget = (retrieval.ram_gb + retrieval.disk_gb) * GB if retrieval.enabled else 0
    # keys, values, key bias (fp8: and more; duo: the retrieval heads, and the streaming heads' window and step area)
    cache = KVPool.slab_bytes(adapter.num_layers, adapter.num_kv_heads, adapter.head_dim, capacity, element,
                              config.kv_dtype, adapter.inv_freq.numel(), duo_heads(adapter, config),
                              largest_step(config, tokens_per_chunk, adapter.chat_ids()))
    return {"cache": cache + adapter.linear_state_bytes,  # and a hybrid model's linear-attention state
            "representatives": int(budget // block * heads * adapter.head_dim * 4)}  # float32, one per block


def check_fits(adapter: QwenVLAdapter, capacity: int, tokens_per_chunk: int, config: SessionConfig,
               num_streams: int = 1) -> int:
    """The bytes `num_streams` such streams will allocate on the device; raises InputError naming the
    settings when they exceed what the device has free."""
    need = stream_bytes(adapter, capacity, tokens_per_chunk, config)
    cache, representatives = need["cache"] * num_streams, need["representatives"] * num_streams
    device = adapter.device
    free = free_bytes(device)
    if cache + representatives > 0.9 * free:
        retrieval = config.retrieval
        streams = f"{num_streams} streams: " if num_streams > 1 else ""
        fewer = f"; at most {int(0.9 * free // sum(need.values()))} such streams fit" if num_streams > 1 else ""
        raise InputError(
            f"{streams}these settings need {cache / GB:.2f} GB for the cache ({capacity:,} tokens per stream: vision "
            f"window {config.vision_window_s:g} s, text {config.text_sink} + {config.text_window} tokens, retrieval top "
            f"{retrieval.top_k if retrieval.enabled else 0}) and {representatives / GB:.2f} GB for offloaded blocks' "
            f"representatives (offload budgets {retrieval.ram_gb:g} + {retrieval.disk_gb:g} GB), more than the "
            f"{free / GB:.1f} GB free on {device}: lower --vision-window, --text-sink, --text-window, "
            f"--retrieve-top-k or the offload budgets{fewer}")
    return cache + representatives


def cache_capacity(config: SessionConfig, tokens_per_chunk: int, chat: ChatIds) -> int:
    """The most tokens a stream's cache holds: sink, vision and text windows, retrieved slots, and the
    largest step (a chunk with its narration, or a question with its answer)."""
    caps = WindowPolicy(config.vision_window_s, config.text_sink, config.text_window).caps(
        tokens_per_chunk, config.chunk_seconds)
    retrieval = config.retrieval
    slots = retrieval.top_k * tokens_per_chunk if retrieval.enabled else 0
    return (len(chat.system(config.system_prompt)) + caps["vision"] + caps["text"] + slots
            + largest_step(config, tokens_per_chunk, chat))


def largest_step(config: SessionConfig, tokens_per_chunk: int, chat: ChatIds) -> int:
    """The most tokens a stream's turn adds before the window's next compaction, which bounds any one step of it:
    a chunk with its narration, or a question with its answer."""
    chunk_step = PENDING_MAX + tokens_per_chunk + len(chat.assistant) + config.narrate_tokens
    question_step = (PENDING_MAX + len(chat.user_open) + config.max_question_tokens + len(chat.turn_close)
                     + len(chat.assistant) + config.answer_tokens)
    return max(chunk_step, question_step)


def slab_tokens(adapter: QwenVLAdapter, config: SessionConfig,
                max_frame: tuple[int, int] | None = None) -> tuple[int, int]:
    """-> (cache tokens, tokens per chunk) of a stream of max_frame (height, width) frames (None: the
    largest frame `config` allows): the slab an engine reserves for each stream."""
    max_pixels = config.max_pixels or adapter.loaded.max_pixels
    chat = adapter.chat_ids()
    unit = adapter.patch * adapter.merge
    if max_frame is None:
        grid_tokens = -(-config.frames_per_chunk // adapter.temporal) * (max_pixels // unit ** 2)
    else:
        size = adapter.frame_size(max_frame, max_pixels)
        grid_tokens = int(np.prod(adapter.merged_grid(size, config.frames_per_chunk)))
    tokens = chat.chunk_open_bound + len(chat.chunk_close) + grid_tokens
    return cache_capacity(config, tokens, chat), tokens


def check_host_memory(config: SessionConfig, num_streams: int) -> None:
    """InputError when num_streams streams' offload RAM budgets together exceed the host's memory. A budget
    is a cap that fills as a stream runs long, not an allocation, so it is held against the machine's whole
    memory, not against what happens to be free when the engine starts."""
    retrieval = config.retrieval
    need = retrieval.ram_gb * GB * num_streams if retrieval.enabled else 0
    total = psutil.virtual_memory().total
    if need > 0.9 * total:
        raise InputError(f"{num_streams} streams with --offload-ram-gb {retrieval.ram_gb:g} each may hold "
                         f"{need / GB:.1f} GB of host memory, more than this machine's {total / GB:.1f} GB: lower "
                         f"--offload-ram-gb or the number of streams")


class Stream:
    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, frame_size: tuple[int, int],
                 cache: Callable[[int], StreamCache] | None = None):
        """frame_size: (height, width) of the source; every chunk is resized to one patch-aligned size.
        cache: given the capacity, the stream's cache (a slab of the engine's pool); None: allocate one
        (after checking it fits) and run language-model steps from CUDA graphs of its own on a GPU."""
        self.adapter, self.config = adapter, config
        self.policy = WindowPolicy(config.vision_window_s, config.text_sink, config.text_window)
        max_pixels = config.max_pixels or adapter.loaded.max_pixels
        self.size = adapter.frame_size(frame_size, max_pixels)
        self.grid = adapter.merged_grid(self.size, config.frames_per_chunk)
        compress = config.compression
        self.encoder = adapter.vision_encoder(self.size, config.frames_per_chunk,
                                              compress.reuse_threshold if compress.reuse else None,
                                              None if config.cuda_graphs else False, compress.partial)
        self.chat = adapter.chat_ids()
        self.stop_ids = self.chat.stop_ids
        # at most: a family's timestamps (Qwen3-VL) grow a digit at a time
        self.tokens_per_chunk = self.chat.chunk_open_bound + len(self.chat.chunk_close) + int(np.prod(self.grid))
        self.capacity = cache_capacity(config, self.tokens_per_chunk, self.chat)
        if cache is None:
            check_fits(adapter, self.capacity, self.tokens_per_chunk, config)
        retrieval = config.retrieval
        self.stepper = CacheStepper(adapter, self.policy, self.capacity, self._offload if retrieval.enabled else None,
                                    config.cuda_graphs and cache is None,
                                    None if cache is None else cache(self.capacity), config.kv_dtype,
                                    duo_heads(adapter, config))
        self.cache = self.stepper.cache
        self.temporal_stride = adapter.temporal_stride(config.fps)
        self.offloaded = None
        self.reset()

    def reset(self) -> None:
        """Start a new stream here: empty cache, offload store and compression state, the sink
        prefilled again. Buffers and captured CUDA graphs stay (an evaluator runs thousands of
        short streams at one frame size)."""
        config = self.config
        self.close()
        self.stepper.reset()
        self.encoder.reset()
        retrieval = config.retrieval
        self.offloaded = OffloadedBlocks(self.cache, self.tokens_per_chunk, retrieval.top_k, retrieval.scope,
                                         int(retrieval.ram_gb * GB), int(retrieval.disk_gb * GB),
                                         retrieval.folder) if retrieval.enabled else None
        compress = config.compression
        refresh_s = max(config.vision_window_s - config.chunk_seconds, config.chunk_seconds)
        self.pruner = TokenPruner(compress.keep_ratio, compress.keep_floor, compress.prune_threshold,
                                  refresh_s) if compress.prune else None
        self._errors_seen = 0
        self.now, self.num_chunks, self.pending = 0.0, 0, []
        builder = self.stepper.builder()
        builder.text(self.adapter.embed_ids(self.chat.system(config.system_prompt)), Segment.SINK, 0.0)
        self.stepper.forward(builder)

    def _offload(self, evicted: TokenTable, index: torch.Tensor) -> None:
        """Each vision chunk leaving the window becomes one offloaded block."""
        for slots, time_range in vision_blocks(evicted, index, self._wrapper_tokens, self.config.chunk_seconds):
            self.offloaded.offload(slots, time_range)

    def _chunk_opening(self, t_start: float) -> list[int]:
        """The ids before a chunk's video: with the family's timestamp of the chunk starting at t_start
        where it writes one (the mean of its first and last frame's times)."""
        return self.chat.chunk_opening(t_start + (self.config.chunk_seconds - 1 / self.config.fps) / 2)

    def _wrapper_tokens(self, t_start: float) -> int:
        return len(self._chunk_opening(t_start)) + len(self.chat.chunk_close)

    def _store_errors(self) -> list[Event]:
        """Offload trouble (a deleted session folder, an unreadable block) as error events, once each."""
        if self.offloaded is None:
            return []
        errors = self.offloaded.store.stats.errors
        new, self._errors_seen = errors[self._errors_seen:], len(errors)
        return [Event("error", self.now, text) for text in new]

    def close(self) -> None:
        """Remove the stream's offload folder now if it made one (else when collected)."""
        if self.offloaded is not None:
            self.offloaded.close()

    def _generate(self, result: StepResult, max_tokens: int, t: float,
                  read: Callable[[list[int]], None] | None = None) -> Generator[StepBuilder, Any, list[int]]:
        """Greedy decode from the step that gave `result`. Each step is fed the previous step's token
        straight from the device, so the host prepares a step while the GPU still runs the one before;
        the ids are read every STOP_CHECK_EVERY tokens (waiting for their own steps only), and steps
        taken past a stop token are undone. Every token but the last is fed now, the last with the
        closing tokens next step. read: told the ids generated so far, each time more are read."""
        read = read or (lambda ids: None)
        start = self.cache.length
        ids: list[int] = []
        unread: list[tuple[StepTokens, int]] = []  # tokens on their way to the host, not yet read
        while len(ids) + len(unread) < max_tokens:
            unread.append((result.tokens, result.index))  # not the result: its step's logits may go
            if len(ids) + len(unread) < max_tokens:
                builder = self.stepper.builder()
                builder.text(result.token, Segment.TEXT, t)
                result = yield builder
            if len(unread) == STOP_CHECK_EVERY or len(ids) + len(unread) == max_tokens:
                new, unread = [tokens.ids()[i] for tokens, i in unread], []
                stop = next((i for i, x in enumerate(new) if x in self.stop_ids), None)
                if stop is not None:  # the stop token and what followed it were fed: take them back
                    ids += new[:stop]
                    self.stepper.truncate(start + len(ids))
                    self.pending = list(self.chat.turn_close)
                    read(ids)
                    return ids
                ids += new
                read(ids)
        self.pending = ids[-1:] + self.chat.turn_close
        return ids

    def chunk_work(self, chunk: Chunk, narrate_tokens: int | None = None) -> Work:
        """Encode, prune, prefill and narrate one chunk (at most narrate_tokens, else as configured);
        returns [errors..., caption?, metrics]."""
        if chunk.frames.shape[0] != self.config.frames_per_chunk:
            raise ValueError(f"chunk {chunk.index} has {chunk.frames.shape[0]} frames, the session takes "
                             f"{self.config.frames_per_chunk} (fps x chunk seconds)")
        clock = StageClock(self.cache.key_buffer.device)
        visual, encoded = yield VisionWork(self, torch.from_numpy(np.ascontiguousarray(chunk.frames)))
        clock.lap("vision_ms")
        kept = self.pruner.select(visual, chunk.t_start) if self.pruner is not None else None
        clock.lap("prune_ms")
        embed = self.adapter.embed_ids
        builder = self.stepper.builder()
        if self.pending:
            builder.text(embed(self.pending), Segment.TEXT, self.now)
            self.pending = []
        builder.vision(embed(self._chunk_opening(chunk.t_start)), visual if kept is None else visual[kept],
                       self.grid, embed(self.chat.chunk_close), chunk.t_start, self.temporal_stride, kept)
        if self.config.narrate:
            builder.text(embed(self.chat.assistant), Segment.TEXT, chunk.t_start)
        num_new = builder.num_tokens
        result = yield builder
        clock.lap("prefill_ms")
        vision_tokens = {"grid": encoded.num_tokens, "encoded": encoded.num_encoded,
                         "kept": encoded.num_tokens if kept is None else kept.numel()}
        narrate_tokens = self.config.narrate_tokens if narrate_tokens is None else narrate_tokens
        narration = (yield from self._generate(result, narrate_tokens, chunk.t_start)) if self.config.narrate else []
        clock.lap("decode_ms")
        self.now, self.num_chunks = chunk.t_end, self.num_chunks + 1
        moved = self.stepper.evict(self.now)
        clock.lap("evict_ms")
        self.stepper.sync()  # the chunk is done when the device is: its latency, and the next chunk's start
        events = self._store_errors()
        text = self.adapter.decode(narration)
        if text:
            events.append(Event("caption", chunk.t_start, text))
        events.append(self._metrics(chunk, clock.times(), num_new, len(narration), moved,
                                    {"encoder": encoded.mode, "vision_tokens": vision_tokens}))
        return events

    def question_ids(self, question: str) -> list[int]:
        """The question's tokens; InputError if it is empty or too long."""
        ids = self.adapter.tokenizer.encode(question.strip(), add_special_tokens=False)
        if not ids:
            raise InputError("empty question: type a question, or give --ask SECONDS:question")
        if len(ids) > self.config.max_question_tokens:
            raise InputError(f"question too long: {len(ids)} tokens, at most {self.config.max_question_tokens}")
        return ids

    def ask_work(self, question: str, remember: bool = True, max_tokens: int | None = None,
                 asked_at: float | None = None, told: Callable[[str], None] | None = None) -> Work:
        """Answer from the current cache and the blocks retrieval brings back. remember: the
        exchange stays in the text window; otherwise the stream is left exactly as it was (an
        evaluator's questions must not see each other). max_tokens: at most the configured
        answer tokens; asked_at: the perf_counter() time the question came (its wait for the
        engine counts in its time to first token), else now; told: given the answer's new text as
        it is generated (whole characters; the answer event's text is the whole answer). Returns
        [error events..., answer]."""
        ids = self.question_ids(question)
        max_tokens = self.config.answer_tokens if max_tokens is None else min(max_tokens, self.config.answer_tokens)
        saved = None if remember else (self.stepper.snapshot(), self.pending)
        t0 = time.perf_counter() if asked_at is None else asked_at
        chat = self.chat
        embeds = self.adapter.embed_ids(self.pending + chat.user_open + ids + chat.turn_close + chat.assistant)
        retrieved = []
        if self.offloaded is not None and self.offloaded.can_retrieve:
            retrieved = self.offloaded.retrieve(probe(self.stepper, embeds))
            self.stepper.resync()  # later tokens moved up past the retrieved slots
        builder = self.stepper.builder()
        builder.text(embeds, Segment.TEXT, self.now)
        self.pending = []
        result = yield builder
        self.stepper.sync()
        ttft = (time.perf_counter() - t0) * 1000
        read = self._teller(told) if told else None
        answer = yield from self._generate(result, max_tokens, self.now, read)
        if read is not None:
            read(answer, final=True)
        self.stepper.sync()
        total = (time.perf_counter() - t0) * 1000
        if saved is None:
            self.stepper.evict(self.now)
            self.stepper.sync()
        else:
            self.stepper.restore(saved[0])
            self.pending = saved[1]
        text = self.adapter.decode(answer)
        return self._store_errors() + [Event("answer", self.now, text, {
            "question": question.strip(), "ttft_ms": round(ttft, 2), "latency_ms": round(total, 2),
            "tokens": len(answer), "retrieved": [[round(a, 3), round(b, 3)] for a, b in retrieved]})]

    def _teller(self, told: Callable[[str], None]) -> Callable[..., None]:
        """-> read(ids so far, final=False), which tells `told` the text they add: up to the last whole
        character while more may come (a trailing replacement character may be one whose bytes are still
        coming), all of it once final. So what `told` is given adds up to the answer's text."""
        shown = ""

        def read(ids: list[int], final: bool = False) -> None:
            nonlocal shown
            text = self.adapter.decode(ids)
            text = text if final else text.rstrip("\ufffd")
            if len(text) > len(shown) and text.startswith(shown):
                told(text[len(shown):])
                shown = text
        return read

    def _metrics(self, chunk: Chunk, times: dict[str, float], num_new: int, num_narrated: int, moved: int,
                 compression: dict) -> Event:
        table = self.cache.table
        data = {
            "chunk": chunk.index,
            "kv_tokens": table.counts(),
            "kv_capacity": self.capacity,
            "kv_mb": round(self.cache.nbytes / 2**20, 1),
            "max_position": int(table.pos.max()),
            **{k: round(v, 2) for k, v in times.items()},
            "tokens_in": num_new,
            "tokens_out": num_narrated,
            "rerotated": moved,
            **compression,
            "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        }
        if self.offloaded is not None:
            stats = self.offloaded.store.stats
            data["offload"] = {"blocks": len(self.offloaded.store), "ram_mb": round(stats.ram_bytes / 2**20, 1),
                               "disk_mb": round(stats.disk_bytes / 2**20, 1), "dropped": stats.dropped,
                               "skipped": stats.skipped}
        if self.cache.key_buffer.is_cuda:
            # one read of the allocator's counters (memory_allocated() flattens all of them per call, ~0.3 ms)
            allocated = torch.cuda.memory_stats_as_nested_dict()["allocated_bytes"]["all"]
            data["gpu_mem_mb"] = round(allocated["current"] / 2**20, 1)
            data["gpu_peak_mb"] = round(allocated["peak"] / 2**20, 1)
        return Event("metrics", chunk.t_end, None, data)
