"""The strict reader over one TOML table: typed keys, finite numbers in range, unknown keys
refused, and every problem one `ConfigError` line naming the file, the key and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bench_agent.errors import ConfigError
from bench_agent.toml_table import REQUIRED, TomlTable, checked, toml_type

FILE = "/etc/bench-agent/bench.toml"  # a name only: nothing is read from it


def table(text: str, path: str = "sampling") -> TomlTable:
    """The table at dotted `path` of TOML `text`, as the config loader makes it."""
    data: Any = tomllib.loads(text)
    for part in path.split("."):
        data = data[part] if part else data
    return TomlTable(FILE, path, data)


def refused(exc: pytest.ExceptionInfo[ConfigError]) -> tuple[str, str, str]:
    error = exc.value
    assert isinstance(error, ValueError)  # what a caller that knows only ValueError catches
    assert str(error) == f"{error.file}: {error.key}: {error.problem}"
    assert "\n" not in str(error)
    return error.file, error.key, error.problem


def test_typed_keys_read_as_their_type() -> None:
    t = table(
        """
        [sampling]
        name = "tgk-01"
        enabled = false
        count = 3
        ratio = 0.5
        whole = 2
        mode = "fast"
        """
    )
    assert t.get_str("name") == "tgk-01"
    assert t.get_bool("enabled") is False
    assert t.get_int("count", lo=1, hi=3) == 3
    assert t.get_float("ratio", lo=0.5, hi=0.5) == 0.5
    whole = t.get_float("whole")
    assert whole == 2.0 and isinstance(whole, float)  # an integer is a fine number
    assert t.get_choice("mode", ("slow", "fast")) == "fast"
    t.done()


def test_absent_keys_take_their_default_and_required_ones_are_missing() -> None:
    t = table("[sampling]\n")
    assert t.get_str("name") is None
    assert t.get_str("name", "x") == "x"
    assert t.get_int("count", 7) == 7
    assert t.get_int("count", None, lo=1) is None  # an optional key is not range checked
    assert t.get_float("ratio", 1) == 1
    assert t.get_float("ratio", None, lo=5) is None
    assert t.get_bool("enabled", True) is True
    assert t.get_path("dir") is None
    assert t.get_choice("mode", ("a", "b"), "b") == "b"
    for read in (t.get_bool, t.get_int, t.get_float, lambda n: t.get_str(n, REQUIRED)):
        with pytest.raises(ConfigError) as exc:
            read("interval_s")
        assert refused(exc) == (FILE, "sampling.interval_s", "missing")
    t.done()  # asking for a key counts as reading it, present or not


@pytest.mark.parametrize(
    ("toml", "read", "problem"),
    [
        ('x = "5"', lambda t: t.get_int("x"), "must be an integer, not a string"),
        ("x = 5.0", lambda t: t.get_int("x"), "must be an integer, not a number"),
        ("x = true", lambda t: t.get_int("x"), "must be an integer, not a boolean"),
        ("x = true", lambda t: t.get_float("x"), "must be a number, not a boolean"),
        ("x = [1]", lambda t: t.get_float("x"), "must be a number, not an array"),
        ("x = 1", lambda t: t.get_bool("x"), "must be true or false, not an integer"),
        ('x = "yes"', lambda t: t.get_bool("x"), "must be true or false, not a string"),
        ("x = 1", lambda t: t.get_str("x"), "must be a string, not an integer"),
        ("x = {a = 1}", lambda t: t.get_str("x"), "must be a string, not a table"),
        ("x = 2026-12-04", lambda t: t.get_str("x"), "must be a string, not date"),
        ("x = 1", lambda t: t.get_path("x"), "must be a string, not an integer"),
        ('x = "gpio"', lambda t: t.get_choice("x", ("a", "b")), "must be one of 'a', 'b'"),
    ],
)
def test_a_wrong_type_is_one_line_naming_file_key_and_what_it_must_be(
    toml: str, read: Any, problem: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        read(table(f"[mqtt]\n{toml}\n", "mqtt"))
    assert refused(exc) == (FILE, "mqtt.x", problem)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be at least 1, got 0.0"),
        ("61", "must be at most 60, got 61.0"),
        ("nan", "must be a finite number, got nan"),
        ("inf", "must be a finite number, got inf"),
        ("-inf", "must be a finite number, got -inf"),
    ],
)
def test_numbers_out_of_range_or_not_finite_are_refused(value: str, problem: str) -> None:
    t = table(f"[sampling]\ninterval_s = {value}\n")
    with pytest.raises(ConfigError) as exc:
        t.get_float("interval_s", lo=1, hi=60)
    assert refused(exc) == (FILE, "sampling.interval_s", problem)


def test_nan_is_refused_even_without_a_range() -> None:
    """nan passes every comparison: `interval_s = nan` would reach a sleep and crash there."""
    with pytest.raises(ConfigError, match=r"sampling\.x: must be a finite number, got nan"):
        table("[sampling]\nx = nan\n").get_float("x")


def test_integer_ranges_are_exact() -> None:
    t = table("[mqtt]\nport = 65536\nlow = 1\n", "mqtt")
    with pytest.raises(ConfigError) as exc:
        t.get_int("port", lo=1, hi=65535)
    assert refused(exc)[1:] == ("mqtt.port", "must be at most 65535, got 65536")
    assert t.get_int("low", lo=1, hi=65535) == 1


@pytest.mark.parametrize("read", ["get_int", "get_float"])
@pytest.mark.parametrize("ranged", [True, False])
def test_an_integer_too_large_for_a_float_is_a_config_error_not_a_crash(
    read: str, ranged: bool
) -> None:
    """TOML integers have no limit in tomllib; one too large for a float used to escape
    as OverflowError, a traceback and exit 1 instead of one line and exit 78."""
    huge = "1" + "0" * 400
    t = table(f"[sampling]\nx = {huge}\n")
    bounds = {"lo": 1, "hi": 60} if ranged else {}
    with pytest.raises(ConfigError) as exc:
        getattr(t, read)("x", **bounds)
    file, key, problem = refused(exc)
    assert (file, key) == (FILE, "sampling.x")
    assert problem.startswith("must be") and huge in problem


def test_paths_are_relative_to_the_config_file_unless_absolute(tmp_path: Path) -> None:
    t = table('[storage]\ndir = "state"\nlog = "/var/log/bench"\n', "storage")
    assert t.get_path("dir", base=tmp_path) == tmp_path / "state"
    assert t.get_path("log", base=tmp_path) == Path("/var/log/bench")
    assert t.get_path("dir") == Path("state")  # no base: as written
    assert t.get_path("socket", "run/control.sock", base=tmp_path) == tmp_path / "run/control.sock"


def test_a_key_nobody_asked_for_is_refused_by_name() -> None:
    t = table('[bench]\nid = "b1"\ncolour = "red"\nzone = 3\n', "bench")
    assert t.get_str("id") == "b1"
    with pytest.raises(ConfigError) as exc:
        t.done()
    assert refused(exc) == (FILE, "bench.colour", "unknown key")  # the first, sorted


def test_checked_runs_done_after_the_block_but_the_first_error_wins() -> None:
    t = table("[bench]\nid = 1\ncolour = 2\n", "bench")
    with pytest.raises(ConfigError) as exc, checked(t) as inner:
        assert inner is t
        inner.get_str("id")  # the wrong type is reported, not the unknown key
    assert refused(exc)[1:] == ("bench.id", "must be a string, not an integer")
    with pytest.raises(ConfigError, match=r"bench\.colour: unknown key"), checked(t):
        pass
    t2 = table('[bench]\nid = "b1"\n', "bench")
    with checked(t2):
        t2.get_str("id")


def test_nested_tables_carry_their_dotted_name_into_every_error() -> None:
    top = table(
        """
        [ina219.solar]
        address = 0x40
        [ina219.battery]
        address = 0x41
        shunt = "0.1"
        [policy]
        battery = 5
        """,
        "",
    )
    channels = dict(top.subtables("ina219"))
    assert list(channels) == ["solar", "battery"]  # the file's order
    assert channels["solar"].get_int("address") == 0x40
    with pytest.raises(ConfigError) as exc:
        channels["battery"].get_float("shunt")
    assert refused(exc)[1:] == ("ina219.battery.shunt", "must be a number, not a string")
    policy = top.table("policy")
    assert policy is not None
    with pytest.raises(ConfigError) as exc:
        policy.table("battery")
    assert refused(exc)[1:] == ("policy.battery", "must be a table")
    assert top.table("charger") is None
    with pytest.raises(ConfigError) as exc:
        top.table("mqtt", required=True)
    assert refused(exc)[1:] == ("mqtt", "missing table")
    assert list(top.subtables("outputs")) == []
    top.done()  # every table asked for, present or not, counts as read
    with pytest.raises(ConfigError) as exc:
        TomlTable(FILE, "", [1, 2])
    assert refused(exc)[1:] == ("<top>", "must be a table")


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("a", "a string"),
        (1, "an integer"),
        (1.5, "a number"),
        (True, "a boolean"),
        ([1], "an array"),
        ({"a": 1}, "a table"),
    ],
)
def test_toml_type_names_what_was_found(value: object, name: str) -> None:
    assert toml_type(value) == name
