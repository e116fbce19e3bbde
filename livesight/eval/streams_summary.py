"""What `bench streams` concludes from its runs, and how it shows them: the headline (the most streams
that kept real time), decode throughput against one stream, where the time goes at the headline
count, the floor estimate, today's way's cost per stream; streams.md and streams.png."""

import math

from livesight.eval.config import SHORTENED_MAX
from livesight.eval.streams_floor import floor


def _measured(runs: list[dict]) -> list[dict]:
    return [r for r in runs if r.get("fits")]


def per_wall_second(run: dict) -> dict:
    """The engine's time per wall-second of the measured run: vision and LM on the host's clock, the
    LM steps by kind on the device's, and what is left (waiting for chunks, or host work)."""
    s, wall = run["stages"], run["span_s"]
    kinds = s["lm_by_kind"]
    ms = {"vision_ms": s["vision_ms"] / wall, "lm_ms": s["lm_ms"] / wall,
          "decode_steps_ms": kinds["decode"]["ms"] / wall, "prefill_steps_ms": kinds["prefill"]["ms"] / wall}
    ms["other_ms"] = 1000 - ms["vision_ms"] - ms["lm_ms"]
    steps = {f"{kind}_{k}": round(kinds[kind][k] / wall, 1) for kind in kinds for k in ("steps", "rows")}
    return {k: round(v, 1) for k, v in ms.items()} | steps


def summarize_mode(runs: dict, mode: int, result: dict) -> dict:
    cfg = result["config"]
    engine, today = _measured(runs["engine"]), _measured(runs["today"])
    kept = [r["streams"] for r in engine if r["kept_real_time"]]
    out = {"headline": max(kept, default=None),
           "missed_below_headline": [r["streams"] for r in engine if not r["kept_real_time"]
                                     and r["streams"] < max(kept, default=0)]}
    single = next((r["decode_tokens_per_s"] for r in engine + today if r["streams"] == 1), None)
    out["decode_x_single"] = {str(r["streams"]): round(r["decode_tokens_per_s"] / single, 2) for r in engine
                              if single and r["decode_tokens_per_s"]}
    at = next((r for r in engine if r["streams"] == out["headline"]), engine[-1] if engine else None)
    if at is not None and at["span_s"] > 0:
        out["stages_at"] = at["streams"]
        out["per_wall_s"], out["chunk_ms_p50"] = per_wall_second(at), at["chunk_ms_p50"]
        out["floor"] = floor(result["model"], mode, at["means"], cfg["chunk_s"],
                             cfg["bandwidth_tbs"], cfg["peak_tflops"])
    total_gb = result["hardware"]["gpu_memory_gb"]
    if at is not None and total_gb and cfg["device"].startswith("cuda"):  # the memory floor: what a stream holds
        m = at["memory"]
        held = m["cache_mb"] + m["vision_store_mb"] + m["representatives_mb"]
        out["memory_max_streams"] = math.floor((total_gb * 1024 - at["memory_before_mb"]) / held)
    if today and today[0]["model_ms_per_stream_s"]:
        cost = today[0]["model_ms_per_stream_s"]
        out["today_ms_per_stream_s"] = cost
        out["today_max_streams"] = math.floor(1000 / cost)
    return out


def summarize(result: dict) -> dict:
    return {mode: summarize_mode(runs, int(mode), result) for mode, runs in result["modes"].items()}


def _row(run: dict, x_single: dict) -> str:
    way = "engine" if run["way"] == "engine" else "today's way"
    if "skipped" in run:
        return f"| {way} | {run['streams']} | skipped: {run['skipped']} |" + " |" * 11
    if not run["fits"]:
        return f"| {way} | {run['streams']} | does not fit: {run['error']} |" + " |" * 11
    lat, ttft, c, m = run["latency_ms"], run["ttft_ms"], run["chunks"], run["memory"]
    decode = run["decode_tokens_per_s"]
    times = x_single.get(str(run["streams"])) if run["way"] == "engine" else None
    busy = f"{100 * run['busy_share']:.0f} %" if run["busy_share"] is not None else "-"
    return (f"| {way} | {run['streams']} | {run['video_s_per_wall_s']:g} | {busy} "
            f"| {'**yes**' if run['kept_real_time'] else 'no'} "
            f"| {lat['p50']:g} / {lat['p99']:g} | {ttft['p50']:g} / {ttft['p99']:g} ({ttft['n']}) "
            f"| {run['narrated_tokens_per_s']:g} | {decode if decode is not None else '-'}"
            f"{f' ({times:g}×)' if times else ''} | {m['max_mb']:,.0f} / {m['per_stream_mb']:,.1f} "
            f"(cache {m['cache_mb']:,.1f}, vision {m['vision_store_mb']:,.1f}) | {c['dropped']} | {c['shortened']} "
            f"| {c['missing']} | {run['num_errors']} |")


