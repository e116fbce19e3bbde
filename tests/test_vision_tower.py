"""vision/tower.py: the aligned tower computes what transformers' does (fp32, CPU), whatever its widths."""

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from livesight.models.configs import random_config
from livesight.vision.encoder import VisionEncoder, _full_outputs
from livesight.vision.tower import ALIGN, PatchLinear, align_tower


def tiny_tower(mlp_width: int):
    config = random_config("tiny-random")
    config.vision_config.intermediate_size = mlp_width
    torch.manual_seed(1)
    return Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32).model.visual.eval()


def tower_output(visual, pixels: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    encoder = VisionEncoder(visual, grid, None, graphs=False, partial=False)
    return _full_outputs([(encoder, None, pixels), (VisionEncoder(visual, grid, None, graphs=False, partial=False),
                                                    None, pixels.flip(0))])[0]  # a batched pass of two chunks


def test_aligned_tower_equals_transformers():
    visual = tiny_tower(60)  # 60 * 2 bytes is not a multiple of 16 in half precision
    grid = (1, 8, 12)
    pixels = torch.randn(grid[0] * grid[1] * grid[2], visual.patch_embed.proj.weight[0].numel())
    with torch.inference_mode():
        before = tower_output(visual, pixels, grid).clone()
        changed = align_tower(visual)
        after = tower_output(visual, pixels, grid)
    assert changed == {"patch_embed": 1, "mlp_width": ALIGN}
    assert isinstance(visual.patch_embed, PatchLinear)
    assert all(block.mlp.gate_proj.weight.shape[0] % ALIGN == 0 for block in visual.blocks)
    assert all(block.mlp.down_proj.weight.shape[1] % ALIGN == 0 for block in visual.blocks)
    assert torch.allclose(after, before, rtol=1e-5, atol=1e-6), float((after - before).abs().max())


def test_align_is_idempotent_and_leaves_aligned_widths():
    visual = tiny_tower(64)
    first = align_tower(visual)
    assert first == {"patch_embed": 1, "mlp_width": 0}
    assert align_tower(visual) == {"patch_embed": 0, "mlp_width": 0}
    assert visual.blocks[0].mlp.gate_proj.weight.shape[0] == 64
