"""What each event of the web page does, over the run registry. One object per server; a browser
tab (or an API client) is a session key, Gradio's session hash. That key is the client's own string:
it only ever looks a run up in the registry, never names a file or folder."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from livesight.app.live import LiveRun
from livesight.app.registry import RunRegistry
from livesight.app.source_policy import SourcePolicy
from livesight.app.transcript import stamp, to_jsonl, to_srt, to_vtt
from livesight.app.web_inputs import (WORLD_SECONDS, WORLD_SPEC, Setting, checkbox, offered, question_text,
                                      settings_config, source_choice)
from livesight.app.web_render import (error_html, metrics_rows, plot_frames, render_metrics, render_narration,
                                      render_status)
from livesight.errors import InputError
from livesight.streaming.engine import Engine
from livesight.streaming.events import Event
from livesight.vision.sources import PushSource

MAX_MOMENTS = 12
EXPORTS = {"JSONL": "jsonl", "SRT": "srt", "WebVTT": "vtt"}
WELCOME = "Choose a source and press **Start**."


@dataclass
class PageHandlers:
    engine: Engine  # every run is one of its streams
    registry: RunRegistry
    policy: SourcePolicy
    upload_dir: str  # Gradio's upload folder: an uploaded video must lie in it
    export_dir: str  # transcripts go to export_dir/<run id>/
    server: Mapping[str, Any]  # the server's engine flags by dest (web_inputs.server_values): each run's base

    @property
    def settings(self) -> tuple[Setting, ...]:
        """The Settings controls as this server offers them (its flags are their defaults and limits)."""
        return offered(self.server)

    def start(self, kind, upload, url, realtime, settings: list, request: gr.Request) -> str:
        """Start a run for this session from the raw values of the Source and Settings controls. Start
        replaces the session's run even when the new one is refused, so the refusal stays in the page
        (the refresh would otherwise draw the old run's status over it a second later)."""
        self.registry.close(request.session_hash)
        try:
            config = settings_config(settings, self.server)
            is_realtime = checkbox(realtime, "Play files at real time")
            source, name = source_choice(kind, upload, url, config.fps, self.policy, self.upload_dir)
            seconds = WORLD_SECONDS if source == WORLD_SPEC else None
            self.registry.start(request.session_hash, lambda: LiveRun(
                self.engine, config, source, realtime=is_realtime, name=name, parent=self.export_dir, seconds=seconds))
        except InputError as err:
            return error_html(str(err))
        return "**starting** …"

    def stop(self, request: gr.Request) -> None:
        run = self.registry.get(request.session_hash)
        if run is not None:
            run.stop()

    def reset(self, request: gr.Request):
        self.registry.close(request.session_hash)
        return (gr.update(value=None, label="Watching"), [], [], render_narration([]),
                render_metrics(metrics_rows(None, [], [])), f"Reset. {WELCOME}")

    def release(self, request: gr.Request) -> None:
        """The tab closed: its run goes, and with it the slot and the engine slab it held."""
        self.registry.close(request.session_hash)

    def refresh(self, request: gr.Request):
        run = self.registry.get(request.session_hash)
        events, history = run.snapshot() if run else ([], [])
        latency, memory = plot_frames(history)
        if run is not None:
            status = render_status(run, events)
        else:
            note = self.registry.note(request.session_hash)
            status = gr.skip() if note is None else f"**closed**: {note}. Press **Start** for a new stream."
        return (frame_view(run), render_narration(events), render_metrics(metrics_rows(run, events, history)), latency,
                memory, status)

    def ask(self, question, history, request: gr.Request):
        try:
            question = question_text(question)
        except InputError as err:
            return "", list(history or []) + [{"role": "assistant", "content": f"⚠ {err}"}], gr.skip()
        if not question:
            return "", history, gr.skip()
        run = self.registry.get(request.session_hash)
        events = run.ask(question) if run else [Event("error", 0.0, "no stream is running: press Start first")]
        history = list(history or []) + [{"role": "user", "content": question}]
        moments = []
        for event in events:
            if event.type == "answer":
                history.append({"role": "assistant", "content": answer_text(event)})
                spans = event.data.get("retrieved", [])[:MAX_MOMENTS]
                moments = [(image, f"{stamp(a)}–{stamp(b)}") for a, b in spans
                           if (image := run.thumbnail(a)) is not None]
            else:
                history.append({"role": "assistant", "content": f"⚠ {event.text}"})
        return "", history, moments

    def push_frame(self, frame, request: gr.Request) -> None:
        run = self.registry.get(request.session_hash)
        if run is None or not isinstance(run.source_spec, PushSource) or frame is None:
            return
        try:
            run.source_spec.put(frame[:, :, :3])
        except (InputError, IndexError, TypeError):
            pass  # a frame that is not an RGB picture is dropped; the next one may be fine

    def export(self, fmt, request: gr.Request) -> str | None:
        """Write this session's transcript as `fmt`; -> its path (None without a run)."""
        run = self.registry.get(request.session_hash)
        if run is None or fmt not in EXPORTS:
            return None
        events = run.transcript()  # all of it, not only what the page shows
        text = {"JSONL": to_jsonl, "SRT": lambda e: to_srt(e, run.config.chunk_seconds),
                "WebVTT": lambda e: to_vtt(e, run.config.chunk_seconds)}[fmt](events)
        folder = os.path.join(self.export_dir, run.id)  # the run's server-made id, never the session hash
        os.makedirs(folder, exist_ok=True)  # the run's own folder (made by the run; removed when it closes)
        path = os.path.join(folder, f"livesight-transcript.{EXPORTS[fmt]}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path


def frame_view(run):
    """The frame the stream is at, labelled with its stream time; unchanged while there is none yet."""
    latest = run.latest_frame() if run is not None else None
    if latest is None:
        return gr.skip()
    t, image = latest
    return gr.update(value=image, label=f"Watching · {stamp(t)}")


def answer_text(event: Event) -> str:
    spans = event.data.get("retrieved", [])
    drew = ", ".join(f"{stamp(a)}–{stamp(b)}" for a, b in spans[:MAX_MOMENTS])
    more = f" and {len(spans) - MAX_MOMENTS} more" if len(spans) > MAX_MOMENTS else ""
    text = f"{event.text or '(no words)'}\n\n*{event.data['ttft_ms']:.0f} ms to first token"
    return text + (f"; drew on {drew}{more}*" if spans else "; nothing retrieved*")
