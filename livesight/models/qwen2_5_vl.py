"""Qwen2.5-VL: the text adapter with 3-D M-RoPE positions, plus the vision tower."""


import torch
from transformers import AttentionInterface
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

from livesight.kernels import VISION_ATTENTION_NAME, vision_attention
from livesight.kernels.fused import rotary, rotary_reference
from livesight.kernels.rope import sectioned_axes
from livesight.models.chat import ChatIds, qwen_chat_ids
from livesight.models.loader import LoadedModel
from livesight.models.text import TextAdapter, fuse_norms
from livesight.vision.encoder import EncodeStats, VisionEncoder, encode_batch
from livesight.vision.preprocess import fit_size, resize_frames, to_patches
from livesight.vision.tower import align_tower


class QwenVLAdapter(TextAdapter):
    """Qwen2.5-VL: the text model above with 3-D M-RoPE positions, plus the vision tower."""

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        model = loaded.model
        self.visual = model.model.visual
        vision = model.config.vision_config
        self.patch, self.merge, self.temporal = vision.patch_size, vision.spatial_merge_size, vision.temporal_patch_size
        self.video_token_id = model.config.video_token_id
        self._prepare_tower(vision)
        self.fuse(True)

    def _prepare_tower(self, vision) -> None:
        """The tower's attention through livesight's kernels, its M-RoPE time scale, and on a GPU its
        GEMM shapes aligned (vision/tower.py: same outputs, full speed)."""
        AttentionInterface.register(VISION_ATTENTION_NAME, vision_attention)
        self.visual.config._attn_implementation = VISION_ATTENTION_NAME  # the tower's own forward, if called
        self.tokens_per_second = vision.tokens_per_second
        if self.device.type == "cuda":
            align_tower(self.visual)

    def fuse(self, on: bool) -> None:
        """Route the model's RMSNorms and the text rotary through livesight.kernels.fused (on), or back
        to transformers' own (off: the plain baselines). The rotary is a module-level function of
        transformers' Qwen2.5-VL code, so this holds for every such model in the process."""
        fuse_norms(self.loaded.model, on)
        modeling_qwen2_5_vl.apply_rotary_pos_emb = rotary if on else rotary_reference

    @staticmethod
    def _modules(model):
        return model.model.language_model, model.lm_head

    @staticmethod
    def _position_ids(positions: torch.Tensor) -> torch.Tensor:
        return positions[:, None]  # (3, 1, n)

    sees_video = True
    flat_positions = False  # M-RoPE: a grid's tokens at (t, h, w)

    @property
    def rope_axes(self) -> tuple[int, ...]:
        """M-RoPE in contiguous sections: [16, 24, 24] frequencies read t, h, w at head_dim 128."""
        return sectioned_axes(self.language_model.rotary_emb.mrope_section)

    def chat_ids(self) -> ChatIds:
        return qwen_chat_ids(self.tokenizer)

    def frame_size(self, source: tuple[int, int], max_pixels: int) -> tuple[int, int]:
        """The (height, width) a source's frames are resized to: its aspect kept, within max_pixels,
        sides a multiple of a language-model token's."""
        return fit_size(*source, max_pixels, self.patch * self.merge)

    def patch_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """The vision tower's patch grid (t, h, w) of one chunk of `num_frames` frames of `size`."""
        return (-(-num_frames // self.temporal), size[0] // self.patch, size[1] // self.patch)

    def temporal_stride(self, fps: float) -> int:
        """M-RoPE temporal positions between consecutive chunks' frame pairs at `fps`."""
        return max(1, round(self.tokens_per_second * self.temporal / fps))

    def merged_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        """The language-model token grid (t, h, w) of one chunk of `num_frames` frames of `size`."""
        t, h, w = self.patch_grid(size, num_frames)
        return (t, h // self.merge, w // self.merge)

    def tower(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """transformers' own tower on a chunk's patch rows -> its visual rows (tokens, hidden)."""
        return self.visual(pixels, grid_thw=torch.tensor([grid], device=pixels.device)).pooler_output

    def vision_encoder(self, size: tuple[int, int], num_frames: int, reuse_threshold: float | None,
                       graphs: bool | None = None, partial: bool = True) -> VisionEncoder:
        """The encoder for chunks of `num_frames` frames of `size`; reuse_threshold None: no reuse;
        graphs: replay CUDA graphs (None: on a GPU); partial: re-encode only changed regions."""
        return VisionEncoder(self.visual, self.patch_grid(size, num_frames), reuse_threshold, graphs, partial)

    @torch.inference_mode()
    def to_pixels(self, frames: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """frames: (T, H, W, 3) uint8 -> the frames resized, (T', 3, h, w) in [0, 1] with T' a multiple
        of the tower's temporal patch (the last frame repeated), and their patch rows in model dtype."""
        x = resize_frames(frames.to(self.device, non_blocking=True), size)
        if x.shape[0] % self.temporal:
            x = torch.cat([x, x[-1:].expand(self.temporal - x.shape[0] % self.temporal, -1, -1, -1)])
        pixels, _ = to_patches(x, self.loaded.image_mean, self.loaded.image_std, self.patch, self.merge, self.temporal)
        return x, pixels.to(self.dtype)

    def encode_frames(self, frames: torch.Tensor, size: tuple[int, int],
                      encoder: VisionEncoder) -> tuple[torch.Tensor, EncodeStats]:
        """frames: (T, H, W, 3) uint8 -> visual tokens (t * h * w, hidden) row-major for one chunk."""
        return encoder.encode(*self.to_pixels(frames, size))

    def encode_frames_batch(self, items: list[tuple[torch.Tensor, tuple[int, int], VisionEncoder]]
                            ) -> list[tuple[torch.Tensor, EncodeStats]]:
        """encode_frames for the chunks of many streams, (frames, size, encoder) each, the full passes
        in one tower pass (vision/encoder.py: encode_batch)."""
        inputs = [None] * len(items)
        groups: dict[tuple, list[int]] = {}  # chunks of one shape and size are resized and cut together
        for i, (frames, size, _) in enumerate(items):
            groups.setdefault((tuple(frames.shape), tuple(size)), []).append(i)
        for (shape, size), members in groups.items():
            if len(members) == 1 or shape[0] % self.temporal:
                for i in members:
                    inputs[i] = self.to_pixels(items[i][0], size)
                continue
            frames, pixels = self.to_pixels(torch.cat([items[i][0] for i in members]), size)
            for i, x, rows in zip(members, frames.chunk(len(members)), pixels.chunk(len(members))):
                inputs[i] = (x, rows)
        return encode_batch([(encoder, *pair) for (_, _, encoder), pair in zip(items, inputs)])
