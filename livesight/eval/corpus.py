"""Texts for the fidelity benchmark: prose that ships with Python, and passkey prompts."""

import random

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
INTRO = ("There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the pass key.\n")
QUESTION = "\nWhat is the pass key? The pass key is"


def python_docs_text() -> str:
    """The Python language reference topics that CPython ships for `help()` (about 465k characters)."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[key] for key in sorted(topics))


def passkey_prompt(passkey: int, num_filler: int, depth: float) -> str:
    """INTRO, `num_filler` filler sentences with the passkey line after a `depth` share of them, QUESTION."""
    before = round(depth * num_filler)
    key_line = f"The pass key is {passkey}. Remember it. {passkey} is the pass key. "
    return INTRO + FILLER * before + key_line + FILLER * (num_filler - before) + QUESTION


def passkey_trials(num_trials: int, depths: tuple[float, float], seed: int = 0) -> list[tuple[int, float]]:
    """(passkey, depth) pairs: random 5-digit keys at depths spread evenly over `depths`."""
    rng = random.Random(seed)
    lo, hi = depths
    return [(rng.randint(10000, 99999), lo + (hi - lo) * i / max(1, num_trials - 1)) for i in range(num_trials)]
