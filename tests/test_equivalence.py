"""The proof that the cache is right: after slides and evictions, the engine's logits equal a plain
transformers forward pass over exactly the tokens the policy kept, at the positions it assigned.

The reference is stepped in lockstep with the engine. For every forward pass it builds a standard
DynamicCache from its own record of each kept token's keys (taken from its own earlier forward
passes and rotated to the token's current position with the model's own rotary code) and runs the
stock model with eager attention. Nothing of the engine's buffer, re-rotation or attention is used.

A hybrid model's linear-attention layers (Qwen3.5) cannot be rebuilt from kept tokens: their state has
seen every token. The reference carries transformers' own linear cache layers from step to step, each
step continuing from the state after the latest earlier token it still counts; the harness tells it
which tokens the engine took back (decode steps past a stop, an answer that must leave no trace).
"""

import copy
import sys

import torch
from transformers import DynamicCache

from conftest import make_chunks
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import SessionConfig
from livesight.streaming.config import RetrievalConfig
from livesight.streaming.session import Session


class Reference:
    def __init__(self, loaded, adapter_class=QwenVLAdapter):
        model = copy.deepcopy(loaded.model)
        for module in model.modules():  # the stock code of every module, not an adapter's replacement
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_deepstack_process", None)
        self.lm, self.head = adapter_class._modules(model)
        self.lm.config._attn_implementation = "eager"
        self.apply_rotary = sys.modules[type(self.lm).__module__].apply_rotary_pos_emb  # the family's own
        self.hidden = self.lm.config.hidden_size
        kinds = getattr(self.lm.config, "layer_types", None) or ["full_attention"] * self.lm.config.num_hidden_layers
        self.full = [i for i, kind in enumerate(kinds) if kind == "full_attention"]
        self.linear = [i for i, kind in enumerate(kinds) if kind == "linear_attention"]
        self.after: dict[int, dict] = {}  # a step's last token -> the linear layers' cache after the step
        self.one_d = adapter_class.flat_positions  # 1-D rotary reads the first row of the positions
        self.keys: dict[int, list[torch.Tensor]] = {}  # seq -> per-layer key (Hkv, D) before rotary
        self.values: dict[int, list[torch.Tensor]] = {}

    def position_ids(self, pos: torch.Tensor) -> torch.Tensor:
        return pos[:1] if self.one_d else pos[:, None]

    def rotary(self, pos: torch.Tensor):
        dummy = torch.zeros(1, dtype=torch.float32)
        return self.lm.rotary_emb(dummy, self.position_ids(pos))  # cos, sin: (1, n, D)

    def forget(self, seqs) -> None:
        """The engine took these tokens back: later steps do not continue from a state that saw them."""
        for s in seqs:
            self.after.pop(int(s), None)

    @torch.no_grad()
    def step(self, kept_seq, kept_pos, embeds, new_seq, new_pos, **attention) -> torch.Tensor:
        """attention: keyword arguments for the attention function (a head-wise reference's masks)."""
        cache = DynamicCache(config=self.lm.config)
        if len(kept_seq):
            cos, sin = self.rotary(kept_pos)
            for i, layer in enumerate(self.full):
                k = torch.stack([self.keys[int(s)][i] for s in kept_seq], dim=1)[None]  # (1, Hkv, n, D)
                v = torch.stack([self.values[int(s)][i] for s in kept_seq], dim=1)[None]
                k_rot, _ = self.apply_rotary(k, k, cos, sin)
                cache.update(k_rot, v, layer)
        earlier = [s for s in self.after if s < int(new_seq[0])]
        if self.linear and earlier:
            for layer, state in self.after[max(earlier)].items():
                cache.layers[layer] = copy.deepcopy(state)
        past = cache.get_seq_length(self.full[0])
        deepstack = {}
        if embeds.shape[-1] > self.hidden:  # Qwen3-VL's rows [embedding | DeepStack levels]: transformers' own
            levels = embeds[:, self.hidden:].reshape(embeds.shape[0], -1, self.hidden)  # way, at the visual rows
            visual = levels.abs().sum(dim=(1, 2)) > 0
            deepstack = dict(visual_pos_masks=visual[None], deepstack_visual_embeds=list(levels[visual].unbind(1)))
            embeds = embeds[:, :self.hidden]
        out = self.lm(inputs_embeds=embeds[None], position_ids=self.position_ids(new_pos), past_key_values=cache,
                      use_cache=True, **deepstack, **attention)
        cos, sin = self.rotary(new_pos)
        keys, values = [], []
        for layer in self.full:
            k_rot = cache.layers[layer].keys[:, :, past:]
            keys.append(self.apply_rotary(k_rot, k_rot, cos, -sin)[0])  # undo the rotation
            values.append(cache.layers[layer].values[:, :, past:])
        for i, s in enumerate(new_seq.tolist()):  # replaces the records of a rolled-back probe pass
            self.keys[s] = [k[0, :, i] for k in keys]
            self.values[s] = [v[0, :, i] for v in values]
        self.after[int(new_seq[-1])] = {layer: copy.deepcopy(cache.layers[layer]) for layer in self.linear}
        return self.head(out.last_hidden_state[0]).float()


