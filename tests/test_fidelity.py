"""The cache on a trained model (SmolLM2-135M): dense equals the stock model, and the sink effect shows."""

import copy

import pytest
import torch

from livesight.eval.corpus import passkey_prompt, passkey_trials, python_docs_text
from livesight.eval.fidelity import FidelityConfig, perplexity, recompute_nll, stream_nll
from livesight.models.text import TextAdapter


@pytest.fixture(scope="module")
def smol():
    from livesight.models.loader import load_smollm2
    loaded = load_smollm2()
    stock = copy.deepcopy(loaded.model)  # keeps transformers' own attention
    return TextAdapter(loaded), stock


@pytest.fixture(scope="module")
def text_ids(smol):
    adapter, _ = smol
    return adapter.tokenizer.encode(python_docs_text(), add_special_tokens=False)[:480]


def test_dense_equals_plain_transformers_forward(smol, text_ids):
    adapter, stock = smol
    ids = text_ids[:300]
    ours = stream_nll(adapter, ids, "dense", FidelityConfig(tokens=300, window=64, chunk=16, passkey_chunk=32))
    with torch.no_grad():
        logits = stock(input_ids=torch.tensor([ids])).logits[0].float()
    ref = -logits[:-1].log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)
    assert torch.allclose(ours, ref, atol=2e-4), (ours - ref).abs().max()


def test_window_wider_than_the_text_is_dense(smol, text_ids):
    adapter, _ = smol
    ids = text_ids[:200]
    config = FidelityConfig(tokens=1000, window=240, chunk=16)  # keeps 224 >= 200 tokens: nothing is evicted
    assert torch.equal(stream_nll(adapter, ids, "dense", config), stream_nll(adapter, ids, "window", config))


def test_sink_restores_what_window_only_loses(smol, text_ids):
    """StreamingLLM's finding, on our cache: past the window, evicting the first tokens hurts badly;
    keeping 4 of them recovers most of the loss, close to re-encoding each window afresh."""
    adapter, stock = smol
    config = FidelityConfig(tokens=480, window=64, sink=4, chunk=8, passkey_chunk=32)
    sink_nll = stream_nll(adapter, text_ids, "sink+window", config)
    window = perplexity(stream_nll(adapter, text_ids, "window", config)[128:])
    sink = perplexity(sink_nll[128:])
    dense = perplexity(stream_nll(adapter, text_ids, "dense", config)[128:])
    assert window > 1.5 * sink, (window, sink)
    assert dense < sink
    targets = list(range(160, 480, 40))
    oracle = perplexity(recompute_nll(stock, text_ids, 64, targets))
    sink_at = perplexity(sink_nll[torch.tensor(targets) - 1])
    assert sink_at < 1.5 * oracle, (sink_at, oracle)


def test_passkey_prompt_places_one_key_at_its_depth():
    trials = passkey_trials(20, (0.05, 0.4), seed=3)
    assert len({k for k, _ in trials}) == 20 and all(10000 <= k <= 99999 for k, _ in trials)
    assert trials == passkey_trials(20, (0.05, 0.4), seed=3)
    text = passkey_prompt(12345, 40, 0.25)
    assert text.count("12345") == 2 and text.rstrip().endswith("The pass key is")
    assert text.index("12345") / len(text) == pytest.approx(0.25, abs=0.05)


def test_retrieval_brings_back_a_passkey_the_window_lost(smol):
    """A key ~100 tokens into a 1,000-token prompt, far outside a 128-token window: sink + window
    cannot answer; retrieving 8 blocks of 16 tokens for the question can, as dense can."""
    from livesight.eval.fidelity import passkey_trial
    adapter, _ = smol
    config = FidelityConfig(tokens=1000, window=128, chunk=16, passkey_chunk=32, passkey_filler=40,
                            retrieve_block=16, retrieve_top_k=8)
    results = {p: passkey_trial(adapter, p, config, 52817, 0.1) for p in ("dense", "sink+window", "sink+window+retrieval")}
    assert results["dense"]["correct"] and results["sink+window+retrieval"]["correct"], results
    assert not results["sink+window"]["correct"], results


def test_duo_rows_stream_the_chosen_heads(smol, text_ids, tmp_path):
    """Every head streaming with sink + recent covering the window sees what sink + window keeps: the same
    losses (but for the order of sums); with a short recent window the heads see less and the losses move, from
    a cache a fraction of the size."""
    import json
    from livesight.eval.fidelity import cache_bytes
    adapter, _ = smol
    gates = torch.rand(adapter.num_layers, adapter.num_kv_heads, generator=torch.Generator().manual_seed(0))
    nll = {}
    for recent in (64, 8):
        path = tmp_path / f"gates-{recent}.json"
        path.write_text(json.dumps({"gates": gates.tolist(), "settings": {"sink": 4, "recent": recent}}))
        config = FidelityConfig(tokens=480, window=64, sink=4, chunk=8, passkey_chunk=32, duo_gates=str(path),
                                duo_sparsities=(1.0,))
        nll[recent] = stream_nll(adapter, text_ids[:240], "sink+window, duo 1", config)
    base = stream_nll(adapter, text_ids[:240], "sink+window", config)
    assert torch.allclose(nll[64], base, atol=1e-4), (nll[64] - base).abs().max()
    assert (nll[8] - base).abs().max() > 1e-2
    assert cache_bytes(adapter, "sink+window, duo 1", config, 240) < 0.5 * cache_bytes(adapter, "sink+window",
                                                                                         config, 240)
