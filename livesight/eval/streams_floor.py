"""The physical floor of serving N live streams: a small, labelled estimate printed beside the measurement.

Per chunk period every stream needs: its share of the weight reads (one read per LM step serves all
streams: a prefill step and one step per narrated token), its own KV reads at each decode step, its
prefill FLOPs (matmuls and attention over its cache) and its vision tower FLOPs (the share of the
grid encoded: reuse skips the rest). At the given bandwidth and FLOP rate, perfectly overlapped:

    period >= (narrate_tokens + 1) * weights / BW + N * (narrate_tokens * kv / BW + flops / F)

which bounds N. The inputs per stream (tokens prefilled, cache length, share encoded) are the run's
own means.
"""

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livesight.kvcache.duo import DuoHeads
    from livesight.models.qwen2_5_vl import QwenVLAdapter


def model_facts(adapter: "QwenVLAdapter", size: tuple[int, int], frames_per_chunk: int,
                kv_dtype: str = "model", duo: "DuoHeads | None" = None) -> dict:
    """What the floor needs of the model: bytes one decode step reads (the layers and the output
    head; the embedding is a lookup), matmul parameters, KV bytes per token (fp8: codes and scales; duo: of the
    retrieval heads, the streaming heads' few hundred slots left out), the vision tower's size and patch rows
    per chunk."""
    heads = adapter.num_layers * adapter.num_kv_heads - (0 if duo is None else int(duo.streaming.sum()))
    lm, itemsize = adapter.language_model, adapter.dtype.itemsize
    layers = sum(p.numel() for p in lm.layers.parameters())
    head = sum(p.numel() for p in adapter.lm_head.parameters()) + sum(p.numel() for p in lm.norm.parameters())
    grid_t, grid_h, grid_w = adapter.patch_grid(size, frames_per_chunk)
    return {"decode_bytes": (layers + head) * itemsize, "lm_params": layers,
            "kv_bytes_per_token": 2 * heads * (adapter.head_dim + 4 if kv_dtype == "fp8"
                                               else adapter.head_dim * itemsize),
            "attention_width": adapter.num_layers * lm.config.num_attention_heads * adapter.head_dim,
            "vision_params": sum(p.numel() for p in adapter.visual.parameters()),
            "vision_rows": grid_t * grid_h * grid_w}


def floor(facts: dict, narrate_tokens: int, means: dict, chunk_s: float, bandwidth_tbs: float,
          peak_tflops: float) -> dict:
    """-> per chunk period: the weight reads all streams share, each stream's own time by part, and
    the most streams that fit (None when the inputs are missing)."""
    bandwidth, rate = bandwidth_tbs * 1e12, peak_tflops * 1e12
    tokens_in, kv, encoded = means["tokens_in"], means["kv_tokens"], means["encoded_share"]
    if any(math.isnan(x) for x in (tokens_in, kv, encoded)):
        return {"max_streams": None}
    shared = (narrate_tokens + 1) * facts["decode_bytes"] / bandwidth
    parts = {"kv_reads_ms": narrate_tokens * kv * facts["kv_bytes_per_token"] / bandwidth * 1000,
             "prefill_ms": (2 * facts["lm_params"] * tokens_in + 4 * tokens_in * kv * facts["attention_width"])
             / rate * 1000,
             "vision_ms": 2 * facts["vision_params"] * facts["vision_rows"] * encoded / rate * 1000}
    per_stream = sum(parts.values()) / 1000
    most = max(0, math.floor((chunk_s - shared) / per_stream)) if per_stream > 0 else None
    return {"weights_gb": round(facts["decode_bytes"] / 1e9, 2), "shared_ms": round(shared * 1000, 2),
            "per_stream_ms": round(per_stream * 1000, 3), **{k: round(v, 3) for k, v in parts.items()},
            "max_streams": most, "bandwidth_tbs": bandwidth_tbs, "peak_tflops": peak_tflops}
