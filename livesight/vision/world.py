"""A synthetic world whose every fact is known: shapes of several kinds and colours appear, move and
leave; a large digit or word is shown for a while; the background changes; a clock ticks. Seeded, any
length, and random access: the frame, the state and the events at any time t come from t alone (each
10-s segment draws its own from the seed), so a 3-hour video costs nothing to seek into.

Rules that make every question about it answerable from the pixels:
- at most one shape of each kind is on screen at a time (a kind lives within one segment), so "the
  square" always names one thing; its colour does not change while it is there;
- a shown text stays for at least 2 s, within one segment, and is never two at once;
- the background changes at every 30-s block's start, to another colour, and only then.
"""

import functools
from dataclasses import dataclass

import cv2
import numpy as np

SEGMENT_S = 10.0  # a shape and a text each live within one segment
BLOCK_S = 30.0  # the background holds for a block
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (240, 220, 30),
           "purple": (150, 60, 200), "orange": (250, 140, 20), "white": (245, 245, 245)}
BACKGROUNDS = {"grey": (90, 90, 90), "navy": (20, 30, 80), "olive": (90, 100, 30), "maroon": (90, 20, 30),
               "teal": (20, 100, 100), "black": (10, 10, 10)}
TEXTS = tuple("0123456789") + ("CAT", "DOG", "SUN", "CAR", "TREE", "BOOK", "FISH", "BIRD", "STAR", "MOON")
SHAPE_P, TEXT_P = 0.55, 0.5  # the chance a kind appears in a segment; that a text is shown in one


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    start: float  # appears (stream seconds)
    end: float  # leaves
    path: tuple[float, float, float, float]  # x0, y0, x1, y1: where it is at start and at end, 0..1 of the frame
    size: float  # radius, as a share of the frame's shorter side

    def where(self, t: float) -> tuple[float, float]:
        a = (t - self.start) / (self.end - self.start)
        x0, y0, x1, y1 = self.path
        return x0 + a * (x1 - x0), y0 + a * (y1 - y0)


@dataclass(frozen=True)
class Text:
    text: str
    start: float
    end: float


