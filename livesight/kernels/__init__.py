"""GPU ops, each with a plain-torch reference and a dispatcher that reports which path ran."""

from livesight.kernels.attention import (chunk_attention, chunk_attention_reference, headwise_attention,
                                        segment_attention, segment_attention_reference)
from livesight.kernels.compress import token_change, token_change_reference, token_novelty, token_novelty_reference
from livesight.kernels.retrieval import score_blocks, score_blocks_reference, select_blocks
from livesight.kernels.rope import rope_angles, rotate_keys, rotate_keys_reference, unrotate
from livesight.kernels.slab_attention import (SlabPlan, slab_attention, slab_attention_reference, slab_plan,
                                             slab_plan_blocks)
from livesight.kernels.span_attention import span_attention, span_attention_reference
from livesight.kernels.varlen_attention import (VISION_ATTENTION_NAME, varlen_attention, varlen_attention_reference,
                                               vision_attention)

__all__ = ["SlabPlan", "VISION_ATTENTION_NAME", "chunk_attention", "chunk_attention_reference", "headwise_attention", "rope_angles",
           "rotate_keys", "rotate_keys_reference", "score_blocks", "score_blocks_reference", "segment_attention",
           "segment_attention_reference", "select_blocks", "slab_attention", "slab_attention_reference", "slab_plan",
           "slab_plan_blocks", "span_attention", "span_attention_reference", "token_change", "token_change_reference",
           "token_novelty", "token_novelty_reference", "unrotate", "varlen_attention", "varlen_attention_reference",
           "vision_attention"]
