"""What each cached token is: its segment, its place in the stream, its M-RoPE positions.

A *group* is a run of tokens that occupy one contiguous span of positions and are kept or evicted
together: a single text token, or a whole vision chunk with its delimiters. Positions stay
contiguous: groups sit back to back from position 0, so when a group leaves, every later group
moves down by the evicted group's extent.
"""

from dataclasses import dataclass
from enum import IntEnum

import torch


class Segment(IntEnum):
    SINK = 0
    RETRIEVED = 1
    VISION = 2
    TEXT = 3


@dataclass
class TokenTable:
    """Per-token records, in cache-buffer order. All tensors live on the CPU.

    segment: (n,) int64 Segment value; seq: (n,) int64 stream-wide insertion index (time order);
    group: (n,) int64 group id; pos: (3, n) int64 temporal/height/width positions;
    t: (n,) float64 stream seconds at which the token's content starts.
    """

    segment: torch.Tensor
    seq: torch.Tensor
    group: torch.Tensor
    pos: torch.Tensor
    t: torch.Tensor

    @classmethod
    def empty(cls) -> "TokenTable":
        i64 = torch.zeros(0, dtype=torch.int64)
        return cls(i64, i64.clone(), i64.clone(), torch.zeros(3, 0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64))

    def __len__(self) -> int:
        return self.seq.numel()

    def cat(self, other: "TokenTable") -> "TokenTable":
        return TokenTable(
            torch.cat([self.segment, other.segment]),
            torch.cat([self.seq, other.seq]),
            torch.cat([self.group, other.group]),
            torch.cat([self.pos, other.pos], dim=1),
            torch.cat([self.t, other.t]),
        )

    def select(self, index: torch.Tensor) -> "TokenTable":
        return TokenTable(self.segment[index], self.seq[index], self.group[index], self.pos[:, index], self.t[index])

    def next_position(self) -> int:
        """The first free position: positions are contiguous from 0."""
        return int(self.pos.max()) + 1 if len(self) else 0

    def counts(self) -> dict[str, int]:
        return {s.name.lower(): int((self.segment == s).sum()) for s in Segment}


def compaction_shift(pos: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """How far each kept token moves down so kept groups sit back to back from position 0.

    pos: (3, n) positions and group: (n,) ids of the kept tokens, in stream order (groups are
    consecutive runs). Returns delta: (n,) int64 >= 0; new positions are pos - delta.
    """
    if group.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    _, inverse = torch.unique_consecutive(group, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    start = torch.full((num_groups,), torch.iinfo(torch.int64).max).scatter_reduce(0, inverse, pos.min(0).values, "amin")
    end = torch.zeros(num_groups, dtype=torch.int64).scatter_reduce(0, inverse, pos.max(0).values, "amax")
    extent = end - start + 1
    new_start = torch.cumsum(extent, 0) - extent
    delta = (start - new_start)[inverse]
    assert bool((delta >= 0).all()), "compaction must never move a token up"
    return delta
