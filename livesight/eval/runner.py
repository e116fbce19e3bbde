"""The evaluator's loop: each video's questions through an engine, in either protocol.

stream (default): one pass over each video; every probe is asked when the stream reaches its
time, the model having seen only what came before. Answers leave no trace in the stream
(`ask(remember=False)`), so a question never sees another and a resumed video gives the
same answers. official: a fresh stream over the video cut at each probe's time (from 0, or the
last `context` seconds), as StreamingBench's script does, for comparison with the leaderboard.

An engine opens videos (`video(path)` -> something with `.duration`) and passes
(`open(video, start, seconds)` -> `.frames`, `advance(t)`, `ask(prompt, max_tokens)`, `close()`),
`max_streams` of them at once: that many videos are evaluated at once, each in a thread of its own,
and their records are written in the order one video at a time writes them. A failure the engine
reports on a pass raises StreamFailed. `VideoEngine` is the real one (engine.py), tests script others.
"""

import dataclasses
import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from livesight.errors import InputError
from livesight.eval.at_once import InOrder, each
from livesight.eval.questions import Question, resolve_video
from livesight.eval.scoring import said_yes, score

log = logging.getLogger("livesight.eval")
POLL_TOKENS, COUNT_TOKENS = 4, 8  # a yes/no poll and a count need no more


@dataclass
class RunStats:
    videos: int = 0
    questions: int = 0  # records made
    errors: int = 0
    frames_encoded: int = 0  # frames the engine took in
    frames_span: int = 0  # frames each video has up to its last probe: what one pass must encode
    video_s: float = 0.0  # video seconds streamed
    stream_s: float = 0.0  # wall seconds feeding video into the engine, of which
    wait_s: float = 0.0  # waiting for frames to decode
    ask_s: float = 0.0  # wall seconds answering (each summed over passes, which overlap when videos run at once)

    def add_pass(self, session_pass) -> None:
        self.frames_encoded += session_pass.frames
        for name in ("stream_s", "wait_s", "ask_s"):
            setattr(self, name, getattr(self, name) + getattr(session_pass, name, 0.0))

    def add(self, other: "RunStats") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


class StreamFailed(Exception):
    """A pass's stream failed, in the engine's words (a chunk or a question failed, its offload store
    broke, the engine stopped): the questions it had left become error records."""


class Plan:
    """One question's probes in order: (t, prompt, max_tokens, is_poll). A proactive question
    polls every second after its time stamp up to the ground truth + 4 s, and at the first yes
    asks the question itself at that moment. Times past the video's end are clamped to it."""

    def __init__(self, question: Question, duration: float, answer_tokens: int | None):
        self.q, self.duration = question, duration
        q = question
        if q.kind in ("choice", "open"):
            probes = [(q.t, q.prompt, answer_tokens, False)]
        elif q.kind == "series":
            probes = [(p.t, p.prompt, COUNT_TOKENS if p.rule == "count" else POLL_TOKENS, False) for p in q.probes]
        else:
            num_polls = max(1, math.floor(q.gt_t + 4 - q.t + 1e-9))
            # the polls up to the first at or past the video's end, then the last one, which merges into it
            # below: a ground truth a million seconds late costs one poll, not a million
            last = next((k for k in range(1, num_polls + 1) if q.t + k >= duration), num_polls)
            probes = [(q.t + k, q.poll_prompt, POLL_TOKENS, True) for k in range(1, last + 1)]
            probes += [(q.t + num_polls, q.poll_prompt, POLL_TOKENS, True)] if last < num_polls else []
        self.todo: list[list] = []  # [t, prompt, max_tokens, is_poll, latest scheduled time it stands for]
        for t, prompt, tokens, poll in probes:
            if poll and self.todo and self.todo[-1][0] == min(t, duration):  # polls past the end: the last one
                self.todo[-1][4] = t
            else:
                self.todo.append([min(t, duration), prompt, tokens, poll, t])
        self.replies: list[dict] = []
        self.clamped = False  # a probe asked stood for a time past the video's end
        self.error: str | None = None

    def next(self):
        return self.todo[0] if self.todo else None

    def feed(self, reply: dict) -> None:
        t, _, _, poll, scheduled = self.todo.pop(0)
        self.clamped |= scheduled > self.duration + 1e-6
        self.replies.append(dict(reply, t=round(t, 3), poll=poll))
        if poll and said_yes(reply["text"]):
            self.todo = [[t, self.q.prompt, None, False, t]]

    def record(self) -> dict:
        rec = base_record(self.q)
        rec.update(asked_t=self.replies[0]["t"], clamped=self.clamped, **score(self.q, self.replies))
        rec["latency_ms"] = round(sum(r["latency_ms"] for r in self.replies), 2)
        rec["ttft_ms"] = self.replies[0]["ttft_ms"]
        rec["retrieved"] = sorted({tuple(r) for reply in self.replies for r in reply["retrieved"]})
        rec["frames_seen"] = self.replies[-1]["frames"]
        return rec


def base_record(q: Question) -> dict:
    rec = {"id": q.id, "benchmark": q.benchmark, "video": q.video, "task": q.task, "group": q.group, "kind": q.kind,
           "time_stamp": q.time_stamp, "question": q.text}
    if q.options:
        rec["options"] = q.options
    if q.answer:
        rec["answer"] = q.answer
    return rec


def error_record(q: Question, kind: str, message: str) -> dict:
    return base_record(q) | {"error": message, "error_kind": kind}


