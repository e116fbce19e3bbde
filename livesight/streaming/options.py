"""Engine options, validated once for every front end: the CLI's flags (livesight run, web, eval),
the web page's controls and (next) the API's fields all become a SessionConfig through
`build_config`, and every number through a `Bound`. A bad value raises InputError (argparse:
ArgumentTypeError) naming the input and its bounds: finite, and no larger than the machine can hold."""

import argparse
import math
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from livesight.errors import InputError
from livesight.streaming.config import GB, CompressionConfig, RetrievalConfig, SessionConfig


class Parser(argparse.ArgumentParser):
    """A bad flag is one line naming it and where the flags are listed, not the whole usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Bound:
    """A numeric option's type and range. An instance is an argparse `type=` (text in) and checks
    any value (`check`: a page's or a client's JSON). `high` may be a function (a machine limit)."""

    def __init__(self, kind: type, low: float, high: "float | Callable[[], float]", low_open: bool = False,
                 high_open: bool = False, why: str = ""):
        self.kind, self.low, self._high, self.low_open, self.high_open, self.why = (
            kind, low, high, low_open, high_open, why)

    @property
    def high(self) -> float:
        return self._high() if callable(self._high) else self._high

    def describe(self) -> str:
        whole = "a whole number" if self.kind is int else "a number"
        low = f"above {_number(self.low)}" if self.low_open else f"from {_number(self.low)}"
        high = f"below {_number(self.high)}" if self.high_open else f"to {_number(self.high)}"
        return f"{whole} {low} {high}" + (f" ({self.why})" if self.why else "")

    def parse(self, value: Any) -> int | float:
        """-> the value as `kind`; ValueError with the bounds when it is not one of them."""
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (ValueError, OverflowError):
            raise ValueError(f"expected {self.describe()}, got {_shown(value)}") from None
        high = self.high
        inside = (number > self.low if self.low_open else number >= self.low) and \
                 (number < high if self.high_open else number <= high)
        if not math.isfinite(number) or not inside or (self.kind is int and number != int(number)):
            raise ValueError(f"expected {self.describe()}, got {_shown(value)}")
        return int(number) if self.kind is int else number

    def __call__(self, text: str) -> int | float:
        try:
            return self.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def check(self, value: Any, name: str) -> int | float:
        try:
            return self.parse(value)
        except ValueError as err:
            raise InputError(f"{name}: {err}") from None


class Shares(Bound):
    """--duo-sparsity's shares of KV heads in a bench, comma-separated, each above 0 and at most 1: a row per
    share. '0.25,0.5' -> (0.25, 0.5)."""

    def __init__(self):
        super().__init__(float, 0, 1, low_open=True, why="the share of KV heads that stream")

    def __call__(self, text: str) -> tuple[float, ...]:
        try:
            return tuple(self.parse(part) for part in text.split(","))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{err} in {text!r}: write shares like 0.25,0.5,0.75") from None


def _number(x: float) -> str:
    return f"{int(x):,}" if x == int(x) else f"{x:.3g}"


def _shown(value: Any) -> str:
    text = repr(value)  # quoted, with control characters escaped: the message stays one line
    return text if len(text) <= 40 else text[:37] + "..."


def ram_gb() -> float:
    return psutil.virtual_memory().total / GB


# Every engine number, by argparse dest. The upper bounds keep a setting within what one machine can
# hold; the cache's actual size is checked against free memory when a Session is built.
ENGINE: dict[str, Bound] = {
    "fps": Bound(float, 0, 60, low_open=True, why="frames sampled per second of video"),
    "chunk_seconds": Bound(float, 0, 60, low_open=True),
    "vision_window": Bound(float, 0, 3600, low_open=True, why="seconds of video kept in the cache"),
    "text_sink": Bound(int, 0, 131072, why="tokens"),
    "text_window": Bound(int, 0, 131072, why="tokens"),
    "narrate_tokens": Bound(int, 0, 4096),
    "answer_tokens": Bound(int, 1, 4096),
    "max_pixels": Bound(int, 28 * 28, 12845056, why="Qwen2.5-VL's largest frame area"),
    "retrieve_top_k": Bound(int, 0, 256, why="chunks brought back into the cache per question"),
    "offload_ram_gb": Bound(float, 0, ram_gb, why="at most this machine's RAM"),
    "offload_disk_gb": Bound(float, 0, 1e6),
    "reuse_threshold": Bound(float, 0, 1, why="mean pixel change"),
    "duo_sparsity": Bound(float, 0, 1, why="the share of KV heads that stream"),
    "keep_ratio": Bound(float, 0, 1, low_open=True),
    "keep_floor": Bound(float, 0, 1),
    "prune_threshold": Bound(float, 0, 2, high_open=True, why="1 - cosine similarity"),
}
SECONDS = Bound(float, 0, 1e7, low_open=True, why="at most about 115 days")  # a stream's length
KV_DTYPES = ("model", "fp8")  # how a cache stores keys and values (kvcache/storage.py)
STREAM_TIME = Bound(float, 0, 1e7, why="stream seconds")  # a moment in the stream (--ask)

# The engine's defaults by flag dest, read off the config dataclasses (one place for each default)
_S, _R, _C = SessionConfig, RetrievalConfig, CompressionConfig
DEFAULTS: dict[str, Any] = {
    "fps": _S.fps, "chunk_seconds": _S.chunk_seconds, "vision_window": _S.vision_window_s, "text_sink": _S.text_sink,
    "text_window": _S.text_window, "narrate": _S.narrate, "narrate_tokens": _S.narrate_tokens,
    "answer_tokens": _S.answer_tokens, "max_pixels": _S.max_pixels, "cuda_graphs": _S.cuda_graphs,
    "retrieve": _R.enabled, "retrieve_top_k": _R.top_k, "retrieve_scope": _R.scope, "offload_ram_gb": _R.ram_gb,
    "offload_disk_gb": _R.disk_gb, "offload_dir": _R.folder,
    "reuse": _C.reuse, "reuse_threshold": _C.reuse_threshold, "prune": _C.prune, "keep_ratio": _C.keep_ratio,
    "keep_floor": _C.keep_floor, "prune_threshold": _C.prune_threshold, "partial": _C.partial,
    "kv_dtype": _S.kv_dtype, "duo": _S.duo_gates, "duo_sparsity": _S.duo_sparsity,
}


def check_gates_path(path: str | None, name: str = "--duo") -> None:
    """--duo's gates before any model loads: a file or a folder that exists (kvcache/duo.py reads it); `name`: what
    a message calls the input."""
    if path is not None and not os.path.exists(path):
        raise InputError(f"{name} {path}: no such file or folder; give the folder `livesight calibrate duo --out` "
                         f"wrote, or its duo_gates.json")


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def add_engine_args(p: argparse.ArgumentParser, narrate: bool = True, answer_tokens: int = 64,
                    offload_dir: bool = True) -> None:
    """The engine's flags. narrate: narration's default (on: --no-narrate is offered; off: --narrate).
    offload_dir: offer --offload-dir (a server that keeps all it writes in a folder of its own does not)."""
    d = DEFAULTS
    p.add_argument("--model", default="tiny-random",
                   help="toy-vlm | tiny-random | random-3b | random-7b | tiny-random-qwen3-vl | random-qwen3-vl-8b | "
                        "tiny-random-smolvlm2 | random-smolvlm2-2.2b | a local checkpoint folder | a hub id "
                        "(default %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default %(default)s)")
    p.add_argument("--fps", type=ENGINE["fps"], default=d["fps"],
                   help="frames sampled per second of video; fps x chunk seconds must be even (default %(default)s)")
    p.add_argument("--chunk-seconds", type=ENGINE["chunk_seconds"], default=d["chunk_seconds"],
                   help="seconds of video encoded and prefilled together (default %(default)s)")
    p.add_argument("--vision-window", type=ENGINE["vision_window"], default=d["vision_window"],
                   help="seconds of video kept in the cache (default %(default)s)")
    p.add_argument("--text-sink", type=ENGINE["text_sink"], default=d["text_sink"],
                   help="first text tokens always kept (default %(default)s)")
    p.add_argument("--text-window", type=ENGINE["text_window"], default=d["text_window"],
                   help="last text tokens kept (default %(default)s)")
    p.add_argument("--narrate-tokens", type=ENGINE["narrate_tokens"], default=d["narrate_tokens"],
                   help="most tokens narrated per chunk (default %(default)s)")
    if narrate:
        p.add_argument("--no-narrate", dest="narrate", action="store_false", help="do not narrate (default: narrate)")
    else:
        p.add_argument("--narrate", dest="narrate", action="store_true", help="narrate each chunk (default: off)")
    p.add_argument("--answer-tokens", type=ENGINE["answer_tokens"], default=answer_tokens,
                   help="most tokens in an answer (default %(default)s)")
    p.add_argument("--max-pixels", type=ENGINE["max_pixels"], default=None,
                   help="frame area fed to the model (default: the model's own)")
    p.add_argument("--retrieve", action=argparse.BooleanOptionalAction, default=d["retrieve"],
                   help="offload evicted video and bring back what a question needs (default: on)")
    p.add_argument("--retrieve-top-k", type=ENGINE["retrieve_top_k"], default=d["retrieve_top_k"],
                   help="blocks (chunks) brought back per question (default %(default)s)")
    p.add_argument("--retrieve-scope", choices=("layer", "global"), default=d["retrieve_scope"],
                   help="layer: each layer picks its own top-k (ReKV); global: one set for all layers "
                        "(default %(default)s)")
    p.add_argument("--offload-ram-gb", type=ENGINE["offload_ram_gb"], default=d["offload_ram_gb"],
                   help="RAM budget for offloaded KV, GB (default %(default)s)")
    p.add_argument("--offload-disk-gb", type=ENGINE["offload_disk_gb"], default=d["offload_disk_gb"],
                   help="disk budget for offloaded KV, GB (default %(default)s)")
    if offload_dir:
        p.add_argument("--offload-dir", default=None,
                       help="folder in which each session makes its own folder for spilled blocks, removed when "
                            "it ends (default: the system's temporary folder)")
    add_compression_args(p)
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=d["cuda_graphs"],
                   help="on a GPU, replay vision passes and language-model steps from CUDA graphs (default: on)")
    p.add_argument("--kv-dtype", choices=KV_DTYPES, default=d["kv_dtype"],
                   help="keys and values as the model computes them, or fp8: 8 bits with a scale per head and "
                        "token, about half the bytes per stream (default %(default)s)")
    p.add_argument("--duo", metavar="GATES", default=d["duo"],
                   help="DuoAttention gates (`livesight calibrate duo`'s folder or its duo_gates.json): the KV heads "
                        "they mark least needed keep only each stream's first and latest tokens (default: none)")
    p.add_argument("--duo-sparsity", type=ENGINE["duo_sparsity"], default=d["duo_sparsity"],
                   help="with --duo, the share of KV heads that stream (default %(default)s)")


def add_compression_args(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    p.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=d["reuse"],
                   help="reuse the vision encoder's work for regions that did not change (default: on)")
    p.add_argument("--reuse-threshold", type=ENGINE["reuse_threshold"], default=d["reuse_threshold"],
                   help="mean pixel change (0..1) up to which a region counts as unchanged; 0: only identical "
                        "chunks are reused, exactly (default %(default)s)")
    p.add_argument("--partial", action=argparse.BooleanOptionalAction, default=d["partial"],
                   help="re-encode only the regions of a chunk that changed, against stores kept per stream; "
                        "--no-partial: such a chunk gets the full pass, which batches across many streams and "
                        "needs no store (default: on)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=d["prune"],
                   help="drop visual tokens the model already has before they reach it (default: on)")
    p.add_argument("--keep-ratio", type=ENGINE["keep_ratio"], default=d["keep_ratio"],
                   help="the most of a chunk's visual tokens kept, most novel first (default %(default)s)")
    p.add_argument("--keep-floor", type=ENGINE["keep_floor"], default=d["keep_floor"],
                   help="the least kept of a chunk that changed, so a scene cut is never starved (default %(default)s)")
    p.add_argument("--prune-threshold", type=ENGINE["prune_threshold"], default=d["prune_threshold"],
                   help="1 - cosine similarity at or below which a token is redundant (default %(default)s)")


def build_config(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> SessionConfig:
    """Validated engine settings from `values` keyed by the run flags' dest names (missing keys take the
    defaults); `names` says how a message names an input (default: its flag). Raises InputError."""
    v = {**DEFAULTS, **{k: values[k] for k in DEFAULTS if k in values}}
    name = (lambda dest: (names or {}).get(dest, flag(dest)))

    def num(dest: str):
        return None if dest == "max_pixels" and v[dest] is None else ENGINE[dest].check(v[dest], name(dest))

    def yes(dest: str) -> bool:
        if not isinstance(v[dest], bool):
            raise InputError(f"{name(dest)}: expected true or false, got {_shown(v[dest])}")
        return v[dest]

    if v["kv_dtype"] not in KV_DTYPES:
        raise InputError(f"{name('kv_dtype')}: expected {' or '.join(KV_DTYPES)}, got {_shown(v['kv_dtype'])}")
    if v["duo"] is not None and not isinstance(v["duo"], str):
        raise InputError(f"{name('duo')}: expected a gates file or folder, got {_shown(v['duo'])}")
    check_gates_path(v["duo"], name("duo"))
    if v["retrieve_scope"] not in ("layer", "global"):
        raise InputError(f"{name('retrieve_scope')}: expected layer or global, got {_shown(v['retrieve_scope'])}")
    folder = v["offload_dir"]
    if folder is not None and (not isinstance(folder, str) or not os.path.isdir(folder)):
        raise InputError(f"{name('offload_dir')} {folder} is not a folder: create it or leave it out")
    disk_gb = shutil.disk_usage(folder).total / GB if folder is not None else math.inf
    if num("offload_disk_gb") > disk_gb:
        raise InputError(f"{name('offload_disk_gb')}: {v['offload_disk_gb']} GB is more than the whole disk that "
                         f"holds {folder} ({disk_gb:.0f} GB)")
    try:
        retrieval = RetrievalConfig(yes("retrieve"), num("retrieve_top_k"), v["retrieve_scope"], num("offload_ram_gb"),
                                    num("offload_disk_gb"), folder)
        compression = CompressionConfig(yes("reuse"), num("reuse_threshold"), yes("prune"), num("keep_ratio"),
                                        num("keep_floor"), num("prune_threshold"), yes("partial"))
        return SessionConfig(fps=num("fps"), chunk_seconds=num("chunk_seconds"), vision_window_s=num("vision_window"),
                             text_sink=num("text_sink"), text_window=num("text_window"), narrate=yes("narrate"),
                             narrate_tokens=num("narrate_tokens"), answer_tokens=num("answer_tokens"),
                             max_pixels=num("max_pixels"), retrieval=retrieval, compression=compression,
                             cuda_graphs=yes("cuda_graphs"), kv_dtype=v["kv_dtype"], duo_gates=v["duo"],
                             duo_sparsity=num("duo_sparsity"))
    except ValueError as err:  # the dataclasses' checks across fields
        raise InputError(str(err)) from None


def session_config(args: argparse.Namespace) -> SessionConfig:
    return build_config(vars(args))


def resolve_device(name: str) -> str:
    import torch
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA GPU is visible here; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown --device '{name}': use auto, cpu, cuda or cuda:N")
    return name
