"""Engine options shared by every command-line entry (livesight run, web, eval): flags in,
validated SessionConfig out. Bad values raise InputError naming the flag and the fix."""

import argparse
import os

from livesight.errors import InputError


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
        return value
    return parse


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return int(text)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny-random",
                   help="tiny-random | random-3b | random-7b | a local checkpoint folder | a hub id")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--fps", type=positive(float), default=2.0, help="frames sampled per second of video")
    p.add_argument("--chunk-seconds", type=positive(float), default=1.0)
    p.add_argument("--vision-window", type=positive(float), default=16.0, help="seconds of video kept in the cache")
    p.add_argument("--text-sink", type=non_negative_int, default=512, help="first text tokens always kept")
    p.add_argument("--text-window", type=non_negative_int, default=512, help="last text tokens kept")
    p.add_argument("--narrate-tokens", type=non_negative_int, default=20)
    p.add_argument("--no-narrate", dest="narrate", action="store_false")
    p.add_argument("--answer-tokens", type=positive(int), default=64)
    p.add_argument("--max-pixels", type=positive(int), default=None, help="frame area fed to the model")
    p.add_argument("--retrieve", action=argparse.BooleanOptionalAction, default=True,
                   help="offload evicted video and bring back what a question needs (default: on)")
    p.add_argument("--retrieve-top-k", type=non_negative_int, default=8,
                   help="blocks (chunks) brought back per question")
    p.add_argument("--retrieve-scope", choices=("layer", "global"), default="layer",
                   help="layer: each layer picks its own top-k (ReKV); global: one set for all layers")
    p.add_argument("--offload-ram-gb", type=non_negative_float, default=4.0, help="RAM budget for offloaded KV")
    p.add_argument("--offload-disk-gb", type=non_negative_float, default=16.0, help="disk budget for offloaded KV")
    p.add_argument("--offload-dir", default=None, help="folder for spilled blocks (default: a new temporary folder)")
    add_compression_args(p)
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=True,
                   help="on a GPU, replay vision passes and language-model steps from CUDA graphs (default on)")


def add_compression_args(p: argparse.ArgumentParser) -> None:
    from livesight.streaming.config import CompressionConfig
    d = CompressionConfig()
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=d.reuse,
                   help="reuse the vision encoder's work for regions that did not change (default: on)")
    p.add_argument("--reuse-threshold", type=non_negative_float, default=d.reuse_threshold,
                   help="mean pixel change (0..1) up to which a region counts as unchanged; 0: only identical "
                        "chunks are reused, exactly (default %(default)s)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=d.prune,
                   help="drop visual tokens the model already has before they reach it (default: on)")
    p.add_argument("--keep-ratio", type=positive(float), default=d.keep_ratio,
                   help="the most of a chunk's visual tokens kept, most novel first (default %(default)s)")
    p.add_argument("--keep-floor", type=non_negative_float, default=d.keep_floor,
                   help="the least kept of a chunk that changed, so a scene cut is never starved (default %(default)s)")
    p.add_argument("--prune-threshold", type=non_negative_float, default=d.prune_threshold,
                   help="1 - cosine similarity at or below which a token is redundant (default %(default)s)")


def compression_config(args):
    from livesight.streaming.config import CompressionConfig
    try:
        return CompressionConfig(args.reuse, args.reuse_threshold, args.prune, args.keep_ratio, args.keep_floor,
                                 args.prune_threshold)
    except ValueError as err:
        raise InputError(str(err)) from None


def session_config(args):
    from livesight.streaming.config import SessionConfig
    from livesight.streaming.config import RetrievalConfig
    try:
        if args.offload_dir is not None and not os.path.isdir(args.offload_dir):
            raise ValueError(f"--offload-dir {args.offload_dir} is not a folder: create it or leave the flag out")
        retrieval = RetrievalConfig(args.retrieve, args.retrieve_top_k, args.retrieve_scope, args.offload_ram_gb,
                                    args.offload_disk_gb, args.offload_dir)
        return SessionConfig(fps=args.fps, chunk_seconds=args.chunk_seconds, vision_window_s=args.vision_window,
                             text_sink=args.text_sink, text_window=args.text_window, narrate=args.narrate,
                             narrate_tokens=args.narrate_tokens, answer_tokens=args.answer_tokens,
                             max_pixels=args.max_pixels, retrieval=retrieval, compression=compression_config(args),
                             cuda_graphs=args.cuda_graphs)
    except ValueError as err:
        raise InputError(str(err)) from None


def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown --device '{name}': use auto, cpu, cuda or cuda:N")
    return name
