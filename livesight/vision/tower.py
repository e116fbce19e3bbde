"""The vision tower's modules in shapes a GPU runs fast, same math.

- Qwen2.5-VL's tower MLP is 3,420 wide: a row of 3,420 bf16 values is not a multiple of 16 bytes, so
  cuBLAS cannot use the Hopper GEMM kernels for it and falls back to slower ones. Padding the
  intermediate width with zero units (zero weights and bias in, zero columns out) changes no output:
  each extra unit is act(0) * 0 = 0.
- The patch embedding is a Conv3d whose kernel equals its stride, i.e. one linear map of each patch
  row; cuDNN runs it as an implicit-GEMM convolution several times slower than the GEMM itself.

Applied to the model instance (its modules swapped or resized in place), on CUDA only: on the CPU the
tower stays exactly transformers' (the reference the exactness tests compare against).
"""

import torch
from torch import nn

ALIGN = 64  # elements: any multiple of 8 satisfies the 16-byte rule; 64 also fills the GEMM tiles


class PatchLinear(nn.Module):
    """A kernel == stride Conv3d patch embedding as one GEMM over the patch rows (`proj`, as transformers
    names the conv)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        assert conv.kernel_size == conv.stride and conv.padding == (0, 0, 0), "only a patchifying Conv3d is a GEMM"
        weight = conv.weight.detach()
        self.proj = nn.Linear(weight[0].numel(), conv.out_channels, bias=conv.bias is not None,
                              device=weight.device, dtype=weight.dtype)
        self.proj.weight = nn.Parameter(weight.reshape(conv.out_channels, -1), requires_grad=False)
        if conv.bias is not None:
            self.proj.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (patches, C * T * P * P), each row one patch in the conv's (C, T, P, P) order -> (patches, dim)."""
        return self.proj(pixels.to(self.proj.weight.dtype))


def _pad_rows(linear: nn.Linear, rows: int) -> None:
    """Append zero output units to `linear` (weight rows, bias entries)."""
    extra = rows - linear.out_features
    weight = linear.weight.detach()
    linear.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(extra, weight.shape[1])]), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.cat([linear.bias.detach(), linear.bias.new_zeros(extra)]), requires_grad=False)
    linear.out_features = rows


def _pad_columns(linear: nn.Linear, columns: int) -> None:
    """Append zero input columns to `linear`: the padded inputs it reads are multiplied by zero."""
    weight = linear.weight.detach()
    extra = columns - linear.in_features
    linear.weight = nn.Parameter(torch.cat([weight, weight.new_zeros(weight.shape[0], extra)], dim=1),
                                 requires_grad=False)
    linear.in_features = columns


def align_tower(visual: nn.Module) -> dict[str, int]:
    """Make a Qwen2.5-VL vision tower's GEMMs Hopper-friendly, in place, outputs unchanged (see the
    module's docstring) -> what changed: {"patch_embed": 1 if swapped, "mlp_width": the padded width}."""
    changed = {"patch_embed": 0, "mlp_width": 0}
    conv = getattr(visual.patch_embed, "proj", None)
    if isinstance(conv, nn.Conv3d):
        visual.patch_embed = PatchLinear(conv)  # takes and returns what transformers' patch embedding does
        changed["patch_embed"] = 1
    for block in visual.blocks:
        mlp = block.mlp
        width = mlp.gate_proj.out_features
        if width % ALIGN == 0:
            continue
        probe = torch.zeros(1, dtype=torch.float32)
        assert float(mlp.act_fn(probe)) == 0.0, "zero padding needs act(0) = 0"
        padded = -(-width // ALIGN) * ALIGN
        _pad_rows(mlp.gate_proj, padded)
        _pad_rows(mlp.up_proj, padded)
        _pad_columns(mlp.down_proj, padded)
        changed["mlp_width"] = padded
    return changed
