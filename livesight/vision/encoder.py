"""Qwen2.5-VL's vision tower run block by block, so a chunk that barely changed reuses earlier work.

Change is measured on pixels (no trained weight involved): the mean absolute change of each
language-model token's pixel cube against the pixels its cached output was computed from.
- no token changed by more than the threshold: the cached output is returned, the tower is skipped;
- a few tokens changed (threshold > 0): only their patches run through the blocks, attending to
  the cached keys and values of every other patch in their window (or frame, in the full-attention
  blocks); the other tokens keep their cached outputs. This is approximate: in a full recompute the
  unchanged tokens would see the changed ones too. `error` in the bench measures by how much;
- otherwise, and always at threshold 0: the full tower. So threshold 0 reuses only pixel-identical
  chunks and equals full recomputation exactly.
Patches are kept in the tower's window order throughout, as transformers does.

On a GPU each pass is replayed from a CUDA graph (the full pass once per session, a partial pass
per bucket of changed-token counts, padded by repeating a changed token): the tower's ~45 small
kernels per block are otherwise launch-bound. Elsewhere the same functions run eagerly.
"""

from dataclasses import dataclass

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from livesight.kernels import segment_attention, token_change, varlen_attention
from livesight.kernels.dispatch import report
from livesight.kernels.graphs import GraphReplay

MAX_PARTIAL = 0.5  # past this share of changed tokens a full pass costs about the same, and is exact
MAX_STALE = 1.0  # partial passes since the last full one may recompute this many frames' worth of tokens


@dataclass
class EncodeStats:
    mode: str  # "full", "partial" or "reused"
    num_tokens: int
    num_encoded: int  # tokens whose output was computed this chunk


