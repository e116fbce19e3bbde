"""Every number a user can give (flags, the page's controls, an API's fields) goes through one
validation layer: any value becomes either a clean error naming the input and its bounds, or a
value inside them; and settings that pass never allocate more than the machine has free.
Property-based (hypothesis) over every engine option, plus the values that once crashed."""

import contextlib
import io
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livesight.app.cli import build_parser, main
from livesight.errors import InputError
from livesight.streaming.options import DEFAULTS, ENGINE, SECONDS, STREAM_TIME, build_config, flag, session_config

FUZZ = settings(max_examples=60, deadline=None, derandomize=True)
ANY_TEXT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.sampled_from(["nan", "-nan", "inf", "-inf", "1e309", "1e-400", "0x10", "1_000", " 3 ", "", "-0", "1e11",
                     "١٢", "2.5e3", "++1", "1/2"]),
    st.text(max_size=12),
)
ANY_JSON = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True),
                     st.integers(min_value=-10**40, max_value=10**40), st.text(max_size=8),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
BOUNDS = {**ENGINE, "seconds": SECONDS, "ask time": STREAM_TIME}


def inside(bound, value) -> bool:
    low_ok = value > bound.low if bound.low_open else value >= bound.low
    high_ok = value < bound.high if bound.high_open else value <= bound.high
    return math.isfinite(value) and low_ok and high_ok and isinstance(value, bound.kind)


@FUZZ
@given(name=st.sampled_from(sorted(BOUNDS)), value=st.one_of(ANY_TEXT, ANY_JSON))
def test_a_bound_returns_a_value_inside_it_or_says_what_it_takes(name, value):
    bound = BOUNDS[name]
    try:
        parsed = bound.check(value, name)
    except InputError as err:
        assert str(err).startswith(f"{name}: expected {bound.describe()}, got "), err
        assert "\n" not in str(err)
        return
    assert inside(bound, parsed), (value, parsed)


@FUZZ
@given(dest=st.sampled_from(sorted(ENGINE)), text=ANY_TEXT)
def test_every_engine_flag_parses_to_a_config_or_exits_2_with_one_line(dest, text):
    argv = ["run", "--source", "synthetic", f"{flag(dest)}={text}"]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as exit:
        err = stderr.getvalue()
        assert exit.code == 2 and err.count("\n") == 1 and flag(dest) in err, err
        return
    try:
        config = session_config(args)
    except InputError as err:  # a value in range that does not combine (fps x chunk seconds must be even)
        assert "\n" not in str(err)
        return
    assert inside(ENGINE[dest], getattr(args, dest))
    assert math.isfinite(config.fps * config.vision_window_s)


@FUZZ
@given(values=st.dictionaries(st.sampled_from(sorted(DEFAULTS)), ANY_JSON, min_size=1, max_size=3))
def test_a_clients_json_settings_give_a_config_or_an_error_naming_the_control(values):
    names = {k: f"control {k}" for k in DEFAULTS}
    try:
        config = build_config(values, names)
    except InputError as err:
        text = str(err)
        assert "\n" not in text
        assert any(f"control {k}" in text for k in values) or "fps x chunk seconds" in text or "window" in text, text
        return
    assert config.answer_tokens >= 1 and math.isfinite(config.vision_window_s)


@pytest.mark.parametrize("argv,named", [
    (["--fps", "inf"], "--fps"), (["--seconds", "nan"], "--seconds"), (["--seconds", "inf"], "--seconds"),
    (["--vision-window", "inf"], "--vision-window"), (["--vision-window", "1e9"], "--vision-window"),
    (["--text-sink", "1e11"], "--text-sink"), (["--answer-tokens", "1e9"], "--answer-tokens"),
    (["--fps", "1e6"], "--fps"), (["--retrieve-top-k", "100000"], "--retrieve-top-k"),
    (["--ask", "nan:what?"], "--ask"), (["--ask", "-1:what?"], "--ask"), (["--offload-ram-gb", "1e12"], "--offload-ram-gb"),
])
def test_the_values_that_once_crashed_are_one_line_errors(argv, named, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["run", "--source", "synthetic", *argv])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1 and f"argument {named}" in err, err
    assert "expected" in err  # the message states what the option takes


# --- what a config costs, checked against free memory before anything is allocated

def build_session(tiny, monkeypatch, free: int, **values):
    """A Session on a machine that pretends to have `free` bytes of memory; -> (session or None, error or None)."""
    import psutil

    from livesight.models.qwen2_5_vl import QwenVLAdapter
    from livesight.streaming.session import Session
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=free))
    try:
        return Session(QwenVLAdapter(tiny), build_config(values), (180, 320)), None
    except InputError as err:
        return None, err


def allocated(session) -> int:
    store = session.offloaded.store if session.offloaded is not None else None
    return session.cache.nbytes + session.cache.key_bias.nbytes + (store.representatives.nbytes if store is not None else 0)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(window=st.sampled_from([1.0, 16.0, 600.0, 3600.0]), text=st.sampled_from([0, 512, 131072]),
       top_k=st.sampled_from([0, 8, 256]), ram_gb=st.sampled_from([0.0, 4.0]), disk_gb=st.sampled_from([0.0, 16.0, 1e6]))
def test_a_session_never_allocates_more_than_is_free(tiny, monkeypatch, window, text, top_k, ram_gb, disk_gb):
    free = 2**30  # pretend this machine has 1 GB free
    session, err = build_session(tiny, monkeypatch, free, vision_window=window, text_sink=text, text_window=text,
                                 retrieve_top_k=top_k, offload_ram_gb=ram_gb, offload_disk_gb=disk_gb)
    if err is not None:
        assert "more than the 1.0 GB free on cpu" in str(err) and "--vision-window" in str(err), err
        return
    assert allocated(session) <= 0.9 * free
    session.close()


def test_the_memory_check_counts_what_a_session_allocates(tiny, monkeypatch):
    from livesight.streaming.session import check_fits
    session, err = build_session(tiny, monkeypatch, 2**30)
    assert err is None
    need = check_fits(session.adapter, session.capacity, session.tokens_per_chunk, session.config)
    assert allocated(session) <= need <= allocated(session) + session.offloaded.store.representatives[0].nbytes
    session.close()
    _, err = build_session(tiny, monkeypatch, need)  # what it needs, but not 10 % more: refused before allocating
    assert err is not None and "--retrieve-top-k or the offload budgets" in str(err)
