"""What a language-model step gives back to each stream it ran: its last logits and their greedy token.

The tokens of every stream in a step are taken in one argmax, and copied to the host without
stopping the device: into pinned memory, behind an event. A stream reading its token ids waits for
that step alone, so the steps queued after it keep the GPU busy while the host reads (a plain
`.tolist()` would wait for everything queued).
"""

import torch


class StepOutputs:
    def __init__(self, logits: torch.Tensor):
        """logits: (S, vocab), the last logits of S streams' steps."""
        self.logits = logits
        self.tokens = logits.argmax(dim=-1)
        self._ids: list[int] | None = None
        if self.tokens.is_cuda:
            self._host = torch.empty(self.tokens.shape, dtype=self.tokens.dtype, pin_memory=True)
            self._host.copy_(self.tokens, non_blocking=True)
            self._arrived = torch.cuda.Event()
            self._arrived.record()
        else:
            self._host, self._arrived = self.tokens, None

    def __len__(self) -> int:
        return self.logits.shape[0]

    def __getitem__(self, index: int) -> "StepResult":
        return StepResult(self, index)

    def __iter__(self):
        return (StepResult(self, i) for i in range(len(self)))

    def ids(self) -> list[int]:
        """Every stream's token id, waiting for this step only."""
        if self._ids is None:
            if self._arrived is not None:
                self._arrived.synchronize()
            self._ids = self._host.tolist()
        return self._ids


class StepResult:
    """One stream's share of a step."""

    __slots__ = ("outputs", "index")

    def __init__(self, outputs: StepOutputs, index: int):
        self.outputs, self.index = outputs, index

    @classmethod
    def alone(cls, logits: torch.Tensor) -> "StepResult":
        """The result of a step run for one stream: logits (vocab,)."""
        return StepOutputs(logits[None])[0]

    @property
    def logits(self) -> torch.Tensor:
        """(vocab,) on the device."""
        return self.outputs.logits[self.index]

    @property
    def token(self) -> torch.Tensor:
        """The greedy token, (1,) on the device: what the next step is fed, with no wait."""
        return self.outputs.tokens[self.index:self.index + 1]

    def token_id(self) -> int:
        return self.outputs.ids()[self.index]
