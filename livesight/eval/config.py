"""What each bench runs with: small frozen dataclasses, validated where they are built. No torch
here: `livesight --help` and every flag's default come from these without loading a model library."""

from dataclasses import dataclass

from livesight.errors import InputError
from livesight.vision.synthetic import SCENES

POLICIES = ("dense", "window", "sink+window")
RECALL_POLICIES = ("dense", "sink+window", "sink+window+retrieval")


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

    def __post_init__(self) -> None:
        if not 0 < self.chunk < self.window:
            raise ValueError(f"--chunk must be between 1 and the window - 1, got {self.chunk} (window {self.window})")
        if not 0 <= self.sink < self.window - self.chunk:
            raise ValueError(f"--sink must leave room for the window: sink {self.sink}, window {self.window}, "
                             f"chunk {self.chunk}")
        if self.tokens <= self.window + self.chunk:
            raise ValueError(f"--tokens ({self.tokens}) must exceed the window ({self.window}) to test eviction")
        if not 0 < self.passkey_chunk < self.window:
            raise ValueError(f"passkey chunk must be between 1 and the window - 1, got {self.passkey_chunk}")
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
