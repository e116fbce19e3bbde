"""The similarity math of visual-token compression: how much each token's pixels changed (encoder
reuse) and how new each token's embedding is against what the model already has (pruning).

A "token" is one language-model visual token: a merge x merge block of patches over `temporal`
frames, i.e. a (temporal, 3, unit, unit) cube of pixels with unit = patch * merge.
"""

import torch
import torch.nn.functional as F

from livesight.kernels.dispatch import report

use_reference = False  # switch: route every call through the plain-torch reference


def token_change_reference(frames: torch.Tensor, ref: torch.Tensor, unit: int, temporal: int) -> torch.Tensor:
    """frames, ref: (T, 3, H, W) in [0, 1], T a multiple of `temporal`, H and W of `unit`
    -> (T / temporal * H / unit * W / unit,) mean |frames - ref| per token, row-major (t, h, w)."""
    num_frames, channels, height, width = frames.shape
    diff = (frames.double() - ref.double()).abs()
    diff = diff.reshape(num_frames // temporal, temporal, channels, height // unit, unit, width // unit, unit)
    return diff.mean(dim=(1, 2, 4, 6)).reshape(-1).float()


def token_change(frames: torch.Tensor, ref: torch.Tensor, unit: int, temporal: int) -> torch.Tensor:
    """token_change_reference's result through one fused channel mean and one average pool."""
    if use_reference:
        report("token_change", "reference")
        return token_change_reference(frames, ref, unit, temporal)
    report("token_change", "torch-pool")
    num_frames, channels, height, width = frames.shape
    diff = (frames - ref).abs().reshape(num_frames // temporal, temporal * channels, height, width).mean(dim=1)
    return F.avg_pool2d(diff[:, None], unit).reshape(-1).float()


def token_novelty_reference(tokens: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """tokens: (n, d); references: (R, n, d), what position i already looked like in R ways
    -> (n,) 1 - max_r cos(tokens[i], references[r, i]), in [0, 2]. A zero reference counts as cos 0."""
    sims = torch.stack([F.cosine_similarity(tokens.double(), ref.double(), dim=-1, eps=1e-12) for ref in references])
    return (1 - sims.max(dim=0).values).float()


def token_novelty(tokens: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """token_novelty_reference's result from one normalisation and one batched product, in float32."""
    if use_reference:
        report("token_novelty", "reference")
        return token_novelty_reference(tokens, references)
    report("token_novelty", "torch-fused")
    unit_tokens = F.normalize(tokens.float(), dim=-1, eps=1e-12)
    unit_refs = F.normalize(references.float(), dim=-1, eps=1e-12)
    return 1 - torch.einsum("nd,rnd->rn", unit_tokens, unit_refs).max(dim=0).values
