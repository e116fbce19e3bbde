"""Eviction policies: which cached tokens stay."""

from dataclasses import dataclass

import torch

from livesight.kvcache.table import Segment, TokenTable


@dataclass(frozen=True)
class WindowPolicy:
    """StreamingVLM's policy: the sink, the last `vision_window_s` seconds of vision, and the
    first `text_sink` plus the last `text_window` text tokens."""

    vision_window_s: float = 16.0
    text_sink: int = 512
    text_window: int = 512

    def __post_init__(self) -> None:
        if self.vision_window_s <= 0:
            raise ValueError(f"vision window must be positive seconds, got {self.vision_window_s}")
        if self.text_sink < 0 or self.text_window < 0:
            raise ValueError(f"text sink and window must be >= 0, got {self.text_sink}, {self.text_window}")

    def keep(self, table: TokenTable, now_s: float) -> torch.Tensor:
        """(n,) bool: which tokens stay once the stream has reached `now_s` seconds."""
        keep = table.segment == Segment.SINK
        keep |= (table.segment == Segment.VISION) & (table.t >= now_s - self.vision_window_s - 1e-9)
        is_text = table.segment == Segment.TEXT
        text_rank = torch.full_like(table.seq, -1)
        text_seq = table.seq[is_text]
        order = torch.argsort(torch.argsort(text_seq))  # rank of each text token in stream order
        text_rank[is_text] = order
        num_text = int(is_text.sum())
        keep |= is_text & ((text_rank < self.text_sink) | (text_rank >= num_text - self.text_window))
        return keep

    def caps(self, tokens_per_chunk: int, chunk_s: float) -> dict[str, int]:
        """The most tokens the vision and text segments hold between steps."""
        chunks = int(self.vision_window_s / chunk_s + 1e-9)
        return {"vision": max(chunks, 1) * tokens_per_chunk, "text": self.text_sink + self.text_window}


class KeepAll:
    """The dense cache: nothing is evicted (the reference the windowed policies are measured against)."""

    def keep(self, table: TokenTable, now_s: float) -> torch.Tensor:
        return torch.ones(len(table), dtype=torch.bool)
