"""`livesight bench streams` on the CPU with tiny-random: every planned count is in the report in both
narration modes, the figures hold together, real time follows the stated rule, and a bad flag is one
line naming it."""

import json

import pytest

from livesight.app import cli
from livesight.eval.config import SHORTENED_MAX


def _kept(run: dict, bound_s: float) -> bool:
    c = run["chunks"]
    return (c["dropped"] == 0 and c["missing"] == 0 and c["shortened"] <= SHORTENED_MAX * c["expected"]
            and run["latency_ms"]["p99"] <= 1000 * bound_s)


def test_bench_streams_reports_every_count_in_both_modes(tmp_path, capsys):
    out = tmp_path / "streams"
    assert cli.main(["bench", "streams", "--model", "tiny-random", "--device", "cpu", "--streams", "2,1",
                     "--seconds", "2", "--warmup-seconds", "3", "--baseline-streams", "1", "--ask-every", "1",
                     "--narrate-tokens", "4", "--out", str(out)]) == 0
    result = json.loads((out / "streams.json").read_text())
    markdown = (out / "streams.md").read_text()
    assert result["finished"] and (out / "streams.png").stat().st_size > 10_000
    assert markdown in capsys.readouterr().out and "**Headline**" in markdown
    assert set(result["modes"]) == {"4", "0"}
    for mode, runs in result["modes"].items():
        assert [r["streams"] for r in runs["engine"]] == [1, 2] and [r["streams"] for r in runs["today"]] == [1]
        for run in runs["engine"] + runs["today"]:
            c, latency, ttft = run["chunks"], run["latency_ms"], run["ttft_ms"]
            assert run["fits"] and c["expected"] == 2 * run["streams"]
            assert c["captioned"] + c["dropped"] + c["missing"] == c["expected"]
            assert run["video_s_per_wall_s"] > 0 and 0 < run["per_stream_ratio"] <= 1
            assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
            assert ttft["n"] == 1 and 0 < ttft["p50"] <= ttft["p99"]
            assert run["kept_real_time"] == _kept(run, result["config"]["latency_bound_s"])
            assert 0 <= run["tokens_out"] <= int(mode) * c["captioned"] and (run["tokens_out"] > 0) == (mode == "4")
            assert run["memory"]["max_mb"] >= run["memory"]["min_mb"] > 0 and run["memory"]["cache_mb"] > 0
        decode = runs["engine"][0]["stages"]["lm_by_kind"]["decode"]
        assert decode["steps"] > 0 and decode["rows"] >= decode["steps"]
        summary = result["summary"][mode]
        kept = [r["streams"] for r in runs["engine"] if r["kept_real_time"]]
        assert summary["headline"] == max(kept, default=None)
        assert summary["per_wall_s"]["vision_ms"] > 0 and summary["floor"]["max_streams"] > 0
        assert summary["today_max_streams"] >= 1


@pytest.mark.parametrize("flag, value", [("--streams", "1,x"), ("--streams", "0"), ("--streams", "1,,2"),
                                         ("--baseline-streams", "-1"), ("--seconds", "0"), ("--narration", "maybe")])
def test_bench_streams_bad_flag_is_one_line_naming_it(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", "streams", flag, value, "--out", "/nonexistent/never-made"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and flag in err, err
