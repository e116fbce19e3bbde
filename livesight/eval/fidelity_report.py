"""`livesight bench fidelity`: load the models, run, write JSON + Markdown + PNG under --out."""

import argparse
import os

from livesight.errors import InputError
from livesight.eval import report
from livesight.eval.config import DUO, KV_DTYPES, FidelityConfig
from livesight.eval.output import writable_folder
from livesight.progress import progress
from livesight.streaming.options import Bound, Shares, check_gates_path

NAMES = {"dense": "dense (full cache)", "window": "window only", "sink+window": "sink + window",
         "recompute": "sliding-window recompute (oracle)", "sink+window+retrieval": "sink + window + retrieval"}


def name(policy: str) -> str:
    base, _, share = policy.partition(DUO)
    return NAMES[base] + (f", {float(share):.0%} of KV heads streaming" if share else "")


# SmolLM2-135M caches about 46 KB per token in float32: the dense policy's cache holds every token.
TOKENS = Bound(int, 16, 65536, why="text tokens; the dense policy caches them all, about 3 GB at most")
CONTEXT = Bound(int, 1, 8192, why="tokens; SmolLM2 was trained on 8,192")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = FidelityConfig()
    parser.add_argument("--tokens", type=TOKENS, default=d.tokens,
                        help="tokens of text for perplexity; the report uses >= 8000 (default %(default)s)")
    parser.add_argument("--window", type=CONTEXT, default=d.window, help="W: tokens each query may see (default "
                                                                         "%(default)s)")
    parser.add_argument("--sink", type=Bound(int, 0, 8192, why="tokens"), default=d.sink,
                        help="S: initial tokens kept by sink + window (default %(default)s)")
    parser.add_argument("--chunk", type=CONTEXT, default=d.chunk, help="tokens per step through the cache (default "
                                                                       "%(default)s)")
    parser.add_argument("--oracle-targets", type=Bound(int, 1, TOKENS.high, why="tokens"), default=d.oracle_targets,
                        help="tokens scored by the sliding-window recompute oracle (default %(default)s)")
    parser.add_argument("--trials", type=Bound(int, 0, 1000), default=d.trials,
                        help="passkey trials per policy (default %(default)s)")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES, default=d.kv_dtype,
                        help="how the cache stores keys and values: as the model computes them, or fp8 (e4m3 with "
                             "a scale per head and token; the oracle stays the stock model) (default %(default)s)")
    parser.add_argument("--duo", metavar="GATES", default=None,
                        help="DuoAttention gates (`livesight calibrate duo`'s folder or duo_gates.json): adds sink + "
                             "window rows, and passkey rows with retrieval, with shares of the KV heads streaming "
                             "(default: none)")
    parser.add_argument("--duo-sparsity", type=Shares(), default=d.duo_sparsities, metavar="S,S,...",
                        help="with --duo, the shares of KV heads that stream (default 0.25,0.5,0.75)")
    parser.add_argument("--out", default="out/fidelity",
                        help="folder for fidelity.json, fidelity.md, fidelity.png, created if missing (default "
                             "%(default)s)")


