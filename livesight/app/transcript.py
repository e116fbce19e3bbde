"""A session's transcript (narration, answers, errors) as JSONL, SubRip (SRT) and WebVTT.

Times are stream seconds. A caption is shown from its chunk's start for `caption_s` (the chunk
length) or until the next line starts; an answer is shown with its question from when it was asked."""

import json

from livesight.streaming.events import Event

KINDS = ("caption", "answer", "error", "reconnect", "info", "migrated")


def lines(events: list[Event]) -> list[Event]:
    """The events a transcript holds, in stream-time order (stable)."""
    return sorted((e for e in events if e.type in KINDS), key=lambda e: e.t)


def to_jsonl(events: list[Event]) -> str:
    return "".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in lines(events))


def _text(event: Event) -> str:
    if event.type == "answer":
        return f"Q: {event.data.get('question', '')}\nA: {event.text}"
    return event.text if event.type == "caption" else f"[{event.type}] {event.text}"


def _cues(events: list[Event], caption_s: float) -> list[tuple[float, float, str]]:
    subtitled = [e for e in lines(events) if e.text]
    cues = []
    for i, event in enumerate(subtitled):
        end = event.t + caption_s
        if i + 1 < len(subtitled) and subtitled[i + 1].t > event.t:
            end = min(end, subtitled[i + 1].t)
        cues.append((event.t, end, _text(event)))
    return cues


def _clock(seconds: float, separator: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def to_srt(events: list[Event], caption_s: float = 1.0) -> str:
    return "".join(f"{i}\n{_clock(a, ',')} --> {_clock(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(events, caption_s), start=1))


def to_vtt(events: list[Event], caption_s: float = 1.0) -> str:
    body = "".join(f"{_clock(a, '.')} --> {_clock(b, '.')}\n{text.replace('-->', '->')}\n\n"
                   for a, b, text in _cues(events, caption_s))
    return "WEBVTT\n\n" + body


def stamp(seconds: float) -> str:
    """Stream time for the page: M:SS.s, or H:MM:SS past an hour."""
    whole = int(seconds)
    if whole >= 3600:
        return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{seconds % 60:04.1f}"
