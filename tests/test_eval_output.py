"""Output folders (eval's and every bench's --out) are checked before any work: a file, a path under
a file or a read-only folder is one clear line and exit 2, and no model is loaded or run first."""

import os

import pytest

from livesight.app.cli import main as livesight_main
from livesight.errors import InputError
from livesight.eval.output import writable_folder

COMMANDS = {
    "eval": ["eval", "vqa", "--data", "DATA", "--videos", "VIDEOS"],
    "bench compression": ["bench", "compression", "--seconds", "5", "--scenes", "static"],
    "bench speed": ["bench", "speed", "--model", "tiny-random", "--device", "cpu", "--seconds", "2"],
    "bench fidelity": ["bench", "fidelity"],
}


@pytest.fixture
def no_work(monkeypatch):
    """Any model load or measurement fails the test: the check must come first."""
    from livesight.eval import compression_measure
    from livesight.models import loader as models, registry as adapter

    def refuse(*args, **kwargs):
        raise AssertionError("work started before --out was checked")
    monkeypatch.setattr(adapter, "load_adapter", refuse)
    monkeypatch.setattr(models, "load_smollm2", refuse)  # bench fidelity's oracle
    monkeypatch.setattr(compression_measure, "run", refuse)


def out_cases(tmp_path) -> dict:
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    return {"a file": (str(a_file), "is a file, not a folder"),
            "under a file": (str(a_file / "run1"), "cannot create the folder")}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_an_out_that_cannot_be_a_folder_is_refused_first(tmp_path, capsys, no_work, command, case):
    """Both fail for root too (root ignores permission bits, not file types)."""
    data = tmp_path / "v.jsonl"
    data.write_text('{"video": "clip.mp4", "time": 1, "question": "?", "answer": "x"}\n')
    out, message = out_cases(tmp_path)[case]
    argv = [str(data) if a == "DATA" else str(tmp_path) if a == "VIDEOS" else a for a in COMMANDS[command]]
    assert livesight_main(argv + ["--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"--out {out}" in err and message in err and "give a folder you can write" in err


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into a read-only folder: permission bits do not hold it back")
def test_a_read_only_out_is_refused(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match=f"--out {folder} is not writable"):
            writable_folder(str(folder))
        with pytest.raises(InputError, match="cannot create the folder"):
            writable_folder(str(folder / "run1"))
    finally:
        folder.chmod(0o755)


def test_a_missing_out_is_created_and_left_clean(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    assert writable_folder(str(out), "--out") == str(out)
    assert out.is_dir() and os.listdir(out) == []
    assert writable_folder(str(out)) == str(out) and os.listdir(out) == []  # an existing folder passes too


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux's /proc")
def test_an_existing_folder_that_refuses_files_is_refused_even_for_root():
    """/proc is a folder in which no one, root included, may make a file: the write probe finds it."""
    with pytest.raises(InputError, match="--out /proc is not writable"):
        writable_folder("/proc")
