"""`livesight run`'s sources as the named streams of one engine: what each stream is called, which
stream a question is for, and a run that ends cleanly however it ends.

Each source is fed from a thread of its own (streaming/feed.py) and the engine steps in another, so
the main thread only prints events and is the one that Ctrl-C and SIGTERM interrupt. However the run
ends, the feeders are stopped, the streams closed (their offload folders go) and the sources closed.
"""

import queue
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import urlsplit

from livesight.errors import InputError

_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_.-]+")  # a name stays one word: no ':' or '@', which address streams


@dataclass(frozen=True)
class Ask:
    """An --ask: `question` once the stream reaches `seconds`; stream None: every stream."""

    seconds: float
    question: str
    stream: str | None = None


def stream_names(specs: list[str]) -> list[str]:
    """One short, unique name per --source, in order: a file's stem, a URL's last path part (or its
    host), webcam-N, synthetic or synthetic-SCENE; a name taken already gets -2, -3, ..."""
    names: list[str] = []
    for spec in specs:
        base = _NOT_IN_NAME.sub("-", _label(spec.strip())).strip("-.")[:32] or "stream"
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}-{k}"
        names.append(name)
    return names


def _label(spec: str) -> str:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", spec):
        url = urlsplit(spec)
        return url.path.rstrip("/").rpartition("/")[2] or url.hostname or url.scheme
    if spec == "synthetic" or spec.startswith(("synthetic:", "webcam:")):
        return spec
    return PurePath(spec).stem


def check_asks(asks: list[Ask], names: list[str]) -> None:
    """Every --ask that names a stream names one of `names` (checked before any source opens)."""
    for ask in asks:
        if ask.stream is not None and ask.stream not in names:
            raise InputError(f"--ask '{ask.stream}@{ask.seconds:g}:{ask.question}': no stream named "
                             f"{ask.stream!r}; the streams are {', '.join(names)}")


def address(line: str, names: list[str], live: list[str]) -> tuple[str, str]:
    """A line typed on stdin -> (stream, question). With one stream the whole line is its question;
    with several, `STREAM: question` asks that stream, and a line naming no stream asks the one live
    stream (InputError when there are several)."""
    if len(names) == 1:
        return names[0], line
    head, sep, question = line.partition(":")
    if sep and head.strip() and not any(c.isspace() for c in head.strip()):  # one word: a stream's name
        if head.strip() not in names:
            raise InputError(f"no stream named {head.strip()!r}: type STREAM: question, with STREAM one of "
                             f"{', '.join(names)}")
        return head.strip(), question.strip()
    if len(live) == 1:
        return live[0], line
    raise InputError(f"which stream? type STREAM: question, with STREAM one of {', '.join(names)}")


def open_sources(specs: list[str], fps: float, seconds: float | None) -> list:
    """Open every --source before the model loads. A bad one is refused with its own message, which
    names it (`--source 2 of 3 (SPEC): ...`) when there are several; those opened are closed again."""
    from livesight.vision.sources import open_source
    sources = []
    try:
        for k, spec in enumerate(specs):
            try:
                sources.append(open_source(spec, fps, seconds))
            except InputError as err:
                if len(specs) == 1:
                    raise
                raise InputError(f"--source {k + 1} of {len(specs)} ({spec}): {err}") from None
    except BaseException:
        close_all(sources)
        raise
    return sources


def close_all(sources: list) -> None:
    for source in sources:
        source.close()


def watch(engine, names: list[str], sources: list, asks: list[Ask], realtime: bool,
          show: Callable[[object], None]) -> dict[str, str]:
    """Run each source into the stream of its name until every stream has ended (`show`n its events,
    the summary last) -> {stream: error} for the sources that failed on the way. A live source (or
    any, with realtime: paced as live) never waits for the engine; typed lines on stdin are questions
    when one is live. The sources are closed on return."""
    from livesight.streaming.chunker import chunk_frames
    from livesight.streaming.feed import feed
    from livesight.vision.ingest import Ingest
    outbox: "queue.Queue" = queue.Queue()
    stop = threading.Event()
    feeders: list[threading.Thread] = []
    driver = None
    try:
        ingests = [Ingest(source, realtime=realtime) for source in sources]
        for name, source, ingest in zip(names, sources, ingests):
            engine.open(source.size, live=source.is_live or realtime, name=name, outbox=outbox,
                        frames_dropped=lambda ingest=ingest: ingest.dropped)
            for ask in asks:
                if ask.stream in (None, name):
                    engine.ask(name, ask.question, at=ask.seconds)
        config = engine.config
        for name, ingest in zip(names, ingests):
            feeders.append(feed(engine, name, chunk_frames(ingest, config.frames_per_chunk, config.fps), stop))
        live = [name for name, source in zip(names, sources) if source.is_live]
        if live:
            start_stdin_questions(lambda line: ask_typed(engine, line, names, live))
        driver = threading.Thread(target=_drive, args=(engine, stop, outbox), name="livesight-engine", daemon=True)
        driver.start()
        return _show_until_ended(outbox, len(names), show)
    finally:
        stop.set()
        if driver is not None:
            driver.join()  # before the streams close: a step must not lose its slab mid-way
        for name in names:
            engine.close(name)  # frees its slab and removes its offload folder
        close_all(sources)  # a live source waiting for its next frame lets its feeder go
        for feeder in feeders:
            feeder.join(timeout=5)


def _drive(engine, stop: threading.Event, outbox: "queue.Queue") -> None:
    """The engine's loop, in its own thread; if it dies, the main thread raises what killed it
    rather than wait for summaries that will not come."""
    try:
        engine.run(stop, until_idle=True)
    except BaseException as err:  # noqa: BLE001 - handed to the main thread
        outbox.put(err)


def _show_until_ended(outbox: "queue.Queue", num_streams: int, show: Callable[[object], None]) -> dict[str, str]:
    failures: dict[str, str] = {}
    ended = 0
    while ended < num_streams:
        event = outbox.get()
        if isinstance(event, BaseException):
            raise event
        show(event)
        if event.type == "summary":
            ended += 1
            if "error" in event.data:
                failures[event.data["stream"]] = event.data["error"]
    return failures


def ask_typed(engine, line: str, names: list[str], live: list[str]) -> None:
    """Put a typed line to its stream; a line that names no stream, or one that has ended, gets one
    line on stderr and the run goes on."""
    try:
        name, question = address(line, names, live)
        if engine.ended(name):
            raise InputError(f"stream {name} has ended: it takes no more questions")
        engine.ask(name, question)
    except InputError as err:
        print(f"livesight: {err}", file=sys.stderr, flush=True)


def start_stdin_questions(ask: Callable[[str], None]) -> None:
    """Each non-empty line typed on stdin goes to `ask`, from a thread of its own."""
    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                ask(line.strip())

    threading.Thread(target=read, name="livesight-stdin", daemon=True).start()
