"""The span kernel on 8-bit keys and values against bf16 ones, and with half the KV heads streaming (DuoAttention: both
kinds in one launch), at Qwen2.5-VL-7B's decode shapes (one row, 28 query heads over 4 KV heads, head dim 128), on
a GPU: median CUDA-event time of a CUDA-graph replay after warm-up, per layer, beside the bytes it must read over
the copy bandwidth measured on the same GPU. Also a decode step's write of one layer's new key and value in 8 bits:
the one-launch kernel (kernels/quant.py: quantize_into) against the torch ops it replaced.

  python scripts/kv_kernel_bench.py [--keys 2048,8192] [--out FILE]
"""

import argparse
import json

import torch

from livesight.kernels.quant import quantize, quantize_into_reference, quantize_into_triton
from livesight.kernels.span_attention import Fp8Span, StreamingSpan, span_attention_triton
from kernel_bench import DIM, HEADS, KV_HEADS, median_ms


def copy_bandwidth() -> float:
    """Bytes per second of a 1 GiB device-to-device copy (read + write)."""
    a = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * a.numel() / (median_ms(lambda: b.copy_(a), 20) / 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", default="2048,8192")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bandwidth = copy_bandwidth()
    rows = []
    for num_keys in (int(n) for n in args.keys.split(",")):
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, HEADS, 1, DIM, device="cuda", generator=g, dtype=torch.bfloat16)
        k = torch.randn(1, KV_HEADS, num_keys, DIM, device="cuda", generator=g, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        (ck, sk), (cv, sv) = quantize(k), quantize(v)
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, DIM, 2, device="cuda").float() / DIM))
        start = torch.tensor([num_keys - 1], device="cuda")
        for shift_kind in ("zero", "moved"):
            shift = torch.zeros(num_keys, dtype=torch.int64, device="cuda")
            if shift_kind == "moved":
                shift.random_(-4000, 4000, generator=g)
            angle = shift[:, None].double() * inv_freq.double()[None, :]
            fp8 = Fp8Span(sk, sv, shift, inv_freq, angle.cos().half(), angle.sin().half())
            plain_ms = median_ms(lambda: span_attention_triton(q, k, v, 0.088, start))
            fp8_ms = median_ms(lambda: span_attention_triton(q, ck, cv, 0.088, start, None, fp8))
            plain_bytes = k.nbytes + v.nbytes
            fp8_bytes = ck.nbytes + cv.nbytes + sk.nbytes + sv.nbytes + fp8.cos.nbytes + fp8.sin.nbytes
            rows.append({"keys": num_keys, "shift": shift_kind, "bf16_us": round(plain_ms * 1000, 2),
                         "fp8_us": round(fp8_ms * 1000, 2), "bf16_floor_us": round(plain_bytes / bandwidth * 1e6, 2),
                         "fp8_floor_us": round(fp8_bytes / bandwidth * 1e6, 2)})
            print(rows[-1], flush=True)
        # half the KV heads streaming: 2 retrieval heads over the span, 2 streaming heads over sink 4 + ring 72
        window = 4 + 72
        ks, vs = k[:, :2, :window + 1].contiguous(), v[:, :2, :window + 1].contiguous()
        held = torch.zeros(window + 1, dtype=torch.bfloat16, device="cuda")
        streaming = StreamingSpan(ks, vs, held, window, torch.tensor([0, 2, 1, 3], dtype=torch.int32, device="cuda"),
                                  *(torch.arange(a, a + 7, device="cuda") for a in (0, 7)))
        half_ms = median_ms(lambda: span_attention_triton(q, k[:, :2], v[:, :2], 0.088, start, None, None, streaming))
        rows.append({"keys": num_keys, "duo_half_us": round(half_ms * 1000, 2),
                     "duo_half_floor_us": round((k.nbytes + v.nbytes) / 2 / bandwidth * 1e6, 2)})
        print(rows[-1], flush=True)
    # one decode step's write of a layer's key and value (4 KV heads) into an 8-bit cache of 8,192 slots
    new_k, new_v = (torch.randn(KV_HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    targets = tuple(torch.zeros(1, KV_HEADS, 8192, width, dtype=dtype, device="cuda")
                    for width, dtype in ((DIM, torch.uint8), (1, torch.float32)) * 2)
    slot = torch.tensor([4000], device="cuda")
    write = {"torch_us": median_ms(lambda: quantize_into_reference(new_k, new_v, targets, None, slot)) * 1000,
             "kernel_us": median_ms(lambda: quantize_into_triton(new_k, new_v, targets, None, slot)) * 1000}
    rows.append({"fp8_write_one_token": {name: round(us, 2) for name, us in write.items()}})
    print(rows[-1], flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
