"""DuoAttention's gate calibration (train/duo.py) on a tiny Llama and on toy-vlm: the gated attention is full
attention at gate 1 and sink + recent attention at gate 0 (on toy-vlm's language model too), calibration is
reproducible from its seed and moves the gates within [0, 1], each source's samples close with what must be
recalled, and the gates choose the streaming heads."""

import re
from itertools import islice

import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from livesight.eval.corpus import QUESTION
from livesight.eval.questions import LETTERS
from livesight.kvcache.duo import streaming_heads
from livesight.models.loader import SMOLLM2, TOY_VLM, LoadedModel, build_byte_tokenizer
from livesight.streaming.config import SessionConfig
from livesight.train.duo import DUO_ATTENTION, DuoConfig, calibrate, duo_attention, streaming_mask
from livesight.train.duo_config import MODELS, PasskeyData, VisualData
from livesight.train.duo_passkey import PasskeySource, prompts
from livesight.train.duo_visual import VisualSource
from livesight.train.toy_model import load_saved
from livesight.weights import TOY_VLM_FOLDER

# toy-vlm's samples, short: a 2-s vision window, 8 + 8 narration tokens and a short system prompt
SHORT = SessionConfig(vision_window_s=2, text_sink=8, text_window=8, system_prompt="You watch a stream.")


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
    sees = streaming_mask(50, 2, 8)
    torch.testing.assert_close(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=ones, duo_mask=sees), full)
    mask = torch.zeros(1, 1, 50, 50).masked_fill(~sees, float("-inf"))
    streaming = _hidden(loaded, ids, "eager", attention_mask=mask)
    torch.testing.assert_close(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=zeros, duo_mask=sees), streaming)
    assert not torch.allclose(streaming, full, atol=1e-3)  # 50 tokens past 2 + 8: the two differ
    mixed = ones.clone()
    mixed[1, 0] = 0.0  # one KV head of one layer streams: the first layer's output is still full attention's
    assert not torch.allclose(_hidden(loaded, ids, DUO_ATTENTION, duo_gates=mixed, duo_mask=sees), full, atol=1e-4)


def test_streaming_mask_keeps_the_sink_and_the_recent_keys_causally():
    mask = streaming_mask(10, 2, 3)
    assert mask[9].tolist() == [True, True] + [False] * 5 + [True, True, True]
    assert mask[1].tolist() == [True, True] + [False] * 8  # causal
    assert bool((mask.sum(1) <= 5).all())
    # the engine's steps: tokens 5..8 are one step, the others each their own (a decode step)
    steps = torch.tensor([0, 1, 2, 3, 4, 5, 5, 5, 5, 9])
    mask = streaming_mask(10, 1, 2, step_starts=steps)
    assert mask[8].tolist() == [True, False, False, True, True, True, True, True, True, False]  # 2 before the step
    assert mask[5].tolist() == [True, False, False, True, True, True] + [False] * 4
    assert mask[9].tolist() == [True] + [False] * 6 + [True, True, True]  # a lone token: 2 before it and itself


def passkey_calibration(config: DuoConfig, data=PasskeyData(filler=2, closing=4)) -> dict:
    return calibrate(PasskeySource(tiny_llama(), data, config), config, log=lambda _: None)


def test_calibration_is_reproducible_and_keeps_gates_within_zero_and_one():
    config = DuoConfig(steps=3, sink=2, recent=16, l1=0.5, lr=0.1, seed=3)
    first, second = passkey_calibration(config), passkey_calibration(config)
    assert first["gates"] == second["gates"] and len(first["history"]) == 3
    gates = torch.tensor(first["gates"])
    assert gates.shape == (3, 2) and bool(((gates >= 0) & (gates <= 1)).all())
    assert float(gates.mean()) < 1  # the L1 term moved them toward streaming
    assert first["history"][0]["distill"] < 1e-10  # all gates start at 1: full attention exactly
    assert first["settings"] == {**config.__dict__, "filler": 2, "closing": 4}
    other = passkey_calibration(DuoConfig(**{**config.__dict__, "seed": 4}))
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
    import livesight.train.duo_visual as duo_visual
    monkeypatch.setattr(loader, "load_smollm2", lambda *a, **k: pytest.fail("the model was loaded"))
    monkeypatch.setattr(duo_visual, "VisualSource", lambda *a, **k: pytest.fail("the model was loaded"))
    assert MODELS == (SMOLLM2, TOY_VLM)
    assert main(["calibrate", "duo", "--model", "tiny-random", "--out", str(tmp_path)]) == 2
    assert "--model tiny-random: calibration runs on smollm2-135m or toy-vlm" in capsys.readouterr().err
    for flags, message in ((["--model", "toy-vlm", "--filler", "10"],
                            "--filler sets smollm2-135m's data, not --model toy-vlm's"),
                           (["--worlds", "2"], "--worlds sets toy-vlm's data, not --model smollm2-135m's"),
                           (["--model", "toy-vlm", "--worlds", "12", "--seconds", "3600"],
                            "--worlds 12 x --seconds 3600: their frames are held in memory")):
        assert main(["calibrate", "duo", "--out", str(tmp_path), *flags]) == 2
        assert message in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["calibrate", "duo", "--out", str(blocker / "gates")]) == 2
    assert f"--out {blocker / 'gates'}" in capsys.readouterr().err
    for flag, value in (("--lr", "nan"), ("--steps", "0"), ("--recent", "0"), ("--seconds", "29"), ("--worlds", "0")):
        with pytest.raises(SystemExit) as exit_:
            main(["calibrate", "duo", "--out", str(tmp_path), flag, value])
        assert exit_.value.code == 2 and f"argument {flag}" in capsys.readouterr().err


