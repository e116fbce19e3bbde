"""What each bench runs with: small frozen dataclasses, validated where they are built. No torch
here: `livesight --help` and every flag's default come from these without loading a model library."""

from dataclasses import dataclass

from livesight.errors import InputError
from livesight.streaming.config import SessionConfig
from livesight.streaming.options import KV_DTYPES
from livesight.vision.synthetic import SCENES

POLICIES = ("dense", "window", "sink+window")
RECALL_POLICIES = ("dense", "sink+window", "sink+window+retrieval")
DUO = ", duo "  # a policy's name, this, and the share of KV heads that stream: "sink+window, duo 0.5"
DUO_SPARSITIES = (0.25, 0.5, 0.75)  # a bench's shares of streaming KV heads with --duo and no --duo-sparsity


@dataclass(frozen=True)
class FidelityConfig:
    tokens: int = 8192
    window: int = 256
    sink: int = 4
    chunk: int = 16
    oracle_targets: int = 256
    trials: int = 20
    passkey_filler: int = 85  # filler sentences: about 2,100 tokens
    passkey_chunk: int = 64  # prompt tokens per step while prefilling (the cache holds W - 64 .. W)
    passkey_depths: tuple[float, float] = (0.05, 0.4)
    answer_tokens: int = 8
    retrieve_block: int = 16  # tokens per offloaded text block
    retrieve_top_k: int = 16  # blocks brought back for the question (16 x 16 = 256 tokens)
    retrieve_scope: str = "layer"
    seed: int = 0
    kv_dtype: str = "model"  # keys and values as the model computes them, or "fp8" (kvcache/storage.py)
    duo_gates: str | None = None  # DuoAttention gates: sink + window rows with these shares of heads streaming
    duo_sparsities: tuple[float, ...] = DUO_SPARSITIES

    def __post_init__(self) -> None:
        if not all(0 < s <= 1 for s in self.duo_sparsities):
            raise ValueError(f"--duo-sparsity: each share must be within 0..1 and above 0, got {self.duo_sparsities}")
        if not 0 < self.chunk < self.window:
            raise ValueError(f"--chunk must be between 1 and the window - 1, got {self.chunk} (window {self.window})")
        if not 0 <= self.sink < self.window - self.chunk:
            raise ValueError(f"--sink must leave room for the window: sink {self.sink}, window {self.window}, "
                             f"chunk {self.chunk}")
        if self.tokens <= self.window + self.chunk:
            raise ValueError(f"--tokens ({self.tokens}) must exceed the window ({self.window}) to test eviction")
        if not 0 < self.passkey_chunk < self.window:
            raise ValueError(f"passkey chunk must be between 1 and the window - 1, got {self.passkey_chunk}")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"--kv-dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}")
        if self.trials < 0 or self.oracle_targets < 1:
            raise ValueError("--trials must be >= 0 and --oracle-targets >= 1")


@dataclass(frozen=True)
class SpeedConfig:
    model: str = "random-7b"
    device: str = "cuda"
    seconds: float = 1800.0
    baseline_seconds: float = 300.0  # each baseline's cap (the full context stops earlier at out of memory)
    fps: float = 2.0
    window_s: float = 16.0
    narrate_tokens: int = 0
    compression: bool = True
    retrieval: bool = True
    ask_every_s: float = 300.0  # a question (not remembered) every so often, and at the end
    scene: str = "shapes"
    width: int = 640
    height: int = 360
    peak_tflops: float = 989.0  # H100 SXM dense bf16, the datasheet's figure
    kv_dtype: str = "model"  # the stream's cache: keys and values as computed, or fp8 (kvcache/storage.py)
    duo_gates: str | None = None  # DuoAttention gates: the streaming heads' share is duo_sparsity (kvcache/duo.py)
    duo_sparsity: float = 0.5

    @property
    def warmup_s(self) -> float:
        """Stream time of the warm-up: the window fills, and a question asked once enough blocks are
        offloaded captures the graphs that questions need. Latency and memory are read after it."""
        return self.window_s + 10.0

    def __post_init__(self) -> None:
        if self.seconds < 2 or self.baseline_seconds < 0 or self.window_s < 1 or self.ask_every_s <= 0:
            raise InputError("bench speed: --seconds >= 2, --baseline-seconds >= 0, --window >= 1, --ask-every > 0")


