"""`livesight bench recall` (a CPU smoke run on 2 minutes of the world with toy-vlm): per setting, the
accuracy by age bucket is what `livesight eval vqa` reports for the same settings on the same set, and
`livesight eval streamingbench` on the same questions in StreamingBench's layout (the bench measures the
evaluator's engine, nothing else), whether settings run one after another or several at once; so are its
DuoAttention rows (a share of KV heads streaming) and its fp8 rows, with the engine given the very settings
the evaluator gives it; every cell of the matrix is run or says why not; the outputs are written; bad --duo
input is refused before anything runs."""

import json

import pytest

from livesight.app.cli import main
from livesight.eval.recall import setting

# the evaluator's flags for the bench's (window, off) cell at --window 4
WINDOW_OFF = ["--vision-window", "4", "--no-retrieve", "--no-reuse", "--no-prune", "--answer-tokens", "8"]


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
    result = {"config": {"model": "m", "videos": 1, "seconds": 60, "seed": 0, "window": 16.0, "narrate": False,
                         "kv_dtype": "model", "duo": None}, "questions": {"age 0-16 s": 3},
              "runs": [{"policy": "window", "compression": "off", "sparsity": None, "fits": True} | row]}
    assert "First error (window, off, KV heads all): video: cannot read world_0.mp4: No module named 'decord'" in \
        markdown(result)
    assert "first_error" not in accuracy([answered])


def test_a_stopped_bench_goes_on_where_it_stopped(tmp_path, monkeypatch):
    """Settings an earlier run into the same folder finished on the same set are kept and not run again;
    a different set starts afresh."""
    from livesight.eval import recall
    ran, real = [], recall.run_cell
    monkeypatch.setattr(recall, "run_cell", lambda args, qs, p, c, s: ran.append((p, c)) or real(args, qs, p, c, s))
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


def _gates(folder, model: str, sink: int = 0, recent: int = 2, low: int = 0):
    """A duo_gates.json for `model`'s (layers, KV heads), the lowest gate at head `low`, as `livesight calibrate
    duo` writes it. Streaming heads keeping 2 tokens see next to nothing: their rows differ from the others."""
    from livesight.models.registry import load_adapter
    adapter = load_adapter(model, "cpu")
    gates = [[1.0 + layer + head / 10 for head in range(adapter.num_kv_heads)] for layer in range(adapter.num_layers)]
    gates[low // adapter.num_kv_heads][low % adapter.num_kv_heads] = 0.0
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "duo_gates.json").write_text(json.dumps({"gates": gates, "settings": {"sink": sink, "recent": recent}}))
    return folder


@pytest.fixture
def engine_configs(monkeypatch):
    """The SessionConfig each evaluator engine was built with, in order (the bench's cells and `eval vqa`)."""
    from livesight.eval import engine as eval_engine
    configs, real = [], eval_engine.VideoEngine.__init__
    monkeypatch.setattr(eval_engine.VideoEngine, "__init__",
                        lambda self, adapter, config, n: configs.append(config) or real(self, adapter, config, n))
    return configs


def _evaluator(set_folder, out, model: str, flags: list[str]) -> dict:
    """`livesight eval vqa` on the bench's set: {bucket: (robust, strict)} as the bench rounds them."""
    assert main(["eval", "vqa", "--data", str(set_folder / "questions.jsonl"), "--videos", str(set_folder / "videos"),
                 "--out", str(out), "--device", "cpu", "--model", model] + WINDOW_OFF + flags) == 0
    tasks = json.loads((out / "summary.json").read_text())["scores"]["tasks"]
    return {name: (round(t["robust"] / 100, 3), round(t["strict"] / 100, 3)) for name, t in tasks.items()}


def _figures(run: dict) -> dict:
    return {name: (b["accuracy"], b["strict"]) for name, b in run["buckets"].items()}


def test_duo_rows_equal_the_evaluator_with_the_same_heads_streaming(tmp_path, capsys, engine_configs):
    """Each (policy, compression) runs with every head whole, then with each share streaming; a duo row is
    what `eval vqa --duo G --duo-sparsity S` gives on the same set, from an engine given the same settings.
    toy-vlm, not tiny-random: a model that answers makes the rows tell the heads apart."""
    out, gates = tmp_path / "recall", _gates(tmp_path / "gates", "toy-vlm")
    assert main(["bench", "recall", "--device", "cpu", "--videos", "1", "--seconds", "60", "--per-video", "8",
                 "--window", "4", "--policies", "window", "--compression", "off", "--duo", str(gates),
                 "--duo-sparsity", "1,0.25", "--out", str(out)]) == 0
    result = json.loads((out / "recall.json").read_text())
    assert [r["sparsity"] for r in result["runs"]] == [None, 0.25, 1.0]
    assert all(r["fits"] and r["errors"] == 0 for r in result["runs"])
    whole, quarter, streaming = result["runs"]
    assert _figures(whole) != _figures(streaming)  # the set tells the heads apart, or the test proves nothing
    assert result["config"]["duo"] | {"sha256": None} == {"gates": str(gates), "sha256": None, "sink": 0, "recent": 2}
    table = (out / "recall.md").read_text()
    assert all(f"| window | off | {heads} |" in table for heads in ("all", "duo 0.25", "duo 1"))
    assert f"DuoAttention gates {gates} rank lowest stream, keeping only the first 0 tokens and the latest 2." in table
    assert (out / "recall.png").stat().st_size > 0
    bench_configs = {c.duo_sparsity if c.duo_gates else None: c for c in engine_configs}
    assert len(engine_configs) == len(bench_configs) == 3
    capsys.readouterr()
    for run in (quarter, streaming):
        share = f"{run['sparsity']:g}"
        assert _evaluator(out / "set", tmp_path / f"eval-{share}", "toy-vlm",
                          ["--duo", str(gates), "--duo-sparsity", share]) == _figures(run)
        assert engine_configs[-1] == bench_configs[run["sparsity"]]


