"""livesight.progress: status lines for logs (throttled, a last line that says done or stopped), a
tqdm bar on a terminal."""

import io

import pytest

from livesight.progress import StatusLines, TerminalBar, progress


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_status_lines_are_throttled_and_the_last_says_done():
    stream, clock = io.StringIO(), Clock()
    with progress(100, "eval vqa", unit="questions", every_s=30, stream=stream, clock=clock) as bar:
        assert isinstance(bar, StatusLines)
        for step in range(100):  # a step every 2 s: 200 s in all
            clock.now += 2
            bar.describe(f"clip{step // 10}.mp4")
            bar.update()
    out = lines(stream)
    # a line at most every 30 s: 200 s give 6 periodic lines, then the last one
    assert len(out) == 200 // 30 + 1, out
    assert all("\r" not in line for line in out)
    assert out[0] == "eval vqa: 15/100 questions (15%) after 30s, about 2m50s left; now clip1.mp4"
    counts = [int(line.split(": ")[1].split("/")[0]) for line in out[:-1]]
    assert counts == sorted(counts) and counts[-1] < 100
    assert out[-1] == "eval vqa: done, 100/100 questions in 3m20s"


def test_nothing_before_the_interval_but_the_last_line():
    stream, clock = io.StringIO(), Clock()
    with progress(3, "bench speed", stream=stream, clock=clock) as bar:
        for _ in range(3):
            clock.now += 1
            bar.update()
    assert lines(stream) == ["bench speed: done, 3/3 in 3s"]


def test_an_exception_ends_with_stopped_and_propagates():
    stream, clock = io.StringIO(), Clock()
    with pytest.raises(KeyError):
        with progress(10, "bench compression", unit="phases", stream=stream, clock=clock) as bar:
            bar.update(4)
            clock.now += 75
            raise KeyError("boom")
    assert lines(stream) == ["bench compression: stopped at 4/10 phases after 1m15s"]


def test_no_total_counts_and_long_runs_show_hours():
    stream, clock = io.StringIO(), Clock()
    with progress(None, "loading", every_s=60, stream=stream, clock=clock) as bar:
        clock.now += 3 * 3600 + 120
        bar.update(5)
    assert lines(stream) == ["loading: 5 after 3h02m", "loading: done, 5 in 3h02m"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_log_gets_lines():
    terminal = FakeTerminal()
    with progress(4, "eval vqa", unit="questions", stream=terminal) as bar:
        assert isinstance(bar, TerminalBar)
        bar.describe("clip.mp4")
        bar.update(4)
    drawn = terminal.getvalue()
    assert "\r" in drawn and "4/4" in drawn and "eval vqa" in drawn and "done" in drawn
    log = io.StringIO()
    with progress(4, "eval vqa", stream=log) as bar:
        assert isinstance(bar, StatusLines)
    with progress(4, "eval vqa", stream=FakeTerminal(), bar=False) as bar:
        assert isinstance(bar, StatusLines)  # asked for lines on a terminal


@pytest.fixture
def every_update(monkeypatch):
    """Progress as the commands make it, with a status line at every update (every_s=0)."""
    import functools

    from livesight.eval import cli, compression, fidelity_report, speed_report
    from livesight.progress import progress as real
    for module in (cli, compression, fidelity_report, speed_report):
        monkeypatch.setattr(module, "progress", functools.partial(real, every_s=0, bar=False))


def counted(err: str, desc: str) -> list[str]:
    return [line.split(": ", 1)[1].split(" ")[0] for line in err.splitlines() if line.startswith(f"{desc}: ")]


def test_bench_compression_reports_each_scene_and_setting(tmp_path, capsys, every_update):
    from livesight.app.cli import main
    from livesight.eval.compression import SETTINGS
    assert main(["bench", "compression", "--seconds", "5", "--scenes", "static,quiet", "--size", "64x64",
                 "--device", "cpu", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    phases = 1 + 2 * (len(SETTINGS) + 1)  # the tower, then each scene's settings and its error of reuse
    assert counted(err, "bench compression") == [f"{k}/{phases}" for k in range(1, phases + 1)] + ["done,"]
    assert "; now quiet, reuse+prune" in err and "; now static, error of reuse" in err


def test_bench_speed_reports_each_phase(tmp_path, capsys, every_update):
    from livesight.app.cli import main
    assert main(["bench", "speed", "--model", "tiny-random", "--device", "cpu", "--seconds", "2",
                 "--baseline-seconds", "2", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert counted(err, "bench speed") == ["1/3", "2/3", "3/3", "done,"]
    assert "now baseline window, 2 s of video" in err and "now engine, 2 s of video" in err


def test_bench_fidelity_advances_once_per_phase(monkeypatch):
    """run_fidelity's phases, counted with its measurements stubbed (the real ones take minutes on a CPU)."""
    import types

    import torch

    from livesight.eval import fidelity
    from livesight.eval.config import FidelityConfig

    class Recorder:
        def __init__(self):
            self.events = []

        def describe(self, text):
            self.events.append(text)

        def update(self, n=1):
            self.events.append(n)
    monkeypatch.setattr(fidelity, "stream_nll", lambda adapter, ids, policy, config: torch.zeros(len(ids) - 1))
    monkeypatch.setattr(fidelity, "cache_bytes", lambda *a: 0)
    monkeypatch.setattr(fidelity, "recompute_nll", lambda model, ids, window, targets: torch.zeros(len(targets)))
    monkeypatch.setattr(fidelity, "passkey_trial", lambda *a: {"correct": True, "prompt_tokens": 10})
    adapter = types.SimpleNamespace(tokenizer=types.SimpleNamespace(encode=lambda text, **k: list(range(400))),
                                    loaded=types.SimpleNamespace(name="stub"))
    bar = Recorder()
    fidelity.run_fidelity(adapter, None, FidelityConfig(tokens=300, window=128, trials=2), bar)
    assert bar.events.count(1) == fidelity.num_phases(FidelityConfig()) == 7
    notes = [e for e in bar.events if isinstance(e, str)]
    assert len(notes) == 7 and notes[0].startswith("perplexity: dense") and notes[-1].startswith("passkey: sink")
    assert all(isinstance(a, str) and b == 1 for a, b in zip(bar.events[::2], bar.events[1::2]))  # note, then done
