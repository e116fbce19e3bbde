"""The fixed-size state of a hybrid model's linear-attention layers (Qwen3.5's Gated DeltaNet) for one
stream: each layer's causal-convolution tail (the last K - 1 inputs) and its recurrent state.

Unlike keys and values, this state cannot forget one token or move one: every token ever fed is folded
into it. So the sink + window policy, compaction and retrieval act on the full-attention layers alone,
and going back is done by copies:
- `snapshot` / `restore`: an answer that must leave no trace (ask with remember=False);
- `checkpoint(length)` before every step, `back_to(length)` after: a probe pass rolled back, or decode
  steps taken past a stop token. The last `keep` checkpoints are kept (a decode reads its tokens every
  STOP_CHECK_EVERY steps, so at most that many steps are ever taken back).
Its size does not grow with the stream: the recurrent state is (heads, key dim, value dim) per layer.
"""

import torch

from livesight.kvcache.checkpoints import Checkpoints


class LinearPool:
    """Every stream's linear-attention state in two tensors, (slabs, layers, ...), for the batched engine:
    a step gathers the states of its streams with one index and writes them back with one. A stream's
    LinearState is a view of its slab."""

    def __init__(self, num_slabs: int, num_layers: int, channels: int, tail: int, heads: int, key_dim: int,
                 value_dim: int, dtype: torch.dtype, device: torch.device | str, keep: int):
        self.conv = torch.zeros(num_slabs, num_layers, channels, tail, dtype=dtype, device=device)
        self.recurrent = torch.zeros(num_slabs, num_layers, heads, key_dim, value_dim, dtype=torch.float32,
                                     device=device)
        self.keep = keep

    @staticmethod
    def stream_bytes(num_layers: int, channels: int, tail: int, heads: int, key_dim: int, value_dim: int,
                     dtype: torch.dtype, keep: int) -> int:
        """One stream's state and the copies its `keep` checkpoints hold at most."""
        once = num_layers * (channels * tail * dtype.itemsize + heads * key_dim * value_dim * 4)
        return once * (1 + keep)

    def state(self, slab: int) -> "LinearState":
        """Slab `slab`'s state, zeroed: a new stream's."""
        state = LinearState(self.conv[slab], self.recurrent[slab], self.keep)
        state.clear()
        return state


class LinearState:
    """conv: (layers, channels, K - 1) in the model's dtype; recurrent: (layers, heads, key dim, value dim)
    in float32, as transformers keeps them."""

    def __init__(self, conv: torch.Tensor, recurrent: torch.Tensor, keep: int):
        self.conv, self.recurrent, self.keep = conv, recurrent, keep
        self._checkpoints = Checkpoints(keep, "linear-attention state")

    @classmethod
    def allocate(cls, num_layers: int, channels: int, tail: int, heads: int, key_dim: int, value_dim: int,
                 dtype: torch.dtype, device: torch.device | str, keep: int) -> "LinearState":
        """A stream's state of its own: a pool of one."""
        return LinearPool(1, num_layers, channels, tail, heads, key_dim, value_dim, dtype, device, keep).state(0)

    @property
    def nbytes(self) -> int:
        """The state itself and the copies its checkpoints hold at most."""
        return (self.conv.nbytes + self.recurrent.nbytes) * (1 + self.keep)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv.clone(), self.recurrent.clone()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Back to `snapshot`; the checkpoints taken since name steps no longer in the state."""
        self.put(snapshot)
        self._checkpoints.clear()

    def put(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """The state's values from `snapshot`, checkpoints kept (a CUDA graph's warm-up run undone)."""
        self.conv.copy_(snapshot[0])
        self.recurrent.copy_(snapshot[1])

    def checkpoint(self, length: int) -> None:
        """The state as it is before a step that starts at cache length `length`."""
        self._checkpoints.put(length, self.snapshot())

    def back_to(self, length: int) -> None:
        """The state as it was before the step that started at cache length `length`; later checkpoints
        are dropped. Raises if that step is older than the last `keep`."""
        self.put(self._checkpoints.back_to(length))

    def forget_checkpoints(self) -> None:
        """The cache was rearranged (compaction, retrieval): its old lengths no longer name steps."""
        self._checkpoints.clear()

    def clear(self) -> None:
        self.conv.zero_()
        self.recurrent.zero_()
        self._checkpoints.clear()
