"""Where a chunk's host and GPU time go: the engine on random-7b (the bench speed defaults) for a
number of chunks, the last ones under torch.profiler, with the engine's stages marked.

  python scripts/profile_engine.py [--chunks 60] [--profiled 20] [--narrate-tokens 0]
"""

import argparse
import functools

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from livesight.eval.speed import SpeedConfig
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.chunker import chunk_frames
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.models.loader import load_model
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session
from livesight.vision.sources import SyntheticSource


def marked(obj, name: str) -> None:
    """Wrap obj.name so that its calls show as one range in the profile."""
    fn = getattr(obj, name)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function(f"stage:{type(obj).__name__}.{name}"):
            return fn(*args, **kwargs)
    object.__setattr__(obj, name, wrapper)  # frozen dataclasses too (the policy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=60)
    parser.add_argument("--profiled", type=int, default=20)
    parser.add_argument("--narrate-tokens", type=int, default=0)
    args = parser.parse_args()
    cfg = SpeedConfig()
    adapter = QwenVLAdapter(load_model(cfg.model, "cuda"))
    config = SessionConfig(fps=cfg.fps, vision_window_s=cfg.window_s, narrate=args.narrate_tokens > 0,
                           narrate_tokens=args.narrate_tokens, compression=CompressionConfig(),
                           retrieval=RetrievalConfig(ram_gb=32.0, disk_gb=0.0))
    session = Session(adapter, config, (cfg.height, cfg.width))
    for obj, names in [(session, ["_generate", "_metrics", "_offload"]), (session.stepper, ["evict", "forward"]),
                       (session.cache, ["compact", "record"]), (session.offloaded, ["offload"]),
                       (session.offloaded.store, ["put"]), (session.policy, ["keep"]),
                       (session.pruner, ["select"]), (adapter, ["encode_frames", "embed_ids"])]:
        for name in names:
            marked(obj, name)
    chunks = chunk_frames(SyntheticSource(cfg.fps, args.chunks, cfg.width, cfg.height, cfg.scene), 2, cfg.fps)
    for _ in range(args.chunks - args.profiled):
        session.add_chunk(next(chunks))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for chunk in chunks:
            session.add_chunk(chunk)
        torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cpu_time_total", row_limit=40, max_name_column_width=60))
    print(table.table(sort_by="self_cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
