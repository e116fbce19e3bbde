"""toy-vlm's DuoAttention samples (train/duo.py's source): questions about the worlds it was trained on
(seeds TRAIN_SEED_BASE and up; evaluation sets use seeds below it), drawn as training draws a sample
(train/batches.py's plan) and laid out exactly as the engine holds its cache (train/layouts.py): the system
prompt (the stream's first tokens: a streaming head's sink), the retrieved blocks right after it, the kept
window, then the question step.

- Draw k comes from (seed, k) alone; a draw that asks nothing (a narration-only sample) is skipped.
- The closing tokens are the question step's (Layout.probe): its last token's hidden state predicts the
  answer's first token. The sequence ends with them (what follows cannot change them).
- The tower runs on the sample's chunks (frames rendered once, train/frames.py) and its tokens fill the
  vision slots, as in training (train/toy.py's Trainer.forward); the language model runs with M-RoPE positions.
- Each token's engine step (the system prompt, a chunk, the question; any other token alone, as a decode
  step) bounds what a streaming head sees: the `recent` tokens before its step and the step's own
  (duo.streaming_mask).
"""

from collections import Counter
from typing import Iterator

import numpy as np
import torch

from livesight.streaming.config import SessionConfig
from livesight.train.batches import WINDOW, collate, plan
from livesight.train.config import TRAIN_SEED_BASE
from livesight.train.duo import Sample
from livesight.train.duo_config import DuoConfig, VisualData
from livesight.train.frames import render_bank
from livesight.train.layouts import Layout, LayoutMaker, Plan
from livesight.train.toy_model import (GRID, MAX_PIXELS, SOURCE_SIZE, TEMPORAL_STRIDE, embed_with_vision, load_saved,
                                       toy_tokenizer, vision_tokens)
from livesight.vision.world import World
from livesight.weights import TOY_VLM_FOLDER


def step_starts(num_tokens: int, steps: list[tuple[int, int]]) -> torch.Tensor:
    """(num_tokens,) the first token of each token's step: those of `steps` ([a, b) spans), else itself."""
    starts = torch.arange(num_tokens)
    for a, b in steps:
        starts[a:b] = a
    return starts


def asked_about(question: dict, now: int) -> str:
    """Where the second a question names lies: now (the latest chunk), in the window, or before it (a
    retrieved block)."""
    if question["age_s"] == 0:
        return "now"
    return "window" if question["fact_second"] >= now - WINDOW else "retrieved"


class VisualSource:
    name = "toy-vlm"

    def __init__(self, data: VisualData, config: DuoConfig, model=None, session: SessionConfig | None = None,
                 workers: int = 2):
        """model: toy-vlm as training builds it (toy_model.load_saved); None: the package's weights.
        session: the engine's settings whose cache the samples lay out (None: its defaults)."""
        self.model = (load_saved(TOY_VLM_FOLDER) if model is None else model).eval()
        self.language_model = self.model.model.language_model
        self.seeds = list(range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + data.worlds))
        self.bank = render_bank(self.seeds, data.seconds, "cpu", MAX_PIXELS, SOURCE_SIZE, workers=workers)
        self.tokenizer = toy_tokenizer()
        self.maker = LayoutMaker(self.tokenizer, [World(s) for s in self.seeds], self.bank.changed,
                                 session or SessionConfig(), GRID, TEMPORAL_STRIDE)
        self.seed, self.seconds = config.seed, data.seconds
        self.settings = {"worlds": data.worlds, "seconds": data.seconds}
        self.asked: list[tuple[Plan, int]] = []  # each sample's plan and tokens, as it was yielded

    def draws(self) -> Iterator[tuple[Plan, Layout]]:
        """The samples that ask a question, in draw order: (plan, layout)."""
        for k in range(1 << 31):
            rng = np.random.default_rng([self.seed, k])
            drawn = plan(rng, self.maker.worlds, self.seconds)
            layout = self.maker.make(drawn, rng)
            if layout.probe is not None:
                yield drawn, layout

    def sample(self, layout: Layout) -> Sample:
        """The layout up to its question step's end, embedded as the model sees it."""
        end = layout.probe[1]
        batch = collate([layout], self.maker.grid_tokens, self.tokenizer.pad_token_id, self.maker.worlds)
        with torch.no_grad():
            visual = vision_tokens(self.model, self.bank.chunk_frames(batch.chunks))
            embeds = embed_with_vision(self.model, batch.ids[:, :end], visual)
        steps = [(0, len(self.maker.system)), *layout.spans, layout.probe]
        return Sample({"inputs_embeds": embeds, "position_ids": batch.pos[:, :, :end], "use_cache": False},
                      layout.probe, step_starts(end, steps))

    def samples(self) -> Iterator[Sample]:
        self.asked = []
        for drawn, layout in self.draws():
            self.asked.append((drawn, layout.probe[1]))
            yield self.sample(layout)

    @property
    def data(self) -> dict:
        """What the samples yielded so far were."""
        tokens = [n for _, n in self.asked] or [0]
        return {"samples": len(self.asked),
                "what": "toy-vlm's visual recall questions about its training worlds, laid out as the engine holds "
                        "its cache (train/duo_visual.py), up to the question step",
                "world_seeds": [self.seeds[0], self.seeds[-1]], "seconds": self.seconds, "draw_seed": self.seed,
                "tasks": dict(Counter(p.question["task"] for p, _ in self.asked)),
                "asked_about": dict(Counter(asked_about(p.question, p.now) for p, _ in self.asked)),
                "with_options": sum(not p.question["open"] for p, _ in self.asked),
                "with_retrieved_blocks": sum(bool(p.retrieved) for p, _ in self.asked),
                "tokens_min_mean_max": [min(tokens), round(float(np.mean(tokens)), 1), max(tokens)]}
