"""GPU ops, each with a plain-torch reference and a dispatcher that reports which path ran."""

from livesight.kernels.attention import chunk_attention, chunk_attention_reference
from livesight.kernels.rope import rotate_keys, rotate_keys_reference

__all__ = ["chunk_attention", "chunk_attention_reference", "rotate_keys", "rotate_keys_reference"]
