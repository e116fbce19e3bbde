"""Qwen3-VL: Qwen2.5-VL's way of taking video, with three differences the engine must carry.

- Interleaved M-RoPE: the rotary frequencies read the t, h and w axes in turn (THWTHW...), not in
  contiguous sections. A common shift of all three axes is still one 1-D rotation, so a slide moves
  kept keys as before; undoing the rotary for retrieval's scores uses each frequency's axis (rope_axes).
- DeepStack: the tower's features from a few of its layers are added to the hidden states of the first
  language-model layers at the visual tokens. A visual token is carried through the engine as one wide
  row, [merged | deepstack 1 | ... | deepstack k] (so reuse, pruning and the step's layout move all of it
  at once), and a text token's row is its embedding padded with zeros; the language model gets the
  first part as its input and adds part i after layer i - 1. Adding zeros at the text rows leaves them
  exactly as they were, so no mask of the visual rows is needed.
- The tower (patch 16, learned position embeddings resampled to the grid, every block attending over
  the whole frame) runs as transformers has it, with whole-chunk reuse (vision/frame_encoder.py): a
  partial re-encode of changed patches, which Qwen2.5-VL's windowed tower gets, is not offered here.

- Time is text: before each frame pair its processor writes the pair's time ("<0.2 seconds>", the mean
  of its two frames' times), and the temporal position does not advance with time. A chunk is one frame
  pair, opened with its timestamp (chat.py: chunk_opening), so a chunk's wrapper grows by a token with
  each digit of the stream's time; the cache is sized for times up to 10^8 s.
"""

import functools

import torch

from livesight.errors import InputError
from livesight.kernels.rope import interleaved_axes
from livesight.models.chat import ChatIds, qwen3_vl_stamp, qwen_chat_ids
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.models.text import fuse_norms
from livesight.vision.encoder import EncodeStats
from livesight.vision.frame_encoder import FrameEncoder


def add_deepstack(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor, visual_embeds: torch.Tensor):
    """A DeepStack level added at every row of the step (zeros at text rows): transformers selects the
    visual rows by a boolean mask, whose size is known only once the GPU has run, which a CUDA graph
    cannot capture. The sums are the same."""
    return hidden_states + visual_embeds.to(hidden_states.dtype)


class Qwen3VLAdapter(QwenVLAdapter):
    def _prepare_tower(self, vision) -> None:
        """The tower runs as transformers has it; its DeepStack levels widen each visual row."""
        self.hidden_size = self.loaded.model.config.text_config.hidden_size
        self.num_deepstack = len(getattr(vision, "deepstack_visual_indexes", []))
        if self.num_deepstack:  # this model's language model only
            self.language_model._deepstack_process = add_deepstack

    def fuse(self, on: bool) -> None:
        """The RMSNorms (the layers' and the query/key norms) through livesight.kernels.fused (on) or
        transformers' own (off), swapped on this model's modules only."""
        fuse_norms(self.loaded.model, on)

    def chat_ids(self) -> ChatIds:
        """Qwen's ChatML with Qwen3-VL's timestamp before each frame pair ("<0.2 seconds>")."""
        return qwen_chat_ids(self.tokenizer, qwen3_vl_stamp)

    @property
    def rope_axes(self) -> tuple[int, ...]:
        return interleaved_axes(self.language_model.rotary_emb.mrope_section, self.inv_freq.numel())

    @property
    def row_width(self) -> int:
        """The width of a row of a step's embeddings: the model's hidden size, once per DeepStack level."""
        return self.hidden_size * (1 + self.num_deepstack)

    def temporal_stride(self, fps: float) -> int:
        return 1  # one frame pair per chunk: its grid has one temporal row

    def merged_grid(self, size: tuple[int, int], num_frames: int) -> tuple[int, int, int]:
        grid = super().merged_grid(size, num_frames)
        if grid[0] != 1:
            raise InputError(f"Qwen3-VL takes one frame pair per chunk; {num_frames} frames make {grid[0]}: use "
                             f"--fps and --chunk-seconds whose product is {self.temporal}")
        return grid

    @torch.inference_mode()
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (n,) -> (n, row_width): the embeddings, then zeros where a visual token has DeepStack features."""
        embeds = self.language_model.embed_tokens(ids)
        return torch.nn.functional.pad(embeds, (0, self.row_width - self.hidden_size))

    def run_layers(self, embeds: torch.Tensor, positions: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        assert embeds.shape[-1] == self.row_width, (embeds.shape, self.row_width)
        if not self.num_deepstack:
            return super().run_layers(embeds, positions, cache, **kwargs)
        n, hidden = embeds.shape[0], self.hidden_size
        stacked = embeds[:, hidden:].reshape(n, self.num_deepstack, hidden).to(self.dtype)
        return super().run_layers(embeds[:, :hidden], positions, cache, visual_pos_masks=None,  # add_deepstack: all
                                  deepstack_visual_embeds=list(stacked.unbind(1)), **kwargs)

    def tower(self, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """A chunk's patch rows -> its visual tokens as rows [merged | deepstack ...] (tokens, row_width)."""
        out = self.visual(pixels, grid_thw=torch.tensor([grid], device=pixels.device))
        return torch.cat([out.pooler_output, *(out.deepstack_features if self.num_deepstack else [])], dim=-1)

    def vision_encoder(self, size: tuple[int, int], num_frames: int, reuse_threshold: float | None,
                       graphs: bool | None = None, partial: bool = True) -> FrameEncoder:
        """Whole-chunk reuse only (graphs and partial do not apply to this tower)."""
        grid = self.patch_grid(size, num_frames)
        return FrameEncoder(functools.partial(self.tower, grid=grid), grid[0] * grid[1] * grid[2] // self.merge ** 2,
                            self.patch * self.merge, self.temporal, reuse_threshold)

    def encode_frames_batch(self, items) -> list[tuple[torch.Tensor, EncodeStats]]:
        """One chunk after another (the batched tower pass is Qwen2.5-VL's)."""
        return [self.encode_frames(frames, size, encoder) for frames, size, encoder in items]
