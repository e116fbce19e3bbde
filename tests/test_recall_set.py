"""The recall set (eval/recall_set.py): world videos and questions the evaluator reads as a VQA file,
each question's task its age bucket, every answer what the world showed; `livesight eval vqa` runs it
and reports accuracy per bucket."""

import json

from livesight.eval import vqa
from livesight.eval.cli import main as eval_main
from livesight.eval.recall_set import BUCKETS, bucket, write_set
from livesight.vision.world import World


def test_a_recall_set_is_a_vqa_set_by_age_that_the_evaluator_runs(tmp_path):
    counts = write_set(str(tmp_path), videos=1, seconds=40, per_video=6, seed=3, size=(320, 180))
    rows = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert sum(counts.values()) == len(rows) == 6 and set(counts) <= {name for _, _, name in BUCKETS}
    world = World(3)
    for row in rows:
        assert row["task"] == bucket(row["age_s"]) and row["time"] - 1 - row["fact_second"] == row["age_s"]
        right = row["options"]["ABCD".index(row["answer"])]
        state = world.state(row["fact_second"] + 0.5)
        assert right in ({s["colour"] for s in state["shapes"]} | {state["text"], state["background"]})
    questions = vqa.load(str(tmp_path / "questions.jsonl"))
    assert all(q.error is None for q in questions) and {q.task for q in questions} == set(counts)
    from livesight.app.cli import build_parser
    args = build_parser().parse_args(["eval", "vqa", "--data", str(tmp_path / "questions.jsonl"), "--videos",
                                      str(tmp_path / "videos"), "--out", str(tmp_path / "results"), "--device",
                                      "cpu"])
    assert eval_main(args) == 0
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    assert set(summary["scores"]["tasks"]) == set(counts) and summary["run"]["questions"] == 6


def test_buckets_cover_every_age():
    assert [bucket(a) for a in (0, 15.9, 16, 119, 120, 599, 600, 3599)] == [
        "age 0-16 s", "age 0-16 s", "age 16 s-2 min", "age 16 s-2 min", "age 2-10 min", "age 2-10 min",
        "age 10-60 min", "age 10-60 min"]
    assert bucket(7200) == "age 60+ min"
