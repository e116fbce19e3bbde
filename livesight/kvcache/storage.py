"""How a StreamCache holds its keys and values: what the cache asks of its storage (write a step, read a
layer, take slots, move slots to new positions, put retrieved tokens, copy the valid prefix), in two kinds.

- PlainKV: the model's dtype, each key rotated at its token's current position; moving a token to a new
  position turns its key in place.
- Fp8KV (`--kv-dtype fp8`): float8 e4m3 codes with a float32 scale per (head, token) (kernels/quant.py),
  half the bytes of bfloat16 and a little more. A key keeps the codes it was written with, at the position
  it had then; a move only adds to its slot's `shift`, and a read turns it by that shift after decoding.
  Quantizing again after each turn would compound the rounding: a key re-rotated at every slide of a 16-s
  window would be quantized 16 times, 11 % off (relative L2) instead of 3 %.
"""

from typing import NamedTuple

import torch

from livesight.kernels import rotate_keys
from livesight.kernels.quant import dequantize, quantize_into
from livesight.kernels.span_attention import Fp8Span

SCALE_BYTES = 4  # an fp8 (head, token)'s scale: float32


def stored_width(kv_dtype: str, head_dim: int, itemsize: int) -> int:
    """The bytes of one (head, token)'s key (or value) in an offloaded block: the model's dtype, or fp8's codes
    and scale."""
    return head_dim + SCALE_BYTES if kv_dtype == "fp8" else head_dim * itemsize


def _put(buffer: torch.Tensor, slots, x: torch.Tensor) -> None:
    """buffer (..., C, D) along its slot dim (-2): a slice, or index_copy_ by an index tensor (the form a
    CUDA graph captures)."""
    if isinstance(slots, torch.Tensor):
        buffer.index_copy_(buffer.dim() - 2, slots, x)
    else:
        buffer[..., slots, :] = x


def unturned(n: int, half: int, device) -> torch.Tensor:
    """The turn tables of n slots whose keys are at the positions they were written at: cos 1, sin 0 (2, n, half)."""
    turn = torch.zeros(2, n, half, dtype=torch.float16, device=device)
    turn[0] = 1
    return turn


