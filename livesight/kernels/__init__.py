"""GPU ops, each with a plain-torch reference and a dispatcher that reports which path ran."""

from livesight.kernels.attention import (chunk_attention, chunk_attention_reference, fold_mask, masked_attention,
                                        masked_attention_reference, segment_attention, segment_attention_reference)
from livesight.kernels.compress import token_change, token_change_reference, token_novelty, token_novelty_reference
from livesight.kernels.retrieval import score_blocks, score_blocks_reference, select_blocks
from livesight.kernels.rope import rope_angles, rotate_keys, rotate_keys_reference, unrotate

__all__ = ["chunk_attention", "chunk_attention_reference", "fold_mask", "masked_attention",
           "masked_attention_reference", "rope_angles", "rotate_keys", "rotate_keys_reference",
           "score_blocks", "score_blocks_reference", "segment_attention", "segment_attention_reference",
           "select_blocks", "token_change", "token_change_reference", "token_novelty", "token_novelty_reference",
           "unrotate"]
