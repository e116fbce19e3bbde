"""The world's narration and questions (vision/world_tasks.py): the narration tells what changed but
never what a question asks, so only the pixels answer about the past; every question's answer is what
the world showed all through the second it names (checked against the world's state, not the code
that made it); four distinct options, one right; ages as asked."""

import re

import numpy as np

from livesight.vision.world import BACKGROUNDS, COLOURS, TEXTS, World
from livesight.vision.world_tasks import LETTERS, narration, question, questions_at

ASKED = set(COLOURS) | set(BACKGROUNDS) | set(TEXTS)


def test_narration_says_what_changed_and_nothing_a_question_asks():
    world = World(2)
    quiet = 0
    for t in range(3600):
        said = narration(world, t, t + 1)
        changes = [e for e in world.events(t, t + 1) if e["t"] > 0]
        assert (said == "") == (not changes), t
        quiet += said == ""
        words = set(re.findall(r"[A-Za-z0-9]+", said))
        assert not words & ASKED, (t, said)
        assert said.count(".") == len(changes)
    assert 0.3 < quiet / 3600 < 0.9, "a stream has quiet seconds and busy ones"


def test_every_answer_is_what_the_frames_of_that_second_show():
    world, rng = World(9), np.random.default_rng(0)
    made = 0
    for ask in range(20, 3600, 37):
        for q in questions_at(world, ask, [0, 5, 60, 600], rng):
            made += 1
            assert len(q["options"]) == 4 and len(set(q["options"])) == 4
            right = q["options"][LETTERS.index(q["answer"])]
            c = q["fact_second"]
            assert 0 <= c <= ask - 1 and q["age_s"] == ask - 1 - c
            assert ("now" in q["question"]) == (q["age_s"] == 0)
            if q["age_s"]:
                minutes, seconds = divmod(c, 60)
                assert f"{minutes}:{seconds:02d}" in q["question"]
            for frame_t in (c, c + 0.5):  # both frames of the second at 2 fps
                state = world.state(frame_t)
                if q["task"] == "colour":
                    kind = re.search(r"the (\w+) (now|when)", q["question"]).group(1)
                    assert {s["kind"]: s["colour"] for s in state["shapes"]}[kind] == right
                elif q["task"] == "text":
                    assert state["text"] == right
                else:
                    assert state["background"] == right
    assert made > 250


def test_ages_are_near_the_asked_ones_and_a_second_without_the_fact_gives_none():
    world, rng = World(4), np.random.default_rng(1)
    for q, age in zip(questions_at(world, 1800, [0, 3, 30, 300, 1500], rng), [0, 3, 30, 300, 1500]):
        assert abs(q["age_s"] - age) <= 30
    empty = next(c for c in range(100, 3000) if not any(
        world.state(c + d)["text"] for d in (0, 0.5)))
    assert question(world, 3600, empty, "text", rng) is None
    assert question(world, 100, 100, "background", rng) is None, "a second not yet seen"
