"""Every kernel path matches its plain-torch reference; rotation obeys the rotary invariants."""

import torch
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb

from livesight import kernels
from livesight.kernels import attention, chunk_attention, chunk_attention_reference, rotate_keys
from livesight.kernels.dispatch import last_path


def _qkv(num_q, num_k, hq=4, hkv=2, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, hq, num_q, d, generator=g), torch.randn(1, hkv, num_k, d, generator=g),
            torch.randn(1, hkv, num_k, d, generator=g))


def test_chunk_attention_matches_reference_on_shapes():
    for num_q, num_k in [(1, 1), (1, 37), (5, 5), (7, 50), (33, 40)]:
        q, k, v = _qkv(num_q, num_k, seed=num_q * 100 + num_k)
        got = chunk_attention(q, k, v, 0.25)
        ref = chunk_attention_reference(q.double(), k.double(), v.double(), 0.25).float()
        assert last_path["chunk_attention"] == "sdpa"
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (num_q, num_k)


def test_reference_switch_routes_every_call(monkeypatch):
    monkeypatch.setattr(attention, "use_reference", True)
    q, k, v = _qkv(3, 9)
    out = kernels.chunk_attention(q, k, v, 0.25)
    assert last_path["chunk_attention"] == "reference"
    assert torch.equal(out, chunk_attention_reference(q, k, v, 0.25))


def test_bottom_right_causality():
    """The last query sees every key; the first new query sees none of the later new keys."""
    q, k, v = _qkv(4, 10)
    base = chunk_attention(q, k, v, 0.25)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:], v2[:, :, 7:] = torch.randn_like(k2[:, :, 7:]), torch.randn_like(v2[:, :, 7:])
    changed = chunk_attention(q, k2, v2, 0.25)
    assert torch.allclose(base[:, :, 0], changed[:, :, 0])  # query 0 sits at key 6
    assert not torch.allclose(base[:, :, 1:], changed[:, :, 1:])


def test_rotation_composes_and_inverts():
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 16, 2).float() / 16))
    keys = torch.randn(2, 1, 3, 9, 16)
    a, b = torch.randint(-500, 500, (9,)), torch.randint(-500, 500, (9,))
    twice = rotate_keys(rotate_keys(keys, a, inv_freq), b, inv_freq)
    assert torch.allclose(twice, rotate_keys(keys, a + b, inv_freq), atol=1e-5)
    assert torch.allclose(rotate_keys(rotate_keys(keys, a, inv_freq), -a, inv_freq), keys, atol=1e-5)
    assert torch.equal(rotate_keys(keys, torch.zeros(9, dtype=torch.int64), inv_freq), keys)


def test_uniform_mrope_shift_is_one_1d_rotation(tiny):
    """Qwen2.5-VL's 3-D rotary at (t + d, h + d, w + d) equals our 1-D rotation by d of the key at (t, h, w)."""
    rotary = tiny.model.model.language_model.rotary_emb
    n, d_head = 12, 16
    pos = torch.stack([torch.randint(0, 300, (n,)) for _ in range(3)])
    shift = torch.randint(-200, 200, (n,))
    raw = torch.randn(1, 2, n, d_head)
    x = torch.zeros(1)
    cos, sin = rotary(x, pos[:, None])
    at_pos, _ = apply_rotary_pos_emb(raw, raw, cos, sin)
    cos2, sin2 = rotary(x, (pos + shift)[:, None])
    at_shifted, _ = apply_rotary_pos_emb(raw, raw, cos2, sin2)
    assert torch.allclose(rotate_keys(at_pos, shift, rotary.inv_freq), at_shifted, atol=1e-4)