def _mode_lines(mode: str, runs: dict, s: dict, result: dict) -> list[str]:
    memory = "GPU MB" if result["hardware"]["gpu"] and result["config"]["device"].startswith("cuda") else "RSS MB"
    title = f"{mode} narrated tokens per chunk" if int(mode) else "no narration"
    lines = ["", f"## {title}", "",
             f"| way | streams | video-s / wall-s | busy | real time | latency p50 / p99 ms | TTFT p50 / p99 ms (n) "
             f"| narrated tok/s | decode tok/s (× 1 stream) | {memory} total / per stream | dropped | shortened "
             f"| missing | errors |", "|---|" + "---|" * 13]
    lines += [_row(r, s["decode_x_single"]) for r in runs["engine"] + runs["today"]]
    largest = max((r["streams"] for r in runs["engine"]), default=0)
    missed = ", ".join(map(str, s["missed_below_headline"]))
    lines += ["", f"Headline: **{s['headline'] or 'no'} streams** kept real time"
              + (" (the largest count measured: more may)." if s["headline"] == largest else ".")
              + (f" (Missed at {missed}.)" if missed else "")]
    if "per_wall_s" in s:
        w, f = s["per_wall_s"], s["floor"]
        lines += ["", f"Where the time goes at {s['stages_at']} streams, per wall-second: vision "
                      f"{w['vision_ms']:g} ms, language model {w['lm_ms']:g} ms (host clock); on the device, "
                      f"decode-only steps {w['decode_steps_ms']:g} ms ({w['decode_steps']:g} steps, "
                      f"{w['decode_rows']:g} tokens) and "
                      f"steps with prefills {w['prefill_steps_ms']:g} ms ({w['prefill_steps']:g} steps, "
                      f"{w['prefill_rows']:g} rows); the rest {w['other_ms']:g} ms (waiting for chunks, host work). "
                      f"A chunk's stages, p50 (each its span on the device, shared with the streams batched with it): "
                      + " / ".join(f"{k.removesuffix('_ms')} {v:g}" for k, v in s["chunk_ms_p50"].items()) + " ms."]
        if f["max_streams"] is not None:
            lines += ["", f"Floor (an estimate at {f['bandwidth_tbs']:g} TB/s and {f['peak_tflops']:g} TFLOP/s, with "
                          f"this run's tokens per chunk, cache length and share encoded): per chunk period the "
                          f"streams share {f['shared_ms']:g} ms of weight reads ({int(mode) + 1} reads of "
                          f"{f['weights_gb']:g} GB); each stream needs {f['per_stream_ms']:g} ms (KV reads "
                          f"{f['kv_reads_ms']:g}, prefill {f['prefill_ms']:g}, vision {f['vision_ms']:g}): "
                          f"at most **{f['max_streams']} streams**."
                          + (f" Memory: the GPU's {result['hardware']['gpu_memory_gb']:g} GB less what was allocated "
                             f"before the streams, over what each stream holds (cache slab, vision reuse store, "
                             f"representatives), allows at most **{s['memory_max_streams']} streams**."
                             if "memory_max_streams" in s else "")]
    if "today_ms_per_stream_s" in s:
        n = _measured(runs["today"])[0]["streams"]
        lines += ["", f"Today's way (a Session per stream, each with its own cache and CUDA graphs, taking turns "
                      f"chunk by chunk under one lock; a question is answered after the stream's next chunk) takes "
                      f"{s['today_ms_per_stream_s']:g} ms of model time per stream per second of video (measured with "
                      f"{n} {'stream' if n == 1 else 'streams'}). Its cost is linear in N, so it is measured at small "
                      f"counts only: at most **{s['today_max_streams']} streams** keep real time that way."]
    return lines


def duo_note(cfg: dict) -> str:
    """', DuoAttention: S of the KV heads streaming (gates G)' when the run had --duo, else ''."""
    if not cfg.get("duo_gates"):
        return ""
    return f", DuoAttention: {cfg['duo_sparsity']:.0%} of the KV heads streaming (gates {cfg['duo_gates']})"


