"""Where a stream's chunk waits on the GPU: the host-device synchronizations of one narrated chunk, by the line of
LiveSight's code that makes them, for each KV variant (the model's dtype, --kv-dtype fp8, --duo with half the heads
streaming). The engine reads the generated ids every STOP_CHECK_EVERY tokens and once at a chunk's end; any other
wait stalls the host while the GPU drains, so the next step is not ready when the GPU finishes this one.

    python scripts/decode_sync_probe.py [--model tiny-random] [--chunks 4] [--narrate-tokens 20] [--out FILE]

CUDA only (torch.cuda.set_sync_debug_mode). Gates for --duo are random (seed 0): which heads stream does not
change where the code waits.
"""

import argparse
import collections
import dataclasses
import json
import os
import tempfile
import traceback
import warnings

import numpy as np
import torch

from livesight.models.registry import load_adapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import SessionConfig
from livesight.streaming.session import Session

FPS, SIZE = 2.0, (224, 224)


def random_gates(adapter, folder: str) -> str:
    gates = torch.rand(adapter.num_layers, adapter.num_kv_heads, generator=torch.Generator().manual_seed(0))
    with open(os.path.join(folder, "duo_gates.json"), "w") as f:
        json.dump({"gates": gates.tolist(), "settings": {"sink": 4, "recent": 64}}, f)
    return folder


def own_frame(stack: list) -> str:
    """The innermost line of LiveSight's package on the stack, and the line that reached it from the step."""
    mine = [f for f in stack if "/livesight/" in f.filename]
    return " <- ".join(f"{f.filename.split('/livesight/')[-1]}:{f.lineno} {f.line}" for f in mine[-1:-3:-1])


def probe(adapter, config: SessionConfig, chunks: int) -> dict:
    session = Session(adapter, config, SIZE)
    frames = np.random.default_rng(0).integers(0, 255, (chunks + 1, 2, *SIZE, 3), dtype=np.uint8)
    chunk = lambda i: Chunk(frames[i], float(i), float(i + 1), i)  # noqa: E731
    for i in range(chunks):  # warm-up: graphs captured, buffers made
        session.add_chunk(chunk(i))
    sites: collections.Counter = collections.Counter()

    def seen(message, *args, **kwargs) -> None:  # called where the op warns: the stack is the op's caller's
        if "synchroniz" in str(message):
            sites[own_frame(traceback.extract_stack()[:-1])] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = seen
        torch.cuda.set_sync_debug_mode("warn")
        try:
            events = session.add_chunk(chunk(chunks))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    m = events[-1].data
    session.close()
    return {"syncs": sum(sites.values()), "sites": dict(sites.most_common()), "tokens_out": m["tokens_out"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--narrate-tokens", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    adapter = load_adapter(args.model, "cuda")
    base = SessionConfig(fps=FPS, narrate=True, narrate_tokens=args.narrate_tokens)
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        variants = {"model": {}, "fp8": {"kv_dtype": "fp8"},
                    "duo": {"duo_gates": random_gates(adapter, folder), "duo_sparsity": 0.5}}
        for name, changes in variants.items():
            result[name] = probe(adapter, dataclasses.replace(base, **changes), args.chunks)
            print(name, json.dumps(result[name], indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
