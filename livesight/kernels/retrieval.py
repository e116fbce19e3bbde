"""Scoring offloaded blocks against a question's queries, with one top-k over all layers at once
(each layer its own, or one set for all)."""

import torch

from livesight.kernels.dispatch import report


def score_blocks_reference(queries: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
    """queries: (L, Hq, nq, D) before rotary; representatives: (B, L, Hkv, D) -> scores (L, B):
    the mean over query heads and tokens of q . r, each query head against its KV head."""
    num_layers, num_q_heads, num_q, dim = queries.shape
    num_kv = representatives.shape[2]
    grouped = queries.float().reshape(num_layers, num_kv, (num_q_heads // num_kv) * num_q, dim)
    return torch.einsum("lhqd,blhd->lb", grouped, representatives.float()) / (num_q_heads * num_q)


def select_blocks(scores: torch.Tensor, top_k: int, scope: str) -> torch.Tensor:
    """scores: (L, B) -> chosen block indices (L, k) sorted ascending (time order); with scope
    'global' every layer gets the same k blocks, the best by score summed over layers."""
    report("select_blocks", "torch")
    k = min(top_k, scores.shape[1])
    if scope == "global":
        chosen = scores.sum(0).topk(k).indices.expand(scores.shape[0], k)
    elif scope == "layer":
        chosen = scores.topk(k, dim=1).indices
    else:
        raise ValueError(f"retrieve scope must be 'layer' or 'global', got {scope!r}")
    return chosen.sort(dim=1).values


def score_blocks(queries: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
    """The reference's scores with the mean over query heads and tokens taken first (q . r is linear
    in q), so every block of every layer is scored by one batched product: (L, B, Hkv*D) @ (L, Hkv*D, 1)."""
    report("score_blocks", "torch-reduced")
    num_layers, num_q_heads, num_q, dim = queries.shape
    num_kv = representatives.shape[2]
    mean = queries.float().reshape(num_layers, num_kv, -1, dim).sum(2) / (num_q_heads * num_q)  # (L, Hkv, D)
    reps = representatives.float().reshape(representatives.shape[0], num_layers, -1).transpose(0, 1)  # (L, B, Hkv*D)
    return torch.bmm(reps, mean.reshape(num_layers, -1, 1)).squeeze(2)