def markdown(result: dict) -> str:
    s = result["settings"]
    all_tokens, at = result["perplexity_all_tokens"], result["perplexity_oracle_targets"]
    acc, trials = result["passkey_accuracy"], s["trials"]
    oracle = at["recompute"]
    kv = result.get("cache_bytes", {})
    rows = ["| policy | KV cache, MB | PPL, all tokens | PPL, oracle's targets | × oracle | passkey |",
            "|---|---|---|---|---|---|"]
    for p in (*all_tokens, "recompute"):
        ppl_all = f"{all_tokens[p]:.2f}" if p in all_tokens else "—"
        key = f"{round(acc[p] * trials)}/{trials}" if p in acc else "—"
        mb = f"{kv[p] / 1e6:.1f}" if p in kv else "—"
        rows.append(f"| {name(p)} | {mb} | {ppl_all} | {at[p]:.2f} | {at[p] / oracle:.3f} | {key} |")
    for p in acc:
        if p not in all_tokens:
            rows.append(f"| {name(p)} | — | — | — | — | {round(acc[p] * trials)}/{trials} |")
    return "\n".join([
        f"Model {s['model']}, text {s['text']}: {s['tokens']} tokens; window W = {s['window']} "
        f"(sink S = {s['sink']}), {s['chunk']} tokens per step; oracle on {s['oracle_targets']} evenly spaced "
        f"tokens past the first W; passkey: {trials} trials, keys at depth {s['passkey_depths'][0]:g}–"
        f"{s['passkey_depths'][1]:g} of about {result['passkey']['dense'][0]['prompt_tokens'] if trials else 0} "
        f"tokens, prefilled "
        f"{s['passkey_chunk']} tokens per step; retrieval brings back the top {s['retrieve_top_k']} blocks of "
        f"{s['retrieve_block']} tokens ({s['retrieve_scope']} scope) for the question. Keys and values "
        f"{'in fp8 (e4m3, a scale per head and token)' if s.get('kv_dtype') == 'fp8' else 'in the model dtype'}."
        + (f" Streaming heads (DuoAttention, gates {s['duo_gates']}, the lowest first) keep the first "
           f"{result['duo']['sink']} tokens and the latest {result['duo']['recent']}; the KV cache's size is the "
           f"perplexity run's." if s.get("duo_gates") else ""),
        "", *rows, ""])


def plot(result: dict, path: str, bin_tokens: int = 256) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for p in result["nll_by_position"]:
        nll = np.array(result["nll_by_position"][p])
        bins = len(nll) // bin_tokens
        ppl = np.exp(nll[:bins * bin_tokens].reshape(bins, bin_tokens).mean(1))
        ax.plot((np.arange(bins) + 0.5) * bin_tokens, ppl, label=name(p), lw=1.0 if DUO in p else 1.5)
    targets, oracle = np.array(result["oracle_targets"]), np.array(result["oracle_nll"])
    groups = np.array_split(np.arange(len(targets)), max(1, len(targets) // 16))
    ax.plot([targets[g].mean() for g in groups], [np.exp(oracle[g].mean()) for g in groups], "k.",
            label=NAMES["recompute"])
    ax.axvline(result["settings"]["window"], color="grey", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel(f"perplexity (per {bin_tokens} tokens)")
    s = result["settings"]
    ax.set_title(f"{s['model']}: window {s['window']}, sink {s['sink']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args) -> int:
    try:
        config = FidelityConfig(tokens=args.tokens, window=args.window, sink=args.sink, chunk=args.chunk,
                                oracle_targets=args.oracle_targets, trials=args.trials, kv_dtype=args.kv_dtype,
                                duo_gates=args.duo, duo_sparsities=args.duo_sparsity)
    except ValueError as err:
        raise InputError(str(err)) from None
    check_gates_path(args.duo)
    writable_folder(args.out)
    from livesight.eval.fidelity import num_phases, run_fidelity  # torch: once the flags are known to be good
    from livesight.models.registry import load_adapter
    from livesight.models.loader import SMOLLM2, load_smollm2
    adapter = load_adapter(SMOLLM2, "cpu", video=False)
    oracle_model = load_smollm2().model  # stock attention: the oracle shares no code with the cache
    if args.duo is not None:  # the gates must fit the model before the hour of measurement starts
        from livesight.kvcache.duo import load_duo
        load_duo(args.duo, 0.5, adapter.num_layers, adapter.num_kv_heads)
    with progress(num_phases(config), "bench fidelity", unit="phases") as bar:
        result = run_fidelity(adapter, oracle_model, config, bar)
    table = markdown(result)
    report.save(args.out, "fidelity", result, table, indent=None)
    plot(result, os.path.join(args.out, "fidelity.png"))
    print(table)
    print(f"wrote {args.out}/fidelity.json, fidelity.md, fidelity.png")
    return 0
