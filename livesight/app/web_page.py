"""The web page's layout and its events: Gradio Blocks over PageHandlers. Built once per server."""

import html
from dataclasses import dataclass

import gradio as gr

from livesight.app.web_handlers import WELCOME, PageHandlers
from livesight.app.web_inputs import SOURCES, VIDEO_TYPES, Setting
from livesight.app.web_render import metrics_rows, render_metrics, render_narration

CSS = """
#narration {max-height: 360px; overflow-y: auto; font-family: ui-monospace, monospace; font-size: 13px}
#narration .line {padding: 1px 0} #narration .t {color: #6b7280; margin-right: .6em}
#narration .error {color: #b91c1c} #narration .answer {color: #1d4ed8}
#metrics table {font-size: 13px; width: 100%}
#metrics td:last-child {text-align: right; font-variant-numeric: tabular-nums}
#status .error {color: #b91c1c; font-weight: 600}
"""
# Gradio deletes the uploads and cached outputs this page made once they are a day old (checked
# hourly), so a long-lived server's folder does not grow without end; all of it goes at exit.
DELETE_CACHE = (3600, 86400)


def control(setting: Setting) -> gr.components.Component:
    if setting.control == "choice":
        return gr.Dropdown(list(setting.choices), value=setting.default, label=setting.label, elem_id=setting.elem_id)
    if setting.control == "checkbox":
        return gr.Checkbox(setting.default, label=setting.label, elem_id=setting.elem_id,
                           interactive=setting.interactive)
    return gr.Slider(setting.low, setting.high, setting.default, step=setting.step, label=setting.label,
                     elem_id=setting.elem_id)


@dataclass
class Page:
    """The page's components that events read or write."""

    kind: gr.Radio
    upload: gr.File
    webcam: gr.Image
    url: gr.Textbox
    realtime: gr.Checkbox
    settings: list
    start: gr.Button
    stop: gr.Button
    reset: gr.Button
    status: gr.Markdown
    frame: gr.Image
    narration: gr.HTML
    chat: gr.Chatbot
    question: gr.Textbox
    moments: gr.Gallery
    metrics: gr.HTML
    latency: gr.LinePlot
    memory: gr.LinePlot
    fmt: gr.Radio
    export: gr.Button
    export_file: gr.File


def build(handlers: PageHandlers, model_name: str) -> gr.Blocks:
    # analytics_enabled=False: no version check (api.gradio.app) and no telemetry (huggingface.co)
    with gr.Blocks(title="LiveSight", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        is_random = model_name.startswith(("tiny-random", "random-"))
        noise = " (random weights: the words are noise, the engine is real)" if is_random else (
            " (4.7M parameters, trained here on the synthetic world: watch that source)" if model_name == "toy-vlm"
            else "")
        gr.Markdown(f"# LiveSight\nWatches a video stream, narrates what it sees and answers questions about "
                    f"anything it has seen, with bounded memory. Model: `{html.escape(model_name)}`{noise}.")
        with gr.Row():
            page = Page(**source_column(handlers.settings), **talk_column(), **numbers_column())
        wire(page, handlers)
        demo.unload(handlers.release)
    return demo


def source_column(settings: tuple[Setting, ...]) -> dict:
    with gr.Column(scale=1, min_width=280):
        c = dict(kind=gr.Radio(list(SOURCES), value=SOURCES[0], label="Source", elem_id="source-kind"),
                 upload=gr.File(label="Video file", file_types=list(VIDEO_TYPES), type="filepath", elem_id="upload",
                                visible=False),
                 webcam=gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", visible=False,
                                 elem_id="webcam"),
                 url=gr.Textbox(label="Camera URL or index", placeholder="rtsp://host:554/stream, or 0",
                                visible=False, elem_id="url"),
                 realtime=gr.Checkbox(True, label="Play files at real time", elem_id="realtime"))
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            c["settings"] = [control(s) for s in settings]
        with gr.Row():
            c.update(start=gr.Button("Start", variant="primary", elem_id="start"),
                     stop=gr.Button("Stop", elem_id="stop"), reset=gr.Button("Reset", elem_id="reset"))
        c["status"] = gr.Markdown(WELCOME, elem_id="status")
    return c


def talk_column() -> dict:
    with gr.Column(scale=2, min_width=420):
        return dict(frame=gr.Image(label="Watching", type="numpy", interactive=False, height=270, elem_id="frame",
                                   show_label=True),
                    narration=gr.HTML(render_narration([]), label="Narration", elem_id="narration"),
                    chat=gr.Chatbot(label="Questions", height=260, elem_id="chat"),
                    question=gr.Textbox(placeholder="Ask about anything it has seen, then press Enter",
                                        show_label=False, elem_id="question"),
                    moments=gr.Gallery(label="Moments the last answer drew on", columns=6, height=150,
                                       elem_id="moments"))


def numbers_column() -> dict:
    with gr.Column(scale=1, min_width=300):
        return dict(metrics=gr.HTML(render_metrics(metrics_rows(None, [], [])), elem_id="metrics"),
                    latency=gr.LinePlot(x="stream s", y="ms", title="Chunk latency", height=180),
                    memory=gr.LinePlot(x="stream s", y="MB", title="Memory (GPU, else process)", height=180),
                    fmt=gr.Radio(["JSONL", "SRT", "WebVTT"], value="JSONL", label="Export transcript"),
                    export=gr.Button("Export", elem_id="export"),
                    export_file=gr.File(label="Transcript", interactive=False, elem_id="export-file"))


def wire(p: Page, handlers: PageHandlers) -> None:
    def show_source(choice):
        return (gr.update(visible=choice == "Video file"), gr.update(visible=choice == "Browser webcam"),
                gr.update(visible=choice == "Camera URL"))

    def start(request: gr.Request, kind, upload, url, realtime, *settings):
        return handlers.start(kind, upload, url, realtime, list(settings), request)

    p.kind.change(show_source, p.kind, [p.upload, p.webcam, p.url])
    # preprocess=False: the handler reads every value raw and turns a bad one into a message (Gradio's own
    # checks would raise first, and a string sent for a number would reach the page as no message at all)
    p.start.click(start, [p.kind, p.upload, p.url, p.realtime, *p.settings], p.status, preprocess=False)
    p.stop.click(handlers.stop, None, None)
    p.reset.click(handlers.reset, None, [p.frame, p.chat, p.moments, p.narration, p.metrics, p.status])
    p.question.submit(handlers.ask, [p.question, p.chat], [p.question, p.chat, p.moments], concurrency_limit=None)
    p.webcam.stream(handlers.push_frame, p.webcam, None, stream_every=0.25, concurrency_limit=None)
    p.export.click(handlers.export, p.fmt, p.export_file)
    gr.Timer(1.0).tick(handlers.refresh, None, [p.frame, p.narration, p.metrics, p.latency, p.memory, p.status],
                       show_progress="hidden", concurrency_limit=None)
