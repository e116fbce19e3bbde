"""Which position axis each rotary frequency reads (kernels/rope.py), against the rotary embeddings of
transformers' own models: Qwen2.5-VL's contiguous M-RoPE sections and Qwen3-VL's interleaved ones. The
cache undoes rotary with these angles (retrieval's scores) and moves kept keys by a common shift of all
three axes, which is one 1-D rotation whatever the layout."""

import torch
from transformers import Qwen2_5_VLConfig, Qwen3VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRotaryEmbedding
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

from livesight.kernels.rope import interleaved_axes, rope_angles, sectioned_axes

SECTION = [24, 20, 20]  # Qwen3-VL's, head_dim 128


def positions(n: int = 40) -> torch.Tensor:
    """t/h/w that differ from one another: vision tokens of several frames."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 300, (3, n), generator=g)  # small: transformers builds its angles in float32


def rotary_cos(module, pos: torch.Tensor) -> torch.Tensor:
    cos, _ = module(torch.zeros(1, dtype=torch.float32), pos[:, None])
    return cos[0, :, : cos.shape[-1] // 2].double()  # (n, D/2): the first half, rotate-half layout


def config(cls, section):
    text = dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=1,
                intermediate_size=64,
                rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": section})
    return cls(text_config=text).text_config


def test_interleaved_axes_are_qwen3_vl_rotary():
    rotary = Qwen3VLTextRotaryEmbedding(config(Qwen3VLConfig, SECTION))
    pos = positions()
    angles = rope_angles(pos, rotary.inv_freq, interleaved_axes(SECTION, rotary.inv_freq.numel()))
    assert torch.allclose(angles.cos(), rotary_cos(rotary, pos), atol=1e-4)
    sectioned = rope_angles(pos, rotary.inv_freq, sectioned_axes(SECTION))  # the other layout: wrong here
    assert not torch.allclose(sectioned.cos(), rotary_cos(rotary, pos), atol=1e-2)


def test_sectioned_axes_are_qwen2_5_vl_rotary():
    section = [16, 24, 24]
    rotary = Qwen2_5_VLRotaryEmbedding(config(Qwen2_5_VLConfig, section))
    pos = positions()
    angles = rope_angles(pos, rotary.inv_freq, sectioned_axes(section))
    assert torch.allclose(angles.cos(), rotary_cos(rotary, pos), atol=1e-4)


def test_a_common_shift_of_the_three_axes_is_one_1d_rotation_in_either_layout():
    inv_freq = 1.0 / (5e6 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    pos, delta = positions(), torch.randint(-3000, 3000, (40,))
    for axes in (sectioned_axes([16, 24, 24]), interleaved_axes(SECTION, 64)):
        moved = rope_angles(pos + delta, inv_freq, axes) - rope_angles(pos, inv_freq, axes)
        assert torch.allclose(moved, delta[:, None].double() * inv_freq, rtol=1e-12, atol=1e-9)


def test_each_adapter_undoes_its_own_models_rotary():
    """The axes an adapter gives the cache reproduce its model's own rotary embedding."""
    from livesight.models.registry import load_adapter
    pos = positions()
    for name in ("tiny-random", "tiny-random-qwen3-vl", "tiny-random-qwen3.5"):  # the last: partial rotary
        adapter = load_adapter(name, "cpu")
        angles = rope_angles(pos, adapter.inv_freq, adapter.rope_axes)
        assert torch.allclose(angles.cos(), rotary_cos(adapter.language_model.rotary_emb, pos), atol=1e-4), name
