"""Where a many-stream engine step spends its time, on the GPU: N streams each given one chunk at once (as
live cameras deliver them, one per second), the engine run until all are done; the wall time of such a
round is what one second of video for N streams costs. Prints per round: wall, vision and language-model
time, steps and packed rows. A quick look for the engine's bottleneck; `livesight bench streams` is the
measurement.

    python scripts/engine_probe.py --model random-7b --streams 1,16,64,128 --rounds 4
"""

import argparse
import collections
import contextlib
import cProfile
import gc
import pstats
import time

import numpy as np
import torch

from livesight.models.registry import load_adapter
from livesight.streaming.chunker import Chunk
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.streaming.engine import Engine
from livesight.vision.synthetic import render

SCENES = ("static", "quiet", "shapes", "busy")


def chunks_for(stream: int, rounds: int, size: tuple[int, int], fps: float = 2.0) -> list[Chunk]:
    out = []
    for k in range(rounds):
        times = [k + i / fps for i in range(2)]
        frames = np.stack([render(t + 7 * stream, size[1], size[0], SCENES[stream % 4]) for t in times])
        out.append(Chunk(frames, times[0], times[-1] + 1 / fps, k))
    return out


def drain(engine: Engine, stream_id: str) -> list:
    box, out = engine.events(stream_id), []
    while not box.empty():
        out.append(box.get_nowait())
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


PHASES = {  # (module, owner, attribute): what --phases times, the device synchronized before and after each
    "to_pixels": ("livesight.models.qwen2_5_vl", "QwenVLAdapter", "to_pixels"),
    "reuse_plan": ("livesight.vision.encoder", "VisionEncoder", "plan"),
    "tower_pass": ("livesight.vision.encoder", None, "_full_outputs"),
    "after_full": ("livesight.vision.encoder", "VisionEncoder", "_after_full"),
    "partial": ("livesight.vision.encoder", "VisionEncoder", "_encode_changed"),
    "prune": ("livesight.vision.prune", "TokenPruner", "select"),
    "lm_step": ("livesight.streaming.batch_step", "BatchStep", "__call__"),
    "evict": ("livesight.streaming.stepper", "CacheStepper", "evict"),
    "metrics": ("livesight.streaming.stream", "Stream", "_metrics"),
    "advance": ("livesight.streaming.engine", "Engine", "_advance"),
}


@contextlib.contextmanager
def phase_timers(device, totals: dict):
    """Wrap each PHASES function with a synchronized timer (ms and calls into totals), for the
    probe's run only; nested phases count in both."""
    import importlib
    originals = []
    for name, (module, owner, attr) in PHASES.items():
        target = importlib.import_module(module)
        target = getattr(target, owner) if owner else target
        fn = getattr(target, attr)

        def timed(*a, _fn=fn, _name=name, **k):
            sync(device)
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                sync(device)
                if _name == "lm_step" and all(builder.num_tokens == 1 for _, builder in a[1]):
                    _name = "lm_decode"  # a step of decode rows only
                ms, calls = totals.get(_name, (0.0, 0))
                totals[_name] = (ms + (time.perf_counter() - t0) * 1000, calls + 1)
        originals.append((target, attr, fn))
        setattr(target, attr, timed)
    try:
        yield
    finally:
        for target, attr, fn in originals:
            setattr(target, attr, fn)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny-random")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--streams", default="1,8")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--narrate-tokens", type=int, default=20)
    p.add_argument("--profile", action="store_true", help="torch.profiler over the last round: top kernels")
    p.add_argument("--host-profile", action="store_true", help="cProfile over the measured rounds: host time by function")
    p.add_argument("--phases", action="store_true", help="time named phases, synchronized (no overlap)")
    p.add_argument("--no-partial", action="store_true", help="a changed chunk takes the batched full pass")
    args = p.parse_args()
    adapter = load_adapter(args.model, args.device)
    size = (360, 640)
    config = SessionConfig(narrate=args.narrate_tokens > 0, narrate_tokens=max(args.narrate_tokens, 1),
                           retrieval=RetrievalConfig(ram_gb=0.25, disk_gb=0.0), compression=CompressionConfig(partial=not args.no_partial))
    for n in (int(x) for x in args.streams.split(",")):
        engine = Engine(adapter, config, max_streams=n, max_pending=args.rounds + args.warmup)
        ids = [engine.open(size) for _ in range(n)]
        chunks = [chunks_for(i, args.warmup + args.rounds, size) for i in range(n)]
        host = cProfile.Profile() if args.host_profile else None
        totals: dict = {}
        for r in range(args.warmup + args.rounds):
            before = dict(engine.stage_ms)
            sync(adapter.device)
            t0 = time.perf_counter()
            for i, sid in enumerate(ids):
                engine.put(sid, chunks[i][r])
            last = r == args.warmup + args.rounds - 1
            profiler = torch.profiler.profile() if args.profile and last else contextlib.nullcontext()
            phases = phase_timers(adapter.device, totals) if args.phases and last else contextlib.nullcontext()
            with profiler, phases:
                if host is not None and r >= args.warmup:
                    host.enable()
                while any(not lane.idle for lane in engine.lanes.values()):
                    engine.step()
                sync(adapter.device)
                if host is not None:
                    host.disable()
            wall = (time.perf_counter() - t0) * 1000
            d = {k: engine.stage_ms[k] - before[k] for k in before}
            tag = "warm" if r < args.warmup else "meas"
            modes = collections.Counter(e.data["encoder"] for sid in ids for e in drain(engine, sid)
                                        if e.type == "metrics")
            print(f"N={n:4d} {tag} round {r}: wall {wall:8.1f} ms  vision {d['vision_ms']:7.1f}  lm {d['lm_ms']:7.1f}"
                  f"  steps {d['steps']:4.0f}  rows {d['rows']:6.0f}  graphs {engine.batch.num_graphs}  {dict(modes)}",
                  flush=True)
            if args.profile and last:
                print(profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
                print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        if totals:
            print(f"N={n} phases of the last round (synchronized; ms/calls): " + ", ".join(
                f"{k} {ms:.1f}/{c}" for k, (ms, c) in totals.items()))
        if host is not None:
            pstats.Stats(host).sort_stats("cumulative").print_stats("livesight", 45)
            pstats.Stats(host).sort_stats("tottime").print_stats(25)
        if adapter.device.type == "cuda":
            print(f"N={n}: GPU memory {torch.cuda.memory_allocated() / 2**30:.1f} GiB allocated, "
                  f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f}; slab {engine.slab_capacity} tokens")
        engine.shutdown()
        del engine
        gc.collect()
        torch.cuda.empty_cache() if adapter.device.type == "cuda" else None


if __name__ == "__main__":
    main()
