"""eval's and the benches' flags: parsing them imports no torch, every flag's help shows its default,
and every number is a Bound that refuses nan, inf, huge and negative values in one line."""

import argparse
import subprocess
import sys

import pytest

from livesight.app.cli import build_parser
from livesight.streaming.options import Bound

REQUIRED = {"eval": ["--data", "d.json", "--videos", ".", "--out", "o"]}


def commands() -> dict[str, argparse.ArgumentParser]:
    """'eval vqa', 'bench speed', ... -> the parser of that command, as `livesight` builds it."""
    found = {}
    top = _subparsers(build_parser())
    for group in ("eval", "bench"):
        for name, parser in _subparsers(top[group]).items():
            found[f"{group} {name}"] = parser
    return found


def _subparsers(parser: argparse.ArgumentParser) -> dict:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_building_the_eval_and_bench_parsers_imports_no_torch():
    code = ("import sys, argparse\n"
            "from livesight.eval import cli, compression, fidelity_report, speed_report\n"
            "for module in (cli, compression, fidelity_report, speed_report):\n"
            "    module.add_arguments(argparse.ArgumentParser())\n"
            "from livesight.app.cli import build_parser\n"
            "build_parser().format_help()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_flag_has_a_help_that_shows_its_default():
    names = commands()
    assert set(names) == {"eval streamingbench", "eval ovobench", "eval vqa", "bench fidelity", "bench compression",
                          "bench speed", "bench streams", "bench api", "bench recall"}
    for name, parser in names.items():
        formatter = parser._get_formatter()
        for action in flags(parser):
            text = formatter._expand_help(action) if action.help else ""
            assert "default" in text or "(required)" in text, (name, action.option_strings, text)


def test_eval_narration_is_off_by_default_and_only_narrate_is_offered():
    for name, parser in commands().items():
        if name.startswith("eval"):
            options = {o for a in flags(parser) for o in a.option_strings}
            assert "--narrate" in options and "--no-narrate" not in options
            args = parser.parse_args(REQUIRED["eval"])
            assert args.narrate is False and args.answer_tokens == 16
            assert parser.parse_args(REQUIRED["eval"] + ["--narrate"]).narrate is True


def numeric_flags() -> list[tuple[str, str]]:
    found = []
    for name, parser in commands().items():
        for action in flags(parser):
            if action.type is not None:
                found.append((name, action.option_strings[0]))
    return found


def test_every_typed_flag_is_a_bound():
    """A flag that takes a number takes it through a Bound (eval's --context: 'all' or one)."""
    for name, parser in commands().items():
        for action in flags(parser):
            if action.type is not None and action.option_strings[0] != "--context":
                assert isinstance(action.type, Bound), (name, action.option_strings)
    expected = {("eval vqa", f) for f in ("--limit", "--context", "--fps", "--answer-tokens", "--vision-window")} | {
        ("bench speed", f) for f in ("--seconds", "--fps", "--window", "--peak-tflops", "--ask-every")} | {
        ("bench fidelity", f) for f in ("--tokens", "--window", "--trials", "--chunk")} | {
        ("bench compression", "--seconds")} | {
        ("bench streams", f) for f in ("--streams", "--baseline-streams", "--seconds", "--warmup-seconds",
                                       "--ask-every", "--latency-bound", "--memory-seconds")}
    assert expected <= set(numeric_flags())


@pytest.mark.parametrize("command,flag", numeric_flags())
def test_numbers_out_of_bounds_are_refused_in_one_line(capsys, command, flag):
    parser = commands()[command]
    action = next(a for a in flags(parser) if flag in a.option_strings)
    bound = action.type if isinstance(action.type, Bound) else None
    required = REQUIRED.get(command.split()[0], [])
    for value in ("nan", "inf", "-inf", "1e300", "-1", "12abc", ""):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(required + [f"{flag}={value}"])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"argument {flag}: expected" in err, err
        if bound is not None:
            assert bound.describe() in err  # the range, its upper bound included


@pytest.mark.parametrize("argv,message", [
    (["bench", "compression", "--scenes", "quiet,windy"], "bad --scenes"),
    (["bench", "compression", "--size", "64x9"], "--size height: expected a whole number from 32"),
    (["bench", "fidelity", "--tokens", "100"], "--tokens (100) must exceed the window"),
    (["bench", "fidelity", "--duo", "/nonexistent"], "--duo /nonexistent: no such file or folder"),
    (["bench", "speed", "--duo", "/nonexistent", "--out", "OUT"], "--duo /nonexistent: no such file or folder"),
    (["bench", "recall", "--duo", "/nonexistent", "--out", "OUT"], "--duo /nonexistent: no such file or folder"),
    (["bench", "recall", "--duo-sparsity", "0.5", "--out", "OUT"], "--duo-sparsity needs --duo GATES"),
    (["eval", "vqa", "--data", "/nonexistent.jsonl", "--videos", ".", "--out", "OUT"], "no such file"),
])
def test_bad_input_is_refused_before_torch_is_imported(tmp_path, argv, message):
    """A mistake costs a fraction of a second, not a torch import (seconds) first."""
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    code = ("import sys\nfrom livesight.app.cli import main\ncode = main(sys.argv[1:])\n"
            "print(code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], (proc.stdout, proc.stderr)
    assert message in proc.stderr