def test_calibration_prompts_end_with_their_own_key_but_its_last_token():
    """The closing hidden states must be the ones that recall the key: each prompt ends with the question
    and the key it hid, less the last token (one byte with this tokenizer)."""
    loaded = tiny_llama()
    for ids in prompts(loaded.tokenizer, PasskeyData(filler=3), steps=6, seed=0):
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
    text = markdown({**result, "data": {"samples": 3, "world_seeds": [1000, 1001]}})
    assert "data: samples: 3; world seeds: [1000, 1001]." in text


@pytest.fixture(scope="module")
def toy_vlm():
    return load_saved(TOY_VLM_FOLDER)


def visual_source(model, config: DuoConfig) -> VisualSource:
    return VisualSource(VisualData(worlds=1, seconds=30), config, model, SHORT)


def test_toy_vlm_calibration_is_reproducible_from_its_seed(toy_vlm):
    config = DuoConfig(steps=2, sink=4, recent=16, l1=0.5, lr=0.1, seed=3)  # seeds 3 and 5: short samples
    first, second = (calibrate(visual_source(toy_vlm, config), config, log=lambda _: None) for _ in range(2))
    assert first["gates"] == second["gates"] and first["model"] == "toy-vlm"
    gates = torch.tensor(first["gates"])
    assert gates.shape == (4, 2) and bool(((gates >= 0) & (gates <= 1)).all()) and float(gates.mean()) < 1
    assert first["history"][0]["distill"] < 1e-10  # all gates start at 1: full attention exactly
    data = first["data"]
    assert data["samples"] == 2 and data["world_seeds"] == [1000, 1000] and data["seconds"] == 30
    assert sum(data["tasks"].values()) == 2 and sum(data["asked_about"].values()) == 2
    assert first["settings"] == {**config.__dict__, "worlds": 1, "seconds": 30}
    other_config = DuoConfig(**{**config.__dict__, "seed": 5})
    other = calibrate(visual_source(toy_vlm, other_config), other_config, log=lambda _: None)
    assert other["gates"] != first["gates"]  # another seed, other samples


def test_toy_vlm_samples_close_with_their_question_and_the_answer_follows(toy_vlm):
    """The closing tokens are the question step: the question's text, the assistant's turn opening, and the
    answer right after them; the sequence the model runs ends there, embedded from those tokens."""
    source = visual_source(toy_vlm, DuoConfig(seed=1))
    chat, tokenizer = source.maker.chat, source.tokenizer
    for drawn, layout in islice(source.draws(), 4):
        sample = source.sample(layout)
        a, b = sample.closing
        q = drawn.question
        assert sample.num_tokens == b and 0 < a < b
        assert q["question"] in tokenizer.decode(layout.ids[a:b]) and layout.ids[b - len(chat.assistant):b].tolist() \
            == chat.assistant
        answer = chat.encode(q["options"][LETTERS.index(q["answer"])])
        assert layout.ids[b:b + len(answer)].tolist() == answer
        embedded = toy_vlm.model.language_model.embed_tokens(layout.ids[a:b])
        torch.testing.assert_close(sample.inputs["inputs_embeds"][0, a:b], embedded)
        starts = sample.step_starts
        assert bool((starts[a:b] == a).all()) and int(starts[a - 1]) < a  # the question is one engine step


def _language_model(source, implementation, **kwargs):
    source.language_model.config._attn_implementation = implementation
    with torch.no_grad():
        return source.language_model(**kwargs).last_hidden_state


def test_gated_attention_on_toy_vlm_is_full_at_one_and_streaming_at_zero(toy_vlm):
    """The duo kwargs reach the attention function through Qwen2.5-VL's language model (with M-RoPE
    positions), and the vision tower keeps its own attention."""
    AttentionInterface.register(DUO_ATTENTION, duo_attention)
    source = visual_source(toy_vlm, DuoConfig(seed=2))
    sample = source.sample(next(source.draws())[1])
    n, tower = sample.num_tokens, toy_vlm.model.visual.config._attn_implementation
    sees = streaming_mask(n, 4, 16, step_starts=sample.step_starts)
    try:
        full = _language_model(source, "sdpa", **sample.inputs)
        gated = {value: _language_model(source, DUO_ATTENTION, **sample.inputs, duo_mask=sees,
                                        duo_gates=torch.full((4, 2), value)) for value in (0.0, 1.0)}
        additive = torch.zeros(1, 1, n, n).masked_fill(~sees, float("-inf"))
        streaming = _language_model(source, "eager", **sample.inputs, attention_mask=additive)
    finally:
        source.language_model.config._attn_implementation = "sdpa"
    torch.testing.assert_close(gated[1.0], full)
    torch.testing.assert_close(gated[0.0], streaming)
    assert not torch.allclose(gated[0.0], full, atol=1e-3)
    assert toy_vlm.model.visual.config._attn_implementation == tower != DUO_ATTENTION
