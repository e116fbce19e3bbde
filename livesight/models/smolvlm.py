"""SmolVLM2 (Idefics3 architecture): the small model for CPUs and edge boxes.

A Llama-family language model with 1-D RoPE, so a chunk's visual tokens take consecutive positions
(StepBuilder's flat layout) and a slide is a 1-D rotation as for any text; a SigLIP tower that sees
each frame alone, at one square size; a pixel-shuffle connector that folds each scale x scale block
of patches into one token (row-major over the folded grid, so a token is a square of patch * scale
pixels, which is what reuse and pruning measure change over).

Stated, not hidden:
- frames are resized to the largest square of whole tokens within the tower's image size (378 px at
  2.2B: the 6-pixel margin the tower's 14-px patches leave of 384 is not read), aspect not kept, with
  no image splitting (as SmolVLM2 treats video frames); --max-pixels does not apply;
- a chunk's frames sit between one pair of image delimiters, not a pair each with its "Frame from"
  timestamp;
- reuse is whole-chunk (vision/frame_encoder.py): the tower attends over the whole frame.
"""


import torch

from livesight.models.chat import ChatIds, smolvlm_chat_ids
from livesight.models.loader import LoadedModel
from livesight.models.text import TextAdapter, fuse_norms
from livesight.vision.encoder import EncodeStats
from livesight.vision.frame_encoder import FrameEncoder
from livesight.vision.preprocess import resize_frames


class SmolVLMAdapter(TextAdapter):
    sees_video = True

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        model = loaded.model.model
        self.vision_model, self.connector = model.vision_model, model.connector
        self.visual = self.vision_model  # what the plain baselines switch to SDPA
        vision = loaded.model.config.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, loaded.model.config.scale_factor, 1
        side = vision.image_size // (self.patch * self.merge) * self.patch * self.merge
        self.square = (side, side)
        self.fuse(True)

    @staticmethod
    def _modules(model):
        return model.model.text_model, model.lm_head

    def fuse(self, on: bool) -> None:
        """The language model's RMSNorms through livesight.kernels.fused (on) or its own (off)."""
        fuse_norms(self.language_model, on)

    def chat_ids(self) -> ChatIds:
        return smolvlm_chat_ids(self.tokenizer)

    def frame_size(self, source: tuple[int, int], max_pixels: int) -> tuple[int, int]:
        return self.square

    def patch_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        return (num_frames, size[0] // self.patch, size[1] // self.patch)

    def merged_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        t, h, w = self.patch_grid(size, num_frames)
        return (t, h // self.merge, w // self.merge)

    def temporal_stride(self, fps: float) -> int:
        return 1  # unused: positions are 1-D

    @torch.inference_mode()
    def to_pixels(self, frames: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (T, H, W, 3) uint8 -> the frames resized, (T, 3, h, w) in [0, 1], and the tower's input:
        the same normalized, in model dtype."""
        x = resize_frames(frames.to(self.device, non_blocking=True), size)
        mean = torch.tensor(self.loaded.image_mean, device=x.device)[:, None, None]
        std = torch.tensor(self.loaded.image_std, device=x.device)[:, None, None]
        return x, ((x - mean) / std).to(self.dtype)

    def tower(self, pixels: torch.Tensor, grid: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Frames (T, 3, h, w) normalized -> their visual tokens (T * tokens per frame, hidden), frame by
        frame, each row-major over its folded grid."""
        hidden = self.vision_model(pixel_values=pixels).last_hidden_state
        tokens = self.connector(hidden)
        return tokens.reshape(-1, tokens.shape[-1])

    def vision_encoder(self, size: tuple[int, int], num_frames: int, reuse_threshold: float | None,
                       graphs: bool | None = None, partial: bool = True) -> FrameEncoder:
        """Whole-chunk reuse only (graphs and partial do not apply to this tower)."""
        t, h, w = self.merged_grid(size, num_frames)
        return FrameEncoder(self.tower, t * h * w, self.patch * self.merge, 1, reuse_threshold)

    def encode_frames(self, frames: torch.Tensor, size: tuple[int, int],
                      encoder: FrameEncoder) -> tuple[torch.Tensor, EncodeStats]:
        return encoder.encode(*self.to_pixels(frames, size))

    def encode_frames_batch(self, items) -> list[tuple[torch.Tensor, EncodeStats]]:
        return [self.encode_frames(frames, size, encoder) for frames, size, encoder in items]
