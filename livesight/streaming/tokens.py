"""Build one step's tokens: embeddings plus the TokenTable rows that describe them.

Text tokens each form their own position group (t = h = w = p). A vision chunk is one group:
its wrapper text, then the token grid at (s + k * stride, s + row, s + col), then the closing text
at the grid's largest position + 1, as Qwen2.5-VL's get_rope_index lays out a video. A model with
1-D positions (`flat`) numbers the grid's tokens one after another instead.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from livesight.kvcache import Segment, TokenTable


@dataclass
class StepBuilder:
    """Accumulates a step's pieces; counters continue from the cache's state."""

    next_pos: int
    next_seq: int
    next_group: int
    flat: bool = False  # 1-D positions: the grid's tokens take consecutive positions
    embeds: list[torch.Tensor] = field(default_factory=list)  # (n, hidden) embeddings, or (n,) token ids
    rows: list[TokenTable] = field(default_factory=list)

    def _add(self, embeds: torch.Tensor, segment: Segment, pos: torch.Tensor, group: torch.Tensor, t: float) -> None:
        n = embeds.shape[0]
        self.rows.append(TokenTable(
            torch.full((n,), int(segment), dtype=torch.int64),
            torch.arange(self.next_seq, self.next_seq + n), group, pos,
            torch.full((n,), float(t), dtype=torch.float64)))
        self.embeds.append(embeds)
        self.next_seq += n
        self.next_pos = int(pos.max()) + 1

    def text(self, embeds: torch.Tensor, segment: Segment, t: float) -> None:
        """embeds: (n, hidden) of n text tokens, each its own group; or their ids (n,) on the device,
        embedded when the step is built (a batched step embeds every stream's in one call)."""
        n = embeds.shape[0]
        if n == 0:
            return
        if n == 1:  # a decode step's token, once per stream per step: the same rows, fewer tensor ops
            ints = torch.tensor([int(segment), self.next_seq, self.next_group, self.next_pos, self.next_pos,
                                 self.next_pos])
            self.rows.append(TokenTable(ints[0:1], ints[1:2], ints[2:3], ints[3:].view(3, 1),
                                        torch.tensor([float(t)], dtype=torch.float64)))
            self.embeds.append(embeds)
            self.next_seq, self.next_group, self.next_pos = self.next_seq + 1, self.next_group + 1, self.next_pos + 1
            return
        pos = torch.arange(self.next_pos, self.next_pos + n).expand(3, n).clone()
        group = torch.arange(self.next_group, self.next_group + n)
        self.next_group += n
        self._add(embeds, segment, pos, group, t)

    def vision(self, before: torch.Tensor, grid_embeds: torch.Tensor, grid: tuple[int, int, int],
               after: torch.Tensor, t: float, temporal_stride: int, kept: torch.Tensor | None = None) -> None:
        """One vision group: `before` (k, hidden) text, the grid's tokens, `after` (m, hidden) text.

        grid_embeds: (t*h*w, hidden) row-major, or only the rows `kept` (r,) ascending of the grid
        when pruning dropped the others: kept tokens carry the positions they have in the full grid,
        and the group spans the full grid's positions."""
        gt, gh, gw = grid
        num_rows = gt * gh * gw if kept is None else kept.numel()
        assert grid_embeds.shape[0] == num_rows, (grid_embeds.shape, grid, num_rows)
        s = self.next_pos + before.shape[0]
        lead = torch.arange(self.next_pos, s).expand(3, before.shape[0])
        if self.flat:
            body = torch.arange(gt * gh * gw).expand(3, -1) + s
        else:
            tt, hh, ww = torch.meshgrid(torch.arange(gt) * temporal_stride, torch.arange(gh), torch.arange(gw),
                                        indexing="ij")
            body = torch.stack([tt, hh, ww]).reshape(3, -1) + s
        end = int(body.max()) + 1
        if kept is not None:
            body = body[:, kept.cpu()]
        tail = torch.arange(end, end + after.shape[0]).expand(3, after.shape[0])
        pos = torch.cat([lead, body, tail], dim=1)
        embeds = torch.cat([before, grid_embeds.to(before.dtype), after])
        self._add(embeds, Segment.VISION, pos, torch.full((embeds.shape[0],), self.next_group), t)
        self.next_group += 1

    @property
    def num_tokens(self) -> int:
        return sum(len(row) for row in self.rows)

    def table(self) -> TokenTable:
        """The new tokens' table."""
        if len(self.rows) == 1:
            return self.rows[0]
        table = TokenTable.empty()
        for row in self.rows:
            table = table.cat(row)
        return table

    def build(self, embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, TokenTable]:
        """-> embeds (n, hidden), the new tokens' table; embed: token ids (n,) -> (n, hidden), for the
        pieces given as ids."""
        pieces = [embed(piece) if piece.dim() == 1 else piece for piece in self.embeds]
        return (pieces[0] if len(pieces) == 1 else torch.cat(pieces)), self.table()
