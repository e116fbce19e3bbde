"""`livesight train toy`'s settings and flags (no torch here: building the CLI's parser stays light)."""

import os
from dataclasses import dataclass

from livesight.weights import TOY_VLM_FOLDER

TRAIN_SEED_BASE = 1000  # training worlds' seeds start here; evaluation sets (recall_set) use seeds below


@dataclass(frozen=True)
class TrainConfig:
    out: str  # the trained model's folder
    checkpoint: str  # resumed from when it exists; written every `save_every` steps and at the end of a run
    seed: int = 0
    steps: int = 1800
    batch: int = 24
    lr: float = 1e-3
    warmup: int = 200
    minutes: float = 9.0  # this run stops (checkpointed) after so long; the next resumes
    worlds: int = 12
    seconds: int = 3600
    retrieval_weight: float = 0.5
    questions: int = 1  # the most questions a sample asks in a row
    init: str | None = None  # start from this saved model's weights (a stage before), not from the seed
    choice_reply: str = "text"  # a question with options is answered with the option's "text" or its "letter"
    raw_share: float = 0.0  # of the questions without options, the share asked bare, as a user types them
    device: str = "cpu"
    workers: int = 8
    log_every: int = 25
    save_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "worlds", "seconds", "log_every", "save_every", "questions"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seconds < 30:
            raise ValueError(f"--seconds must be at least 30 (a vision window and more), got {self.seconds}")
        if not 0 <= self.raw_share <= 1:
            raise ValueError(f"--raw-share must be within 0..1, got {self.raw_share}")
        if self.choice_reply not in ("text", "letter"):
            raise ValueError(f"--choice-reply must be text or letter, got {self.choice_reply!r}")
        if not self.lr > 0 or self.minutes <= 0:
            raise ValueError(f"--lr and --minutes must be positive, got {self.lr} and {self.minutes}")


def add_arguments(parser) -> None:
    d = TrainConfig("", "")
    parser.add_argument("what", choices=["toy"], help="what to train: toy (toy-vlm, on the synthetic world)")
    parser.add_argument("--out", default=TOY_VLM_FOLDER, help="the trained model's folder (default: the package's "
                                                       "weights/toy-vlm, what --model toy-vlm loads)")
    parser.add_argument("--checkpoint", default=os.path.join("runs", "toy-vlm", "checkpoint.pt"),
                        help="resumed from when it exists, written as the run goes (default %(default)s)")
    parser.add_argument("--init", default=None, metavar="FOLDER",
                        help="start from this saved model (an earlier stage's --out), not from --seed's initialization "
                             "(default: from the seed)")
    parser.add_argument("--device", default="auto",
                        help="cuda, cpu or auto (default %(default)s: a GPU if there is one)")
    for name, kind, text in (("seed", int, "the initialization's and the data's seed"), ("steps", int, "steps in all"),
                             ("batch", int, "samples per step"), ("lr", float, "peak learning rate"),
                             ("warmup", int, "warm-up steps"), ("minutes", float, "this run's time budget; "
                                                                                  "the next run resumes"),
                             ("worlds", int, f"training worlds: seeds {TRAIN_SEED_BASE} and up"),
                             ("seconds", int, "seconds rendered of each world"),
                             ("workers", int, "processes laying out samples"),
                             ("questions", int, "the most questions a sample asks in a row"),
                             ("choice_reply", str, "a question with options is answered with the option's text or "
                                                   "its letter"),
                             ("raw_share", float, "of the questions without options, the share asked bare (as a "
                                                  "user types them)")):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(d, name),
                            help=f"{text} (default %(default)s)")


