"""`livesight web`: watch, narrate and ask in a browser. Gradio Blocks, thin over LiveRun.

Every browser tab gets its own run (keyed by Gradio's session hash), so transcripts never mix; at
most --max-streams run at once and a visitor past that is told the server is busy. Engine steps of
all runs share one lock: one model, one GPU, steps interleaved chunk by chunk.
"""

import html
import os
import tempfile

import gradio as gr
import pandas as pd

from livesight.app.live import LiveRun, RunRegistry
from livesight.app.transcript import lines, stamp, to_jsonl, to_srt, to_vtt
from livesight.errors import InputError
from livesight.streaming.adapter import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, SessionConfig
from livesight.streaming.events import Event, chunk_ms
from livesight.streaming.config import RetrievalConfig
from livesight.vision.sources import PushSource

VIDEO_TYPES = [".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"]
SOURCES = ("Video file", "Browser webcam", "Camera URL")
MAX_LINES = 300  # narration lines drawn in the page; the export holds them all
MAX_MOMENTS = 12
PLOT_POINTS = 600

CSS = """
#narration {max-height: 360px; overflow-y: auto; font-family: ui-monospace, monospace; font-size: 13px}
#narration .line {padding: 1px 0} #narration .t {color: #6b7280; margin-right: .6em}
#narration .error {color: #b91c1c} #narration .answer {color: #1d4ed8}
#metrics table {font-size: 13px; width: 100%}
#metrics td:last-child {text-align: right; font-variant-numeric: tabular-nums}
#status .error {color: #b91c1c; font-weight: 600}
"""


def session_config(fps, vision_window, text_window, narrate, narrate_tokens, reuse, prune, keep_ratio,
                   retrieve, top_k) -> SessionConfig:
    """The page's controls -> a validated SessionConfig; raises InputError naming the control."""
    try:
        return SessionConfig(fps=float(fps), vision_window_s=float(vision_window), text_window=int(text_window),
                             narrate=bool(narrate), narrate_tokens=int(narrate_tokens),
                             compression=CompressionConfig(reuse=bool(reuse), prune=bool(prune),
                                                           keep_ratio=float(keep_ratio)),
                             retrieval=RetrievalConfig(enabled=bool(retrieve), top_k=int(top_k)))
    except ValueError as err:
        raise InputError(f"settings: {err}") from None


def check_upload(path: str | None) -> str:
    if not path:
        raise InputError("no video file: upload one (mp4, mkv, mov, avi, webm), then press Start")
    if os.path.splitext(path)[1].lower() not in VIDEO_TYPES:
        raise InputError(f"'{os.path.basename(path)}' is not a video file: upload one of {', '.join(VIDEO_TYPES)}")
    return path


def camera_spec(text: str) -> str:
    text = (text or "").strip()
    if text.isdigit():
        return f"webcam:{text}"
    if not text.lower().startswith(("rtsp://", "rtsps://", "http://", "https://")):
        raise InputError(f"camera '{text}': give an rtsp:// or http(s):// URL, or a camera index such as 0")
    return text


def render_narration(events: list[Event]) -> str:
    shown = lines(events)[-MAX_LINES:]
    if not shown:
        return "<div class='line t'>Narration appears here once a stream runs.</div>"
    rows = []
    for e in shown:
        text = e.text or ""
        if e.type == "answer":
            text = f"Q: {e.data.get('question', '')} · A: {text}"
        elif e.type != "caption":
            text = f"{e.type}: {text}"
        rows.append(f"<div class='line {e.type}'><span class='t'>[{stamp(e.t)}]</span>{html.escape(text)}</div>")
    return "\n".join(rows)


def metrics_rows(run: LiveRun | None, events: list[Event], history: list[dict]) -> list[tuple[str, str]]:
    if run is None or not history:
        return [("state", run.state if run else "idle")]
    last = history[-1]
    wall = max(1e-9, last.get("wall_s", 0.0))
    kv, vt = last["kv_tokens"], last["vision_tokens"]
    latency = chunk_ms(last)
    decode_s = last["decode_ms"] / 1000
    answers = [e for e in events if e.type == "answer"]
    rows = [("state", run.state), ("stream time", stamp(last["t"])),
            ("ingest FPS", f"{run.frames / wall:.1f}"), ("real-time factor", f"{last['t'] / wall:.2f}"),
            ("chunk latency", f"{latency:.0f} ms"),
            ("time to first token", f"{answers[-1].data['ttft_ms']:.0f} ms" if answers else "—"),
            ("tokens per second", f"{last['tokens_out'] / decode_s:.1f}" if decode_s and last["tokens_out"] else "—"),
            ("KV tokens: sink / vision / text / retrieved",
             f"{kv['sink']} / {kv['vision']} / {kv['text']} / {kv['retrieved']}"),
            ("visual tokens kept", f"{vt['kept']} of {vt['grid']} ({last['encoder']})")]
    if "offload" in last:
        off = last["offload"]
        rows.append(("offload store", f"{off['blocks']} blocks, {off['ram_mb']:.0f} MB RAM, "
                                      f"{off['disk_mb']:.0f} MB disk"))
    gpu = last.get("gpu_mem_mb")
    rows.append(("GPU memory", f"{gpu:.0f} MB" if gpu is not None else f"— (CPU; RSS {last['rss_mb']:.0f} MB)"))
    return rows


