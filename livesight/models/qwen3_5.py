"""Qwen3.5: natively multimodal and hybrid. Three of every four language-model layers are Gated DeltaNet
linear attention, each with a fixed-size state; one in four is full attention.

What the engine does with it:
- The full-attention layers, and only they, live in the stream's cache (StreamCache, or a slab of the
  engine's pool) under their own compact indices (`layer_of`): the sink + window policy, compaction,
  offload and retrieval act on them as on any model's layers. KV per token is that of 8 layers of 32 at
  Qwen3.5-9B, a quarter of a dense model of its width.
- The linear layers keep each stream's convolution tail and recurrent state (kvcache/linear.py). An endless
  stream costs them constant memory, but they cannot forget selectively: a token evicted from the window is
  still folded into their state, and retrieval brings past moments back to the full layers only.
  Going back is by copies: `ask(remember=False)` snapshots and restores them with the cache; a probe pass
  and decode steps taken past a stop token return to the checkpoint taken before their step.
- A batched step packs many streams' rows; the linear layers run each stream's rows on its own state
  (segments), so streams never mix; the one-row streams (decoding) together, by index into the pool.
- Partial rotary: the first quarter of each head rotates (kernels/rope.py turns that part only); the
  positions are Qwen3-VL's interleaved M-RoPE. The tower is Qwen3-VL's without DeepStack.
- A step must not carry padding rows (pad_rows): the state would fold them in. So a stream alone replays
  CUDA graphs only for steps of a bucket's exact size (decode steps), and batched steps run eagerly. The
  norms run as transformers has them (Qwen3.5's RMSNorm scales by 1 + weight).
The delta rule runs through flash-linear-attention's Triton kernels (PyPI fla-core) on a GPU where it is
installed, one varlen call for all streams, else through transformers' own torch code (the reference, and
the CPU's path).
"""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen3_5 import modeling_qwen3_5

from livesight.kernels.dispatch import report
from livesight.kvcache.linear import LinearPool, LinearState
from livesight.models.loader import LoadedModel
from livesight.models.qwen3_vl import Qwen3VLAdapter

# checkpoints of the linear state kept per stream: more than the decode steps ever taken back at once
# (streaming/stream.py reads generated ids every STOP_CHECK_EVERY = 4 steps)
CHECKPOINTS = 5

try:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent
except ImportError:  # fla-core is optional: the GPU's fast path
    fla_chunk = fla_recurrent = None


def _torch_rule(rule):
    """transformers' torch delta rule itself: where flash-linear-attention is installed, the name is bound to its
    kernel, which takes CUDA tensors only (the torch path serves the CPU)."""
    return getattr(rule, "__wrapped__", rule)


