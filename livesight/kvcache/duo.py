"""DuoAttention's two kinds of KV head (Xiao et al., 2024), as a cache is told them: which (layer, KV head)
is a streaming head, keeping only the first `sink` tokens of the stream and the `recent` latest, and which
a retrieval head, keeping the whole window and taking part in retrieval. The choice comes from calibrated
gates (`livesight calibrate duo`, train/duo.py): the lowest `sparsity` share of them stream.
"""

import json
from dataclasses import dataclass

import torch

from livesight.errors import InputError


@dataclass(frozen=True)
class DuoHeads:
    streaming: torch.Tensor  # (layers, KV heads) bool
    sink: int
    recent: int

    def __post_init__(self) -> None:
        assert self.streaming.dtype == torch.bool and self.streaming.dim() == 2
        assert self.sink >= 0 and self.recent >= 1

    @property
    def fraction(self) -> float:
        return float(self.streaming.float().mean())


def streaming_heads(gates: torch.Tensor, sparsity: float) -> torch.Tensor:
    """gates (layers, KV heads) -> bool, True for the round(sparsity x heads) lowest gates (ties by index)."""
    if not 0 <= sparsity <= 1:
        raise ValueError(f"--duo-sparsity must be within 0..1, got {sparsity}")
    flat = gates.flatten()
    num = round(sparsity * flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[:num]] = True
    return chosen.view(gates.shape)


def gates_file(path: str) -> str:
    """--duo's value (duo_gates.json, or the folder holding it) -> the gates file."""
    return path.rstrip("/") + "/duo_gates.json" if not path.endswith(".json") else path


def load_duo(path: str, sparsity: float, num_layers: int, num_kv_heads: int) -> DuoHeads:
    """A gates file (duo_gates.json, or the folder holding it) -> the heads that stream at `sparsity`, with the
    sink and recent window the gates were calibrated for. Raises InputError naming --duo for a file that is
    missing, unreadable or made for another model's heads."""
    try:
        with open(gates_file(path)) as f:
            saved = json.load(f)
        gates = torch.tensor(saved["gates"], dtype=torch.float32)
        sink, recent = int(saved["settings"]["sink"]), int(saved["settings"]["recent"])
    except FileNotFoundError:
        raise InputError(f"--duo {path}: no gates file there; make one with `livesight calibrate duo --out DIR` "
                         f"and give DIR or DIR/duo_gates.json") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"--duo {path}: not a gates file written by `livesight calibrate duo` ({err})") from None
    if not (0 <= sink <= 4096 and 1 <= recent <= 8192 and bool(torch.isfinite(gates).all())):
        raise InputError(f"--duo {path}: sink {sink} and recent {recent} must be within 0..4096 and 1..8192, and "
                         f"every gate a finite number; calibrate again")
    if tuple(gates.shape) != (num_layers, num_kv_heads):
        raise InputError(f"--duo {path}: gates for {tuple(gates.shape)} (layers, KV heads), but this model has "
                         f"({num_layers}, {num_kv_heads}); calibrate gates for this model")
    if not 0 <= sparsity <= 1:
        raise InputError(f"--duo-sparsity must be within 0..1, got {sparsity}")
    return DuoHeads(streaming_heads(gates, sparsity), sink, recent)
