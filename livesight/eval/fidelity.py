"""`livesight bench fidelity`: LiveSight's cache policies on a trained model (SmolLM2-135M).

StreamingLLM's two experiments, run through our own cache, positions and attention:
- perplexity over Python's documentation for dense, window-only, sink + window (S sinks plus the
  last W - S tokens) and the sliding-window-recompute oracle (each token re-encoded with only its
  last W tokens, through the stock transformers model);
- passkey recall: a 5-digit key early in thousands of filler tokens, answered greedily.
Every policy sees at most W tokens per query: the cache is cut to W - chunk before each step.
"""

import re
from dataclasses import asdict

import numpy as np
import torch

from livesight.errors import InputError
from livesight.eval.config import DUO, POLICIES, RECALL_POLICIES, FidelityConfig
from livesight.kvcache import KeepAll, Segment, TokenTable, WindowPolicy
from livesight.kvcache.duo import load_duo
from livesight.models.text import TextAdapter
from livesight.kvcache.blocks import OffloadedBlocks
from livesight.streaming.config import GB
from livesight.streaming.retrieval import probe
from livesight.streaming.stepper import CacheStepper

def perplexity_policies(config: FidelityConfig) -> tuple[str, ...]:
    """The policies whose perplexity is measured: POLICIES, and sink + window with each share of streaming heads."""
    return POLICIES + tuple(f"sink+window{DUO}{s:g}" for s in config.duo_sparsities if config.duo_gates)


def recall_policies(config: FidelityConfig) -> tuple[str, ...]:
    return RECALL_POLICIES + tuple(f"sink+window+retrieval{DUO}{s:g}" for s in config.duo_sparsities
                                   if config.duo_gates)


