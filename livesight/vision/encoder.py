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

Many streams, one tick: `encode_batch` decides each chunk's mode as `encode` does, and runs every
chunk that needs the full pass in one tower pass over all of them (their windows are segments of one
varlen call; the linear layers read the weights once for all). That pass runs eagerly: its shape
changes tick to tick, and it is large enough not to be launch-bound.
"""

from dataclasses import dataclass

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from livesight.kernels import segment_attention, token_change, varlen_attention
from livesight.kernels.dispatch import report
from livesight.kernels.graphs import GraphReplay

# full passes batched into one eager pass from this many chunks on; fewer replay each encoder's graph
# (eagerly a pass waits on ~1,500 kernel launches, ~20 ms at 7B; a graph replays one chunk in ~3 ms)
BATCH_MIN = 8
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


def _slices(sizes: list[int]) -> list[slice]:
    """Each part's rows when parts of these sizes are laid one after another."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]


def _concat_runs(runs: list[tuple[torch.Tensor, int]], starts: list[int]) -> tuple[torch.Tensor, int]:
    """Chunks' (cu_seqlens, longest run), each from 0, with each chunk's first row -> one (cu_seqlens,
    longest run) over all rows, in which every window of every chunk stays its own segment."""
    cu = torch.cat([runs[0][0][:1]] + [cu[1:] + start for (cu, _), start in zip(runs, starts)])
    return cu, max(longest for _, longest in runs)


@dataclass
class Layout:
    """Where a full pass's patch rows come from and which rows attend to which: one chunk's, or
    several chunks' one after another, so that one tower pass runs them all."""
    patch_order: torch.Tensor  # (patches,) the row-major patch row at each window-order row
    cos: torch.Tensor  # (patches, head_dim) rotary cos and sin, in window order
    sin: torch.Tensor
    window_runs: tuple[torch.Tensor, int]  # (cu_seqlens (windows + 1,) int32, longest window)
    frame_runs: tuple[torch.Tensor, int]  # the same over frames (the full-attention blocks)
    rank: torch.Tensor  # (tokens,) the window-order token at each row-major token

    @staticmethod
    def concat(layouts: list["Layout"]) -> "Layout":
        """Chunk after chunk: each chunk's row indices offset by the rows of the chunks before it."""
        patch_starts = [part.start for part in _slices([layout.patch_order.numel() for layout in layouts])]
        token_starts = [part.start for part in _slices([layout.rank.numel() for layout in layouts])]
        return Layout(torch.cat([layout.patch_order + start for layout, start in zip(layouts, patch_starts)]),
                      torch.cat([layout.cos for layout in layouts]), torch.cat([layout.sin for layout in layouts]),
                      _concat_runs([layout.window_runs for layout in layouts], patch_starts),
                      _concat_runs([layout.frame_runs for layout in layouts], patch_starts),
                      torch.cat([layout.rank + start for layout, start in zip(layouts, token_starts)]))


