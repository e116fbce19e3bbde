"""Training sequences laid out as the engine lays out its cache at inference.

A sample is the stream of one world at a moment `now` (whole seconds, after chunk now - 1): what the
engine keeps then, in its order and with the positions it assigns, followed by the step it takes next
(a question) or with the window's own narrations as the targets:

    system prompt | retrieved blocks | kept text and vision in time order | question turn | answer | ...

- positions come from the engine's own StepBuilder (streaming/tokens.py), fed in the order compaction
  leaves the cache: the sink, the retrieved slots right after it, then the kept tokens in time order,
  contiguous (a slide closes every gap);
- kept: the last `vision_window_s` seconds of vision, the first `text_sink` and last `text_window`
  text tokens (kvcache/policy.py's rule), the narration turns as the engine writes them (at most
  `narrate_tokens` tokens, then the turn is closed);
- pruned chunks keep only the cells that changed (and what a keep ratio allows), at their full-grid
  positions; every `refresh` chunks one is kept whole, as the pruner refreshes.

Vision tokens appear in `ids` as -(1 + slot * grid_tokens + row): row `row` of chunk `slot`, filled
from the tower's output when the batch is run.
"""

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from livesight.eval.questions import LETTERS, lettered
from livesight.eval.streamingbench import CHOICE, OPEN
from livesight.kvcache import Segment
from livesight.models.chat import qwen_chat_ids
from livesight.streaming.config import SessionConfig
from livesight.streaming.tokens import StepBuilder
from livesight.vision.world import World
from livesight.vision.world_tasks import chunk_narration


@dataclass
class Layout:
    ids: torch.Tensor  # (n,) int64: token ids, vision tokens as -(1 + slot * grid_tokens + row)
    pos: torch.Tensor  # (3, n) M-RoPE positions
    weight: torch.Tensor  # (n,) float32: the loss weight of predicting ids[i] at i - 1
    chunks: list[tuple[int, int]]  # (world index, second) of each vision slot
    spans: list[tuple[int, int]]  # each slot's tokens [a, b) in the sequence
    probe: tuple[int, int] | None = None  # the question step's tokens (what the engine's probe runs)
    is_choice: bool = False  # the question has options
    target: int | None = None  # the slot of the second a question names ("when the clock read ...")


@dataclass
class Plan:
    """What one sample holds."""
    world: int  # index into the maker's worlds
    now: int  # whole seconds: chunks 0 .. now - 1 have been seen
    narrate: bool
    retrieved: list[int]  # seconds of retrieved blocks (any order; laid out in time order)
    question: dict | None  # world_tasks.question's dict, asked at `now`
    keep: float | None  # pruning: the most of a chunk's tokens kept (None: no pruning)
    more: list[dict] = field(default_factory=list)  # later questions, asked after the first was answered