def render_metrics(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def plot_frames(history: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    step = max(1, len(history) // PLOT_POINTS)
    rows = history[::step]
    latency = pd.DataFrame({"stream s": [r["t"] for r in rows], "ms": [chunk_ms(r) for r in rows]})
    memory = pd.DataFrame({"stream s": [r["t"] for r in rows],
                           "MB": [r.get("gpu_mem_mb", r["rss_mb"]) for r in rows]})
    return latency, memory


def render_status(run: LiveRun | None, events: list[Event], note: str = "") -> str:
    if run is None:
        return note or "Choose a source and press **Start**."
    errors = [e for e in events if e.type == "error"]
    source = "browser webcam" if isinstance(run.source_spec, PushSource) else os.path.basename(run.source_spec)
    c = run.config
    text = (f"**{run.state}** · {html.escape(source or str(run.source_spec))} · {c.fps:g} fps, vision window "
            f"{c.vision_window_s:g} s, narration {'on' if c.narrate else 'off'}, retrieval "
            f"{f'top {c.retrieval.top_k}' if c.retrieval.enabled else 'off'}")
    if errors:
        text += f"<br><span class='error'>{html.escape(errors[-1].text or '')}</span>"
    return text


def build(adapter: QwenVLAdapter, registry: RunRegistry, export_dir: str, model_name: str) -> gr.Blocks:
    def start(kind, upload, url, realtime, fps, vision_window, text_window, narrate, narrate_tokens, reuse, prune,
              keep_ratio, retrieve, top_k, request: gr.Request):
        key = request.session_hash
        try:
            config = session_config(fps, vision_window, text_window, narrate, narrate_tokens, reuse, prune,
                                    keep_ratio, retrieve, top_k)
            if kind == "Browser webcam":
                source = PushSource(config.fps)
            else:
                source = check_upload(upload) if kind == "Video file" else camera_spec(url)
            registry.start(key, lambda: LiveRun(adapter, config, source, realtime=bool(realtime), lock=registry.lock))
        except InputError as err:
            return f"<span class='error'>{html.escape(str(err))}</span>"
        return "**starting** …"

    def stop(request: gr.Request):
        run = registry.get(request.session_hash)
        if run is not None:
            run.stop()

    def reset(request: gr.Request):
        registry.close(request.session_hash)
        return ([], [], render_narration([]), render_metrics(metrics_rows(None, [], [])),
                "Reset. Choose a source and press **Start**.")

    def refresh(request: gr.Request):
        run = registry.get(request.session_hash)
        events, history = run.snapshot() if run else ([], [])
        latency, memory = plot_frames(history)
        status = gr.skip() if run is None else render_status(run, events)
        return (render_narration(events), render_metrics(metrics_rows(run, events, history)), latency, memory,
                status)

    def ask(question, history, request: gr.Request):
        question = (question or "").strip()
        if not question:
            return "", history, gr.skip()
        run = registry.get(request.session_hash)
        events = run.ask(question) if run else [Event("error", 0.0, "no stream is running: press Start first")]
        history = history + [{"role": "user", "content": question}]
        moments = []
        for event in events:
            if event.type == "answer":
                spans = event.data.get("retrieved", [])
                drew = ", ".join(f"{stamp(a)}–{stamp(b)}" for a, b in spans[:MAX_MOMENTS])
                more = f" and {len(spans) - MAX_MOMENTS} more" if len(spans) > MAX_MOMENTS else ""
                content = f"{event.text or '(no words)'}\n\n*{event.data['ttft_ms']:.0f} ms to first token"
                content += f"; drew on {drew}{more}*" if spans else "; nothing retrieved*"
                history.append({"role": "assistant", "content": content})
                moments = [(image, f"{stamp(a)}–{stamp(b)}") for a, b in spans[:MAX_MOMENTS]
                           if (image := run.thumbnail(a)) is not None]
            else:
                history.append({"role": "assistant", "content": f"⚠ {event.text}"})
        return "", history, moments

    def push_frame(frame, request: gr.Request):
        run = registry.get(request.session_hash)
        if run is not None and isinstance(run.source_spec, PushSource) and frame is not None:
            run.source_spec.put(frame[:, :, :3])

    def export(fmt, request: gr.Request):
        run = registry.get(request.session_hash)
        events = run.snapshot()[0] if run else []
        caption_s = run.config.chunk_seconds if run else 1.0
        suffix, text = {"JSONL": ("jsonl", to_jsonl(events)), "SRT": ("srt", to_srt(events, caption_s)),
                        "WebVTT": ("vtt", to_vtt(events, caption_s))}[fmt]
        folder = os.path.join(export_dir, request.session_hash)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"livesight-transcript.{suffix}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def show_source(kind):
        return (gr.update(visible=kind == "Video file"), gr.update(visible=kind == "Browser webcam"),
                gr.update(visible=kind == "Camera URL"))

    with gr.Blocks(title="LiveSight") as demo:
        is_random = model_name.startswith(("tiny-random", "random-"))
        noise = " (random weights: the words are noise, the engine is real)" if is_random else ""
        gr.Markdown(f"# LiveSight\nWatches a video stream, narrates what it sees and answers questions about "
                    f"anything it has seen, with bounded memory. Model: `{html.escape(model_name)}`{noise}.")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                kind = gr.Radio(list(SOURCES), value=SOURCES[0], label="Source", elem_id="source-kind")
                upload = gr.File(label="Video file", file_types=VIDEO_TYPES, type="filepath", elem_id="upload")
                webcam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", visible=False)
                url = gr.Textbox(label="Camera URL or index", placeholder="rtsp://host:554/stream, or 0",
                                 visible=False, elem_id="url")
                realtime = gr.Checkbox(True, label="Play files at real time")
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    settings = [
                        gr.Dropdown([2, 4, 6, 8], value=2, label="Frames per second", elem_id="fps"),
                        gr.Slider(1, 64, 16, step=1, label="Vision window (s)", elem_id="vision-window"),
                        gr.Slider(0, 4096, 512, step=64, label="Text window (tokens)", elem_id="text-window"),
                        gr.Checkbox(True, label="Narrate", elem_id="narrate"),
                        gr.Slider(1, 64, 20, step=1, label="Narration tokens per chunk", elem_id="narrate-tokens"),
                        gr.Checkbox(True, label="Reuse unchanged encoder work", elem_id="reuse"),
                        gr.Checkbox(True, label="Prune redundant visual tokens", elem_id="prune"),
                        gr.Slider(0.05, 1.0, 1.0, step=0.05, label="Keep ratio", elem_id="keep-ratio"),
                        gr.Checkbox(True, label="Retrieve past moments for questions", elem_id="retrieve"),
                        gr.Slider(0, 32, 8, step=1, label="Moments retrieved (top-k)", elem_id="top-k"),
                    ]
                with gr.Row():
                    start_btn = gr.Button("Start", variant="primary", elem_id="start")
                    stop_btn = gr.Button("Stop", elem_id="stop")
                    reset_btn = gr.Button("Reset", elem_id="reset")
                status = gr.Markdown("Choose a source and press **Start**.", elem_id="status")
            with gr.Column(scale=2, min_width=420):
                narration = gr.HTML(render_narration([]), label="Narration", elem_id="narration")
                chat = gr.Chatbot(label="Questions", height=260, elem_id="chat")
                question = gr.Textbox(placeholder="Ask about anything it has seen, then press Enter",
                                      show_label=False, elem_id="question")
                moments = gr.Gallery(label="Moments the last answer drew on", columns=6, height=150,
                                     elem_id="moments")
            with gr.Column(scale=1, min_width=300):
                metrics = gr.HTML(render_metrics(metrics_rows(None, [], [])), elem_id="metrics")
                latency_plot = gr.LinePlot(x="stream s", y="ms", title="Chunk latency", height=180)
                memory_plot = gr.LinePlot(x="stream s", y="MB", title="Memory (GPU, else process)", height=180)
                fmt = gr.Radio(["JSONL", "SRT", "WebVTT"], value="JSONL", label="Export transcript")
                export_btn = gr.Button("Export", elem_id="export")
                export_file = gr.File(label="Transcript", interactive=False, elem_id="export-file")
        kind.change(show_source, kind, [upload, webcam, url])
        start_btn.click(start, [kind, upload, url, realtime, *settings], status)
        stop_btn.click(stop, None, None)
        reset_btn.click(reset, None, [chat, moments, narration, metrics, status])
        question.submit(ask, [question, chat], [question, chat, moments], concurrency_limit=None)
        webcam.stream(push_frame, webcam, None, stream_every=0.25, concurrency_limit=None)
        export_btn.click(export, fmt, export_file)
        gr.Timer(1.0).tick(refresh, None, [narration, metrics, latency_plot, memory_plot, status],
                           show_progress="hidden", concurrency_limit=None)

        def release(request: gr.Request):  # the tab closed: free its session for the next visitor
            registry.close(request.session_hash)

        demo.unload(release)
    return demo


def main(args) -> int:
    from livesight.streaming.options import resolve_device
    from livesight.streaming.models import load_model
    if args.share:
        print("livesight web: --share makes a public link: anyone with it can use this server", flush=True)
    adapter = QwenVLAdapter(load_model(args.model, resolve_device(args.device)))
    registry = RunRegistry(args.max_streams)
    export_dir = tempfile.mkdtemp(prefix="livesight-web-")
    demo = build(adapter, registry, export_dir, args.model)
    demo.queue(default_concurrency_limit=8)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                    max_file_size=f"{args.max_upload_mb}mb", css=CSS, quiet=False, show_error=False)
    except OSError as err:
        raise InputError(f"cannot serve on {args.host}:{args.port} ({err}): pick a free port with --port, "
                         f"or a local address with --host") from None
    return 0