def test_fp8_rows_equal_the_evaluator_with_fp8(tmp_path, capsys, engine_configs):
    """--kv-dtype fp8: every row is `eval vqa --kv-dtype fp8`'s on the same set, the heading and recall.json say
    so, and a folder's rows of the other dtype are not mixed in."""
    out = tmp_path / "recall"
    flags = ["bench", "recall", "--device", "cpu", "--model", "tiny-random", "--videos", "1", "--seconds", "20",
             "--per-video", "4", "--window", "4", "--policies", "window", "--compression", "off", "--out", str(out)]
    assert main(flags + ["--kv-dtype", "fp8"]) == 0
    result = json.loads((out / "recall.json").read_text())
    assert result["config"]["kv_dtype"] == "fp8" and len(result["runs"]) == 1
    assert (out / "recall.md").read_text().startswith("# bench recall: tiny-random, keys and values in fp8\n")
    bench_config = engine_configs[-1]
    capsys.readouterr()
    fp8 = _evaluator(out / "set", tmp_path / "eval", "tiny-random", ["--kv-dtype", "fp8"])
    assert fp8 == _figures(result["runs"][0])
    assert engine_configs[-1] == bench_config and bench_config.kv_dtype == "fp8"
    assert main(flags) == 0  # the model's dtype into the same folder: run again, not kept
    assert engine_configs[-1].kv_dtype == "model" and len(engine_configs) == 3
    assert json.loads((out / "recall.json").read_text())["config"]["kv_dtype"] == "model"


def test_more_shares_and_other_gates_resume_correctly(tmp_path, monkeypatch):
    """Runs are kept by (policy, compression, share): another share runs alone; other gates at the same path
    run everything again."""
    from livesight.eval import recall
    ran, real = [], recall.run_cell
    monkeypatch.setattr(recall, "run_cell", lambda args, qs, p, c, s: ran.append((p, c, s)) or real(args, qs, p, c, s))
    gates = _gates(tmp_path / "gates", "tiny-random")
    flags = ["bench", "recall", "--device", "cpu", "--model", "tiny-random", "--videos", "1", "--seconds", "20",
             "--per-video", "2", "--window", "4", "--policies", "window", "--compression", "off", "--duo", str(gates),
             "--out", str(tmp_path / "recall")]
    assert main(flags + ["--duo-sparsity", "0.5"]) == 0
    assert main(flags + ["--duo-sparsity", "0.5,1"]) == 0
    assert ran == [("window", "off", None), ("window", "off", 0.5), ("window", "off", 1.0)]
    _gates(gates, "tiny-random", low=1)  # calibrated again into the same folder
    assert main(flags + ["--duo-sparsity", "0.5"]) == 0
    assert ran[3:] == [("window", "off", None), ("window", "off", 0.5)]
    runs = json.loads((tmp_path / "recall" / "recall.json").read_text())["runs"]
    assert [r["sparsity"] for r in runs] == [None, 0.5]


@pytest.mark.parametrize("flags, message", [
    (["--duo", "{tmp}/nowhere"], "--duo {tmp}/nowhere: no such file or folder"),
    (["--duo", "{tmp}/toy"], "--duo {tmp}/toy: gates for (4, 2) (layers, KV heads), but this model has (3, 2)"),
    (["--duo", "{tmp}/tiny", "--duo-sparsity", "0"], "argument --duo-sparsity: expected a number above 0 to 1"),
    (["--duo", "{tmp}/tiny", "--duo-sparsity", "0.5,1.5"], "argument --duo-sparsity: expected a number above 0 to 1"),
    (["--duo-sparsity", "0.5"], "--duo-sparsity needs --duo GATES"),
])
def test_bad_duo_input_is_named_before_anything_runs(tmp_path, capsys, monkeypatch, flags, message):
    from livesight.eval import recall
    monkeypatch.setattr(recall, "run_cell", lambda *cell: pytest.fail(f"a setting ran: {cell}"))
    (tmp_path / "toy" / "duo_gates.json").parent.mkdir()
    (tmp_path / "toy" / "duo_gates.json").write_text(json.dumps({"gates": [[1, 2]] * 4, "settings": {"sink": 4,
                                                                                                     "recent": 64}}))
    _gates(tmp_path / "tiny", "tiny-random")
    out = tmp_path / "recall"
    argv = ["bench", "recall", "--device", "cpu", "--model", "tiny-random", "--videos", "1", "--seconds", "20",
            "--per-video", "2", "--out", str(out)] + [f.format(tmp=tmp_path) for f in flags]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusal of a flag's value
        code = stop.code
    assert code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (out / "set").exists() and not (out / "recall.json").exists()
