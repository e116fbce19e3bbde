"""What a language-model step gives back to each stream it ran: its last logits and their greedy token.

The tokens of every stream in a step are taken in one argmax, and copied to the host without
stopping the device: into pinned memory, behind an event. A stream reading its token ids waits for
that step alone, so the steps queued after it keep the GPU busy while the host reads (a plain
`.tolist()` would wait for everything queued). The tokens are kept apart from the logits, so a
stream holding tokens it has not read yet does not hold the step's logits (vocab wide, per stream).
"""

import torch


class StepTokens:
    def __init__(self, logits: torch.Tensor):
        """logits: (S, vocab) -> the greedy tokens (S,) on the device, on their way to the host."""
        self.device = logits.argmax(dim=-1)
        self._ids: list[int] | None = None
        if self.device.is_cuda:
            self._host = torch.empty(self.device.shape, dtype=self.device.dtype, pin_memory=True)
            self._host.copy_(self.device, non_blocking=True)
            self._arrived = torch.cuda.Event()
            self._arrived.record()
        else:
            self._host, self._arrived = self.device, None

    def ids(self) -> list[int]:
        """Every stream's token id, waiting for this step only."""
        if self._ids is None:
            if self._arrived is not None:
                self._arrived.synchronize()
            self._ids = self._host.tolist()
        return self._ids


class StepResult:
    """One stream's share of a step: its last logits (vocab,) and its greedy token."""

    __slots__ = ("logits", "tokens", "index")

    def __init__(self, logits: torch.Tensor, tokens: StepTokens, index: int):
        self.logits, self.tokens, self.index = logits, tokens, index

    @classmethod
    def alone(cls, logits: torch.Tensor) -> "StepResult":
        """The result of a step run for one stream: logits (vocab,)."""
        return step_results(logits[None])[0]

    @property
    def token(self) -> torch.Tensor:
        """The greedy token, (1,) on the device: what the next step is fed, with no wait."""
        return self.tokens.device[self.index:self.index + 1]


def step_results(logits: torch.Tensor) -> list[StepResult]:
    """logits (S, vocab) of S streams' steps -> each one's StepResult, their tokens taken in one argmax."""
    tokens = StepTokens(logits)
    return [StepResult(row, tokens, i) for i, row in enumerate(logits)]
