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
  (segments), so streams never mix.
- Partial rotary: the first quarter of each head rotates (kernels/rope.py turns that part only); the
  positions are Qwen3-VL's interleaved M-RoPE. The tower is Qwen3-VL's without DeepStack.
- Steps run eagerly (no CUDA graphs: the segments and checkpoints are host-side work), and the norms run
  as transformers has them (Qwen3.5's RMSNorm scales by 1 + weight).
The delta rule runs through flash-linear-attention's Triton kernels (PyPI fla-core) on a GPU where it is
installed, one varlen call for all streams, else through transformers' own torch code (the reference, and
the CPU's path).
"""

import functools

import torch
import torch.nn.functional as F
from transformers.models.qwen3_5 import modeling_qwen3_5

from livesight.kernels.dispatch import report
from livesight.kvcache import StreamCache
from livesight.kvcache.linear import LinearState
from livesight.kvcache.pool import KVPool
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


def causal_conv(x: torch.Tensor, tail: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: (n, C) one stream's rows; tail: (C, K - 1) the inputs before them, updated in place; weight:
    (C, K) depthwise -> silu(conv) (n, C)."""
    full = torch.cat([tail, x.T.to(tail.dtype)], dim=-1)  # (C, K - 1 + n)
    tail.copy_(full[:, -tail.shape[-1]:])
    return F.silu(F.conv1d(full[None].to(weight.dtype), weight[:, None], groups=weight.shape[0])[0].T).to(x.dtype)


def delta_rule(q, k, v, g, beta, segments: list[tuple[int, int, LinearState]], index: int) -> torch.Tensor:
    """q, k: (N, Hk, Dk); v: (N, Hv, Dv); g, beta: (N, Hv) of every stream's rows; each segment's rows
    continue from its state's layer `index` and leave it updated -> (N, Hv, Dv)."""
    if fla_chunk is not None and q.is_cuda:
        return _delta_rule_fla(q, k, v, g, beta, segments, index)
    report("gated_delta", "torch")
    out = torch.empty_like(v)
    for start, n, state in segments:
        rows = slice(start, start + n)
        recurrent = state.recurrent[index]
        rule = (modeling_qwen3_5.torch_recurrent_gated_delta_rule if n == 1
                else modeling_qwen3_5.torch_chunk_gated_delta_rule)
        o, final = rule(q[None, rows], k[None, rows], v[None, rows], g=g[None, rows], beta=beta[None, rows],
                        initial_state=recurrent[None], output_final_state=True, use_qk_l2norm_in_kernel=True)
        recurrent.copy_(final[0])
        out[rows] = o[0]
    return out


def _delta_rule_fla(q, k, v, g, beta, segments, index) -> torch.Tensor:
    """delta_rule in one flash-linear-attention call over all segments (cu_seqlens)."""
    report("gated_delta", "fla")
    groups = v.shape[1] // q.shape[1]
    q, k = q.repeat_interleave(groups, dim=1), k.repeat_interleave(groups, dim=1)
    bounds = [0] + [start + n for start, n, _ in segments]
    cu = torch.tensor(bounds, dtype=torch.int64).to(q.device, non_blocking=True)
    initial = torch.stack([state.recurrent[index] for _, _, state in segments])
    rule = fla_recurrent if all(n == 1 for _, n, _ in segments) else fla_chunk
    out, final = rule(q[None], k[None], v[None], g=g[None], beta=beta[None], initial_state=initial,
                      output_final_state=True, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    for (_, _, state), f in zip(segments, final):
        state.recurrent[index].copy_(f)
    return out[0]


def linear_attention(module, index: int, hidden_states: torch.Tensor, cache_params=None, attention_mask=None,
                     **kwargs) -> torch.Tensor:
    """A Gated DeltaNet layer (`index` among the linear layers) over a step's rows, (1, N, hidden): each
    stream's rows continue from its own state in LiveSight's cache (cache_params.linear_segments()).
    Under transformers' own cache (the plain baselines) the layer runs as transformers has it."""
    if not hasattr(cache_params, "linear_segments"):
        return type(module).forward(module, hidden_states, cache_params=cache_params, attention_mask=attention_mask,
                                    **kwargs)
    rows = hidden_states[0]
    segments = [(start, rows.shape[0] - start if n < 0 else n, state)
                for start, n, state in cache_params.linear_segments()]
    mixed = module.in_proj_qkv(rows)  # (N, 2 key_dim + value_dim)
    conv = torch.empty_like(mixed)
    for start, n, state in segments:
        conv[start:start + n] = causal_conv(mixed[start:start + n], state.conv[index], module.conv1d.weight[:, 0])
    q, k, v = conv.split([module.key_dim, module.key_dim, module.value_dim], dim=-1)
    q, k = q.unflatten(-1, (-1, module.head_k_dim)), k.unflatten(-1, (-1, module.head_k_dim))
    v = v.unflatten(-1, (-1, module.head_v_dim))
    beta = module.in_proj_b(rows).sigmoid()
    g = -module.A_log.float().exp() * F.softplus(module.in_proj_a(rows).float() + module.dt_bias)
    core = delta_rule(q, k, v, g, beta, segments, index).to(rows.dtype)
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

    step_graphs = False

    def fuse(self, on: bool) -> None:
        """Qwen3.5's norms (1 + weight) run as transformers has them."""

    def new_linear_state(self) -> LinearState:
        return LinearState.allocate(*self.linear_shape, self.dtype, self.device, CHECKPOINTS)

    @property
    def linear_state_bytes(self) -> int:
        layers, channels, tail, heads, key_dim, value_dim = self.linear_shape
        once = layers * (channels * tail * self.dtype.itemsize + heads * key_dim * value_dim * 4)
        return once * (1 + CHECKPOINTS)

    def new_cache(self, capacity: int) -> StreamCache:
        return StreamCache(self.num_layers, self.num_kv_heads, self.head_dim, capacity, self.inv_freq, self.dtype,
                           self.device, self.rope_axes, layer_of=self.layer_of, linear=self.new_linear_state())

    def new_pool(self, num_slabs: int, slab_capacity: int) -> KVPool:
        return KVPool(num_slabs, self.num_layers, self.num_kv_heads, self.head_dim, slab_capacity, self.inv_freq,
                      self.dtype, self.device, self.rope_axes, layer_of=self.layer_of,
                      linear_state=self.new_linear_state)

    def run_layers(self, embeds: torch.Tensor, positions: torch.Tensor, cache, **kwargs) -> torch.Tensor:
        """As every adapter's, after a checkpoint of each stream's linear state (a rollback returns to it)."""
        if isinstance(cache, StreamCache):
            cache.linear.checkpoint(cache.length)
        elif isinstance(cache, KVPool):
            for slab, _, _, start in cache.segments:
                cache.caches[slab].linear.checkpoint(start)
        return super().run_layers(embeds, positions, cache, livesight_layer_of=self.layer_of, **kwargs)
