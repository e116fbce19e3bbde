"""Each GPU kernel against the path it replaced and its reference, at Qwen2.5-VL-7B's shapes, bf16, on a
GPU: the largest difference from the float32 reference and the median CUDA-event time of a CUDA-graph
replay after warm-up.

  python scripts/kernel_bench.py [--out results/speed/h100/kernels.json]

Language model: 28 query heads, 4 KV heads, head dim 128, 28 layers. Vision tower: 16 heads, head
dim 80, one 1-s chunk of two 364 x 644 frames = 1,196 patches in windows of 8 x 8 patches.
"""

import argparse
import json
import statistics

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from livesight.kernels import (chunk_attention, rotate_keys_reference, score_blocks, score_blocks_reference,
                               span_attention_reference, varlen_attention_reference)
from livesight.kernels.fused import rms_norm_reference, rms_norm_triton, rotary_reference, rotary_triton
from livesight.kernels.rope import rotate_keys_triton
from livesight.kernels.span_attention import _span_sdpa, span_attention_triton
from livesight.kernels.varlen_attention import segments_of, varlen_attention_triton

HEADS, KV_HEADS, DIM, LAYERS = 28, 4, 128, 28


def median_ms(fn, repeats: int = 50) -> float:
    """Median milliseconds of fn replayed from a CUDA graph (as the engine runs its steps: the host's
    launch cost, which would dominate these sub-millisecond ops, is left out)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 4)


def max_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return round(float((got.float() - ref.float()).abs().max()), 5)


def span_rows(dev) -> list[dict]:
    """A static step's attention, one layer: the Triton kernel over the keys that exist, the masked
    SDPA call it replaced (the whole 512-rounded span), and FLASH over exactly the valid keys."""
    rows = []
    for num_q, past in [(1, 4300), (1, 20_000), (32, 600), (320, 4300)]:
        span = -(-(past + num_q) // 512) * 512
        q = torch.randn(1, HEADS, num_q, DIM, dtype=torch.bfloat16, device=dev)
        k, v = (torch.randn(1, KV_HEADS, span, DIM, dtype=torch.bfloat16, device=dev) for _ in range(2))
        start, scale = torch.tensor([past], device=dev), DIM ** -0.5
        ref = span_attention_reference(q, k, v, scale, start)
        rows.append({"op": "span_attention", "rows": num_q, "keys": past + num_q, "span": span,
                     "error_triton": max_error(span_attention_triton(q, k, v, scale, start), ref),
                     "triton_ms": median_ms(lambda: span_attention_triton(q, k, v, scale, start)),
                     "masked_sdpa_ms": median_ms(lambda: _span_sdpa(q, k, v, scale, start, None)),
                     "flash_exact_keys_ms": median_ms(lambda: chunk_attention(q, k[:, :, :past + num_q],
                                                                              v[:, :, :past + num_q], scale))})
    return rows


def rotate_row(dev) -> dict:
    """A slide's re-rotation of every kept key: 28 layers x 4 KV heads x 5,000 tokens."""
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, DIM, 2, device=dev).float() / DIM))
    keys = torch.randn(LAYERS, 1, KV_HEADS, 5000, DIM, dtype=torch.bfloat16, device=dev)
    delta = torch.randint(-300, 300, (5000,), device=dev)
    ref = rotate_keys_reference(keys, delta, inv_freq)
    return {"op": "rotate_keys", "tokens": 5000,
            "error_triton": max_error(rotate_keys_triton(keys, delta, inv_freq), ref),
            "triton_ms": median_ms(lambda: rotate_keys_triton(keys, delta, inv_freq)),
            "torch_ms": median_ms(lambda: rotate_keys_reference(keys, delta, inv_freq))}


def varlen_rows(dev) -> list[dict]:
    """The vision tower's attention, one block: windows of 64 patches, and whole frames."""
    rows = []
    for name, lengths in [("windows", [64] * 18 + [32] * 4 + [28] * 2), ("frame", [1196])]:
        cu = torch.tensor([0] + lengths, device=dev).cumsum(0).to(torch.int32)
        n = int(cu[-1])
        q, k, v = (torch.randn(16, n, 80, dtype=torch.bfloat16, device=dev) for _ in range(3))
        segment = segments_of(cu, n)
        mask = segment[:, None] == segment[None, :]

        def masked():
            return torch.nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
        ref = varlen_attention_reference(q, k, v, cu, 80 ** -0.5)
        rows.append({"op": "varlen_attention", "segments": name, "patches": n,
                     "error_triton": max_error(varlen_attention_triton(q, k, v, cu, max(lengths), 80 ** -0.5), ref),
                     "triton_ms": median_ms(lambda: varlen_attention_triton(q, k, v, cu, max(lengths), 80 ** -0.5)),
                     "masked_sdpa_ms": median_ms(masked)})
    return rows


def score_row(dev) -> dict:
    """A question's block scoring: 12 query tokens against 3,600 offloaded blocks (an hour at 1 s)."""
    queries = torch.randn(LAYERS, HEADS, 12, DIM, dtype=torch.bfloat16, device=dev)
    reps = torch.randn(3600, LAYERS, KV_HEADS, DIM, device=dev)
    return {"op": "score_blocks", "blocks": 3600,
            "error_reduced": max_error(score_blocks(queries, reps), score_blocks_reference(queries, reps)),
            "reduced_ms": median_ms(lambda: score_blocks(queries, reps)),
            "reference_ms": median_ms(lambda: score_blocks_reference(queries, reps))}


def fused_rows(dev) -> list[dict]:
    """One layer's RMSNorm and rotary, at a decode step (1 row) and a chunk (320 rows)."""
    rows = []
    for n in (1, 320):
        x = torch.randn(n, 3584, dtype=torch.bfloat16, device=dev)
        weight = torch.randn(3584, dtype=torch.bfloat16, device=dev)
        rows.append({"op": "rms_norm", "rows": n, "error_triton": max_error(rms_norm_triton(x, weight, 1e-6),
                                                                            rms_norm_reference(x, weight, 1e-6)),
                     "triton_ms": median_ms(lambda: rms_norm_triton(x, weight, 1e-6)),
                     "transformers_ms": median_ms(lambda: rms_norm_reference(x, weight, 1e-6))})
        q = torch.randn(1, n, HEADS, DIM, dtype=torch.bfloat16, device=dev).transpose(1, 2)
        k = torch.randn(1, n, KV_HEADS, DIM, dtype=torch.bfloat16, device=dev).transpose(1, 2)
        cos, sin = (torch.randn(1, n, DIM, dtype=torch.bfloat16, device=dev) for _ in range(2))
        rows.append({"op": "rotary", "rows": n,
                     "error_triton": max_error(rotary_triton(q, k, cos, sin)[0], rotary_reference(q, k, cos, sin)[0]),
                     "triton_ms": median_ms(lambda: rotary_triton(q, k, cos, sin)),
                     "transformers_ms": median_ms(lambda: rotary_reference(q, k, cos, sin))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/speed/h100/kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("kernel_bench: needs a CUDA GPU")
    torch.manual_seed(0)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        rows = span_rows("cuda") + [rotate_row("cuda")] + varlen_rows("cuda") + [score_row("cuda")] + \
            fused_rows("cuda")
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
