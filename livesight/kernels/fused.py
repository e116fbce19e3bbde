"""The language model's small per-layer ops as one kernel each: RMSNorm and the rotary embedding of
queries and keys. transformers runs them as 8 and 10 elementwise kernels per layer; at a decode step,
where the matmuls only read weights, those ~500 launches of a few microseconds each cost about as much
as the attention (results/speed/h100/profile_narrate.txt). Both kernels follow transformers'
rounding steps (float32 math, rounded to the input's type where transformers rounds); a fused
multiply-add may skip one, so results agree to a rounding step.
"""

import torch
import triton
import triton.language as tl
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from livesight.kernels.dispatch import report
from livesight.kernels.triton_support import check_device, half_on_gpu

use_reference = False  # switch: route every call through the plain-torch reference


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., d), weight (d,) -> (..., d): transformers' Qwen2RMSNorm, op for op."""
    hidden = x.float()
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return weight * hidden.to(x.dtype)


@triton.jit
def _rms_kernel(X, W, Out, stride_x, stride_o, num_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < num_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    y = x * (1.0 / tl.sqrt(tl.sum(x * x, 0) / num_cols + eps))
    w = tl.load(W + cols, mask=mask, other=0.0)
    out = w.to(tl.float32) * y.to(X.dtype.element_ty).to(tl.float32)
    tl.store(Out + row * stride_o + cols, out.to(Out.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    check_device(x)
    rows = x.reshape(-1, x.shape[-1])
    assert rows.stride(-1) == 1 and weight.dtype == x.dtype
    out = torch.empty_like(rows)
    _rms_kernel[(rows.shape[0],)](rows, weight, out, rows.stride(0), out.stride(0), rows.shape[1], eps,
                                  BLOCK=triton.next_power_of_2(rows.shape[1]))
    return out.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Dispatch: Triton on a GPU in half precision, the reference otherwise."""
    if half_on_gpu(x) and not use_reference:
        report("rms_norm", "triton")
        return rms_norm_triton(x, weight, eps)
    report("rms_norm", "reference")
    return rms_norm_reference(x, weight, eps)


# q (B, Hq, n, D), k (B, Hkv, n, D), cos and sin (B, n, D) -> q, k rotated (rotate-half layout):
# transformers' own function, taken when this module is imported, before an adapter routes
# transformers' Qwen2.5-VL code to `rotary` below
rotary_reference = apply_rotary_pos_emb


@triton.jit
def _rotary_kernel(X, Cos, Sin, Out, stride_h, stride_t, num_tokens, HALF: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_H: tl.constexpr):
    """One head's BLOCK_T tokens; out = x * cos + rotate_half(x) * sin, each product and the sum
    rounded to x's type as transformers' bf16 ops round them."""
    head, block = tl.program_id(0), tl.program_id(1)
    t = block * BLOCK_T + tl.arange(0, BLOCK_T)
    j = tl.arange(0, BLOCK_H)
    mask = (t < num_tokens)[:, None] & (j < HALF)[None, :]
    dtype = X.dtype.element_ty
    base = X + head * stride_h + t[:, None] * stride_t + j[None, :]
    x1 = tl.load(base, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=mask, other=0.0).to(tl.float32)
    table = t[:, None] * (2 * HALF) + j[None, :]
    c1 = tl.load(Cos + table, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(Cos + table + HALF, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(Sin + table, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(Sin + table + HALF, mask=mask, other=0.0).to(tl.float32)
    first = (x1 * c1).to(dtype).to(tl.float32) + (-x2 * s1).to(dtype).to(tl.float32)
    second = (x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)
    out = Out + (head * num_tokens + t[:, None]) * (2 * HALF) + j[None, :]
    tl.store(out, first.to(dtype), mask=mask)
    tl.store(out + HALF, second.to(dtype), mask=mask)


def _rotate_triton(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (1, H, n, D), any head and token strides -> (1, H, n, D) contiguous."""
    _, heads, num_tokens, dim = x.shape
    assert x.stride(-1) == 1
    out = torch.empty(1, heads, num_tokens, dim, dtype=x.dtype, device=x.device)
    block_t = 16
    _rotary_kernel[(heads, -(-num_tokens // block_t))](x, cos, sin, out, x.stride(1), x.stride(2), num_tokens,
                                                      HALF=dim // 2, BLOCK_T=block_t,
                                                      BLOCK_H=triton.next_power_of_2(dim // 2))
    return out


def rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_device(q)
    assert q.shape[0] == 1 and cos.dtype == q.dtype
    cos, sin = cos.contiguous(), sin.contiguous()
    return _rotate_triton(q, cos, sin), _rotate_triton(k, cos, sin)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
           unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch, with transformers' apply_rotary_pos_emb signature: Triton on a GPU in half precision
    for one sequence, the reference otherwise."""
    assert unsqueeze_dim == 1, "q and k arrive as (B, H, n, D)"
    if half_on_gpu(q) and q.shape[0] == 1 and not use_reference:
        report("rotary", "triton")
        return rotary_triton(q, k, cos, sin)
    report("rotary", "reference")
    return rotary_reference(q, k, cos, sin)
