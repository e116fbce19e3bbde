"""The vision tower's full pass on the GPU, as transformers lays it out and aligned (vision/tower.py):
milliseconds per chunk for one chunk replayed from its CUDA graph and for B chunks in one batched
pass, CUDA events, median of --repeats after warm-up; the largest difference between the two
towers' outputs; and the top kernels of the batched pass of each.

    python scripts/vision_tower_probe.py --model random-7b --batches 1,32,96
"""

import argparse
import copy
import statistics

import numpy as np
import torch

from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.models.loader import load_model
from livesight.vision.encoder import VisionEncoder, _full_outputs
from livesight.vision.synthetic import render


def timed(fn, repeats: int) -> float:
    """Median milliseconds of fn() over `repeats` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random-7b")
    p.add_argument("--batches", default="1,32,96")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", default="336x616", help="frame height x width, patch-aligned")
    p.add_argument("--profile", action="store_true", help="top kernels of the largest batch, each tower")
    args = p.parse_args()
    loaded = load_model(args.model, "cuda")
    plain = copy.deepcopy(loaded.model.model.visual)  # before the adapter aligns the model's own
    adapter = QwenVLAdapter(loaded)
    height, width = (int(x) for x in args.size.split("x"))
    frames = torch.from_numpy(np.stack([render(t / 2, width, height, "busy") for t in range(2)]))
    _, pixels = adapter.to_pixels(frames, (height, width))
    grid = adapter.patch_grid((height, width), 2)
    towers = {"transformers": plain, "aligned": adapter.visual}
    outputs = {}
    for b in (int(x) for x in args.batches.split(",")):
        for name, visual in towers.items():
            encoders = [VisionEncoder(visual, grid, None, graphs=b == 1, partial=False) for _ in range(b)]
            items = [(encoder, None, pixels) for encoder in encoders]
            ms = timed(lambda: _full_outputs(items), args.repeats)
            outputs[name] = _full_outputs(items)[0].float()
            mode = "graph" if b == 1 else "batched"
            print(f"{name:12s} B={b:3d} ({mode}): {ms:8.2f} ms, {ms / b:6.2f} ms per chunk", flush=True)
            if args.profile and b == max(int(x) for x in args.batches.split(",")):
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    _full_outputs(items)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=70))
        diff = (outputs["aligned"] - outputs["transformers"]).abs().max() / outputs["transformers"].abs().max()
        print(f"B={b}: aligned vs transformers, max |diff| / max |output| = {float(diff):.2e}")
    patches = pixels.shape[0]
    flops = 2 * sum(p.numel() for p in plain.parameters()) * patches
    print(f"floor: {flops / 1e12:.2f} TFLOP per chunk ({patches} patches) -> {flops / 790e12 * 1e3:.2f} ms at 790 TFLOP/s")


if __name__ == "__main__":
    main()