class LayoutMaker:
    def __init__(self, tokenizer, worlds: list[World], changed: torch.Tensor, config: SessionConfig,
                 grid: tuple[int, int, int], temporal_stride: int, answer_weight: float = 10.0,
                 choice_reply: str = "text"):
        """changed: (worlds, seconds, cells) bool, the cells of each chunk that changed (frames.py).
        choice_reply: what a question with options is answered with: "letter" (the option's letter, as
        StreamingBench asks) or "text" (the option's text, which the evaluator's robust score reads as
        its letter)."""
        assert choice_reply in ("letter", "text"), choice_reply
        self.choice_reply = choice_reply
        self.worlds, self.changed, self.config = worlds, changed, config
        self.chat = qwen_chat_ids(tokenizer)
        self.system = self.chat.system(config.system_prompt)
        self.grid, self.stride, self.grid_tokens = grid, temporal_stride, int(np.prod(grid))
        self.answer_weight = answer_weight
        self.stop = self.chat.turn_close[0]
        self.narration = functools.lru_cache(maxsize=1 << 16)(self._narration)

    def _narration(self, world: int, second: int) -> tuple[tuple[int, ...], bool]:
        """-> (the tokens the engine keeps of chunk `second`'s narration, whether it ended by itself)."""
        ids = self.chat.encode(chunk_narration(self.worlds[world], second, self.config.fps,
                                               self.config.chunk_seconds))
        limit = self.config.narrate_tokens
        return tuple(ids[:limit]), len(ids) < limit

    def turn(self, world: int, c: int) -> list[int]:
        """Chunk c's narration turn as the cache holds it once the next chunk came."""
        return self.chat.assistant + list(self.narration(world, c)[0]) + self.chat.turn_close

    @functools.cache
    def turn_starts(self, world: int) -> np.ndarray:
        """(seconds + 1,): the text tokens of the turns before each chunk (ranks in the text policy)."""
        lengths = [len(self.turn(world, c)) for c in range(self.changed.shape[1])]
        return np.concatenate([[0], np.cumsum(lengths)])

    def kept_text(self, world: int, now: int) -> dict[int, list[int]]:
        """{chunk: the tokens of its narration turn the text policy keeps at `now`} (the first text_sink
        and last text_window text tokens; the last turn's close is still pending, not in the cache)."""
        starts = self.turn_starts(world)
        total = int(starts[now]) - len(self.chat.turn_close)
        sink_end, window_start = min(self.config.text_sink, total), max(total - self.config.text_window, 0)
        chunks = set(range(int(np.searchsorted(starts, sink_end, "left"))))
        chunks |= set(range(max(int(np.searchsorted(starts, window_start, "right")) - 1, 0), now))
        kept = {}
        for c in sorted(chunks):
            ids = self.turn(world, c)[:total - int(starts[c])]
            ranks = range(int(starts[c]), int(starts[c]) + len(ids))
            kept[c] = [i for i, r in zip(ids, ranks) if r < sink_end or r >= window_start]
        return {c: ids for c, ids in kept.items() if ids}

    def cells(self, world: int, second: int, keep: float | None, rng: np.random.Generator) -> torch.Tensor | None:
        """The grid rows a pruned chunk keeps (None: all): the changed cells, at most `keep` of the grid
        (a random choice among them past that), at least one; every `refresh` chunks one is whole."""
        refresh = max(int(self.config.vision_window_s - self.config.chunk_seconds), 1)
        if keep is None or second % refresh == 0:
            return None
        moved = self.changed[world, second].nonzero().squeeze(1).numpy()
        cap = max(1, int(keep * self.grid_tokens))
        if moved.size > cap:
            moved = rng.choice(moved, cap, replace=False)
        if moved.size == 0:
            moved = rng.choice(self.grid_tokens, 1)
        return torch.from_numpy(np.sort(moved)).long()

    def make(self, plan: Plan, rng: np.random.Generator) -> Layout:
        chat, cfg = self.chat, self.config
        builder = StepBuilder(0, 0, 0)
        weights: list[torch.Tensor] = []
        chunks, spans = [], []

        def text(ids: list[int], segment: Segment, t: float, weight: list[float] | None = None) -> None:
            builder.text(torch.tensor(ids, dtype=torch.int64), segment, t)
            weights.append(torch.tensor(weight if weight is not None else [0.0] * len(ids)))

        def vision(second: int) -> None:
            slot, first = len(chunks), builder.num_tokens
            kept = self.cells(plan.world, second, plan.keep, rng)
            rows = torch.arange(self.grid_tokens) if kept is None else kept
            codes = -(1 + slot * self.grid_tokens + rows)
            builder.vision(torch.tensor(chat.chunk_open), codes, self.grid, torch.tensor(chat.chunk_close),
                           float(second), self.stride, kept)
            chunks.append((plan.world, second))
            spans.append((first, builder.num_tokens))
            weights.append(torch.zeros(builder.num_tokens - first))

        text(self.system, Segment.SINK, 0.0)
        for second in sorted(plan.retrieved):
            vision(second)
        window = set(range(max(plan.now - int(cfg.vision_window_s / cfg.chunk_seconds + 1e-9), 0), plan.now))
        said = self.kept_text(plan.world, plan.now) if plan.narrate else {}
        for c in sorted(window | set(said)):
            if c in window:
                vision(c)
            if c in said:
                text(said[c], Segment.TEXT, float(c), self._narration_weight(plan, c, said[c], window))
        probe = target = None
        # the first question, then any later ones as the exchanges a remembered conversation leaves in the
        # cache: the answer, its end of turn (the stop token the decoder met, then the rest of the close)
        pending = chat.turn_close if plan.narrate else []
        for k, q in enumerate([plan.question, *plan.more] if plan.question is not None else []):
            reply = q["options"][LETTERS.index(q["answer"])]  # the right option's text
            if q.get("raw"):  # as a user types it, no prompt around it
                prompt = q["question"]
            elif q.get("open"):  # asked with no options: the answer is the word itself
                prompt = OPEN.format(question=q["question"])
            else:
                prompt = CHOICE.format(question=q["question"], options="\n".join(lettered(q["options"])))
                reply = q["answer"] if self.choice_reply == "letter" else reply
            first = builder.num_tokens
            text(pending + chat.user_open + chat.encode(prompt) + chat.turn_close + chat.assistant, Segment.TEXT,
                 float(plan.now))
            if k == 0:  # the first question is the one the engine's probe scores blocks for
                probe = (first, builder.num_tokens)
                if q["age_s"] > 0:
                    target = next((i for i, (_, s) in enumerate(chunks) if s == q["fact_second"]), None)
            answer = chat.encode(reply)
            text(answer + [self.stop], Segment.TEXT, float(plan.now), [self.answer_weight] * len(answer) + [1.0])
            pending = chat.turn_close[1:]
        ids, table = torch.cat(builder.embeds), builder.table()
        return Layout(ids, table.pos, torch.cat(weights).float(), chunks, spans, probe=probe, target=target,
                      is_choice=plan.question is not None and not plan.question.get("open"))

    def _narration_weight(self, plan: Plan, c: int, kept: list[int], window: set[int]) -> list[float]:
        """Loss on a window chunk's narration (and its end of turn) when the cache holds it whole and the
        chunk before it, as the engine had them when it narrated; else none."""
        said, ended = self.narration(plan.world, c)
        head = len(self.chat.assistant)
        n = head + len(said) + ended  # the turn's tokens up to its end-of-turn, if it ended by itself
        if kept[:n] != self.turn(plan.world, c)[:n] or len(kept) < n or not (c == 0 or c - 1 in window):
            return [0.0] * len(kept)
        return [0.0] * head + [1.0] * (n - head) + [0.0] * (len(kept) - n)