class World:
    def __init__(self, seed: int = 0):
        self.seed = seed
        self.segment = functools.lru_cache(maxsize=256)(self._segment)  # a frame's segment, drawn once

    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _segment(self, k: int) -> tuple[tuple[Shape, ...], Text | None]:
        """Segment k's shapes and text ([k, k + 1) * SEGMENT_S), drawn from (seed, k) alone."""
        rng, base = self._rng(0, k), k * SEGMENT_S
        shapes = []
        for kind in SHAPES:
            if rng.random() >= SHAPE_P:
                continue
            start = base + rng.uniform(0, SEGMENT_S - 3)
            end = min(base + SEGMENT_S, start + rng.uniform(3, SEGMENT_S))
            x0, y0, x1, y1 = rng.uniform(0.12, 0.88, 4)
            shapes.append(Shape(kind, str(rng.choice(list(COLOURS))), round(start, 2), round(end, 2),
                                (x0, y0, x1, y1), rng.uniform(0.06, 0.1)))
        text = None
        if rng.random() < TEXT_P:
            start = base + rng.uniform(0, SEGMENT_S - 2)
            end = min(base + SEGMENT_S, start + rng.uniform(2, 6))
            text = Text(str(rng.choice(TEXTS)), round(start, 2), round(end, 2))
        return tuple(shapes), text

    def background(self, t: float) -> str:
        """The background's colour name at t: block b draws from one half of the palette, block b + 1 from
        the other, so it changes at every block and needs no other block to be drawn."""
        b = int(t // BLOCK_S)
        names, half = list(BACKGROUNDS), len(BACKGROUNDS) // 2
        return names[(b % 2) * half + int(self._rng(1, b).integers(half))]

    def state(self, t: float) -> dict:
        """What is on screen at t: {"background", "shapes": [{kind, colour, x, y}], "text" or None, "clock"}."""
        shapes, text = self.segment(int(t // SEGMENT_S))
        visible = [{"kind": s.kind, "colour": s.colour, **dict(zip("xy", (round(float(v), 3) for v in s.where(t))))}
                   for s in shapes if s.start <= t < s.end]
        shown = text.text if text is not None and text.start <= t < text.end else None
        return {"background": self.background(t), "shapes": visible, "text": shown, "clock": clock(t)}

    def events(self, t0: float, t1: float) -> list[dict]:
        """Everything that happens in [t0, t1), in time order: appear / leave (a shape), text_on /
        text_off, background (a change)."""
        out = []
        for k in range(int(t0 // SEGMENT_S), int(np.ceil(t1 / SEGMENT_S))):
            shapes, text = self.segment(k)
            for s in shapes:
                out += [{"t": s.start, "type": "appear", "shape": s.kind, "colour": s.colour},
                        {"t": s.end, "type": "leave", "shape": s.kind, "colour": s.colour}]
            if text is not None:
                out += [{"t": text.start, "type": "text_on", "text": text.text},
                        {"t": text.end, "type": "text_off", "text": text.text}]
        for b in range(int(np.ceil(t0 / BLOCK_S)), int(np.ceil(t1 / BLOCK_S))):
            t = b * BLOCK_S
            out.append({"t": t, "type": "background", "colour": self.background(t)})
        order = {"leave": 0, "text_off": 1, "background": 2, "appear": 3, "text_on": 4}  # at one time: gone first
        return sorted((e for e in out if t0 <= e["t"] < t1), key=lambda e: (e["t"], order[e["type"]]))

    def render(self, t: float, width: int = 640, height: int = 360) -> np.ndarray:
        """The frame at t: (height, width, 3) uint8 RGB."""
        img = np.empty((height, width, 3), np.uint8)
        img[:] = BACKGROUNDS[self.background(t)]
        side = min(width, height)
        shapes, text = self.segment(int(t // SEGMENT_S))
        for s in shapes:
            if s.start <= t < s.end:
                x, y = s.where(t)
                _draw(img, s.kind, COLOURS[s.colour], (int(x * width), int(y * height)), max(3, int(s.size * side)))
        if text is not None and text.start <= t < text.end:
            scale, thick = side / 110, max(2, side // 60)
            (w, h), _ = cv2.getTextSize(text.text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            cv2.putText(img, text.text, ((width - w) // 2, (height + h) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), thick, cv2.LINE_AA)
        # the clock is large enough to read at a small model's frame size (168 pixels high: digits ~16 px)
        cv2.putText(img, clock(t), (side // 36, height - side // 30), cv2.FONT_HERSHEY_SIMPLEX, side / 200,
                    (255, 255, 255), max(2, side // 110), cv2.LINE_AA)
        return img


def clock(t: float) -> str:
    minutes, seconds = divmod(int(t), 60)
    return f"{minutes}:{seconds:02d}"


def _draw(img: np.ndarray, kind: str, colour: tuple[int, int, int], centre: tuple[int, int], r: int) -> None:
    x, y = centre
    if kind == "circle":
        cv2.circle(img, centre, r, colour, -1, cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(img, (x - r, y - r), (x + r, y + r), colour, -1)
    elif kind == "triangle":
        cv2.fillPoly(img, [np.array([(x, y - r), (x - r, y + r), (x + r, y + r)], np.int32)], colour, cv2.LINE_AA)
    elif kind == "diamond":
        cv2.fillPoly(img, [np.array([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], np.int32)], colour, cv2.LINE_AA)
    else:  # cross
        w = max(2, r // 3)
        cv2.rectangle(img, (x - r, y - w), (x + r, y + w), colour, -1)
        cv2.rectangle(img, (x - w, y - r), (x + w, y + r), colour, -1)
