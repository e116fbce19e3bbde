"""Engine settings, validated where they are built (the entry points)."""

from dataclasses import dataclass, field

GB = 2**30
DEFAULT_SYSTEM_PROMPT = ("You are LiveSight, watching a live video stream one second at a time. "
                         "Narrate briefly what changes, and answer questions about anything you have seen.")


@dataclass(frozen=True)
class RetrievalConfig:
    enabled: bool = True
    top_k: int = 8
    scope: str = "layer"  # layer: each layer its own top-k (ReKV); global: one set for all layers
    ram_gb: float = 4.0
    disk_gb: float = 16.0
    folder: str | None = None  # where each session makes its folder for spilled blocks; None: the temp folder

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"--retrieve-top-k must be >= 0, got {self.top_k}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"--retrieve-scope must be layer or global, got {self.scope!r}")
        if self.ram_gb < 0 or self.disk_gb < 0:
            raise ValueError(f"offload budgets must be >= 0 GB, got RAM {self.ram_gb}, disk {self.disk_gb}")


@dataclass(frozen=True)
class CompressionConfig:
    """Encoder reuse (vision/encoder.py) and token pruning (vision/prune.py)."""

    reuse: bool = True
    reuse_threshold: float = 0.02  # mean absolute pixel change (0..1) a token may have and be reused
    prune: bool = True
    keep_ratio: float = 1.0  # the most of a chunk's tokens kept, most novel first
    keep_floor: float = 0.25  # the least kept of a chunk whose tokens changed (up to the number that changed)
    prune_threshold: float = 0.02  # 1 - cosine similarity at or below which a token is redundant
    # a chunk where a few regions changed re-encodes only those (against per-stream stores of the tower's
    # keys and values, ~200 MB at 7B); off: it gets the full pass, which batches across streams
    partial: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.reuse_threshold <= 1:
            raise ValueError(f"--reuse-threshold must be within 0..1 (mean pixel change), got {self.reuse_threshold}")
        if not 0 < self.keep_ratio <= 1:
            raise ValueError(f"--keep-ratio must be within (0, 1], got {self.keep_ratio}")
        if not 0 <= self.keep_floor <= 1:
            raise ValueError(f"--keep-floor must be within 0..1, got {self.keep_floor}")
        if not 0 <= self.prune_threshold < 2:
            raise ValueError(f"--prune-threshold must be within [0, 2) (1 - cosine similarity), got {self.prune_threshold}")


@dataclass(frozen=True)
class SessionConfig:
    fps: float = 2.0
    chunk_seconds: float = 1.0
    vision_window_s: float = 16.0
    text_sink: int = 512
    text_window: int = 512
    narrate: bool = True
    narrate_tokens: int = 20
    answer_tokens: int = 64
    max_question_tokens: int = 256
    max_pixels: int | None = None  # None: the model's default frame size
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    cuda_graphs: bool = True  # on a GPU, replay vision passes and language-model steps from CUDA graphs
    # how a stream's cache stores keys and values: as the model computes them, or "fp8" (kvcache/storage.py;
    # a Session's own cache and the batched engine's pool alike)
    kv_dtype: str = "model"
    # DuoAttention (kvcache/duo.py): a gates file from `livesight calibrate duo`, and the share of KV heads that
    # stream (keep the sink and the latest tokens only); None: every head keeps the whole window
    duo_gates: str | None = None
    duo_sparsity: float = 0.5

    def __post_init__(self) -> None:
        if self.kv_dtype not in ("model", "fp8"):
            raise ValueError(f"--kv-dtype must be model or fp8, got {self.kv_dtype!r}")
        if not 0 <= self.duo_sparsity <= 1:
            raise ValueError(f"--duo-sparsity must be within 0..1, got {self.duo_sparsity}")
        if self.fps <= 0 or self.chunk_seconds <= 0:
            raise ValueError(f"fps and chunk seconds must be positive, got {self.fps} and {self.chunk_seconds}")
        frames = self.fps * self.chunk_seconds
        if abs(frames - round(frames)) > 1e-6 or round(frames) % 2:
            raise ValueError(f"fps x chunk seconds must be a whole, even number of frames (Qwen2.5-VL encodes "
                             f"frames in pairs); got {self.fps} x {self.chunk_seconds} = {frames:g}")
        if self.vision_window_s < self.chunk_seconds:
            raise ValueError(f"vision window ({self.vision_window_s} s) must hold at least one chunk "
                             f"({self.chunk_seconds} s)")
        for name in ("text_sink", "text_window", "narrate_tokens", "answer_tokens", "max_question_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.answer_tokens < 1:
            raise ValueError("answer tokens must be at least 1")

    @property
    def frames_per_chunk(self) -> int:
        return round(self.fps * self.chunk_seconds)
