"""Which scale granularity FP8 (e4m3) keys and values need: on SmolLM2-135M's real keys, values and queries (the
Python documentation text bench fidelity scores), each layer's attention output with keys and values rounded
to e4m3 under three kinds of scale, against the exact output:

- token: a scale per head and token (what `--kv-dtype fp8` stores: the token's largest element maps to 448);
- head: one scale per head over the whole text (the best a fixed per-head scale could do: it knows the text's
  largest element in advance, which a stream does not);
- channel: keys a scale per head and channel over the text (KIVI's choice for integer keys), values per token.

    python scripts/fp8_scale_probe.py [--tokens 1024] [--out FILE]

Reports, per kind, the relative error of the keys, of the values and of the attention output (all queries,
causal), averaged over layers, and the bytes of scales per cached token beside the codes'.
"""

import argparse
import json

import torch
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from livesight.eval.corpus import python_docs_text
from livesight.kernels.quant import FP8_MAX
from livesight.models.loader import load_smollm2


def rounded(x: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 with scale amax / 448 (amax broadcast over x), back in float32."""
    scale = (amax / FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def kinds(k: torch.Tensor, v: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """k, v (heads, n, D) -> each kind's rounded keys and values."""
    per_token = lambda x: rounded(x, x.abs().amax(-1, keepdim=True))  # noqa: E731
    per_head = lambda x: rounded(x, x.abs().amax((-1, -2), keepdim=True))  # noqa: E731
    return {"token": (per_token(k), per_token(v)), "head": (per_head(k), per_head(v)),
            "channel": (rounded(k, k.abs().amax(-2, keepdim=True)), per_token(v))}


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    groups = q.shape[0] // k.shape[0]
    k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    loaded = load_smollm2()
    model, tokenizer = loaded.model, loaded.tokenizer
    ids = torch.tensor([tokenizer.encode(python_docs_text(), add_special_tokens=False)[:args.tokens]])
    queries = {}

    def capture(module, inputs, kwargs):  # the layer's rotated queries, from its input and position embeddings
        hidden, (cos, sin) = kwargs["hidden_states"], kwargs["position_embeddings"]
        q = module.q_proj(hidden).view(*hidden.shape[:2], -1, module.head_dim).transpose(1, 2)
        queries[module.layer_idx] = apply_rotary_pos_emb(q, q, cos, sin)[0][0]

    hooks = [layer.self_attn.register_forward_pre_hook(capture, with_kwargs=True) for layer in model.model.layers]
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    for hook in hooks:
        hook.remove()
    rows = {name: {"keys": [], "values": [], "output": []} for name in ("token", "head", "channel")}
    for layer, q in queries.items():
        k, v = cache.layers[layer].keys[0], cache.layers[layer].values[0]
        exact = attention(q, k, v)
        for name, (k8, v8) in kinds(k, v).items():
            rows[name]["keys"].append(relative(k8, k))
            rows[name]["values"].append(relative(v8, v))
            rows[name]["output"].append(relative(attention(q, k8, v8), exact))
    head_dim = k.shape[-1]
    scale_bytes = {"token": 2 * 4, "head": 0, "channel": 4}  # per head and token, keys + values (float32 scales)
    result = {"model": loaded.name, "tokens": ids.shape[1], "layers": len(queries),
              "kinds": {name: {m: round(sum(x) / len(x), 5) for m, x in r.items()}
                        | {"max_output": round(max(r["output"]), 5),
                           "scale_bytes_per_code_byte": round(scale_bytes[name] / (2 * head_dim), 4)}
                        for name, r in rows.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
