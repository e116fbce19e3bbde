"""Attention of a new chunk over the compact cache.

The queries are the last `Lq` tokens of the `Lk` keys; every cached key is visible and the new
chunk is causal within itself, aligned bottom-right (query i sees keys 0 .. Lk - Lq + i).
Rotary embeddings are already in q and k, so the buffer order of past keys does not matter.
"""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from livesight.kernels.dispatch import report

use_reference = False  # switch: route every call through the plain-torch reference


def chunk_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                              key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) -> (B, Hq, Lq, D). Math in float32.
    key_valid: (Lk,) bool, False for padding keys that no query may see."""
    num_q, num_k = q.shape[-2], k.shape[-2]
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1).float()
    v = v.repeat_interleave(groups, dim=1).float()
    scores = (q.float() @ k.transpose(-1, -2)) * scale
    rows = torch.arange(num_q, device=q.device)[:, None] + (num_k - num_q)
    visible = torch.arange(num_k, device=q.device)[None, :] <= rows
    if key_valid is not None:
        visible = visible & key_valid[None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, key_valid: torch.Tensor | None = None):
    num_q, num_k = q.shape[-2], k.shape[-2]
    mask = causal_lower_right(num_q, num_k) if num_q > 1 else None
    if key_valid is not None:
        rows = torch.arange(num_q, device=q.device)[:, None] + (num_k - num_q)
        mask = (torch.arange(num_k, device=q.device)[None, :] <= rows) & key_valid[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def chunk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch: reference when switched on; FLASH on CUDA half precision (cuDNN rebuilds a graph
    for every new key length, DESIGN.md §5); SDPA's own choice otherwise, and always with padding
    keys (key_valid given: retrieved blocks of unequal size), which FLASH cannot mask."""
    assert q.shape[-2] <= k.shape[-2], "more queries than keys"
    if use_reference:
        report("chunk_attention", "reference")
        return chunk_attention_reference(q, k, v, scale, key_valid)
    if key_valid is not None:
        report("chunk_attention", "sdpa-masked")
        return _sdpa(q, k, v, scale, key_valid)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        report("chunk_attention", "sdpa-flash")
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return _sdpa(q, k, v, scale)
    report("chunk_attention", "sdpa")
    return _sdpa(q, k, v, scale)


def headwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_s: torch.Tensor, v_s: torch.Tensor,
                       retrieval_q: torch.Tensor, streaming_q: torch.Tensor, scale: float,
                       key_valid: torch.Tensor | None = None) -> torch.Tensor:
    """A head-wise cache's layer (kvcache/headwise.py): q (1, Hq, Lq, D); the query heads `retrieval_q` attend to
    the retrieval heads' k, v (1, r, Lk, D), the query heads `streaming_q` to the streaming heads' k_s, v_s
    (1, s, Ls, D), each as chunk_attention (key_valid: the retrieval heads' padding) -> (1, Hq, Lq, D). Each
    head index lists a KV head's grouped query heads together, in the KV heads' order."""
    out = torch.empty_like(q)
    if retrieval_q.numel():
        out[:, retrieval_q] = chunk_attention(q[:, retrieval_q], k, v, scale, key_valid)
    if streaming_q.numel():
        out[:, streaming_q] = chunk_attention(q[:, streaming_q], k_s, v_s, scale)
    return out


def segment_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_segment: torch.Tensor,
                                k_segment: torch.Tensor, scale: float) -> torch.Tensor:
    """Non-causal attention within segments (the vision tower's windows or frames).
    q: (H, m, D); k, v: (H, n, D); q_segment (m,), k_segment (n,) ids -> (H, m, D). Math in float32."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    scores = scores.masked_fill(q_segment[:, None] != k_segment[None, :], float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_segment: torch.Tensor,
                      k_segment: torch.Tensor, scale: float) -> torch.Tensor:
    """One SDPA call over all segments with a block mask (transformers loops one call per window)."""
    if use_reference:
        report("segment_attention", "reference")
        return segment_attention_reference(q, k, v, q_segment, k_segment, scale)
    report("segment_attention", "sdpa-masked")
    mask = q_segment[:, None] == k_segment[None, :]
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale)[0]
