"""Do calibrated DuoAttention gates pick the heads a passkey needs? SmolLM2-135M on the fidelity bench's
passkey trials (seed 0, ~2,100 tokens, keys at depth 0.05-0.4), each KV head either full attention or
streaming (sink + recent keys) with the gates made hard, against every head full, every head streaming,
and the same number of streaming heads chosen at random. Scored by teacher forcing: a trial counts when
the model's greedy choice is right at each of the key's tokens.

    PYTHONPATH=. python scripts/duo_passkey.py --gates results/duo/smollm2-1000tok-cpu-2core/duo_gates.json \\
        [--sparsity 0.5] [--trials 10] [--out results/duo/smollm2-1000tok-cpu-2core/passkey.json]
"""

import argparse
import json
import random

import torch
from transformers import AttentionInterface

from livesight.eval.corpus import passkey_prompt, passkey_trials
from livesight.models.loader import load_smollm2
from livesight.kvcache.duo import streaming_heads
from livesight.train.duo import DUO_ATTENTION, duo_attention


def score(loaded, gates: torch.Tensor, trials, sink: int, recent: int) -> int:
    model, tok = loaded.model, loaded.tokenizer
    right = 0
    for key, depth in trials:
        prompt = tok.encode(passkey_prompt(key, 85, depth), add_special_tokens=False)
        answer = tok.encode(f" {key}", add_special_tokens=False)
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(input_ids=ids, duo_gates=gates, duo_sink=sink, duo_recent=recent).logits[0]
        guesses = logits[len(prompt) - 1:-1].argmax(-1).tolist()
        right += guesses == answer
    return right


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gates", required=True)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    calibrated = json.load(open(args.gates))
    settings = calibrated["settings"]
    gates = torch.tensor(calibrated["gates"])
    AttentionInterface.register(DUO_ATTENTION, duo_attention)
    loaded = load_smollm2()
    loaded.model.config._attn_implementation = DUO_ATTENTION
    trials = passkey_trials(args.trials, (0.05, 0.4), 0)
    chosen = streaming_heads(gates, args.sparsity)
    shuffled = torch.randperm(gates.numel(), generator=torch.Generator().manual_seed(0))
    at_random = torch.zeros(gates.numel(), dtype=torch.bool)
    at_random[shuffled[:int(chosen.sum())]] = True
    ways = {"every head full": torch.ones_like(gates), "every head streaming": torch.zeros_like(gates),
            f"calibrated, {args.sparsity:g} streaming": (~chosen).float(),
            f"random, {args.sparsity:g} streaming": (~at_random.view(gates.shape)).float()}
    result = {"gates": args.gates, "sink": settings["sink"], "recent": settings["recent"], "trials": len(trials),
              "correct": {}}
    for name, hard in ways.items():
        result["correct"][name] = score(loaded, hard, trials, settings["sink"], settings["recent"])
        print(f"{name}: {result['correct'][name]}/{len(trials)}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    random.seed(0)
    main()
