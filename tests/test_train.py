"""Training toy-vlm (livesight/train/): the sequences it learns from are the engine's own cache layouts,
token for token and position for position; a run stopped by its time budget and resumed ends with the
very weights of an unbroken run; what a chunk narrates is what its frames show changing."""

import json

import numpy as np
import pytest
import torch

from livesight.eval.questions import lettered
from livesight.eval.streamingbench import CHOICE
from livesight.kvcache import Segment
from livesight.models.qwen2_5_vl import QwenVLAdapter
from livesight.streaming.config import CompressionConfig, RetrievalConfig, SessionConfig
from livesight.models.loader import build_byte_tokenizer, load_model
from livesight.streaming.session import Session
from livesight.train.batches import LABELS, labels
from livesight.train.config import TrainConfig
from livesight.train.layouts import LayoutMaker, Plan
from livesight.train.toy import run
from livesight.train.toy_model import GRID, TEMPORAL_STRIDE, WORDS, adopt_words, new_model, toy_tokenizer
from livesight.vision.world import World
from livesight.vision.world_tasks import chunk_narration, question

SIZE = (360, 640)


def world_chunks(world: World, seconds: int):
    from livesight.streaming.chunker import Chunk
    return [Chunk(np.stack([world.render(t, SIZE[1], SIZE[0]) for t in (i, i + 0.5)]), float(i), i + 1.0, i)
            for i in range(seconds)]


def test_a_training_sequence_is_the_engine_cache_at_the_question():
    """The engine watches a world with a 4-s window and retrieval, then is asked a question: the tokens
    it holds (sink, retrieved blocks, window) and the question step, in position order, are the layout
    training builds for that moment, ids and positions alike."""
    loaded = load_model("toy-vlm")
    adapter = QwenVLAdapter(loaded)
    config = SessionConfig(vision_window_s=4.0, narrate=False, system_prompt="Watch.", max_question_tokens=1024,
                           retrieval=RetrievalConfig(top_k=2, scope="global"),
                           compression=CompressionConfig(reuse=False, prune=False))
    world, now = World(11), 12
    session = Session(adapter, config, SIZE)
    for chunk in world_chunks(world, now):
        session.add_chunk(chunk)
    q = next(q for s in range(now - 8) if (q := question(world, now, s, "background", np.random.default_rng(0))))
    prompt = CHOICE.format(question=q["question"], options="\n".join(lettered(q["options"])))
    seen = {}
    real_forward = adapter.forward

    def spy(embeds, positions, cache, all_logits=False):
        if embeds.shape[0] > 50 and "question" not in seen and len(cache.table) and \
                bool((cache.table.segment == Segment.RETRIEVED).any()):
            table = cache.table  # in position order (a vision group's grid shares its temporal position: then seq)
            seen["question"] = (table.select(torch.argsort(table.pos[0] * (int(table.seq.max()) + 1) + table.seq)),
                                positions.clone())
        return real_forward(embeds, positions, cache, all_logits)

    adapter.forward = spy
    answer = session.ask(prompt, remember=False, max_tokens=1)[-1]
    kept, step_pos = seen["question"]
    retrieved = [int(a) for a, _ in answer.data["retrieved"]]
    assert len(retrieved) == 2
    maker = LayoutMaker(loaded.tokenizer, [world], torch.zeros(1, 60, 66, dtype=torch.bool), config, GRID,
                        TEMPORAL_STRIDE)
    q["open"] = False
    layout = maker.make(Plan(0, now, False, retrieved, q, None), np.random.default_rng(0))
    end = layout.probe[1]
    assert torch.equal(layout.pos[:, :end], torch.cat([kept.pos, step_pos], dim=1))
    is_text = layout.ids[:end] >= 0
    ids = torch.tensor(session.chat.system("Watch.")).tolist()
    assert layout.ids[:len(ids)].tolist() == ids
    assert int((~is_text).sum()) == (2 + 4) * 66  # two retrieved chunks and the window's four, whole
    assert [second for _, second in layout.chunks] == sorted(retrieved) + list(range(now - 4, now))
    assert layout.ids[layout.probe[0]:end].tolist() == (session.chat.user_open + loaded.tokenizer.encode(
        prompt, add_special_tokens=False) + session.chat.turn_close + session.chat.assistant)


