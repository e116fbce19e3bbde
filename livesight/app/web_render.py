"""What the web page draws from a LiveRun: narration lines, the metrics table, plots, the status
line. Plain HTML strings and data frames; nothing here knows Gradio."""

import html

import pandas as pd

from livesight.app.live import LiveRun
from livesight.app.transcript import lines, stamp
from livesight.streaming.events import Event, chunk_ms

MAX_LINES = 300  # narration lines drawn in the page; the export holds them all
PLOT_POINTS = 600


def error_html(text: str) -> str:
    return f"<span class='error'>{html.escape(text)}</span>"


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
    decode_s = last["decode_ms"] / 1000
    answers = [e for e in events if e.type == "answer"]
    rows = [("state", run.state), ("stream time", stamp(last["t"])),
            ("ingest FPS", f"{run.frames / wall:.1f}"), ("real-time factor", f"{last['t'] / wall:.2f}"),
            ("chunk latency", f"{chunk_ms(last):.0f} ms"),
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


def render_status(run: LiveRun, events: list[Event]) -> str:
    errors = [e for e in events if e.type == "error"]
    c = run.config
    text = (f"**{run.state}** · {html.escape(str(run.name))} · {c.fps:g} fps, vision window "
            f"{c.vision_window_s:g} s, narration {'on' if c.narrate else 'off'}, retrieval "
            f"{f'top {c.retrieval.top_k}' if c.retrieval.enabled else 'off'}")
    if errors:
        text += f"<br>{error_html(errors[-1].text or '')}"
    return text