@dataclass(frozen=True)
class CompressionBenchConfig:
    model: str = "tiny-random"
    device: str = "cpu"
    seconds: float = 60.0
    fps: float = 2.0
    width: int = 640
    height: int = 360
    scenes: tuple[str, ...] = SCENES


ARRIVALS = ("spread", "together")
SHORTENED_MAX = 0.01  # the share of a run's chunks that may narrate short and still count as real time


@dataclass(frozen=True)
class StreamsConfig:
    """`livesight bench streams`: many live streams in one engine against today's way (Sessions taking
    turns under one lock), stream count by stream count."""

    model: str = "tiny-random"
    device: str = "cpu"
    streams: tuple[int, ...] = (1, 8, 16, 32, 64, 128)
    narrate_tokens: tuple[int, ...] = (20, 0)  # one measured mode each; 0: no narration
    seconds: float = 20.0  # stream seconds measured at each count, after the warm-up
    warmup_s: float = 20.0  # stream seconds before: the window fills and blocks are offloaded
    fps: float = 2.0
    window_s: float = 16.0
    compression: bool = True
    retrieval: bool = True
    ask_every_s: float = 4.0  # a question to one random stream every so many seconds of the measured run
    baseline_streams: tuple[int, ...] = (1, 8)  # where today's way is measured
    arrivals: str = "spread"  # spread: stream i's chunks arrive at i/N of each chunk period; together: all at once
    latency_bound_s: float = 2.0  # the p99 chunk-to-caption latency a stream in real time stays under
    offload_ram_gb: float = 1.0  # each stream's RAM budget for offloaded blocks (no disk: a bench must not spill)
    stop_at_miss: bool = False  # a mode stops at its first count that misses real time (larger ones would too)
    memory_seconds: float = 0.0  # a longer run at the headline count, for memory over time; 0: none
    bandwidth_tbs: float = 4.3  # the floor estimate's memory bandwidth (DESIGN §5: H200 measured copy)
    peak_tflops: float = 790.0  # and its matmul rate (H200 bf16 measured)
    width: int = 640  # the frames' size before fitting the model's (as bench speed)
    height: int = 360
    seed: int = 0
    partial: bool = False  # partial re-encoding of a chunk that changed a little (off: the batched full pass)
    kv_dtype: str = "model"  # the pool's keys and values as computed, or fp8 (kvcache/storage.py)
    duo_gates: str | None = None  # DuoAttention gates: this share of the pool's KV heads stream (kvcache/duo.py)
    duo_sparsity: float = 0.5

    def __post_init__(self) -> None:
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"--kv-dtype must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}")
        if not self.streams or min(self.streams) < 1 or list(self.streams) != sorted(set(self.streams)):
            raise InputError(f"bench streams: --streams must be increasing counts >= 1, got {self.streams}")
        if not self.narrate_tokens or min(self.narrate_tokens) < 0:
            raise InputError(f"bench streams: narrated tokens must be >= 0, got {self.narrate_tokens}")
        if min(self.baseline_streams, default=1) < 1:
            raise InputError(f"bench streams: --baseline-streams must be counts >= 1, got {self.baseline_streams}")
        if self.arrivals not in ARRIVALS:
            raise InputError(f"bench streams: --arrivals must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}")
        if self.seconds < self.chunk_s or self.warmup_s < 0 or self.memory_seconds < 0 or self.ask_every_s <= 0:
            raise InputError(f"bench streams: --seconds >= one chunk ({self.chunk_s:g} s), --warmup-seconds >= 0, "
                             f"--memory-seconds >= 0, --ask-every > 0")

    @property
    def chunk_s(self) -> float:
        """One chunk's stream seconds (the engine's default): the pacing period."""
        return SessionConfig.chunk_seconds


@dataclass(frozen=True)
class ApiLoadConfig:
    url: str
    token: str | None = None
    streams: tuple[int, ...] = (1, 4)
    narrate_tokens: int = 20  # 0: no narration
    seconds: float = 20.0  # the measured window, stream seconds
    warmup_s: float = 20.0  # stream seconds each stream runs before the window opens
    ask_every_s: float = 1.0
    latency_bound_s: float = 2.0
    stop_at_miss: bool = False
    disrupt: str | None = None  # a shell command run disrupt_after_s into the window
    disrupt_after_s: float = 5.0
    chunk_s: float = 1.0  # the server's chunk length (read from its first stream)
    seed: int = 0
