"""What training samples hold, and their batches, made in worker processes.

A sample is a moment of a world's stream (plan), laid out as the engine would hold it (layouts.py):
- the moment: mostly anywhere in the hour, sometimes the stream's first seconds (a window not full);
- narration on (the window's narrations are targets) or off (the evaluators' setting);
- retrieved blocks (4, 8 or 16) after the sink, in more than half: the block of the second a question
  asks about, others near it in time or sharing its clock digits (what a retrieval would also bring
  back), and others at random;
- a four-option question about the present, a second in the window, or a retrieved second;
- pruning (at keep ratios 1, 0.5, 0.25) in some;
- with `questions` > 1, up to that many questions in a row (a remembered conversation), the later ones
  about the present, the window or a retrieved second.
"""

from dataclasses import dataclass

import numpy as np
import torch

from livesight.train.layouts import Layout, LayoutMaker, Plan
from livesight.vision.world import BACKGROUNDS, COLOURS, SHAPES, TEXTS, World
from livesight.vision.world_tasks import TASKS, question

WINDOW = 16  # the engine's default vision window, in chunks
NEAR = (1, 2, 3, 10, 60, 120, 600, 1200)  # seconds: blocks that share a retrieved second's clock digits or time


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L): vision tokens as -(1 + slot * grid_tokens + row), slots over the whole batch
    pos: torch.Tensor  # (3, B, L)
    weight: torch.Tensor  # (B, L)
    chunks: torch.Tensor  # (slots, 2): (world index, second)
    spans: list[list[tuple[int, int]]]  # per sample, its slots' token spans, in the batch's slot order
    probes: list[tuple[int, int] | None]
    targets: list[int | None]  # per sample, the index into its spans of the block asked about
    answer_at: torch.Tensor  # (B,) the first question's answer's first token, -1 where none
    labels: torch.Tensor  # (slots, LABELS) what each chunk shows (labels()), -100 where its two frames differ


LABELS = (len(BACKGROUNDS), 6, 10, 6, 10, *[len(COLOURS) + 1] * len(SHAPES), len(TEXTS) + 1)  # classes of each


def labels(world: World, second: int, fps: float = 2.0) -> list[int]:
    """What chunk `second` shows, as class indices: background; the clock's digits (minutes' tens and
    ones, seconds' tens and ones); each shape kind's colour (0: absent); the text (0: none). Where the
    chunk's frames disagree, -100 (not taught)."""
    rows = []
    for t in (second, second + 1 / fps):
        state = world.state(t)
        minutes, seconds = divmod(int(t), 60)
        colour = {s["kind"]: list(COLOURS).index(s["colour"]) + 1 for s in state["shapes"]}
        rows.append([list(BACKGROUNDS).index(state["background"]), minutes // 10, minutes % 10, seconds // 10,
                     seconds % 10, *[colour.get(kind, 0) for kind in SHAPES],
                     0 if state["text"] is None else TEXTS.index(state["text"]) + 1])
    return [a if a == b else -100 for a, b in zip(*rows)]


def collate(layouts: list[Layout], grid_tokens: int, pad_id: int, worlds: list[World]) -> Batch:
    n = max(len(lay.ids) for lay in layouts)
    ids = torch.full((len(layouts), n), pad_id, dtype=torch.int64)
    pos = torch.zeros(3, len(layouts), n, dtype=torch.int64)
    weight = torch.zeros(len(layouts), n)
    answer_at = torch.full((len(layouts),), -1)
    chunks, offset = [], 0
    for b, lay in enumerate(layouts):
        k = len(lay.ids)
        ids[b, :k] = torch.where(lay.ids < 0, lay.ids - offset * grid_tokens, lay.ids)
        pos[:, b, :k], weight[b, :k] = lay.pos, lay.weight
        if lay.probe is not None:
            answer_at[b] = lay.probe[1]
        chunks += lay.chunks
        offset += len(lay.chunks)
    return Batch(ids, pos, weight, torch.tensor(chunks, dtype=torch.int64),
                 [lay.spans for lay in layouts], [lay.probe for lay in layouts], [lay.target for lay in layouts],
                 answer_at, torch.tensor([labels(worlds[w], s) for w, s in chunks], dtype=torch.int64))


