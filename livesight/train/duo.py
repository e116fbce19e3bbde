"""DuoAttention's gate calibration (Xiao et al., 2024): which KV heads need the whole context (retrieval
heads) and which do as well with the attention sink and a short recent window (streaming heads).

Each (layer, KV head) has a gate in [0, 1]; the head's attention output is gate x full attention +
(1 - gate) x streaming attention (the first `sink` keys and the `recent` latest ones). With the model frozen,
the gates are trained to keep the last hidden states of each sample's closing tokens (where what lies far
back must be recalled) where full attention puts them (mean squared error, relative to their mean square),
plus `l1` times the mean gate, which pushes every gate toward streaming. A head whose gate stays high is one
whose distant keys the answer needs. kvcache/duo.py turns the gates into a choice: the lowest `sparsity`
share of them stream.

The samples come from a source, one per step: passkey prompts for a text model (train/duo_passkey.py),
visual recall questions laid out as the engine holds its cache for toy-vlm (train/duo_visual.py). Each is
drawn from the calibration's seed, so a calibration is reproducible on one machine.
"""

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Protocol

import torch
from transformers import AttentionInterface

from livesight.train.duo_config import DuoConfig

DUO_ATTENTION = "livesight_duo"


@dataclass
class Sample:
    inputs: dict  # the language model's forward arguments (input_ids, or inputs_embeds and position_ids),
    #               batch of one, n tokens
    closing: tuple[int, int]  # [a, b): the tokens whose last hidden states are distilled
    step_starts: torch.Tensor | None = None  # (n,) the first token of each token's engine step; None: a
    #                                          plain sliding window (each query sees its `recent` latest keys)

    @property
    def num_tokens(self) -> int:
        return self.inputs["input_ids" if "input_ids" in self.inputs else "inputs_embeds"].shape[1]


class Source(Protocol):
    name: str  # the model's name, saved with the gates
    language_model: torch.nn.Module  # frozen, its config's attention implementation switched to the gated one
    settings: dict  # the source's own settings, saved beside the loop's
    data: str | dict  # what the samples were, saved with the gates (read once the last step is done)

    def samples(self) -> Iterator[Sample]:
        """One sample per step, drawn from the calibration's seed."""


def streaming_mask(n: int, sink: int, recent: int, device=None, step_starts: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """(n, n) bool: query i sees key j <= i if j < sink or j is among its latest keys: i - j < recent, or with
    step_starts (n,), the engine's head-wise cache (kvcache/headwise.py): the `recent` tokens before i's step
    and the step's own."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if step_starts is None:
        return (j <= i) & ((j < sink) | (i - j < recent))
    return (j <= i) & ((j < sink) | (j >= step_starts.to(device)[:, None] - recent))


def _softmax_attention(query, key, value, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    scores = (query @ key.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).to(value.dtype) @ value)


def duo_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature, over a whole prompt (no cache): q (B, Hq, n, D), k/v (B, Hkv, n, D)
    -> (B, n, Hq, D), each query head mixing full and streaming attention by its KV head's gate
    (kwargs duo_gates (layers, Hkv), duo_mask (n, n) bool: what a streaming head sees, streaming_mask)."""
    gates = kwargs["duo_gates"][module.layer_idx]  # (Hkv,)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    n = query.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    causal = streaming_mask(n, n, n, query.device)
    full = _softmax_attention(query, key, value, causal, scale)
    stream = _softmax_attention(query, key, value, kwargs["duo_mask"].to(query.device), scale)
    gate = gates.repeat_interleave(groups)[None, :, None, None].to(full.dtype)
    return (gate * full + (1 - gate) * stream).transpose(1, 2).contiguous(), None


def calibrate(source: Source, config: DuoConfig, log=print) -> dict:
    """Train the gates of `source`'s language model (frozen) on its samples -> a JSON-ready dict: the gates
    (layers, KV heads), the loss at each step, the settings and the data's description."""
    AttentionInterface.register(DUO_ATTENTION, duo_attention)
    torch.manual_seed(config.seed)
    model, text = source.language_model, source.language_model.config
    for p in model.parameters():
        p.requires_grad_(False)
    gates = torch.nn.Parameter(torch.ones(text.num_hidden_layers, text.num_key_value_heads))
    optimizer = torch.optim.Adam([gates], lr=config.lr)
    history, started = [], time.perf_counter()
    original = text._attn_implementation
    samples = source.samples()
    try:
        for step in range(config.steps):
            sample = next(samples)
            a, b = sample.closing
            with torch.no_grad():
                text._attn_implementation = "eager"
                target = model(**sample.inputs).last_hidden_state[:, a:b].float()
            mask = streaming_mask(sample.num_tokens, config.sink, config.recent, target.device, sample.step_starts)
            text._attn_implementation = DUO_ATTENTION
            got = model(**sample.inputs, duo_gates=gates, duo_mask=mask).last_hidden_state[:, a:b]
            distill = ((got.float() - target) ** 2).mean() / (target ** 2).mean()
            loss = distill + config.l1 * gates.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                gates.clamp_(0, 1)
            mean_gate = float(gates.detach().mean())
            error = float(distill.detach())
            history.append({"step": step, "distill": round(error, 6), "mean_gate": round(mean_gate, 4),
                            "tokens": sample.num_tokens})
            if step % 10 == 0 or step == config.steps - 1:
                log(f"step {step}: distillation {error:.5f}, mean gate {mean_gate:.3f}, "
                    f"{time.perf_counter() - started:.0f} s")
    finally:
        text._attn_implementation = original
    return {"model": source.name, "gates": gates.detach().tolist(), "settings": asdict(config) | source.settings,
            "history": history, "data": source.data, "seconds": round(time.perf_counter() - started, 1)}


def save_gates(result: dict, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "duo_gates.json")
    with open(path + ".part", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".part", path)
    return path
