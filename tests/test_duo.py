"""DuoAttention's gate calibration (train/duo.py) on a tiny Llama: the gated attention is full attention at
gate 1 and sink + recent attention at gate 0, calibration is reproducible from its seed and moves the
gates within [0, 1], and the gates choose the streaming heads."""

import re

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from livesight.eval.corpus import QUESTION
from livesight.kvcache.duo import streaming_heads
from livesight.models.loader import LoadedModel, build_byte_tokenizer
from livesight.train.duo import DUO_ATTENTION, DuoConfig, calibrate, duo_attention, prompts, streaming_mask


def tiny_llama() -> LoadedModel:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=288, max_position_embeddings=4096)
    return LoadedModel(LlamaForCausalLM(config).eval(), build_byte_tokenizer(), "tiny-llama")


def _hidden(loaded, ids, implementation, **kwargs):
    loaded.model.config._attn_implementation = implementation
    with torch.no_grad():
        return loaded.model.model(input_ids=ids, **kwargs).last_hidden_state


def test_gate_one_is_full_attention_and_gate_zero_is_sink_plus_recent():
    AttentionInterface.register(DUO_ATTENTION, duo_attention)
    loaded = tiny_llama()
    ids = torch.randint(0, 256, (1, 50), generator=torch.Generator().manual_seed(1))
    full = _hidden(loaded, ids, "eager")
    ones, zeros = torch.ones(3, 2), torch.zeros(3, 2)
    torch.testing.assert_close(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=ones, duo_sink=2, duo_recent=8), full)
    mask = torch.zeros(1, 1, 50, 50).masked_fill(~streaming_mask(50, 2, 8), float("-inf"))
    streaming = _hidden(loaded, ids, "eager", attention_mask=mask)
    torch.testing.assert_close(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=zeros, duo_sink=2, duo_recent=8),
                               streaming)
    assert not torch.allclose(streaming, full, atol=1e-3)  # 50 tokens past 2 + 8: the two differ
    mixed = ones.clone()
    mixed[1, 0] = 0.0  # one KV head of one layer streams: the first layer's output is still full attention's
    assert not torch.allclose(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=mixed, duo_sink=2, duo_recent=8), full,
                              atol=1e-4)


def test_streaming_mask_keeps_the_sink_and_the_recent_keys_causally():
    mask = streaming_mask(10, 2, 3)
    assert mask[9].tolist() == [True, True] + [False] * 5 + [True, True, True]
    assert mask[1].tolist() == [True, True] + [False] * 8  # causal
    assert bool((mask.sum(1) <= 5).all())


def test_calibration_is_reproducible_and_keeps_gates_within_zero_and_one():
    config = DuoConfig(steps=3, filler=2, sink=2, recent=16, closing=4, l1=0.5, lr=0.1, seed=3)
    quiet = dict(log=lambda _: None)
    first, second = calibrate(tiny_llama(), config, **quiet), calibrate(tiny_llama(), config, **quiet)
    assert first["gates"] == second["gates"] and len(first["history"]) == 3
    gates = torch.tensor(first["gates"])
    assert gates.shape == (3, 2) and bool(((gates >= 0) & (gates <= 1)).all())
    assert float(gates.mean()) < 1  # the L1 term moved them toward streaming
    assert first["history"][0]["distill"] < 1e-10  # all gates start at 1: full attention exactly
    other = calibrate(tiny_llama(), DuoConfig(**{**config.__dict__, "seed": 4}), log=lambda _: None)
    assert other["gates"] != first["gates"]  # another seed, other prompts


def test_the_lowest_gates_stream():
    gates = torch.tensor([[0.9, 0.1], [0.5, 0.2], [0.3, 1.0]])
    chosen = streaming_heads(gates, 0.5)
    assert chosen.tolist() == [[False, True], [False, True], [True, False]]
    assert int(streaming_heads(gates, 0.0).sum()) == 0 and bool(streaming_heads(gates, 1.0).all())
    with pytest.raises(ValueError, match="--duo-sparsity must be within 0..1"):
        streaming_heads(gates, 1.5)


def test_calibrate_refuses_bad_input_by_name_before_loading_a_model(tmp_path, capsys, monkeypatch):
    import livesight.models.loader as loader
    from livesight.app.cli import main
    monkeypatch.setattr(loader, "load_smollm2", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["calibrate", "duo", "--model", "toy-vlm", "--out", str(tmp_path)]) == 2
    assert "--model toy-vlm: calibration runs on smollm2-135m" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["calibrate", "duo", "--out", str(blocker / "gates")]) == 2
    assert f"--out {blocker / 'gates'}" in capsys.readouterr().err
    for flag, value in (("--lr", "nan"), ("--steps", "0"), ("--recent", "0")):
        with pytest.raises(SystemExit) as exit_:
            main(["calibrate", "duo", "--out", str(tmp_path), flag, value])
        assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_calibration_prompts_end_with_their_own_key_but_its_last_token():
    """The closing hidden states must be the ones that recall the key: each prompt ends with the question
    and the key it hid, less the last token (one byte with this tokenizer)."""
    loaded = tiny_llama()
    for ids in prompts(loaded.tokenizer, DuoConfig(steps=6, filler=3)):
        head, tail = loaded.tokenizer.decode(ids).rsplit(QUESTION, 1)
        key = re.search(r"The pass key is (\d{5})\.", head).group(1)
        assert tail == " " + key[:-1]


def test_the_gates_table_marks_the_heads_that_stream_at_half():
    from livesight.train.duo_config import markdown
    result = {"model": "m", "gates": [[0.9, 0.1], [0.2, 0.8]], "data": "d", "seconds": 1.0,
              "settings": {"steps": 1, "lr": 0.1, "l1": 0.05, "sink": 4, "recent": 64},
              "history": [{"distill": 0.01, "mean_gate": 0.5}]}
    text = markdown(result)
    assert "| 0 | 0.90 0.10* |" in text and "| 1 | 0.20* 0.80 |" in text