class TextStream:
    """Token ids through LiveSight's cache under one named policy, `chunk` tokens per step. A name ending in
    ", duo S" is the policy before it with the share S of KV heads streaming (config.duo_gates' lowest)."""

    def __init__(self, adapter: TextAdapter, policy: str, config: FidelityConfig, max_tokens: int,
                 chunk: int | None = None):
        self.adapter, self.config = adapter, config
        policy, _, share = policy.partition(DUO)
        duo = load_duo(config.duo_gates, float(share), adapter.num_layers, adapter.num_kv_heads) if share else None
        self.chunk = chunk or config.chunk
        self.num_sink = config.sink if policy.startswith("sink+window") else 0
        retrieve = policy == "sink+window+retrieval"
        if policy == "dense":
            keep, capacity = KeepAll(), max_tokens + self.chunk
        elif policy in ("window", "sink+window", "sink+window+retrieval"):
            keep = WindowPolicy(text_sink=0, text_window=config.window - self.chunk - self.num_sink)
            capacity = config.window + self.chunk + (config.retrieve_top_k * config.retrieve_block if retrieve else 0)
        else:
            raise ValueError(f"unknown policy {policy}: one of {POLICIES + RECALL_POLICIES}, or one with {DUO!r}")
        self.stepper = CacheStepper(adapter, keep, capacity, self._offload if retrieve else None,
                                    kv_dtype=config.kv_dtype, duo=duo)
        self.offloaded = OffloadedBlocks(self.stepper.cache, config.retrieve_block, config.retrieve_top_k,
                                         config.retrieve_scope, GB, 0) if retrieve else None
        self.fed = 0

    def _offload(self, evicted: TokenTable, index: torch.Tensor) -> None:
        """Text leaving the window becomes blocks of `retrieve_block` tokens in stream order; a block's
        range is its token indices."""
        text = torch.nonzero(evicted.segment == Segment.TEXT).squeeze(1)  # not the retrieved slots
        order = text[torch.argsort(evicted.seq[text])]
        for part in order.split(self.config.retrieve_block):
            seq = evicted.seq[part]
            self.offloaded.offload(index[part], (float(seq.min()), float(seq.max())))

    def answer(self, question: list[int], max_tokens: int, stop_id: int | None) -> list[int]:
        """Retrieve for the question (where the policy retrieves), feed it, decode greedily; the
        cache is evicted once the answer is done, as the video Session does."""
        if self.offloaded is not None and self.offloaded.can_retrieve:
            self.offloaded.retrieve(probe(self.stepper, self.adapter.embed_ids(question)))
            self.stepper.resync()
        out = self.greedy(self.feed(question, all_logits=False, evict=False), max_tokens, stop_id, evict=False)
        self.stepper.evict(0.0)
        return out

    def close(self) -> None:
        if self.offloaded is not None:
            self.offloaded.close()

    def feed(self, ids: list[int], all_logits: bool = True, evict: bool = True) -> torch.Tensor:
        """ids -> logits (n, vocab), or (vocab,) of the last; the stream's first `num_sink` ids are the sink.
        evict=False holds the cache as it is (retrieved slots stay while a question is answered)."""
        embeds = self.adapter.embed_ids(ids)
        num_sink = max(0, min(len(ids), self.num_sink - self.fed))
        builder = self.stepper.builder()
        builder.text(embeds[:num_sink], Segment.SINK, 0.0)
        builder.text(embeds[num_sink:], Segment.TEXT, 0.0)
        logits = self.stepper.forward(builder, all_logits=all_logits)
        if evict:
            self.stepper.evict(0.0)
        self.fed += len(ids)
        return logits

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Feed `ids` chunk by chunk; -> logits of the last token."""
        for i in range(0, len(ids), self.chunk):
            logits = self.feed(ids[i:i + self.chunk], all_logits=False)
        return logits

    def greedy(self, logits: torch.Tensor, max_tokens: int, stop_id: int | None, evict: bool = True) -> list[int]:
        out: list[int] = []
        for _ in range(max_tokens):
            out.append(int(logits.argmax()))
            if out[-1] == stop_id or len(out) == max_tokens:
                break
            logits = self.feed(out[-1:], all_logits=False, evict=evict)
        return out


def stream_nll(adapter: TextAdapter, ids: list[int], policy: str, config: FidelityConfig) -> torch.Tensor:
    """-> (len(ids) - 1,): nll[t - 1] = -log p(ids[t] | what the policy kept)."""
    stream = TextStream(adapter, policy, config, len(ids))
    out = []
    for i in range(0, len(ids) - 1, config.chunk):
        logits = stream.feed(ids[i:i + config.chunk])
        targets = torch.tensor(ids[i + 1:i + 1 + config.chunk])
        out.append(-logits[:len(targets)].log_softmax(-1).gather(1, targets[:, None]).squeeze(1))
    return torch.cat(out)


def cache_bytes(adapter: TextAdapter, policy: str, config: FidelityConfig, max_tokens: int) -> int:
    """The bytes the policy's cache allocates for a stream of `max_tokens` (fixed when it is made)."""
    stream = TextStream(adapter, policy, config, max_tokens)
    stream.close()
    return stream.stepper.cache.nbytes


@torch.inference_mode()
def recompute_nll(model, ids: list[int], window: int, targets: list[int], batch: int = 16) -> torch.Tensor:
    """The oracle, with the stock model: ids[t] predicted from ids[t - window:t] encoded afresh."""
    assert min(targets) >= window
    out = []
    for i in range(0, len(targets), batch):
        part = targets[i:i + batch]
        contexts = torch.tensor([ids[t - window:t] for t in part])
        logits = model(input_ids=contexts, logits_to_keep=1).logits[:, -1].float()
        answers = torch.tensor([ids[t] for t in part])
        out.append(-logits.log_softmax(-1).gather(1, answers[:, None]).squeeze(1))
    return torch.cat(out)


