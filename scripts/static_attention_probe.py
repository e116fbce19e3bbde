"""Where a static step's time goes: the masked attention it runs (fixed key span, folded grouped
heads, memory-efficient kernel) against FLASH over exactly the valid keys, at Qwen2.5-VL-7B's
shapes (28 query heads, 4 KV heads, head dim 128), bf16, on a GPU. Medians of CUDA-event timings."""

import statistics

import torch

from livesight.kernels import chunk_attention, fold_mask, masked_attention

HEADS, KV_HEADS, DIM, LAYERS, KEY_BLOCK = 28, 4, 128, 28, 512


def median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    dt, dev = torch.bfloat16, "cuda"
    for rows, past in [(320, 4300), (32, 600), (1, 4300)]:
        span = -(-(past + rows) // KEY_BLOCK) * KEY_BLOCK
        q = torch.randn(1, HEADS, rows, DIM, dtype=dt, device=dev)
        k, v = (torch.randn(1, KV_HEADS, span, DIM, dtype=dt, device=dev) for _ in range(2))
        visible = torch.arange(span, device=dev)[None, :] <= (past + torch.arange(rows, device=dev))[:, None]
        bias = fold_mask(visible, HEADS // KV_HEADS, dt)
        scale = DIM ** -0.5
        masked = median_ms(lambda: masked_attention(q, k, v, scale, bias))
        flash = median_ms(lambda: chunk_attention(q, k[:, :, :past + rows], v[:, :, :past + rows], scale))
        fold = median_ms(lambda: fold_mask(visible, HEADS // KV_HEADS, dt))
        print(f"rows {rows:4d}, keys {past + rows:5d} (span {span}): masked {masked:.3f} ms/layer "
              f"({masked * LAYERS:.1f} per step), flash {flash:.3f} ({flash * LAYERS:.1f}), fold_mask {fold:.3f} once")


if __name__ == "__main__":
    main()
