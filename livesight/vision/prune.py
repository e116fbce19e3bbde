"""Token pruning: a chunk's visual tokens that the model already has never reach the language model.

Per grid position the pruner remembers the embedding last sent to the model, the previous chunk's
embedding, and a running mean of the stream there. A token's novelty is 1 - its best cosine
similarity to what was last sent or to the running mean; at or below `threshold` it is redundant.
Of the novel tokens the most novel are kept, at most `keep_ratio` of the chunk; but a chunk whose
tokens changed against the previous chunk keeps at least `floor` of the chunk (up to the number
that changed), so a cut to a scene seen before is not starved. A position not sent for `refresh_s`
seconds is sent again, so the vision window always holds every part of the picture.
"""

import math

import torch

from livesight.kernels import token_novelty

HISTORY_DECAY = 0.9  # weight of the past in the running mean (about the last 10 chunks)


def select_tokens(novelty: torch.Tensor, change: torch.Tensor, forced: torch.Tensor, keep_ratio: float,
                  floor: float, threshold: float) -> torch.Tensor:
    """novelty, change: (n,) in [0, 2]; forced: (n,) bool -> kept indices (k,) ascending.

    k = max(min(#novel, ceil(keep_ratio n)), min(#changed, ceil(floor n))), most novel first, plus forced."""
    n = novelty.numel()
    num_novel, num_changed = torch.stack([(novelty > threshold).sum(), (change > threshold).sum()]).tolist()  # one read
    k = max(min(num_novel, math.ceil(keep_ratio * n)), min(num_changed, math.ceil(floor * n)))
    keep = forced.clone()
    keep[torch.argsort(novelty, descending=True, stable=True)[:k]] = True
    return keep.nonzero().squeeze(1)


class TokenPruner:
    def __init__(self, keep_ratio: float, floor: float, threshold: float, refresh_s: float):
        self.keep_ratio, self.floor, self.threshold, self.refresh_s = keep_ratio, floor, threshold, refresh_s
        self.sent: torch.Tensor | None = None  # (n, d) embedding last sent per position
        self.previous: torch.Tensor | None = None  # (n, d) the previous chunk
        self.history: torch.Tensor | None = None  # (n, d) running mean
        self.sent_at: torch.Tensor | None = None  # (n,) float64 stream seconds of the last send

    @torch.inference_mode()
    def select(self, tokens: torch.Tensor, t: float) -> torch.Tensor:
        """tokens: (n, d) one chunk's visual tokens at stream time t -> kept indices (k,) ascending."""
        n = tokens.shape[0]
        if self.sent is None or self.sent.shape != tokens.shape:
            kept = torch.arange(n, device=tokens.device)
            self.sent, self.previous, self.history = tokens.clone(), tokens.clone(), tokens.float().clone()
            self.sent_at = torch.full((n,), t, dtype=torch.float64)
            return kept
        novelty = token_novelty(tokens, torch.stack([self.sent.to(tokens.dtype), self.history.to(tokens.dtype)]))
        change = token_novelty(tokens, self.previous[None])
        forced = (t - self.sent_at >= self.refresh_s - 1e-9).to(tokens.device)
        kept = select_tokens(novelty, change, forced, self.keep_ratio, self.floor, self.threshold)
        self.sent[kept] = tokens[kept]
        self.sent_at[kept.cpu()] = t
        self.previous = tokens.clone()
        self.history.mul_(HISTORY_DECAY).add_(tokens.float(), alpha=1 - HISTORY_DECAY)
        return kept
