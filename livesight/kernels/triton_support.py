"""Where the Triton kernels run: compiled on a GPU, or interpreted on the CPU when TRITON_INTERPRET=1
is set before this package is imported (the tests do; triton.jit reads it when a kernel is defined)."""

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def on_gpu(x: torch.Tensor) -> bool:
    """Whether a dispatcher takes the Triton path for `x`: CUDA tensors only; the CPU keeps torch
    (the interpreter is for checking the kernels, and far too slow to serve)."""
    return x.is_cuda and not interpreting()


def half_on_gpu(x: torch.Tensor) -> bool:
    """on_gpu, in half precision: the attention and fused kernels' Triton paths (float32 keeps torch)."""
    return on_gpu(x) and x.dtype in (torch.float16, torch.bfloat16)


def check_device(x: torch.Tensor) -> None:
    """A Triton launcher's guard: a CUDA tensor, or any tensor under the interpreter."""
    assert x.is_cuda or interpreting(), "Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)"


def dot_type(dtype: torch.dtype):
    """The operand type for tl.dot: the tensor's own, except bfloat16 under the interpreter, whose
    bf16 dot returns garbage (triton 3.8); there the operands go through float32."""
    if dtype == torch.bfloat16:
        return tl.float32 if interpreting() else tl.bfloat16
    return {torch.float16: tl.float16, torch.float32: tl.float32}[dtype]


@triton.jit
def online_softmax_step(s, v, m_i, l_i, acc, DOT: tl.constexpr):
    """One key block of flash attention: scores s (M, N), scaled for exp2 and -inf where masked, and
    values v (N, D) -> the running row max, softmax denominator and unnormalised output."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that has seen no key yet
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v.to(DOT), input_precision="ieee")
    return m_new, l_i, acc