def run_lockstep(tiny, config, num_chunks, questions=(), adapter_class=QwenVLAdapter, stop_ids=None, heads=None,
                 reference_attention="eager"):
    """heads: what streaming heads see (test_headwise.py): masks(cache, new_seq) -> keyword arguments for the
    reference's attention, `reference_attention`; recorded(new_seq) after each step, forget(seqs) for tokens
    taken back."""
    adapter = adapter_class(tiny)
    reference = Reference(tiny, adapter_class)
    reference.lm.config._attn_implementation = reference_attention
    real_forward = adapter.forward
    log = {"steps": 0, "max_err": 0.0, "moved": 0, "answers": [], "max_retrieved": 0, "logits": [], "visual_steps": 0,
           "taken_back": 0}
    stream = {}  # the session, once built: its stepper numbers the step's tokens

    def checked_forward(embeds, positions, cache, all_logits=False):
        table = cache.table
        kept_seq, kept_pos = table.seq.clone(), table.pos.clone()
        # not the table's last index + 1: tokens decoded past a stop token are taken back, their indices not
        seq0 = stream["session"].stepper.next_seq if stream else 0
        new_seq = torch.arange(seq0, seq0 + embeds.shape[0])
        masks = {} if heads is None else heads.masks(cache, new_seq)
        expected = reference.step(kept_seq, kept_pos, embeds.float(), new_seq, positions, **masks)
        if heads is not None:
            heads.recorded(new_seq)
        got = real_forward(embeds, positions, cache, all_logits=True)
        err = float((got - expected).abs().max() / expected.abs().max())
        log["max_err"] = max(log["max_err"], err)
        log["steps"] += 1
        log["visual_steps"] += int(embeds.shape[-1] > reference.hidden and bool(embeds[:, reference.hidden:].any()))
        log["max_retrieved"] = max(log["max_retrieved"], table.counts()["retrieved"])
        log["logits"].append(got[-1])
        return got if all_logits else got[-1]

    adapter.forward = checked_forward
    session = stream["session"] = Session(adapter, config, (180, 320))
    stepper = session.stepper
    truncate, restore = stepper.truncate, stepper.restore

    def truncated(length):  # decode steps past a stop token, taken back
        reference.forget(stepper.cache.table.seq[length:].tolist())
        if heads is not None:
            heads.forget(stepper.cache.table.seq[length:].tolist())
        log["taken_back"] += len(stepper.cache.table) - length
        truncate(length)

    def restored(snapshot):  # an answer that leaves no trace: the stream indices after the snapshot's
        reference.forget([s for s in reference.after if s >= snapshot[1][1]])
        if heads is not None:
            heads.forget(range(snapshot[1][1], stepper.next_seq))
        restore(snapshot)

    stepper.truncate, stepper.restore = truncated, restored
    if stop_ids is not None:
        session.stop_ids = stop_ids
    first_pos = {}
    for chunk in make_chunks(num_chunks):
        session.add_chunk(chunk)
        for s, p in zip(session.cache.table.seq.tolist(), session.cache.table.pos[0].tolist()):
            if s in first_pos and first_pos[s] != p:
                log["moved"] += 1
            first_pos.setdefault(s, p)
        for index, question, *remember in questions:  # (chunk, question[, remember])
            if chunk.index == index:
                log["answers"] += session.ask(question, remember=remember[0] if remember else True)
    return session, log


def test_engine_matches_plain_forward_after_slides(tiny):
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=5,
                           system_prompt="sys", retrieval=RetrievalConfig(enabled=False))
    session, log = run_lockstep(tiny, config, num_chunks=9, questions=[(4, "what moved?")])
    table = session.cache.table
    # the policy evicted and slid: the sequence kept is far shorter than the sequence seen
    assert int(table.seq.max()) + 1 > 2 * len(table)
    assert log["moved"] > 0, "no kept token changed position: the test did not exercise re-rotation"
    assert log["steps"] > 9 * 3
    assert log["max_err"] < 2e-5, log


def test_no_narration_still_matches(tiny):
    config = SessionConfig(vision_window_s=2.0, narrate=False, text_sink=0, text_window=4, system_prompt="s",
                           retrieval=RetrievalConfig(enabled=False))
    session, log = run_lockstep(tiny, config, num_chunks=6)
    assert session.cache.table.counts()["vision"] == 2 * session.tokens_per_chunk
    assert log["max_err"] < 2e-5, log