class VisionEncoder:
    def __init__(self, visual, grid: tuple[int, int, int], reuse_threshold: float | None, graphs: bool | None = None,
                 partial: bool = True):
        """visual: transformers' Qwen2.5-VL vision tower; grid: one chunk's patch grid (t, h, w);
        reuse_threshold: mean absolute pixel change (0..1) up to which a token counts as unchanged,
        None to encode every chunk in full; graphs: replay CUDA graphs (default: on a GPU)."""
        config = visual.config
        self.visual, self.threshold = visual, reuse_threshold
        self.merge, self.temporal, self.side = config.spatial_merge_size, config.temporal_patch_size, \
            config.spatial_merge_size * config.patch_size
        self.unit = self.merge ** 2
        self.full_blocks = set(config.fullatt_block_indexes)
        weight = visual.patch_embed.proj.weight
        device = weight.device
        self.graphs = device.type == "cuda" if graphs is None else graphs
        grid_thw = torch.tensor([grid])
        order, cu_windows = get_vision_window_index(grid_thw, self.merge, config.window_size, config.patch_size)
        patch_order = self._patches(order.to(device))
        positions = get_vision_position_ids(grid_thw, self.merge).to(device)
        cos, sin = visual.rotary_pos_emb(positions, positions)
        lengths = (cu_windows[1:] - cu_windows[:-1]).to(device)
        self.window_segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        self.frame_segment = torch.arange(grid[0], device=device).repeat_interleave(grid[1] * grid[2])
        self.layout = Layout(patch_order, cos[patch_order], sin[patch_order], _runs(self.window_segment),
                             _runs(self.frame_segment), torch.argsort(order).to(device))
        self.num_tokens = order.numel()
        self.num_patches = num_patches = self.num_tokens * self.unit
        self.partial = partial and reuse_threshold is not None
        self.keys = self.values = self.hidden = None
        if self.partial:  # what a partial pass reads: every block's keys and values
            shape = (len(visual.blocks), num_patches, config.num_heads, config.hidden_size // config.num_heads)
            self.keys = torch.zeros(shape, dtype=weight.dtype, device=device)
            self.values = torch.zeros_like(self.keys)
            self.hidden = torch.zeros(num_patches, config.hidden_size, dtype=weight.dtype, device=device)
        if reuse_threshold is not None:  # what a reused chunk returns
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
        tokens = self.plan(frames)
        if tokens is None:
            return self._after_full(frames, self._full_output(pixels))
        return self._encode_changed(frames, pixels, tokens)

    def plan(self, frames: torch.Tensor) -> torch.Tensor | None:
        """frames (T, 3, H, W) -> None when the chunk needs the full pass, else the row-major tokens
        (k,) a partial pass recomputes (none: the cached output is reused). The one place the mode is
        decided, for `encode` and `encode_batch` alike."""
        if self.threshold is None or self.ref is None:
            return None
        changed = token_change(frames, self.ref, self.side, self.temporal) > self.threshold
        num_changed = int(changed.sum())
        share = num_changed / self.num_tokens
        if num_changed and (not self.partial or self.threshold == 0 or share > MAX_PARTIAL
                            or self.stale + share > MAX_STALE):
            return None
        return changed.nonzero().squeeze(1)

    def _encode_changed(self, frames: torch.Tensor, pixels: torch.Tensor,
                        tokens: torch.Tensor) -> tuple[torch.Tensor, EncodeStats]:
        """The chunk from the cached outputs, `tokens` (k,) row-major recomputed by a partial pass."""
        num_changed = tokens.numel()
        if num_changed == 0:
            return self.output.clone(), EncodeStats("reused", self.num_tokens, 0)
        bucket = max(8, 1 << (num_changed - 1).bit_length())  # pad by repeating the last changed token
        padded = torch.cat([tokens, tokens[-1:].expand(bucket - num_changed)])
        self._run(("partial", bucket), self._partial_pass, pixels[self._patches(padded)], padded)
        mask = torch.zeros(self.num_tokens, dtype=torch.bool, device=frames.device)
        mask[tokens] = True
        self.ref = torch.where(self._pixel_mask(mask, frames.shape), frames, self.ref)
        self.stale += num_changed / self.num_tokens
        return self.output.clone(), EncodeStats("partial", self.num_tokens, num_changed)

    def _full_output(self, pixels: torch.Tensor) -> torch.Tensor:
        """This chunk's full pass on its own: replayed from its CUDA graph on a GPU. The output is the
        graph's buffer, overwritten by the next replay."""
        return self._run(("full",), self._full_pass, pixels)

    def _after_full(self, frames: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, EncodeStats]:
        """A full pass's output (tokens, out_dim) -> what encode returns; with reuse on, these frames
        become the reference (the pass has filled the stores)."""
        if self.threshold is not None:
            self.ref, self.stale = frames.clone(), 0.0
        return output.clone(), EncodeStats("full", self.num_tokens, self.num_tokens)

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
        return _tower_pass([self], self.layout, pixels)

    def _partial_pass(self, pixels: torch.Tensor, tokens: torch.Tensor) -> None:
        """Recompute `tokens` (k,) row-major, from their patch rows `pixels` (k * merge**2, P),
        against the stored keys and values of all others; updates the stores."""
        rows = self._patches(self.layout.rank[tokens])  # their patch rows in window order
        hidden = self.visual.patch_embed(pixels)
        for i, block in enumerate(self.visual.blocks):
            hidden = self._partial_block(i, block, hidden, rows)
        self.hidden[rows] = hidden
        self.output[tokens] = self.visual.merger(hidden)

    def _pixel_mask(self, token_mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(tokens,) bool row-major -> (T, 1, H, W) bool over each token's pixel cube."""
        num_frames, _, height, width = shape
        grid = token_mask.reshape(num_frames // self.temporal, 1, height // self.side, width // self.side)
        grid = grid.repeat_interleave(self.side, dim=2).repeat_interleave(self.side, dim=3)
        return grid.repeat_interleave(self.temporal, dim=0)

    def _partial_block(self, index: int, block, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One vision block for the patches at window-order `rows` (m,), hidden (m, dim): their new
        keys and values are written into the store, and they attend to all of it in their window (or
        frame, in the full-attention blocks)."""
        q, k, v = _rotated_qkv(block, hidden, self.layout.cos[rows], self.layout.sin[rows])
        self.keys[index, rows], self.values[index, rows] = k, v
        segment = self.frame_segment if index in self.full_blocks else self.window_segment
        out = segment_attention(q.transpose(0, 1), self.keys[index].transpose(0, 1),
                                self.values[index].transpose(0, 1), segment[rows], segment, block.attn.scaling)
        return _block_output(block, hidden, out)


def _rotated_qkv(block, hidden: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (m, dim) and its rows' rotary cos, sin (m, head_dim) -> a block's q, k (rotated), v,
    each (m, heads, head_dim)."""
    attn = block.attn
    q, k, v = attn.qkv(block.norm1(hidden)).reshape(hidden.shape[0], 3, attn.num_heads, -1).unbind(1)
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    return q, k, v


def _block_output(block, hidden: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """A block's input hidden (m, dim) and its attention output (heads, m, head_dim) -> its output (m, dim)."""
    hidden = hidden + block.attn.proj(out.transpose(0, 1).reshape(hidden.shape[0], -1))
    return hidden + block.mlp(block.norm2(hidden))


def _tower_pass(encoders: list[VisionEncoder], layout: Layout, pixels: torch.Tensor) -> torch.Tensor:
    """The full pass over the encoders' chunks, laid out by `layout`: pixels (patches, P), each chunk's
    patch rows row-major, chunk after chunk -> tokens (tokens, out_dim), row-major chunk after chunk.
    Every window is a segment of one varlen call. Fills the stores of the encoders with reuse on."""
    visual, full_blocks = encoders[0].visual, encoders[0].full_blocks
    stores = [(encoder, patches, tokens) for encoder, patches, tokens in
              zip(encoders, _slices([e.num_patches for e in encoders]), _slices([e.num_tokens for e in encoders]))
              if encoder.threshold is not None]
    hidden = visual.patch_embed(pixels)[layout.patch_order]
    for i, block in enumerate(visual.blocks):
        q, k, v = _rotated_qkv(block, hidden, layout.cos, layout.sin)
        for encoder, patches, _ in stores:
            if encoder.partial:
                encoder.keys[i], encoder.values[i] = k[patches], v[patches]
        runs = layout.frame_runs if i in full_blocks else layout.window_runs
        out = varlen_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), *runs, block.attn.scaling)
        hidden = _block_output(block, hidden, out)
    output = visual.merger(hidden)[layout.rank]
    for encoder, patches, tokens in stores:
        if encoder.partial:
            encoder.hidden.copy_(hidden[patches])
        encoder.output.copy_(output[tokens])
    return output


Item = tuple[VisionEncoder, torch.Tensor, torch.Tensor]  # (encoder, frames, pixels): what its encode takes


@torch.inference_mode()
def encode_batch(items: list[Item]) -> list[tuple[torch.Tensor, EncodeStats]]:
    """One tick of many streams: items (encoder, frames (T, 3, H, W), pixels (patches, P)), one per
    stream, as each encoder's `encode` takes them -> [encoder.encode(frames, pixels) for each], and
    every encoder left as its own encode would leave it. The chunks that need the full pass run in one
    tower pass (on a GPU, fewer than BATCH_MIN replay their encoders' CUDA graphs); reused and partial
    chunks run per encoder, as in encode. Encoders may differ in grid, not in vision tower."""
    _check_batch(items)
    plans = [encoder.plan(frames) for encoder, frames, _ in items]
    outputs = iter(_full_outputs([item for item, tokens in zip(items, plans) if tokens is None]))
    return [encoder._after_full(frames, next(outputs)) if tokens is None
            else encoder._encode_changed(frames, pixels, tokens)
            for (encoder, frames, pixels), tokens in zip(items, plans)]


def _full_outputs(items: list[Item]) -> list[torch.Tensor]:
    """The full pass of every item's chunk -> each one's tokens (tokens, out_dim) row-major."""
    if len(items) <= 1 or (len(items) < BATCH_MIN and all(encoder.graphs for encoder, _, _ in items)):
        return [encoder._full_output(pixels).clone() for encoder, _, pixels in items]
    report("vision_encoder", "batched-eager")  # its shape changes tick to tick: no graph to replay
    encoders = [encoder for encoder, _, _ in items]
    layout = Layout.concat([encoder.layout for encoder in encoders])
    output = _tower_pass(encoders, layout, torch.cat([pixels for _, _, pixels in items]))
    return list(output.split([encoder.num_tokens for encoder in encoders]))


def _check_batch(items: list[Item]) -> None:
    encoders = [encoder for encoder, _, _ in items]
    if len({id(encoder) for encoder in encoders}) < len(encoders):
        raise ValueError("encode_batch: an encoder appears twice; its second chunk's mode depends on the first's "
                         "result, so encode one chunk per stream per call")
    if any(encoder.visual is not encoders[0].visual for encoder in encoders):
        raise ValueError("encode_batch: the encoders wrap different vision towers; one call runs one model")
    for encoder, _, pixels in items:
        if pixels.shape[0] != encoder.num_patches:
            raise ValueError(f"encode_batch: {pixels.shape[0]} patch rows for an encoder whose grid has "
                             f"{encoder.num_patches}")
