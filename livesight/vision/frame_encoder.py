"""A vision tower run whole on each chunk, with the last output reused while the chunk's pixels stay put.

For towers whose every block attends over the whole frame (Qwen3-VL's), re-encoding only the changed
patches, as vision/encoder.py does for Qwen2.5-VL's windowed tower, would leave every other token's
output stale; so a chunk is either reused whole (no token's pixel cube changed by more than the
threshold, measured as encoder.py measures it) or encoded whole. Threshold 0 reuses only
pixel-identical chunks, so it equals full recomputation exactly; None encodes every chunk.
"""

from collections.abc import Callable

import torch

from livesight.kernels import token_change
from livesight.vision.encoder import EncodeStats


class FrameEncoder:
    def __init__(self, tower: Callable[[torch.Tensor], torch.Tensor], num_tokens: int, unit: int, temporal: int,
                 reuse_threshold: float | None):
        """tower: a chunk's patch rows -> its tokens (num_tokens, width); unit: pixels per token's side;
        temporal: frames per temporal patch; reuse_threshold: mean absolute pixel change (0..1) up to
        which a token counts as unchanged, None to encode every chunk."""
        self.tower, self.num_tokens, self.unit, self.temporal = tower, num_tokens, unit, temporal
        self.threshold = reuse_threshold
        self.ref: torch.Tensor | None = None  # (T, 3, H, W) the pixels the cached output came from
        self.output: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget the cached chunk (a new stream): the next chunk is encoded."""
        self.ref = self.output = None

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, EncodeStats]:
        """frames: (T, 3, H, W) in [0, 1]; pixels: their patch rows -> (tokens (num_tokens, width), stats)."""
        if self.threshold is not None and self.ref is not None and self.ref.shape == frames.shape:
            change = token_change(frames, self.ref, self.unit, self.temporal)
            if float(change.max()) <= self.threshold:
                return self.output, EncodeStats("reused", self.num_tokens, 0)
        output = self.tower(pixels)
        assert output.shape[0] == self.num_tokens, (output.shape, self.num_tokens)
        if self.threshold is not None:
            self.ref, self.output = frames.clone(), output
        return output, EncodeStats("full", self.num_tokens, self.num_tokens)
