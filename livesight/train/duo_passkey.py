"""A text model's DuoAttention samples (train/duo.py's source): passkey prompts (eval/corpus.py's template)
with 5-digit keys and depths drawn from the seed, each closing with the question and its own key less the
key's last token, so the closing hidden states are those that predict the key's digits. The passkey
evaluation draws its trials from seed 0 and depths in a fixed grid, calibration from seed 1000 on.
"""

import random
from typing import Iterator

import torch

from livesight.eval.corpus import passkey_prompt
from livesight.train.duo import Sample
from livesight.train.duo_config import DuoConfig, PasskeyData

SEED_OFFSET = 1000  # calibration prompts never share a seed with the passkey evaluation (seed 0)


def prompts(tokenizer, data: PasskeyData, steps: int, seed: int) -> list[list[int]]:
    """`steps` passkey prompts, one per step, drawn from the seed (keys, depths), each followed by its
    own key but the key's last token."""
    rng = random.Random(SEED_OFFSET + seed)
    out = []
    for _ in range(steps):
        key = rng.randint(10000, 99999)
        out.append(tokenizer.encode(passkey_prompt(key, data.filler, rng.uniform(0.05, 0.6)) + f" {key}",
                                    add_special_tokens=False)[:-1])
    return out


class PasskeySource:
    def __init__(self, loaded, data: PasskeyData, config: DuoConfig):
        """loaded: a decoder-only text model (models/loader.py's LoadedModel)."""
        self.name, self.language_model, self.tokenizer = loaded.name, loaded.model.model, loaded.tokenizer
        self.device = loaded.model.device
        self.closing, self.steps, self.seed = data.closing, config.steps, config.seed
        self.settings = {"filler": data.filler, "closing": data.closing}
        self.data = (f"{config.steps} passkey prompts of {data.filler} filler sentences (eval/corpus.py's template), "
                     f"keys and depths drawn from seed {SEED_OFFSET + config.seed}")
        self._prompts = prompts(self.tokenizer, data, config.steps, config.seed)

    def samples(self) -> Iterator[Sample]:
        for ids in self._prompts:
            yield Sample({"input_ids": torch.tensor([ids], device=self.device)},
                         (max(len(ids) - self.closing, 0), len(ids)))