class PlainKV:
    """keys, values: (layers, 1, heads, capacity, head dim) in the model's dtype."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, inv_freq: torch.Tensor):
        self.keys, self.values, self.inv_freq = keys, values, inv_freq
        self.dtype = keys.dtype

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def write(self, layer: int, slots, keys: torch.Tensor, values: torch.Tensor, heads: slice = slice(None)) -> None:
        """A step's keys and values (1, h, n, D) of one layer's `heads` (all of them, or a head-wise cache's
        share of its flat heads: headwise.py), at slots (a slice, or (n,) indices)."""
        _put(self.keys[layer, :, heads], slots, keys)
        _put(self.values[layer, :, heads], slots, values)

    def targets(self, layer: int, heads: slice = slice(None)) -> tuple[torch.Tensor, ...]:
        """Layer `layer`'s `heads`, (1, h, C, D) keys and values: where a head-wise write puts its retrieval heads'
        rows (kernels/kv_write.py)."""
        return self.keys[layer][:, heads], self.values[layer][:, heads]

    def read(self, layer: int, end: int, heads: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots 0 .. end - 1 of layer `layer`'s `heads` -> keys, values (1, h, end, D), keys at current positions."""
        return self.keys[layer, :, heads, :end], self.values[layer, :, heads, :end]

    def fresh(self, slots) -> None:
        """Slots (a slice, or (n,) indices) about to take a step's new tokens, once per step (the 8-bit kind
        resets their turns)."""

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Slots `index` (n,) of every layer -> keys, values (layers, 1, heads, n, D), copies."""
        return self.keys[:, :, :, index], self.values[:, :, :, index]

    @property
    def stored_width(self) -> int:
        """The bytes of one (head, token)'s key as `stored` gives it."""
        return stored_width("model", self.keys.shape[-1], self.keys.element_size())

    def stored(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Slots `index` (n,) of every layer as an offloaded block keeps them -> keys, values (layers, 1, heads, n,
        W) and how far each slot's key must still turn (n,), or None: here the keys and values themselves."""
        return *self.take(index), None

    def unpack(self, keys: torch.Tensor, values: torch.Tensor, shift: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
        """A stored block's keys and values (..., n, W) -> keys, values (..., n, D) in the model's dtype, keys
        turned by shift (n,) (None: as they are)."""
        return (keys if shift is None else rotate_keys(keys, shift, self.inv_freq)), values

    def move(self, index: torch.Tensor, start: int, delta: torch.Tensor | None) -> None:
        """Slots `index` (n,) to slots start .. start + n - 1, their tokens' positions moved by delta (n,)."""
        keys, values = self.take(index)
        if delta is not None:
            keys = rotate_keys(keys, delta.to(keys.device, non_blocking=True), self.inv_freq)
        n = index.numel()
        self.keys[:, :, :, start:start + n] = keys
        self.values[:, :, :, start:start + n] = values

    def put(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """keys, values (layers, heads, R, D), rotated at their positions, to slots start .. start + R - 1."""
        self.keys[:, 0, :, start:start + keys.shape[2]] = keys
        self.values[:, 0, :, start:start + keys.shape[2]] = values

    def copy(self, n: int) -> tuple:
        """The first n slots, copied, for `paste`."""
        return self.keys[:, :, :, :n].clone(), self.values[:, :, :, :n].clone()

    def paste(self, copied: tuple) -> None:
        keys, values = copied
        self.keys[:, :, :, :keys.shape[3]] = keys
        self.values[:, :, :, :keys.shape[3]] = values


class Fp8Buffers(NamedTuple):
    """What 8-bit keys and values take, for one cache or a pool of them: codes (layers, slabs, heads, capacity,
    head dim) uint8 for keys and values, scales (layers, slabs, heads, capacity, 1) float32, each slot's shift
    (slabs, capacity) int64 and its turn's cos and sin (2, slabs, capacity, HALF) float16."""
    keys: torch.Tensor
    values: torch.Tensor
    key_scale: torch.Tensor
    value_scale: torch.Tensor
    shift: torch.Tensor
    turn: torch.Tensor

    @classmethod
    def allocate(cls, shape: tuple[int, ...], half: int, device) -> "Fp8Buffers":
        scales = torch.ones(*shape[:-1], 1, dtype=torch.float32, device=device)
        turn = unturned(shape[1] * shape[3], half, device).view(2, shape[1], shape[3], half)
        return cls(torch.zeros(shape, dtype=torch.uint8, device=device), torch.zeros(shape, dtype=torch.uint8,
                                                                                      device=device),
                   scales, scales.clone(), torch.zeros(shape[1], shape[3], dtype=torch.int64, device=device), turn)

    @staticmethod
    def slot_bytes(num_layers: int, num_kv_heads: int, head_dim: int, half: int) -> int:
        """One slot's bytes over all layers: codes and scales of keys and values, its shift and turn."""
        return num_layers * num_kv_heads * 2 * (head_dim + 4) + 8 + 2 * half * 2

    def slab(self, slab: int, capacity: int) -> "Fp8Buffers":
        """Views of slab `slab`'s first `capacity` slots (slabs dimension kept for the codes and scales)."""
        return Fp8Buffers(*(x[:, slab:slab + 1, :, :capacity] for x in self[:4]), self.shift[slab, :capacity],
                          self.turn[:, slab, :capacity])


class Fp8KV(PlainKV):
    """keys, values: uint8 codes (layers, 1, heads, capacity, head dim); scales (layers, 1, heads, capacity,
    1) float32; shift (capacity,): how far each slot's token has moved since its key was written; turn (2,
    capacity, HALF). Views of Fp8Buffers: a cache's own, or a slab of a pool's."""

    def __init__(self, buffers: Fp8Buffers, dtype: torch.dtype, inv_freq: torch.Tensor):
        super().__init__(buffers.keys, buffers.values, inv_freq)
        self.dtype = dtype
        self.key_scale, self.value_scale, self.shift, self.turn = buffers[2:]
        # whether any slot's shift was ever set nonzero: until then a CPU read skips the turn (a GPU read always
        # turns: a CUDA graph captured before the first move must still turn after it)
        self.moved = False

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype: torch.dtype, device, inv_freq: torch.Tensor) -> "Fp8KV":
        """A cache's own: shape (layers, 1, heads, capacity, head dim)."""
        return cls(Fp8Buffers.allocate(shape, inv_freq.numel(), device).slab(0, shape[3]), dtype, inv_freq)

    @property
    def nbytes(self) -> int:
        return (super().nbytes + self.key_scale.nbytes + self.value_scale.nbytes + self.shift.nbytes
                + self.turn.nbytes)

    def write(self, layer: int, slots, keys: torch.Tensor, values: torch.Tensor, heads: slice = slice(None)) -> None:
        if not isinstance(slots, torch.Tensor):
            slots = torch.arange(slots.start, slots.stop, device=self.keys.device)
        quantize_into(keys[0], values[0], tuple(buffer[layer, :, heads] for buffer in (
            self.keys, self.key_scale, self.values, self.value_scale)), None, slots)

    def targets(self, layer: int, heads: slice = slice(None)) -> tuple[torch.Tensor, ...]:
        """In 8 bits: key codes, key scales, value codes, value scales."""
        return tuple(x[layer][:, heads] for x in (self.keys, self.key_scale, self.values, self.value_scale))

    def fresh(self, slots) -> None:
        n = slots.numel() if isinstance(slots, torch.Tensor) else slots.stop - slots.start
        device = self.shift.device
        _put(self.shift[None, :, None], slots, torch.zeros(1, n, 1, dtype=torch.int64, device=device))
        _put(self.turn, slots, unturned(n, self.turn.shape[2], device))

    def _decode(self, keys, key_scale, values, value_scale, shift) -> tuple[torch.Tensor, torch.Tensor]:
        keys = dequantize(keys, key_scale, self.dtype)
        if self.moved or keys.is_cuda:
            keys = rotate_keys(keys, shift, self.inv_freq)
        return keys, dequantize(values, value_scale, self.dtype)

    def read(self, layer: int, end: int, heads: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        return self._decode(self.keys[layer, :, heads, :end], self.key_scale[layer, :, heads, :end],
                            self.values[layer, :, heads, :end], self.value_scale[layer, :, heads, :end],
                            self.shift[:end])

    def span(self, layer: int, end: int, heads: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor, Fp8Span]:
        """Slots 0 .. end - 1 of layer `layer`'s `heads` as stored: the codes, and what the span kernel decodes
        them with as it loads them (kernels/span_attention.py)."""
        return (self.keys[layer, :, heads, :end], self.values[layer, :, heads, :end],
                Fp8Span(self.key_scale[layer, :, heads, :end], self.value_scale[layer, :, heads, :end],
                        self.shift[:end], self.inv_freq, self.turn[0, :end], self.turn[1, :end]))

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._decode(self.keys[:, :, :, index], self.key_scale[:, :, :, index],
                            self.values[:, :, :, index], self.value_scale[:, :, :, index], self.shift[index])

    def stored(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """In 8 bits, as the cache holds them: each (head, token)'s codes and its scale's 4 bytes, (..., D + 4)
        uint8, and the slots' shifts, so an offloaded block takes half the bytes and no second rounding."""
        return (*(torch.cat([codes[:, :, :, index], scales[:, :, :, index].view(torch.uint8)], dim=-1)
                  for codes, scales in ((self.keys, self.key_scale), (self.values, self.value_scale))),
                self.shift[index])

    @property
    def stored_width(self) -> int:
        return stored_width("fp8", self.keys.shape[-1], 1)

    def unpack(self, keys: torch.Tensor, values: torch.Tensor, shift: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
        dim = keys.shape[-1] - SCALE_BYTES
        keys, values = (dequantize(x[..., :dim], x[..., dim:].contiguous().view(torch.float32), self.dtype)
                        for x in (keys, values))
        return super().unpack(keys, values, shift)

    def move(self, index: torch.Tensor, start: int, delta: torch.Tensor | None) -> None:
        """The codes move as they are; only the slots' shift changes (no second rounding)."""
        n = index.numel()
        moved = [buffer[:, :, :, index] for buffer in (self.keys, self.key_scale, self.values, self.value_scale)]
        for buffer, x in zip((self.keys, self.key_scale, self.values, self.value_scale), moved):
            buffer[:, :, :, start:start + n] = x
        shift = self.shift[index]
        self.shift[start:start + n] = shift if delta is None else shift + delta.to(shift.device, non_blocking=True)
        self._turns(start, start + n)
        self.moved = self.moved or delta is not None

    def put(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        slots = slice(start, start + keys.shape[2])
        self.fresh(slots)
        for layer in range(keys.shape[0]):
            self.write(layer, slots, keys[layer, None], values[layer, None])

    def copy(self, n: int) -> tuple:
        return tuple(buffer[..., :n, :].clone() for buffer in (self.keys, self.key_scale, self.values,
                                                                self.value_scale)) + (self.shift[:n].clone(),)

    def paste(self, copied: tuple) -> None:
        *buffers, shift = copied
        n = shift.numel()
        for buffer, x in zip((self.keys, self.key_scale, self.values, self.value_scale), buffers):
            buffer[..., :n, :] = x
        self.shift[:n] = shift
        self._turns(0, n)

    def _turns(self, start: int, end: int) -> None:
        """Slots start .. end - 1's turn tables from their shifts (angles in float64, as the reference's)."""
        angle = self.shift[start:end, None].double() * self.inv_freq.double()[None, :]
        self.turn[0, start:end] = angle.cos().to(self.turn.dtype)
        self.turn[1, start:end] = angle.sin().to(self.turn.dtype)
