"""DuoAttention's gate calibration (Xiao et al., 2024): which KV heads need the whole context (retrieval
heads) and which do as well with the attention sink and a short recent window (streaming heads).

Each (layer, KV head) has a gate in [0, 1]; the head's attention output is gate x full attention +
(1 - gate) x streaming attention (the first `sink` keys and the last `recent` ones). With the model frozen,
the gates are trained on synthetic passkey prompts to keep the last hidden states of the prompt's closing
tokens (the question, where the key must be recalled) where full attention puts them (mean squared error,
relative to their mean square), plus `l1` times the mean gate, which pushes every gate toward streaming.
A head whose gate stays high is one whose distant keys the answer needs. kvcache/duo.py turns the gates into
a choice: the lowest `sparsity` share of them stream.

The data: passkey prompts (eval/corpus.py's template) with 5-digit keys and depths drawn from `seed`; the
passkey evaluation draws its trials from seed 0 and depths in a fixed grid, calibration from seed 1000 on.
Everything is drawn from the seed, so a calibration is reproducible on one machine.
"""

import json
import os
import random
import time
from dataclasses import asdict

import torch
from transformers import AttentionInterface

from livesight.eval.corpus import passkey_prompt
from livesight.train.duo_config import DuoConfig

DUO_ATTENTION = "livesight_duo"
SEED_OFFSET = 1000  # calibration prompts never share a seed with the passkey evaluation (seed 0)


def streaming_mask(n: int, sink: int, recent: int, device=None) -> torch.Tensor:
    """(n, n) bool: query i sees key j (j <= i) if j < sink or i - j < recent."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= i) & ((j < sink) | (i - j < recent))


def _softmax_attention(query, key, value, allowed: torch.Tensor, scale: float) -> torch.Tensor:
    scores = (query @ key.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1).to(value.dtype) @ value)


def duo_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature, over a whole prompt (no cache): q (B, Hq, n, D), k/v (B, Hkv, n, D)
    -> (B, n, Hq, D), each query head mixing full and streaming attention by its KV head's gate
    (kwargs duo_gates (layers, Hkv), duo_sink, duo_recent)."""
    gates = kwargs["duo_gates"][module.layer_idx]  # (Hkv,)
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    n = query.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    causal = streaming_mask(n, n, n, query.device)
    full = _softmax_attention(query, key, value, causal, scale)
    stream = _softmax_attention(query, key, value, streaming_mask(n, kwargs["duo_sink"], kwargs["duo_recent"],
                                                                  query.device), scale)
    gate = gates.repeat_interleave(groups)[None, :, None, None].to(full.dtype)
    return (gate * full + (1 - gate) * stream).transpose(1, 2).contiguous(), None


def prompts(tokenizer, config: DuoConfig) -> list[list[int]]:
    """config.steps passkey prompts, one per step, drawn from the seed (keys, depths), each followed by its
    own key but the key's last token: the closing hidden states are those that predict the key's digits."""
    rng = random.Random(SEED_OFFSET + config.seed)
    out = []
    for _ in range(config.steps):
        key = rng.randint(10000, 99999)
        out.append(tokenizer.encode(passkey_prompt(key, config.filler, rng.uniform(0.05, 0.6)) + f" {key}",
                                    add_special_tokens=False)[:-1])
    return out


def _hidden(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    return model.model(input_ids=ids, **kwargs).last_hidden_state


def calibrate(loaded, config: DuoConfig, log=print) -> dict:
    """Train the gates of `loaded` (a decoder-only text model, frozen) -> a JSON-ready dict: the gates
    (layers, KV heads), the loss at each step, the settings and the data's description."""
    AttentionInterface.register(DUO_ATTENTION, duo_attention)
    torch.manual_seed(config.seed)
    model, text = loaded.model, loaded.model.config
    for p in model.parameters():
        p.requires_grad_(False)
    gates = torch.nn.Parameter(torch.ones(text.num_hidden_layers, text.num_key_value_heads))
    optimizer = torch.optim.Adam([gates], lr=config.lr)
    history, started = [], time.perf_counter()
    original = text._attn_implementation
    try:
        for step, ids in enumerate(prompts(loaded.tokenizer, config)):
            ids = torch.tensor([ids], device=model.device)
            with torch.no_grad():
                text._attn_implementation = "eager"
                target = _hidden(model, ids)[:, -config.closing:].float()
            text._attn_implementation = DUO_ATTENTION
            got = _hidden(model, ids, duo_gates=gates, duo_sink=config.sink, duo_recent=config.recent)
            distill = ((got[:, -config.closing:].float() - target) ** 2).mean() / (target ** 2).mean()
            loss = distill + config.l1 * gates.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                gates.clamp_(0, 1)
            mean_gate = float(gates.detach().mean())
            error = float(distill.detach())
            history.append({"step": step, "distill": round(error, 6), "mean_gate": round(mean_gate, 4),
                            "tokens": ids.shape[1]})
            if step % 10 == 0 or step == config.steps - 1:
                log(f"step {step}: distillation {error:.5f}, mean gate {mean_gate:.3f}, "
                    f"{time.perf_counter() - started:.0f} s")
    finally:
        text._attn_implementation = original
    return {"model": loaded.name, "gates": gates.detach().tolist(), "settings": asdict(config), "history": history,
            "data": f"{config.steps} passkey prompts of {config.filler} filler sentences (eval/corpus.py's template), "
                    f"keys and depths drawn from seed {SEED_OFFSET + config.seed}",
            "seconds": round(time.perf_counter() - started, 1)}


def save_gates(result: dict, folder: str) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "duo_gates.json")
    with open(path + ".part", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".part", path)
    return path