def markdown(result: dict) -> str:
    cfg, hw, summary = result["config"], result["hardware"], result["summary"]
    where = hw["gpu"] if cfg["device"].startswith("cuda") else f"CPU ({hw['cores']} cores)"
    height, width = result["frame_size"]
    lines = [f"# bench streams: {cfg['model']} on {where}", "",
             f"Live streams of mixed synthetic scenes (stream i: static, quiet, shapes, busy by i mod 4, each from "
             f"its own offset) at {cfg['fps']:g} fps, {width}x{height} frames, 1-s chunks, window "
             f"{cfg['window_s']:g} s, keys and values {'in fp8' if cfg.get('kv_dtype') == 'fp8' else 'as computed'}"
             f"{duo_note(cfg)}, "
             f"compression {'on' if cfg['compression'] else 'off'}, retrieval "
             f"{'on' if cfg['retrieval'] else 'off'} ({cfg['offload_ram_gb']:g} GB RAM per stream). Chunks arrive "
             f"{'spread over each second (stream i at i/N)' if cfg['arrivals'] == 'spread' else 'all at once'}; "
             f"a question to a random stream every {cfg['ask_every_s']:g} s. Per count: {cfg['warmup_s']:g} s of "
             f"warm-up, then {cfg['seconds']:g} s measured. Latency: from a chunk's arrival (its last frame) to "
             f"its caption. Real time kept: no chunk dropped or left uncaptioned, at most "
             f"{100 * SHORTENED_MAX:g} % of narrations shortened, latency p99 ≤ {cfg['latency_bound_s']:g} s. "
             f"Video-s / wall-s: chunk-seconds captioned per second of the measured run (N when every chunk is "
             f"captioned); busy: the share of the run the way spent computing (the engine: its vision and "
             f"language-model passes; today's way: its chunks and answers), so N / busy estimates the most it "
             f"carries. Decode tok/s: tokens per second of decode-only steps (today's way: of its decode stage). "
             f"Memory per stream: measured (the mean over the run less what was allocated before, over N); in "
             f"brackets what one stream holds by account: its cache slab and its vision encoder's reuse store.",
             "", "**Headline** (most streams in real time): " + "; ".join(
                 f"{'with ' + m + ' narrated tokens' if int(m) else 'without narration'}: "
                 f"{s['headline'] or 'none'}" for m, s in summary.items())]
    if not result["finished"]:
        lines += ["", "*Partial: the run stopped before its last count (the plot: python -m "
                      "livesight.eval.streams_report --render FOLDER).*"]
    for mode, runs in result["modes"].items():
        lines += _mode_lines(mode, runs, summary[mode], result)
    if "memory_run" in result:
        r = result["memory_run"]
        m = r.get("memory", {})
        lines += ["", f"Memory run: {r['streams']} streams, {r['narrate_tokens']} narrated tokens, "
                      + (f"{r['chunks_per_stream']} s measured: {m['min_mb']:,.0f} / {m['max_mb']:,.0f} MB min / max, "
                         f"spread {100 * m['spread']:.2f} %, real time {'kept' if r['kept_real_time'] else 'missed'}."
                         if r["fits"] else f"does not fit: {r['error']}")]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for (mode, runs), color in zip(result["modes"].items(), ("tab:blue", "tab:orange")):
        label = f"{mode} tokens" if int(mode) else "no narration"
        for way, marker, style in (("engine", "o", "-"), ("today", "s", ":")):
            done = _measured(runs[way])
            if not done:
                continue
            n = [r["streams"] for r in done]
            name = label if way == "engine" else f"{label}, today's way"
            left.plot(n, [r["latency_ms"]["p99"] for r in done], style, marker=marker, color=color,
                      label=f"{name}: p99")
            left.plot(n, [r["latency_ms"]["p50"] for r in done], style, marker=marker, color=color, alpha=0.45,
                      fillstyle="none", label=f"{name}: p50")
            right.plot(n, [100 * (r["busy_share"] or 0) for r in done], style, marker=marker, color=color, label=name)
    left.axhline(1000 * result["config"]["latency_bound_s"], color="gray", linewidth=0.8, linestyle="--")
    right.axhline(100, color="gray", linewidth=0.8, linestyle="--")
    counts = sorted({r["streams"] for runs in result["modes"].values() for way in runs.values()
                     for r in _measured(way)})
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.minorticks_off()
        ax.set_xlabel("streams")
    left.set_yscale("log")
    left.set_ylabel("chunk to caption latency (ms); dashed: the bound")
    right.set_ylabel("busy: share of the run spent computing (%)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(f"bench streams: {result['config']['model']} on {result['hardware']['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
