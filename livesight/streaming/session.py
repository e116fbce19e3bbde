"""The engine: a stream of chunks and questions in, caption/answer/metrics events out.

Per chunk: encode its frames, prefill [pending text | vision group | assistant prefix], narrate
greedily, then evict by the policy and compact the cache once (re-rotating moved keys). The last
generated token and the turn's closing tokens are fed at the start of the next step, so no
forward pass is spent on them alone.
"""

import gc
import time

import numpy as np
import psutil
import torch

from livesight.errors import InputError
from livesight.kvcache import Segment, TokenTable, WindowPolicy
from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import GB, SessionConfig
from livesight.streaming.events import Event
from livesight.streaming.models import free_bytes
from livesight.streaming.retrieval import Retriever
from livesight.streaming.stepper import CacheStepper, StageClock
from livesight.vision.preprocess import fit_size
from livesight.vision.prune import TokenPruner

PENDING_MAX = 8  # the last generated token plus the closing "<|im_end|>\n"
STOP_CHECK_EVERY = 4  # decode steps between reads of the generated ids (a read waits for the GPU)


def check_fits(adapter: QwenVLAdapter, capacity: int, tokens_per_chunk: int, config: SessionConfig) -> int:
    """The bytes this session will allocate on its device (cache, and the offloaded blocks' representatives);
    raises InputError naming the settings when they exceed what the device has free."""
    width = adapter.num_layers * adapter.num_kv_heads * adapter.head_dim
    element = adapter.dtype.itemsize
    cache = capacity * (2 * width + adapter.num_layers) * element  # keys, values, key bias
    retrieval = config.retrieval
    budget = (retrieval.ram_gb + retrieval.disk_gb) * GB if retrieval.enabled else 0
    representatives = budget // (2 * width * tokens_per_chunk * element) * width * 4  # float32, per block
    device = adapter.device
    free = free_bytes(device)
    if cache + representatives > 0.9 * free:
        raise InputError(
            f"these settings need {cache / GB:.2f} GB for the cache ({capacity:,} tokens: vision window "
            f"{config.vision_window_s:g} s, text {config.text_sink} + {config.text_window} tokens, retrieval top "
            f"{retrieval.top_k if retrieval.enabled else 0}) and {representatives / GB:.2f} GB for offloaded blocks' "
            f"representatives (offload budgets {retrieval.ram_gb:g} + {retrieval.disk_gb:g} GB), more than the "
            f"{free / GB:.1f} GB free on {device}: lower --vision-window, --text-sink, --text-window, "
            f"--retrieve-top-k or the offload budgets")
    return cache + representatives