def evaluate(questions: list[Question], engine, videos_dir: str, write: Callable[[dict], None],
             protocol: str = "stream", context: float | None = None, answer_tokens: int | None = None) -> RunStats:
    """Ask `questions` (those not done yet), `engine.max_streams` videos at once; each record goes to
    `write` as soon as it is made and every record before it is written. A malformed row, or a video
    that is missing or cannot be read, becomes error records."""
    stats = RunStats()
    by_video: dict[str, list[Question]] = {}
    for q in questions:
        if q.error is not None:
            write(error_record(q, "malformed", q.error))
            stats.errors += 1
        else:
            by_video.setdefault(q.video, []).append(q)
    videos = list(by_video.items())
    parts = [RunStats() for _ in videos]
    order = InOrder(write, len(videos))

    def one(i: int) -> None:
        name, items = videos[i]
        try:
            _video(engine, videos_dir, name, items, order.writer(i), protocol, context, answer_tokens, parts[i])
        finally:
            order.finish(i)
    try:
        each(one, len(videos), engine.max_streams)
    finally:
        order.close()
    for part in parts:
        stats.add(part)
    return stats


def _video(engine, videos_dir: str, name: str, items: list[Question], write, protocol: str, context: float | None,
           answer_tokens: int | None, stats: RunStats) -> None:
    """One video's questions, in one pass or a cut per probe."""
    start = time.perf_counter()
    try:
        path = resolve_video(videos_dir, name)
        video = engine.video(path)
    except (ValueError, OSError) as err:  # InputError is a ValueError: unreadable, empty, ...
        kind = "video_missing" if isinstance(err, FileNotFoundError) else "video_unreadable"
        for q in items:
            write(error_record(q, kind, str(err).splitlines()[0]))
        stats.errors += len(items)
        return
    plans = [Plan(q, video.duration, answer_tokens) for q in items]
    late = [q.time_stamp or f"{q.t:g}" for q in items if q.t > video.duration + 1e-6]
    if late:
        log.warning("%s is %.1f s long: time stamps %s lie past its end and are asked at the end",
                    name, video.duration, ", ".join(late))
    if protocol == "stream":
        _stream(engine, video, plans, write, stats)
    else:
        _official(engine, video, plans, context, write, stats)
    stats.videos += 1
    span = max(p.replies[-1]["t"] if p.replies else 0.0 for p in plans)
    stats.frames_span += _frames_until(span, engine)
    stats.video_s += span
    unfinished = [p for p in plans if p.next() is not None]
    for p in unfinished:
        write(error_record(p.q, "failed", p.error))
    stats.errors += len(unfinished)
    log.info("%s: %d questions in %.1f s", name, len(items), time.perf_counter() - start)


def _frames_until(t: float, engine) -> int:
    """The frames a stream holds once it has reached t: whole chunks."""
    per_chunk = engine.frames_per_chunk
    return math.ceil(t * engine.fps / per_chunk - 1e-6) * per_chunk


def _ask(session_pass, probe, offset: float = 0.0) -> dict:
    prompt, tokens = probe[1], probe[2]
    reply = session_pass.ask(prompt, tokens)
    reply["retrieved"] = [[round(a + offset, 3), round(b + offset, 3)] for a, b in reply["retrieved"]]
    reply["frames"] = session_pass.frames
    return reply


def _stream(engine, video, plans: list[Plan], write, stats: RunStats) -> None:
    """One pass over the video; probes in time order (then data order)."""
    heap = [(p.next()[0], p.q.order, i) for i, p in enumerate(plans)]
    heapq.heapify(heap)
    session_pass = engine.open(video, 0.0, None)
    try:
        while heap:
            t, _, i = heapq.heappop(heap)
            plan = plans[i]
            session_pass.advance(t)
            plan.feed(_ask(session_pass, plan.next()))
            if plan.next() is None:
                write(plan.record())
                stats.questions += 1
            else:
                heapq.heappush(heap, (plan.next()[0], plan.q.order, i))
    except Exception as err:  # noqa: BLE001 - one broken video must not end a run of thousands
        _fail(plans, err)
    finally:
        stats.add_pass(session_pass)
        session_pass.close()


def _official(engine, video, plans: list[Plan], context: float | None, write, stats: RunStats) -> None:
    """A fresh stream per probe over the cut [start, t]: from 0 (a proactive question: from its
    time stamp, as the official script cuts), or the last `context` seconds."""
    for plan in plans:
        try:
            while (probe := plan.next()) is not None:
                t = probe[0]
                origin = plan.q.t if plan.q.kind == "proactive" else 0.0
                start = min(origin, t) if context is None else max(min(origin, t), t - context)
                session_pass = engine.open(video, start, t - start)
                try:
                    session_pass.advance(t - start)
                    plan.feed(_ask(session_pass, probe, start))
                finally:
                    stats.add_pass(session_pass)
                    session_pass.close()
            write(plan.record())
            stats.questions += 1
        except Exception as err:  # noqa: BLE001
            _fail([plan], err)


def _fail(plans: list[Plan], err: Exception) -> None:
    """The plans with probes left become error records (evaluate writes them). A failure the engine
    reported comes in its words, already named; no trace of ours would say more."""
    if not isinstance(err, (InputError, StreamFailed)):
        log.exception("evaluation failed")
    text = str(err).splitlines()[0] if str(err) else ""
    for plan in plans:
        if plan.next() is not None:
            plan.error = text if isinstance(err, StreamFailed) else f"{type(err).__name__}: {text}"
