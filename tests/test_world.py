"""The synthetic world with ground truth (vision/world.py): seeded and random-access, its event log
agrees with its state at every moment, its rules hold (one shape of a kind at a time, texts shown for
at least 2 s, backgrounds that really change), and the pixels show what the state says."""

import time

import numpy as np
import pytest

from livesight.vision.world import BACKGROUNDS, COLOURS, SHAPES, World


def test_same_seed_same_world_in_any_order_and_other_seeds_differ():
    times = [0.0, 0.5, 13.25, 61.0, 3599.5, 10_800.0]
    a, b = World(7), World(7)
    forward = [a.render(t) for t in times]
    backward = [b.render(t) for t in reversed(times)][::-1]  # random access: no state carried over
    assert all(np.array_equal(x, y) for x, y in zip(forward, backward))
    assert a.events(0, 600) == World(7).events(0, 600)
    assert World(8).events(0, 600) != a.events(0, 600)


def test_the_event_log_agrees_with_the_state_at_every_moment():
    world = World(3)
    events = world.events(0, 300)
    assert events == sorted(events, key=lambda e: e["t"]) and events[0] == {"t": 0.0, "type": "background",
                                                                          "colour": world.background(0)}
    on: dict[str, str] = {}  # kind -> colour, replayed from the log
    text, background = None, None
    cuts = sorted({e["t"] for e in events})
    for i, t in enumerate(cuts):
        for e in (e for e in events if e["t"] == t):
            if e["type"] == "appear":
                assert e["shape"] not in on, f"two {e['shape']}s at once at {t}"
                on[e["shape"]] = e["colour"]
            elif e["type"] == "leave":
                assert on.pop(e["shape"]) == e["colour"]
            elif e["type"] == "text_on":
                assert text is None
                text = e["text"]
            elif e["type"] == "text_off":
                assert text == e["text"]
                text = None
            else:
                assert e["colour"] != background
                background = e["colour"]
        later = cuts[i + 1] if i + 1 < len(cuts) else t + 1
        for probe in (t, (t + later) / 2):  # right after the events at t, and between them and the next
            state = world.state(probe)
            assert {s["kind"]: s["colour"] for s in state["shapes"]} == on, probe
            assert state["text"] == text and state["background"] == background, probe


def test_the_rules_make_questions_answerable():
    world = World(11)
    events = world.events(0, 3600)
    shown = {}
    for e in events:
        if e["type"] in ("text_on", "text_off"):
            shown.setdefault(e["type"], []).append(e["t"])
    assert all(off - on >= 2 - 1e-6 for on, off in zip(shown["text_on"], shown["text_off"])), "texts last 2 s"
    changes = [e for e in events if e["type"] == "background"]
    assert [e["t"] for e in changes] == [30.0 * b for b in range(120)], "a change at every 30-s block, only then"
    assert all(a["colour"] != b["colour"] for a, b in zip(changes, changes[1:])), "each to another colour"
    assert {e["shape"] for e in events if e["type"] == "appear"} == set(SHAPES)
    assert {e["colour"] for e in events if e["type"] == "appear"} == set(COLOURS)
    assert {e["colour"] for e in changes} == set(BACKGROUNDS)


@pytest.mark.parametrize("t", [4.2, 127.9, 9999.3])
def test_the_pixels_show_the_state(t):
    world, width, height = World(5), 640, 360
    frame, state = world.render(t, width, height), world.state(t)
    corner = frame[5, width - 5]
    assert tuple(corner) == BACKGROUNDS[state["background"]]
    for s in state["shapes"]:  # the shape's colour at its centre, unless a later one or the text covers it
        x, y = int(s["x"] * width), int(s["y"] * height)
        patch = frame[max(0, y - 2):y + 3, max(0, x - 2):x + 3].reshape(-1, 3)
        covered = any(o is not s and abs(o["x"] - s["x"]) < 0.12 and abs(o["y"] - s["y"]) < 0.2
                      for o in state["shapes"]) or (state["text"] and abs(s["x"] - 0.5) < 0.3)
        assert covered or (patch == COLOURS[s["colour"]]).all(axis=1).any(), (s, patch[:3])


def test_any_length_is_cheap():
    world = World(1)
    start = time.perf_counter()
    for k in range(200):
        world.render(1e6 + k * 0.5)
    assert (time.perf_counter() - start) / 200 < 0.01, "a frame in under 10 ms, a million seconds in"


def test_synth_writes_a_world_and_its_events(tmp_path, capsys):
    from livesight.app.cli import main
    from livesight.vision.sources import VideoFile
    out = tmp_path / "world.mp4"
    assert main(["synth", str(out), "--scene", "world", "--seed", "4", "--seconds", "40", "--fps", "2"]) == 0
    assert "world seed 4" in capsys.readouterr().out
    lines = [__import__("json").loads(line) for line in (tmp_path / "world.events.jsonl").read_text().splitlines()]
    assert lines == World(4).events(0, 40) and len(VideoFile(str(out)).timestamps) == 80
    assert main(["synth", str(out), "--scene", "world", "--seconds", "1", "--events", "/nonexistent/x.jsonl"]) == 2
    assert "--events /nonexistent/x.jsonl: cannot write it" in capsys.readouterr().err