def passkey_trial(adapter: TextAdapter, policy: str, config: FidelityConfig, passkey: int, depth: float) -> dict:
    """Prefill the filler with the key at `depth`, then ask the question (retrieving first where the
    policy retrieves) and check the greedy answer's first 5-digit number."""
    from livesight.eval.corpus import QUESTION, passkey_prompt
    tokenizer = adapter.tokenizer
    body = passkey_prompt(passkey, config.passkey_filler, depth)[:-len(QUESTION)]
    ids, question = (tokenizer.encode(t, add_special_tokens=False) for t in (body, QUESTION))
    stream = TextStream(adapter, policy, config, len(ids) + len(question) + config.answer_tokens, config.passkey_chunk)
    try:
        stream.prefill(ids)
        answer = adapter.decode(stream.answer(question, config.answer_tokens, tokenizer.eos_token_id))
    finally:
        stream.close()
    found = re.search(r"\d{5}", answer)
    return {"passkey": passkey, "depth": round(depth, 3), "prompt_tokens": len(ids) + len(question), "answer": answer,
            "correct": bool(found and int(found.group()) == passkey)}


def _duo_settings(adapter: TextAdapter, config: FidelityConfig) -> dict:
    """What the streaming heads keep, and which heads stream at each share (by layer)."""
    out = {}
    for share in config.duo_sparsities:
        duo = load_duo(config.duo_gates, share, adapter.num_layers, adapter.num_kv_heads)
        out |= {"sink": duo.sink, "recent": duo.recent, f"streaming {share:g}": duo.streaming.int().tolist()}
    return out


def perplexity(nll: torch.Tensor) -> float:
    return float(torch.exp(nll.double().mean()))


def num_phases(config: FidelityConfig) -> int:
    """What run_fidelity reports progress in: each policy's perplexity, the oracle, each policy's passkey trials."""
    return len(perplexity_policies(config)) + 1 + len(recall_policies(config))


def run_fidelity(adapter: TextAdapter, oracle_model, config: FidelityConfig, bar) -> dict:
    """All measurements; -> a JSON-ready dict with the settings that produced it. `bar`
    (livesight.progress) advances once per phase, `num_phases()` in all."""
    from livesight.eval.corpus import passkey_trials, python_docs_text
    ids = adapter.tokenizer.encode(python_docs_text(), add_special_tokens=False)[:config.tokens]
    if len(ids) < config.tokens:
        raise InputError(f"--tokens {config.tokens}: the text has only {len(ids)} tokens; ask for fewer")
    targets = np.linspace(config.window, len(ids) - 1, config.oracle_targets).round().astype(int).tolist()
    nll, kv_bytes = {}, {}
    for policy in perplexity_policies(config):
        bar.describe(f"perplexity: {policy} over {len(ids)} tokens")
        nll[policy] = stream_nll(adapter, ids, policy, config)
        kv_bytes[policy] = cache_bytes(adapter, policy, config, len(ids))
        bar.update()
    bar.describe(f"perplexity: sliding-window recompute on {len(targets)} targets")
    oracle = recompute_nll(oracle_model, ids, config.window, targets)
    bar.update()
    at_targets = {p: perplexity(nll[p][torch.tensor(targets) - 1]) for p in nll}
    at_targets["recompute"] = perplexity(oracle)
    trials = passkey_trials(config.trials, config.passkey_depths, config.seed)
    passkey = {}
    for policy in recall_policies(config):
        bar.describe(f"passkey: {policy}, {len(trials)} trials")
        passkey[policy] = [passkey_trial(adapter, policy, config, key, depth) for key, depth in trials]
        bar.update()
    return {
        "settings": asdict(config) | {"model": adapter.loaded.name, "text": "pydoc_data.topics (CPython docs)"},
        "perplexity_all_tokens": {p: perplexity(nll[p]) for p in nll},
        "cache_bytes": kv_bytes,
        "duo": None if config.duo_gates is None else _duo_settings(adapter, config),
        "perplexity_oracle_targets": at_targets,
        "oracle_targets": targets,
        "nll_by_position": {p: nll[p].tolist() for p in nll},
        "oracle_nll": oracle.tolist(),
        "passkey": passkey,
        "passkey_accuracy": {p: sum(t["correct"] for t in passkey[p]) / max(1, len(trials)) for p in passkey},
    }