def causal_conv(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: (n, C) one stream's rows; tail: (C, K - 1) the inputs before them, updated in place; weight:
    (C, K) depthwise -> silu(conv) (n, C). As products summed, not cuDNN's convolution, whose algorithm
    (and TF32 use) may differ between a CUDA graph's capture and an eager call."""
    full = torch.cat([tail, x.T.to(tail.dtype)], dim=-1)  # (C, K - 1 + n)
    tail.copy_(full[:, -tail.shape[-1]:])
    windows = full.to(weight.dtype).unfold(-1, weight.shape[-1], 1)  # (C, n, K)
    return F.silu((windows * weight[:, None]).sum(-1).T).to(x.dtype)


@dataclass
class OneRow:
    """The streams of a batched step that bring one row each (decode steps), taken together: their rows
    and their slabs of the pool's linear state, as index tensors on the device."""
    rows: torch.Tensor
    slabs: torch.Tensor
    pool: LinearPool

    @classmethod
    def of(cls, segments, slabs: list[int], pool: LinearPool) -> "OneRow | None":
        ones = [(start, slab) for (start, n, _), slab in zip(segments, slabs) if n == 1]
        if len(ones) < 2:
            return None
        rows, slabs = (torch.tensor(x).to(pool.conv.device, non_blocking=True) for x in zip(*ones))
        return cls(rows, slabs, pool)

    def conv(self, mixed: torch.Tensor, index: int, weight: torch.Tensor) -> torch.Tensor:
        """causal_conv for every one-row stream at once -> (m, C)."""
        tails = self.pool.conv[self.slabs, index]  # (m, C, K - 1)
        full = torch.cat([tails, mixed[self.rows, :, None].to(tails.dtype)], dim=-1)  # (m, C, K)
        self.pool.conv[self.slabs, index] = full[:, :, 1:]
        return F.silu((full.to(weight.dtype) * weight).sum(-1)).to(mixed.dtype)

    def rule(self, q, k, v, g, beta, index: int) -> torch.Tensor:
        """The recurrent delta rule for every one-row stream at once, each a batch entry -> (m, Hv, Dv)."""
        r = self.rows
        o, final = _torch_rule(modeling_qwen3_5.torch_recurrent_gated_delta_rule)(
            q[r, None], k[r, None], v[r, None], g=g[r, None], beta=beta[r, None],
            initial_state=self.pool.recurrent[self.slabs, index], output_final_state=True,
            use_qk_l2norm_in_kernel=True)
        self.pool.recurrent[self.slabs, index] = final
        return o[:, 0]


def delta_rule(q, k, v, g, beta, segments: list[tuple[int, int, LinearState]], index: int,
               one_row: OneRow | None = None, pooled: tuple[LinearPool, torch.Tensor] | None = None) -> torch.Tensor:
    """q, k: (N, Hk, Dk); v: (N, Hv, Dv); g, beta: (N, Hv) of every stream's rows; each segment's rows
    continue from its state's layer `index` and leave it updated -> (N, Hv, Dv). one_row: the one-row
    streams taken together (a batched step), the other segments one by one; pooled: the pool the states
    are slabs of and each segment's slab, for flash-linear-attention's one call."""
    if fla_chunk is not None and q.is_cuda:
        return _delta_rule_fla(q, k, v, g, beta, segments, index, pooled)
    report("gated_delta", "torch")
    out = torch.empty_like(v)
    if one_row is not None:
        out[one_row.rows] = one_row.rule(q, k, v, g, beta, index)
    for start, n, state in segments:
        if one_row is not None and n == 1:
            continue
        rows = slice(start, start + n)
        recurrent = state.recurrent[index]
        rule = _torch_rule(modeling_qwen3_5.torch_recurrent_gated_delta_rule if n == 1
                           else modeling_qwen3_5.torch_chunk_gated_delta_rule)
        o, final = rule(q[None, rows], k[None, rows], v[None, rows], g=g[None, rows], beta=beta[None, rows],
                        initial_state=recurrent[None], output_final_state=True, use_qk_l2norm_in_kernel=True)
        recurrent.copy_(final[0])
        out[rows] = o[0]
    return out


def _delta_rule_fla(q, k, v, g, beta, segments, index, pooled) -> torch.Tensor:
    """delta_rule in one flash-linear-attention call over all segments (cu_seqlens); the states gathered
    from the pool and written back with one index each where they are its slabs."""
    report("gated_delta", "fla")
    groups = v.shape[1] // q.shape[1]
    q, k = q.repeat_interleave(groups, dim=1), k.repeat_interleave(groups, dim=1)
    bounds = [0] + [start + n for start, n, _ in segments]  # one stream: none (a CUDA graph captures the step)
    cu = None if len(segments) == 1 else torch.tensor(bounds, dtype=torch.int64).to(q.device, non_blocking=True)
    if pooled is not None:
        initial = pooled[0].recurrent[pooled[1], index]
    else:
        initial = torch.stack([state.recurrent[index] for _, _, state in segments])
    rule = fla_recurrent if all(n == 1 for _, n, _ in segments) else fla_chunk
    out, final = rule(q[None], k[None], v[None], g=g[None], beta=beta[None], initial_state=initial,
                      output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    if pooled is not None:
        pooled[0].recurrent[pooled[1], index] = final.to(torch.float32)
    else:
        for (_, _, state), f in zip(segments, final):
            state.recurrent[index].copy_(f)
    return out[0]


def _step_index(cache_params, num_rows: int) -> tuple[list, OneRow | None, tuple[LinearPool, torch.Tensor] | None]:
    """A step's streams as (first row, rows, state); over the pool also its one-row streams and every stream's
    slab as a device tensor, made once per step (the pool's step_memo), not once per layer."""
    pool = getattr(cache_params, "linear_pool", None)
    if pool is None:  # a stream's own cache: one segment, every row
        return [(start, num_rows - start if n < 0 else n, state)
                for start, n, state in cache_params.linear_segments()], None, None
    memo = cache_params.step_memo
    if "linear" not in memo:
        segments, slabs = cache_params.linear_segments(), cache_params.linear_slabs()
        memo["linear"] = (segments, OneRow.of(segments, slabs, pool),
                          (pool, torch.tensor(slabs).to(pool.conv.device, non_blocking=True)))
    return memo["linear"]


def linear_attention(module, index: int, hidden_states: torch.Tensor, cache_params=None, attention_mask=None,
                     **kwargs) -> torch.Tensor:
    """A Gated DeltaNet layer (`index` among the linear layers) over a step's rows, (1, N, hidden): each
    stream's rows continue from its own state in LiveSight's cache (cache_params.linear_segments()).
    Under transformers' own cache (the plain baselines) the layer runs as transformers has it."""
    if not hasattr(cache_params, "linear_segments"):
        return type(module).forward(module, hidden_states, cache_params=cache_params, attention_mask=attention_mask,
                                    **kwargs)
    rows = hidden_states[0]
    segments, one_row, pooled = _step_index(cache_params, rows.shape[0])
    weight = module.conv1d.weight[:, 0]
    mixed = module.in_proj_qkv(rows)  # (N, 2 key_dim + value_dim)
    conv = torch.empty_like(mixed)
    if one_row is not None:
        conv[one_row.rows] = one_row.conv(mixed, index, weight)
    for start, n, state in segments:
        if one_row is None or n > 1:
            conv[start:start + n] = causal_conv(mixed[start:start + n], state.conv[index], weight)
    q, k, v = conv.split([module.key_dim, module.key_dim, module.value_dim], dim=-1)
    q, k = q.unflatten(-1, (-1, module.head_k_dim)), k.unflatten(-1, (-1, module.head_k_dim))
    v = v.unflatten(-1, (-1, module.head_v_dim))
    beta = module.in_proj_b(rows).sigmoid()
    g = -module.A_log.float().exp() * F.softplus(module.in_proj_a(rows).float() + module.dt_bias)
    core = delta_rule(q, k, v, g, beta, segments, index, one_row, pooled).to(rows.dtype)
    z = module.in_proj_z(rows)
    core = module.norm(core.reshape(-1, module.head_v_dim), z.reshape(-1, module.head_v_dim))
    return module.out_proj(core.reshape(1, rows.shape[0], -1))


class Qwen3_5Adapter(Qwen3VLAdapter):
    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        text = self.language_model.config
        full = [i for i, kind in enumerate(text.layer_types) if kind == "full_attention"]
        self.layer_of = {layer: i for i, layer in enumerate(full)}  # the model's index -> the cache's
        self.num_layers = len(full)
        linear = [layer.linear_attn for layer, kind in zip(self.language_model.layers, text.layer_types)
                  if kind == "linear_attention"]
        for i, module in enumerate(linear):  # this model's modules only
            module.forward = functools.partial(linear_attention, module, i)
        first = linear[0]
        self.linear_shape = (len(linear), first.conv_dim, first.conv_kernel_size - 1, first.num_v_heads,
                             first.head_k_dim, first.head_v_dim)

    pad_rows = False  # the linear layers would fold padding rows into the state

    def fuse(self, on: bool) -> None:
        """Qwen3.5's norms (1 + weight) run as transformers has them."""

    def new_linear_pool(self, num_slabs: int) -> LinearPool:
        return LinearPool(num_slabs, *self.linear_shape, self.dtype, self.device, CHECKPOINTS)

    def new_linear_state(self) -> LinearState:
        return self.new_linear_pool(1).state(0)

    @property
    def linear_state_bytes(self) -> int:
        return LinearPool.stream_bytes(*self.linear_shape, self.dtype, CHECKPOINTS)
