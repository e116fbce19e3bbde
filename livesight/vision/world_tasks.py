"""What a model that watches the world (world.py) is taught to say and is asked: a narration per chunk,
and four-option questions about the present and the past whose answers only the pixels hold.

The narration tells what changed in words that leave out everything a question asks: shapes appear
and leave by kind ("A square appears."), a text is shown ("A word is shown."), the background changes,
but never a colour, a text or a background's colour. A chunk where nothing changed has an empty
narration (the model learns to end its turn at once). So a question about the past cannot be
answered from narration kept in the text window; it needs the frames, in the vision window or brought
back by retrieval.

Questions are asked at whole seconds T (StreamingBench's time stamps) about a clock second C <= T
(the clock shows whole seconds); the fact holds over all of [C, C + 1), so every frame of that second
shows it. age = T - 1 - C: 0 is the present (the second the last chunk showed).
"""

import numpy as np

from livesight.vision.world import BACKGROUNDS, COLOURS, TEXTS, World, clock

LETTERS = "ABCD"
TASKS = ("colour", "text", "background")  # what is asked: a shape's colour, the shown text, the background


def narration(world: World, t0: float, t1: float) -> str:
    """What changed in [t0, t1), one sentence per event; "" when nothing did."""
    return _said(world.events(t0, t1))


def _said(events) -> str:
    said = []
    for e in events:
        if e["type"] == "appear":
            said.append(f"A {e['shape']} appears.")
        elif e["type"] == "leave":
            said.append(f"The {e['shape']} leaves.")
        elif e["type"] == "text_on":
            said.append("A number is shown." if e["text"].isdigit() else "A word is shown.")
        elif e["type"] == "text_off":
            said.append("The text goes away.")
        elif e["t"] > 0:  # the first background is the scene, not a change
            said.append("New background.")
    return " ".join(said)


def chunk_narration(world: World, index: int, fps: float = 2.0, chunk_s: float = 1.0) -> str:
    """What chunk `index`'s frames (at index * chunk_s + k / fps) show changing: the events after the
    previous chunk's last frame, up to and including this chunk's last frame (an event between two
    frames is first seen at the later one). Event times are hundredths, so + 1e-6 takes `last` in."""
    last = index * chunk_s + chunk_s - 1 / fps
    lo = last - chunk_s
    return _said(e for e in world.events(max(lo, 0.0), last + 1e-6) if e["t"] > lo)


def _steady(world: World, second: int) -> dict | None:
    """The state over the whole clock second [second, second + 1): the shapes there all along (with the
    colour they keep), the text shown all along, the background; None before the stream starts."""
    if second < 0:
        return None
    shapes, text = world.segment(int(second // 10))
    whole = [s for s in shapes if s.start <= second and second + 1 <= s.end]
    kept = text.text if text is not None and text.start <= second and second + 1 <= text.end else None
    return {"shapes": {s.kind: s.colour for s in whole}, "text": kept, "background": world.background(second)}


def _options(right: str, pool: list[str], rng: np.random.Generator) -> tuple[list[str], str]:
    """Four options, the right one among three others from the pool, shuffled -> (options, its letter)."""
    others = [x for x in pool if x != right]
    chosen = [right] + [str(x) for x in rng.choice(others, 3, replace=False)]
    order = rng.permutation(4)
    options = [chosen[i] for i in order]
    return options, LETTERS[options.index(right)]


def question(world: World, ask: int, second: int, task: str, rng: np.random.Generator) -> dict | None:
    """A question asked at stream second `ask` about clock second `second`, or None when that second
    holds no such fact (no shape there all along, no text shown all along)."""
    state = _steady(world, second)
    if state is None or second > ask - 1:
        return None
    when = "now" if second == ask - 1 else f"when the clock read {clock(second)}"
    if task == "colour":
        if not state["shapes"]:
            return None
        kind = str(rng.choice(sorted(state["shapes"])))
        right, pool = state["shapes"][kind], list(COLOURS)
        text = f"What colour is the {kind} now?" if when == "now" else f"What colour was the {kind} {when}?"
    elif task == "text":
        if state["text"] is None:
            return None
        right, pool = state["text"], list(TEXTS)
        text = "What is shown in large print now?" if when == "now" else f"What was shown in large print {when}?"
    else:
        right, pool = state["background"], list(BACKGROUNDS)
        text = "What colour is the background now?" if when == "now" else \
            f"What colour was the background {when}?"
    options, answer = _options(right, pool, rng)
    return {"time": ask, "fact_second": second, "age_s": ask - 1 - second, "task": task, "question": text,
            "options": options, "answer": answer}


def questions_at(world: World, ask: int, ages: list[float], rng: np.random.Generator, search: int = 30
                 ) -> list[dict]:
    """One question per target age (seconds back from `ask`; 0: now): of a task drawn at random (another
    if no second near enough holds that fact), about the nearest clock second to ask - 1 - age (within
    `search` s, the older side first) that holds one."""
    out, shifts = [], sorted(range(-search, search + 1), key=lambda d: (abs(d), d))
    for age in ages:
        target, first = int(ask - 1 - age), str(rng.choice(TASKS))
        for task in [first] + [t for t in TASKS if t != first]:
            made = next((q for d in shifts if (q := question(world, ask, target + d, task, rng)) is not None), None)
            if made is not None:
                out.append(made)
                break
    return out