def test_a_stopped_and_resumed_run_ends_where_an_unbroken_one_does(tmp_path):
    base = dict(steps=2, batch=2, worlds=1, seconds=30, workers=0, warmup=1, log_every=1, questions=2)
    whole = TrainConfig(str(tmp_path / "whole"), str(tmp_path / "whole.pt"), **base)
    assert run(whole, "test") == 0
    broken = TrainConfig(str(tmp_path / "broken"), str(tmp_path / "broken.pt"), minutes=1e-6, **base)
    assert run(broken, "test") == 3  # out of time after its first step: checkpointed
    assert json.loads((tmp_path / "broken" / "training.json").read_text())["steps_done"] == 1
    assert run(broken, "test") == 0
    records = [json.loads((tmp_path / name / "training.json").read_text()) for name in ("whole", "broken")]
    assert records[0]["sha256"] == records[1]["sha256"] and records[1]["steps_done"] == 2
    assert [r["loss"] for r in records[0]["history"]] == [r["loss"] for r in records[1]["history"]]
    with pytest.raises(ValueError, match="other settings"):
        run(TrainConfig(str(tmp_path / "broken"), str(tmp_path / "broken.pt"), **(base | {"batch": 3})), "test")


def test_a_chunk_narrates_what_its_frames_show_changing():
    world = World(5)
    for c in range(1, 300):
        said = chunk_narration(world, c)
        before, after = world.state(c - 0.5), world.state(c + 0.5)
        came = {s["kind"] for s in after["shapes"]} - {s["kind"] for s in before["shapes"]}
        for kind in came:  # a shape on the chunk's last frame and not on the frame before the chunk
            assert f"A {kind} appears." in said, (c, said)
        assert ("New background." in said) == (before["background"] != after["background"]), c


def test_labels_are_what_both_frames_show():
    world = World(5)
    row = labels(world, 754)
    assert len(row) == len(LABELS) and all(-100 <= v < n for v, n in zip(row, LABELS))
    assert row[1:5] == [1, 2, 3, 4]  # the clock reads 12:34 on both frames


def test_bad_paths_are_named_before_any_work(tmp_path, capsys):
    """Every path is checked first (a run must not train for minutes, then fail to save), and a file that
    is not this command's checkpoint is refused, never unpickled."""
    from livesight.app.cli import main
    stranger = tmp_path / "not-a-checkpoint.pt"
    stranger.write_bytes(b"not a torch file")
    (tmp_path / "file").write_text("")
    cases = [(["--init", str(tmp_path / "nothing")], "--init"), (["--out", str(tmp_path / "file" / "x")], "--out"),
             (["--checkpoint", str(stranger)], "is not a checkpoint"),
             (["--checkpoint", str(tmp_path / "file" / "ck.pt")], "--checkpoint's folder")]
    for flags, named in cases:
        assert main(["train", "toy", "--device", "cpu", "--steps", "1", "--worlds", "1", "--seconds", "30",
                     "--out", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err
        assert named in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_answer_words_are_one_token_each_and_start_from_their_spelling():
    """toy-vlm's tokenizer: each multi-byte answer word is one token, matched as a whole word only, and
    text round-trips; a model trained on bytes alone gets those rows from the words' spelling, and no
    other row changes."""
    tokenizer, spell = toy_tokenizer(), build_byte_tokenizer()
    text = "What colour? A. green\nB. maroon, considered steal STAR start 7"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert [tokenizer.decode([i]) for i in ids if i >= len(spell)] == ["green", "maroon", "STAR"]
    assert len(ids) == len(spell.encode(text, add_special_tokens=False)) - (5 + 6 + 4) + 3
    assert load_model("toy-vlm").tokenizer.encode(text, add_special_tokens=False) == ids  # shipped with it
    model = new_model(0)
    embed, head = model.get_input_embeddings().weight, model.lm_head.weight
    before = embed.detach().clone(), head.detach().clone()
    adopt_words(model)
    rows = [tokenizer.convert_tokens_to_ids(w) for w in WORDS]
    for word, row in zip(WORDS, rows):
        letters = spell.encode(word, add_special_tokens=False)
        assert torch.allclose(embed[row], before[0][letters].mean(0)) and torch.equal(head[row], before[1][letters[0]])
    others = torch.ones(len(embed), dtype=torch.bool)
    others[rows] = False
    assert torch.equal(embed[others], before[0][others]) and torch.equal(head[others], before[1][others])
