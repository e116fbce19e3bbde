"""The engine's side of one stream: its waiting chunks and questions, the work in progress, its outbox."""

import queue
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from livesight.streaming.chunker import Chunk
from livesight.streaming.events import Event
from livesight.streaming.stream import Stream, Work


@dataclass
class Job:
    kind: str  # "chunk" or "question"
    arrived: float  # perf_counter() when it came
    chunk: Chunk | None = None
    question: str = ""
    remember: bool = True
    max_tokens: int | None = None
    shorten: bool = False  # a live stream's chunk started with another waiting: half the narration
    partial: bool = False  # a question whose answer also comes as it is generated ("answer_delta" events)


@dataclass
class Lane:
    """The engine's side of one stream: its queues, the work in progress, its outbox."""

    id: str
    stream: Stream
    live: bool
    frames_dropped: Callable[[], int]
    chunks: deque = field(default_factory=deque)
    questions: deque = field(default_factory=deque)
    scheduled: list = field(default_factory=list)  # (stream seconds, Job), asked once the stream gets there
    outbox: "queue.Queue[Event]" = field(default_factory=queue.Queue)
    work: Work | None = None
    job: Job | None = None
    item: object = None  # what the work waits for: a VisionWork or a StepBuilder
    source_done: bool = False
    failure: str | None = None
    failure_told: bool = False
    ended: bool = False  # its summary was sent (it still answers questions until closed)
    closed: bool = False
    started: float = field(default_factory=time.perf_counter)
    counts: dict = field(default_factory=lambda: {"chunks_dropped": 0, "narrations_shortened": 0})

    @property
    def idle(self) -> bool:
        return self.work is None and not self.chunks and not self.questions