def plan(rng: np.random.Generator, worlds: list[World], seconds: int, questions: int = 1,
         raw_share: float = 0.0) -> Plan:
    world = int(rng.integers(len(worlds)))
    now = int(rng.integers(1, WINDOW + 8)) if rng.random() < 0.15 else int(rng.integers(WINDOW + 1, seconds + 1))
    narrate = bool(rng.random() < 0.5)
    past = max(now - WINDOW, 0)  # seconds before the window: what retrieval brings back
    k = int(rng.choice([4, 8, 16], p=[0.3, 0.5, 0.2])) if past > 4 and rng.random() < 0.6 else 0
    asked = not narrate or rng.random() < 0.75
    kind = str(rng.choice(["now", "window", "past"], p=[0.2, 0.2, 0.6] if k else [0.5, 0.5, 0.0]))
    q, retrieved = None, []
    for _ in range(20 if asked else 0):
        if kind == "past":
            second = int(rng.integers(past))
        elif kind == "window" and now >= 3:
            second = int(rng.integers(max(now - WINDOW, 0), now - 1))
        else:
            second = now - 1
        first = str(rng.choice(TASKS))
        for task in [first] + [t for t in TASKS if t != first]:
            q = q or question(worlds[world], now, second, task, rng)
        if q is not None:
            break
    if k:
        target = q["fact_second"] if q is not None and q["fact_second"] < past else None
        near = [] if target is None else sorted({target + s * d for d in NEAR for s in (-1, 1)} & set(range(past)))
        chosen = set() if target is None else {target}
        chosen |= set(rng.permutation(near)[:(k - 1) // 2].tolist()) if near else set()
        while len(chosen) < min(k, past):
            chosen.add(int(rng.integers(past)))
        retrieved = sorted(chosen)
    if q is not None:
        _wording(q, rng, raw_share)
    keep = None if rng.random() < 0.6 else float(rng.choice([1.0, 0.5, 0.25]))
    more = []
    for _ in range(int(rng.integers(questions)) if q is not None and questions > 1 else 0):
        later = _later_question(rng, worlds[world], now, retrieved, raw_share)
        if later is not None:
            more.append(later)
    return Plan(world, now, narrate, retrieved, q, keep, more)


def _wording(q: dict, rng: np.random.Generator, raw_share: float) -> None:
    """How the question is put: with options (StreamingBench's prompt), without (its open prompt), or, a
    `raw_share` of those without, as a user types it (no prompt around it). The draw for raw is only made
    when raw_share > 0, so runs without it draw what they always drew."""
    q["open"] = bool(rng.random() < 0.3)
    q["raw"] = bool(q["open"] and raw_share > 0 and rng.random() < raw_share)


def _later_question(rng: np.random.Generator, world: World, now: int, retrieved: list[int],
                    raw_share: float = 0.0) -> dict | None:
    """A further question at `now`: about the present, a second of the window or a retrieved second."""
    kinds = ["now", "window"] + (["retrieved"] if retrieved else [])
    kind = str(rng.choice(kinds))
    for _ in range(10):
        if kind == "retrieved":
            second = int(rng.choice(retrieved))
        elif kind == "window" and now >= 3:
            second = int(rng.integers(max(now - WINDOW, 0), now - 1))
        else:
            second = now - 1
        q = question(world, now, second, str(rng.choice(TASKS)), rng)
        if q is not None:
            _wording(q, rng, raw_share)
            return q
    return None


class BatchStream(torch.utils.data.IterableDataset):
    """Batches for steps start, start + 1, ... of a run, each from (seed, step) alone; worker w of W
    makes the steps = w mod W (the loader takes them in turn, so they arrive in step order)."""

    def __init__(self, tokenizer, seeds: list[int], changed: torch.Tensor, config, seed: int, batch: int,
                 steps: int, workers: int, grid: tuple[int, int, int], temporal_stride: int, questions: int = 1,
                 choice_reply: str = "text", raw_share: float = 0.0):
        self.args = (tokenizer, seeds, changed, config, grid, temporal_stride, choice_reply)
        self.seed, self.batch, self.steps, self.workers, self.start = seed, batch, steps, workers, 0
        self.questions, self.raw_share = questions, raw_share
        self.pad_id = tokenizer.pad_token_id

    def batch_at(self, maker: LayoutMaker, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        plans = [plan(rng, maker.worlds, maker.changed.shape[1], self.questions, self.raw_share)
                 for _ in range(self.batch)]
        return collate([maker.make(p, rng) for p in plans], maker.grid_tokens, self.pad_id, maker.worlds)

    def __iter__(self):
        tokenizer, seeds, changed, config, grid, stride, choice_reply = self.args
        maker = LayoutMaker(tokenizer, [World(s) for s in seeds], changed, config, grid, stride,
                            choice_reply=choice_reply)
        info = torch.utils.data.get_worker_info()
        index, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for step in range(self.start + index, self.steps, count):
            yield self.batch_at(maker, step)

    def batches(self, start: int):
        self.start = start
        if self.workers == 0:
            return iter(self)
        return iter(torch.utils.data.DataLoader(self, batch_size=None, num_workers=self.workers, prefetch_factor=4,
                                                persistent_workers=False))