def test_toy_vlm_loads_offline_and_matches_plain_forward(monkeypatch):
    """toy-vlm, the model trained here, ships in the package and loads with no network; through slides,
    narration and a question, the engine's logits equal the stock forward over what the policy kept."""
    from livesight.models.loader import TOY_VLM, load_model
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    toy = load_model(TOY_VLM)
    assert toy.name == TOY_VLM and toy.max_pixels == 168 * 336 and toy.model.dtype == torch.float32
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=3,
                           system_prompt="sys", retrieval=RetrievalConfig(enabled=False))
    session, log = run_lockstep(toy, config, num_chunks=6, questions=[(4, "What colour is the background now?")])
    assert session.grid == (1, 6, 11)  # a 180 x 320 source fit into toy-vlm's 168 x 308 frames
    assert log["moved"] > 0 and log["steps"] > 6 * 3
    assert log["max_err"] < 2e-5, log


def _family_run(name: str, adapter_class):
    """A tiny model of another family through slides, text eviction, narration, pruning at keep ratio
    0.5 and a question at chunk 7 that retrieves two past chunks, in lockstep with the stock forward."""
    from livesight.models.loader import load_model
    from livesight.streaming.config import CompressionConfig
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=4,
                           system_prompt="sys", retrieval=RetrievalConfig(top_k=2, scope="global"),
                           compression=CompressionConfig(keep_ratio=0.5))
    session, log = run_lockstep(load_model(name), config, num_chunks=9, questions=[(7, "what moved?")],
                                adapter_class=adapter_class)
    assert log["moved"] > 0  # slides re-rotated kept keys
    assert log["max_retrieved"] > 0 and len(log["answers"][-1].data["retrieved"]) == 2
    assert session.cache.table.counts()["vision"] < 3 * session.tokens_per_chunk  # pruning dropped tokens
    assert log["max_err"] < 2e-5, log["max_err"]
    return session, log


def test_qwen3_vl_matches_plain_forward_with_deepstack_retrieval_and_pruning():
    """Qwen3-VL (tiny, random): interleaved M-RoPE and DeepStack; the stock model adds the DeepStack
    features at the visual rows its own way."""
    from livesight.models.qwen3_vl import Qwen3VLAdapter
    _, log = _family_run("tiny-random-qwen3-vl", Qwen3VLAdapter)
    assert log["visual_steps"] >= 9  # every chunk's step carried DeepStack features


def test_smolvlm2_matches_plain_forward_with_1d_positions_retrieval_and_pruning():
    """SmolVLM2 (tiny, random): 1-D RoPE, so a chunk's visual tokens take consecutive positions."""
    from livesight.models.smolvlm import SmolVLMAdapter
    session, _ = _family_run("tiny-random-smolvlm2", SmolVLMAdapter)
    table = session.cache.table
    assert bool((table.pos[0] == table.pos[1]).all())  # 1-D: every axis the same
    assert table.pos[0].unique().numel() == len(table)  # and every kept token a position of its own


def test_qwen3_5_matches_plain_forward_with_linear_state_carried_and_taken_back():
    """Qwen3.5 (tiny, random): linear and full layers in turn, partial rotary. The full layers' cache
    slides, prunes and retrieves; the linear layers' state follows every token the engine kept in its
    history, and none that it took back: a probe pass, decode steps past a stop, and an answer asked
    without a trace (remember=False) at chunk 5."""
    from livesight.models.loader import load_model
    from livesight.models.qwen3_5 import Qwen3_5Adapter
    from livesight.streaming.config import CompressionConfig
    config = SessionConfig(vision_window_s=3.0, text_sink=6, text_window=10, narrate_tokens=4, answer_tokens=4,
                           system_prompt="sys", retrieval=RetrievalConfig(top_k=2, scope="global"),
                           compression=CompressionConfig(keep_ratio=0.5))
    # a random model rarely says its stop token: odd ids stop it, so decode steps are taken back
    session, log = run_lockstep(load_model("tiny-random-qwen3.5"), config, num_chunks=9,
                                questions=[(5, "what is here?", False), (7, "what moved?")],
                                adapter_class=Qwen3_5Adapter, stop_ids=frozenset(range(1, 288, 2)))
    assert log["taken_back"] >= 5, log["taken_back"]
    assert log["moved"] > 0 and log["max_retrieved"] > 0
    assert len(log["answers"][-1].data["retrieved"]) == 2
    assert session.cache.table.counts()["vision"] < 3 * session.tokens_per_chunk
    assert log["max_err"] < 2e-5, log["max_err"]