def _runs(segment: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Segment ids (N,), non-decreasing -> (cu_seqlens (S + 1,) int32, longest run). An id with no
    rows (an empty window) is an empty run."""
    assert bool((segment[1:] >= segment[:-1]).all()), "segments must be contiguous runs"
    lengths = torch.bincount(segment)
    cu = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    return cu, int(lengths.max())


class VisionEncoder:
    def __init__(self, visual, grid: tuple[int, int, int], reuse_threshold: float | None, graphs: bool | None = None):
        """visual: transformers' Qwen2.5-VL vision tower; grid: one chunk's patch grid (t, h, w);
        reuse_threshold: mean absolute pixel change (0..1) up to which a token counts as unchanged,
        None to encode every chunk in full; graphs: replay CUDA graphs (default: on a GPU)."""
        config = visual.config
        self.visual, self.threshold = visual, reuse_threshold
        self.merge, self.temporal, self.side = config.spatial_merge_size, config.temporal_patch_size, \
            config.spatial_merge_size * config.patch_size
        self.unit = self.merge ** 2
        self.heads = config.num_heads
        self.full_blocks = set(config.fullatt_block_indexes)
        weight = visual.patch_embed.proj.weight
        device = weight.device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        grid_thw = torch.tensor([grid])
        order, cu_windows = get_vision_window_index(grid_thw, self.merge, config.window_size, config.patch_size)
        self.rank = torch.argsort(order).to(device)  # row-major token -> window order
        self.patch_order = self._patches(order.to(device))
        positions = get_vision_position_ids(grid_thw, self.merge).to(device)
        cos, sin = visual.rotary_pos_emb(positions, positions)
        self.cos, self.sin = cos[self.patch_order], sin[self.patch_order]
        lengths = (cu_windows[1:] - cu_windows[:-1]).to(device)
        self.window_segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        self.frame_segment = torch.arange(grid[0], device=device).repeat_interleave(grid[1] * grid[2])
        self.window_runs, self.frame_runs = _runs(self.window_segment), _runs(self.frame_segment)
        self.num_tokens = order.numel()
        num_patches = self.num_tokens * self.unit
        if reuse_threshold is not None:  # what a partial pass reads: every block's keys and values, the outputs
            shape = (len(visual.blocks), num_patches, self.heads, config.hidden_size // self.heads)
            self.keys = torch.zeros(shape, dtype=weight.dtype, device=device)
            self.values = torch.zeros_like(self.keys)
            self.hidden = torch.zeros(num_patches, config.hidden_size, dtype=weight.dtype, device=device)
            self.output = torch.zeros(self.num_tokens, config.out_hidden_size, dtype=weight.dtype, device=device)
        self.ref: torch.Tensor | None = None  # (T, 3, H, W) the pixels each token's cached output came from
        self.stale = 0.0  # share of tokens recomputed by partial passes since the last full pass
        self._replays: dict = {}

    def reset(self) -> None:
        """Forget the cached chunk (a new stream): the next chunk runs the full pass."""
        self.ref, self.stale = None, 0.0

    def _patches(self, tokens: torch.Tensor) -> torch.Tensor:
        """token indices (k,) -> their patch rows (k * merge**2,): a token's patches are consecutive."""
        return (tokens[:, None] * self.unit + torch.arange(self.unit, device=tokens.device)).reshape(-1)

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, EncodeStats]:
        """frames: (T, 3, H, W) in [0, 1], T a multiple of temporal; pixels: the tower's patch rows
        for them, row-major -> visual tokens (tokens, out_dim) row-major, and what was computed."""
        if self.threshold is None or self.ref is None:
            return self._full(frames, pixels)
        changed = token_change(frames, self.ref, self.side, self.temporal) > self.threshold
        num_changed = int(changed.sum())
        if num_changed == 0:
            return self.output.clone(), EncodeStats("reused", self.num_tokens, 0)
        share = num_changed / self.num_tokens
        if self.threshold == 0 or share > MAX_PARTIAL or self.stale + share > MAX_STALE:
            return self._full(frames, pixels)
        tokens = changed.nonzero().squeeze(1)
        bucket = max(8, 1 << (num_changed - 1).bit_length())  # pad by repeating the last changed token
        padded = torch.cat([tokens, tokens[-1:].expand(bucket - num_changed)])
        self._run(("partial", bucket), self._partial_pass, pixels[self._patches(padded)], padded)
        mask = torch.zeros(self.num_tokens, dtype=torch.bool, device=frames.device)
        mask[tokens] = True
        self.ref = torch.where(self._pixel_mask(mask, frames.shape), frames, self.ref)
        self.stale += share
        return self.output.clone(), EncodeStats("partial", self.num_tokens, num_changed)

    def _full(self, frames: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, EncodeStats]:
        output = self._run(("full",), self._full_pass, pixels).clone()
        if self.threshold is not None:
            self.ref, self.stale = frames.clone(), 0.0
        return output, EncodeStats("full", self.num_tokens, self.num_tokens)

    def _run(self, key: tuple, fn, *inputs: torch.Tensor):
        if not self.graphs:
            report("vision_encoder", "eager")
            return fn(*inputs)
        report("vision_encoder", "cuda-graph")
        if key not in self._replays:
            self._replays[key] = GraphReplay(fn, list(inputs))
        return self._replays[key](*inputs)

    def _full_pass(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (patches, P) row-major -> tokens (tokens, out_dim) row-major; with reuse on, fills
        the stored keys, values, last hidden states and outputs."""
        store = self.threshold is not None
        hidden = self.visual.patch_embed(pixels)[self.patch_order]
        for i, block in enumerate(self.visual.blocks):
            hidden = self._block(i, block, hidden, None, self.keys if store else None, self.values if store else None)
        output = self.visual.merger(hidden)[self.rank]
        if store:
            self.hidden.copy_(hidden)
            self.output.copy_(output)
        return output

    def _partial_pass(self, pixels: torch.Tensor, tokens: torch.Tensor) -> None:
        """Recompute `tokens` (k,) row-major, from their patch rows `pixels` (k * merge**2, P),
        against the stored keys and values of all others; updates the stores."""
        rows = self._patches(self.rank[tokens])  # their patch rows in window order
        hidden = self.visual.patch_embed(pixels)
        for i, block in enumerate(self.visual.blocks):
            hidden = self._block(i, block, hidden, rows, self.keys, self.values)
        self.hidden[rows] = hidden
        self.output[tokens] = self.visual.merger(hidden)

    def _pixel_mask(self, token_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(tokens,) bool row-major -> (T, 1, H, W) bool over each token's pixel cube."""
        num_frames, _, height, width = shape
        grid = token_mask.reshape(num_frames // self.temporal, 1, height // self.side, width // self.side)
        grid = grid.repeat_interleave(self.side, dim=2).repeat_interleave(self.side, dim=3)
        return grid.repeat_interleave(self.temporal, dim=0)

    def _block(self, index: int, block, hidden: torch.Tensor, rows: torch.Tensor | None, keys: torch.Tensor | None,
               values: torch.Tensor | None) -> torch.Tensor:
        """One vision block for the patches at window-order `rows` (m,), hidden (m, dim); rows None:
        every patch, in window order. With a key/value store, their new keys and values are written
        into it and attention reads all of it; without one, rows must be None."""
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(hidden)).reshape(hidden.shape[0], 3, self.heads, -1).unbind(1)
        cos, sin = (self.cos, self.sin) if rows is None else (self.cos[rows], self.sin[rows])
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        full = index in self.full_blocks
        if keys is not None:
            if rows is None:
                keys[index], values[index] = k, v
            else:
                keys[index, rows], values[index, rows] = k, v
                k, v = keys[index], values[index]
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        if rows is None:  # every patch, segment after segment: one varlen call
            out = varlen_attention(q, k, v, *(self.frame_runs if full else self.window_runs), attn.scaling)
        else:
            segment = self.frame_segment if full else self.window_segment
            out = segment_attention(q, k, v, segment[rows], segment, attn.scaling)
        hidden = hidden + attn.proj(out.transpose(0, 1).reshape(hidden.shape[0], -1))
        return hidden + block.mlp(block.norm2(hidden))