class Session:
    def __init__(self, adapter: QwenVLAdapter, config: SessionConfig, frame_size: tuple[int, int]):
        """frame_size: (height, width) of the source; every chunk is resized to one patch-aligned size."""
        self.adapter, self.config = adapter, config
        self.policy = WindowPolicy(config.vision_window_s, config.text_sink, config.text_window)
        max_pixels = config.max_pixels or adapter.loaded.max_pixels
        self.size = fit_size(*frame_size, max_pixels, adapter.patch * adapter.merge)
        self.grid = adapter.merged_grid(self.size, config.frames_per_chunk)
        compress = config.compression
        self.encoder = adapter.vision_encoder(self.size, config.frames_per_chunk,
                                              compress.reuse_threshold if compress.reuse else None,
                                              None if config.cuda_graphs else False)
        enc = self._encode
        self._chunk_open, self._chunk_close = enc("<|im_start|>user\n<|vision_start|>"), enc("<|vision_end|><|im_end|>\n")
        self._assistant, self._turn_close = enc("<|im_start|>assistant\n"), enc("<|im_end|>\n")
        self._user_open = enc("<|im_start|>user\n")
        tok = adapter.tokenizer
        self.stop_ids = {i for i in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id,
                                     tok.convert_tokens_to_ids("<|endoftext|>")) if i is not None}
        self.num_wrapper = len(self._chunk_open) + len(self._chunk_close)
        self.tokens_per_chunk = self.num_wrapper + int(np.prod(self.grid))
        sink_ids = enc(f"<|im_start|>system\n{config.system_prompt}<|im_end|>\n")
        caps = self.policy.caps(self.tokens_per_chunk, config.chunk_seconds)
        chunk_step = PENDING_MAX + self.tokens_per_chunk + len(self._assistant) + config.narrate_tokens
        question_step = (PENDING_MAX + len(self._user_open) + config.max_question_tokens + len(self._turn_close)
                         + len(self._assistant) + config.answer_tokens)
        retrieval = config.retrieval
        slots = retrieval.top_k * self.tokens_per_chunk if retrieval.enabled else 0
        self.capacity = len(sink_ids) + caps["vision"] + caps["text"] + slots + max(chunk_step, question_step)
        check_fits(adapter, self.capacity, self.tokens_per_chunk, config)
        self.stepper = CacheStepper(adapter, self.policy, self.capacity, self._offload if retrieval.enabled else None,
                                    config.cuda_graphs)
        self.cache = self.stepper.cache
        self.temporal_stride = adapter.temporal_stride(config.fps)
        self._sink_ids, self.retriever = sink_ids, None
        self.reset()
        # Python's full garbage collection walks every tracked object: about 400k once torch and
        # transformers are loaded, 40-180 ms, in the middle of whichever chunk triggers it. What
        # exists now (the model, the buffers) lives as long as the process; frozen, the collector skips it.
        gc.collect()
        gc.freeze()

    def reset(self) -> None:
        """Start a new stream here: empty cache, offload store and compression state, the sink
        prefilled again. Buffers and captured CUDA graphs stay (an evaluator runs thousands of
        short streams at one frame size)."""
        config = self.config
        self.close()
        self.stepper.reset()
        self.encoder.reset()
        self.retriever = Retriever(self.stepper, config.retrieval, self.tokens_per_chunk) \
            if config.retrieval.enabled else None
        compress = config.compression
        refresh_s = max(config.vision_window_s - config.chunk_seconds, config.chunk_seconds)
        self.pruner = TokenPruner(compress.keep_ratio, compress.keep_floor, compress.prune_threshold,
                                  refresh_s) if compress.prune else None
        self._errors_seen = 0
        self.now, self.num_chunks, self.pending = 0.0, 0, []
        builder = self.stepper.builder()
        builder.text(self.adapter.embed_ids(self._sink_ids), Segment.SINK, 0.0)
        self.stepper.forward(builder)

    def _encode(self, text: str) -> list[int]:
        return self.adapter.tokenizer.encode(text, add_special_tokens=False)

    def _offload(self, evicted: TokenTable, index: torch.Tensor) -> None:
        """Each vision chunk leaving the window becomes one offloaded block, unless pruning left
        none of its visual tokens (a block of delimiters shows nothing to retrieve)."""
        is_vision = evicted.segment == Segment.VISION
        for group in evicted.group[is_vision].unique().tolist():
            mine = is_vision & (evicted.group == group)
            if int(mine.sum()) <= self.num_wrapper:
                continue
            t0 = float(evicted.t[mine].min())
            self.retriever.offload(index[mine], (t0, t0 + self.config.chunk_seconds))

    def _store_errors(self) -> list[Event]:
        """Offload trouble (a deleted session folder, an unreadable block) as error events, once each."""
        if self.retriever is None:
            return []
        errors = self.retriever.store.stats.errors
        new, self._errors_seen = errors[self._errors_seen:], len(errors)
        return [Event("error", self.now, text) for text in new]

    def close(self) -> None:
        """Remove the session's offload folder now if the session made it (else when collected)."""
        if self.retriever is not None:
            self.retriever.close()

    def _generate(self, logits: torch.Tensor, max_tokens: int, t: float) -> list[int]:
        """Greedy decode. Each step is fed the previous step's argmax straight from the device, so the
        host prepares a step while the GPU still runs the one before; the ids are read every
        STOP_CHECK_EVERY tokens, and steps taken past a stop token are undone. Every token but the
        last is fed now, the last with the closing tokens next step."""
        start = self.cache.length
        ids: list[int] = []
        unread: list[torch.Tensor] = []  # argmaxes on the device, not yet read
        token = logits.argmax()
        while len(ids) + len(unread) < max_tokens:
            unread.append(token)
            if len(ids) + len(unread) < max_tokens:
                builder = self.stepper.builder()
                builder.text(self.adapter.embed_tokens(token[None]), Segment.TEXT, t)
                token = self.stepper.forward(builder).argmax()
            if len(unread) == STOP_CHECK_EVERY or len(ids) + len(unread) == max_tokens:
                new, unread = torch.stack(unread).tolist(), []
                stop = next((i for i, x in enumerate(new) if x in self.stop_ids), None)
                if stop is not None:  # the stop token and what followed it were fed: take them back
                    ids += new[:stop]
                    self.stepper.truncate(start + len(ids))
                    self.pending = list(self._turn_close)
                    return ids
                ids += new
        self.pending = ids[-1:] + self._turn_close
        return ids

    def add_chunk(self, chunk: Chunk) -> list[Event]:
        """Encode, prune, prefill and narrate one chunk; returns [caption?, metrics]."""
        if chunk.frames.shape[0] != self.config.frames_per_chunk:
            raise ValueError(f"chunk {chunk.index} has {chunk.frames.shape[0]} frames, the session takes "
                             f"{self.config.frames_per_chunk} (fps x chunk seconds)")
        clock = StageClock(self.cache.key_buffer.device)
        frames = torch.from_numpy(np.ascontiguousarray(chunk.frames))
        visual, encoded = self.adapter.encode_frames(frames, self.size, self.encoder)
        clock.lap("vision_ms")
        kept = self.pruner.select(visual, chunk.t_start) if self.pruner is not None else None
        clock.lap("prune_ms")
        embed = self.adapter.embed_ids
        builder = self.stepper.builder()
        if self.pending:
            builder.text(embed(self.pending), Segment.TEXT, self.now)
            self.pending = []
        builder.vision(embed(self._chunk_open), visual if kept is None else visual[kept], self.grid,
                       embed(self._chunk_close), chunk.t_start, self.temporal_stride, kept)
        if self.config.narrate:
            builder.text(embed(self._assistant), Segment.TEXT, chunk.t_start)
        num_new = builder.num_tokens
        logits = self.stepper.forward(builder)
        clock.lap("prefill_ms")
        vision_tokens = {"grid": encoded.num_tokens, "encoded": encoded.num_encoded,
                         "kept": encoded.num_tokens if kept is None else kept.numel()}
        narration = self._generate(logits, self.config.narrate_tokens, chunk.t_start) if self.config.narrate else []
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

    def ask(self, question: str, remember: bool = True, max_tokens: int | None = None) -> list[Event]:
        """Answer from the current cache and the blocks retrieval brings back. remember: the
        exchange stays in the text window; otherwise the session is left exactly as it was (an
        evaluator's questions must not see each other). max_tokens: at most the configured
        answer tokens. -> [error events..., answer]."""
        ids = self._encode(question.strip())
        if not ids:
            raise InputError("empty question: type a question, or give --ask SECONDS:question")
        if len(ids) > self.config.max_question_tokens:
            raise InputError(f"question too long: {len(ids)} tokens, at most {self.config.max_question_tokens}")
        max_tokens = self.config.answer_tokens if max_tokens is None else min(max_tokens, self.config.answer_tokens)
        saved = None if remember else (self.stepper.snapshot(), self.pending)
        t0 = time.perf_counter()
        embeds = self.adapter.embed_ids(self.pending + self._user_open + ids + self._turn_close + self._assistant)
        retrieved = self.retriever.retrieve(embeds) if self.retriever is not None else []
        builder = self.stepper.builder()
        builder.text(embeds, Segment.TEXT, self.now)
        self.pending = []
        logits = self.stepper.forward(builder)
        self.stepper.sync()
        ttft = (time.perf_counter() - t0) * 1000
        answer = self._generate(logits, max_tokens, self.now)
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
        if self.retriever is not None:
            stats = self.retriever.store.stats
            data["offload"] = {"blocks": len(self.retriever.store), "ram_mb": round(stats.ram_bytes / 2**20, 1),
                               "disk_mb": round(stats.disk_bytes / 2**20, 1), "dropped": stats.dropped,
                               "skipped": stats.skipped}
        if self.cache.key_buffer.is_cuda:
            data["gpu_mem_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            data["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return Event("metrics", chunk.t_end, None, data)
