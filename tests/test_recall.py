"""`livesight bench recall` (a CPU smoke run on 2 minutes of the world with toy-vlm): per setting, the
accuracy by age bucket is what `livesight eval vqa` reports for the same settings on the same set, and
`livesight eval streamingbench` on the same questions in StreamingBench's layout (the bench measures the
evaluator's engine, nothing else), whether settings run one after another or several at once; every
cell of the matrix is run or says why not; the outputs are written."""

import json

from livesight.app.cli import main
from livesight.eval.recall import setting


def test_bench_recall_equals_the_evaluator_on_its_own_set(tmp_path, capsys):
    out = tmp_path / "recall"
    flags = ["bench", "recall", "--device", "cpu", "--videos", "1", "--seconds", "120", "--per-video", "6",
             "--window", "4", "--policies", "window,retrieval-4", "--compression", "off,prune-0.5"]
    assert main(flags + ["--out", str(out)]) == 0
    result = json.loads((out / "recall.json").read_text())
    # the settings run in two processes at once: the same rows, in the same order
    assert main(flags + ["--jobs", "2", "--out", str(tmp_path / "at-once")]) == 0
    assert json.loads((tmp_path / "at-once" / "recall.json").read_text())["runs"] == result["runs"]
    assert result["finished"] and [(r["policy"], r["compression"]) for r in result["runs"]] == [
        ("window", "off"), ("window", "prune-0.5"), ("retrieval-4", "off"), ("retrieval-4", "prune-0.5")]
    assert all(r["fits"] and r["errors"] == 0 for r in result["runs"])
    assert all(sum(b["n"] for b in r["buckets"].values()) == 6 for r in result["runs"])
    assert (out / "recall.png").stat().st_size > 0 and "| window | off |" in (out / "recall.md").read_text()
    capsys.readouterr()
    # the same set through `livesight eval vqa` with the flags of ("window", "off")
    assert main(["eval", "vqa", "--data", str(out / "set" / "questions.jsonl"), "--videos", str(out / "set" / "videos"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--vision-window", "4", "--no-retrieve",
                 "--no-reuse", "--no-prune", "--answer-tokens", "8", "--model", "toy-vlm"]) == 0
    tasks = json.loads((tmp_path / "eval" / "summary.json").read_text())["scores"]["tasks"]
    window_off = result["runs"][0]["buckets"]
    assert {name: (round(t["robust"] / 100, 3), round(t["strict"] / 100, 3)) for name, t in tasks.items()} == \
        {name: (b["accuracy"], b["strict"]) for name, b in window_off.items()}
    # and in StreamingBench's layout through `livesight eval streamingbench`: one engine, one scorer
    assert main(["eval", "streamingbench", "--data", str(out / "set" / "streamingbench.json"), "--videos",
                 str(out / "set" / "videos"), "--out", str(tmp_path / "sb"), "--device", "cpu", "--vision-window", "4",
                 "--no-retrieve", "--no-reuse", "--no-prune", "--answer-tokens", "8", "--model", "toy-vlm"]) == 0
    sb_tasks = json.loads((tmp_path / "sb" / "summary.json").read_text())["scores"]["tasks"]
    assert {name: (t["n"], t["strict"], t["robust"]) for name, t in sb_tasks.items()} == \
        {name: (t["n"], t["strict"], t["robust"]) for name, t in tasks.items()}


def test_settings_are_the_matrix_cells():
    dense = setting("dense", "off", 600, 16.0, False)
    assert dense.vision_window_s > 600 and not dense.retrieval.enabled and not dense.compression.reuse
    top8 = setting("retrieval-8", "prune-0.25", 600, 16.0, False)
    assert top8.vision_window_s == 16 and top8.retrieval.enabled and top8.retrieval.top_k == 8
    assert top8.compression.reuse and top8.compression.prune and top8.compression.keep_ratio == 0.25
    assert not setting("window", "reuse", 600, 16.0, True).compression.prune


def test_unknown_settings_are_named(tmp_path, capsys):
    assert main(["bench", "recall", "--policies", "window,everything", "--out", str(tmp_path)]) == 2
    assert "--policies window,everything: use some of dense" in capsys.readouterr().err


def test_bench_recall_scores_a_scripted_model_exactly(tmp_path, monkeypatch):
    """The engine runs; its answers are replaced by a script that knows the set: the right option's text
    for the questions inside the window, a wrong letter for the older ones. The bench reports exactly
    that: robust 1 and strict 0 inside, 0 and 0 outside."""
    import re

    from livesight.eval import engine as eval_engine
    out, real_ask = tmp_path / "recall", eval_engine.VideoPass.ask

    def scripted(self, prompt, max_tokens):
        reply = real_ask(self, prompt, max_tokens)
        rows = [json.loads(line) for line in (out / "set" / "questions.jsonl").read_text().splitlines()]
        row = {r["question"]: r for r in rows}[re.search(r"Question: (.*)\n\nOptions:", prompt).group(1)]
        inside = row["task"] == "age 0-16 s"
        reply["text"] = row["options"]["ABCD".index(row["answer"])] if inside else \
            next(letter for letter in "ABCD" if letter != row["answer"])
        return reply

    monkeypatch.setattr(eval_engine.VideoPass, "ask", scripted)
    assert main(["bench", "recall", "--device", "cpu", "--model", "tiny-random", "--videos", "1", "--seconds", "60",
                 "--per-video", "8", "--policies", "window", "--compression", "off", "--out", str(out)]) == 0
    buckets = json.loads((out / "recall.json").read_text())["runs"][0]["buckets"]
    assert set(buckets) == {"age 0-16 s", "age 16 s-2 min"}
    assert (buckets["age 0-16 s"]["accuracy"], buckets["age 0-16 s"]["strict"]) == (1.0, 0.0)
    assert (buckets["age 16 s-2 min"]["accuracy"], buckets["age 16 s-2 min"]["strict"]) == (0.0, 0.0)


def test_a_setting_whose_questions_failed_says_why():
    """Errors are counted and the first one is named, in recall.json and under the table."""
    from livesight.eval.recall import accuracy, markdown
    failed = {"id": "w0-1", "benchmark": "vqa", "task": "age 0-16 s", "question": "What colour?", "options": ["A. red"],
              "answer": "A", "error": "cannot read world_0.mp4: No module named 'decord'", "error_kind": "video"}
    answered = {k: v for k, v in failed.items() if not k.startswith("error")} | {
        "id": "w0-2", "group": "recall", "reply": "red", "score_strict": 0.0, "score_robust": 1.0, "latency_ms": 5.0}
    row = accuracy([answered, failed, dict(failed, id="w0-3")])
    assert row["errors"] == 2 and row["first_error"] == "video: cannot read world_0.mp4: No module named 'decord'"
    result = {"config": {"model": "m", "videos": 1, "seconds": 60, "seed": 0, "window": 16.0, "narrate": False},
              "questions": {"age 0-16 s": 3}, "runs": [{"policy": "window", "compression": "off", "fits": True} | row]}
    assert "First error (window, off): video: cannot read world_0.mp4: No module named 'decord'" in markdown(result)
    assert "first_error" not in accuracy([answered])


def test_a_stopped_bench_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """Settings an earlier run into the same folder finished on the same set are kept and not run again;
    a different set starts afresh."""
    from livesight.eval import recall
    ran, real = [], recall.run_cell
    monkeypatch.setattr(recall, "run_cell", lambda args, qs, p, c: ran.append((p, c)) or real(args, qs, p, c))
    flags = ["bench", "recall", "--device", "cpu", "--model", "tiny-random", "--videos", "1", "--seconds", "20",
             "--per-video", "2", "--window", "4", "--out", str(tmp_path)]
    assert main(flags + ["--policies", "window", "--compression", "off"]) == 0
    first = json.loads((tmp_path / "recall.json").read_text())["runs"]
    assert main(flags + ["--policies", "retrieval-4,window", "--compression", "off"]) == 0
    runs = json.loads((tmp_path / "recall.json").read_text())["runs"]
    assert ran == [("window", "off"), ("retrieval-4", "off")] and runs[0] == first[0]
    assert [(r["policy"], r["compression"]) for r in runs] == [("window", "off"), ("retrieval-4", "off")]
    assert main(flags + ["--policies", "window", "--compression", "off", "--per-video", "3"]) == 0
    assert ran[-1] == ("window", "off")  # another set: run again
