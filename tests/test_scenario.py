"""Scenario files: parsing, validation errors, and the player's once-only timing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench_agent.errors import ConfigError
from bench_agent.hardware.sim.params import BenchParams
from bench_agent.hardware.sim.physics import BenchModel
from bench_agent.hardware.sim.scenario import (
    Action,
    EventTime,
    ScenarioPlayer,
    apply_to_model,
    load_scenario,
    parse_scenario,
)

JAKARTA = ZoneInfo("Asia/Jakarta")
DEMO = Path(__file__).resolve().parent.parent / "config" / "scenarios" / "demo.toml"

EVERY_ACTION = """
[scenario]
name = "all"
description = "one of each"
start_time = "06:30"
seed = 42

[[event]]
at = "14:30"
action = "sensor.fail"
channel = "usb1"
note = "loose"

[[event]]
at = 60
action = "sensor.recover"
channel = "solar"

[[event]]
at = 1.5
action = "phone.plug"
port = "usb2"
amps = 1.2

[[event]]
at = 2
action = "phone.plug"
port = "usb1"

[[event]]
at = 3
action = "phone.unplug"
port = "usb2"

[[event]]
at = 4
action = "port.short"
port = "usb1"

[[event]]
at = 5
action = "port.unshort"
port = "usb1"

[[event]]
at = 6
action = "tamper.open"

[[event]]
at = 7
action = "tamper.close"

[[event]]
at = 8
action = "battery.set"
soc_pct = 12.5

[[event]]
at = 9
action = "clouds.set"
cover = 0.7

[[event]]
at = 10
action = "clouds.set"
cover = "auto"

[[event]]
at = 11
action = "clock.jump"
by_s = -7200

[[event]]
at = 12
action = "clock.sync"

[[event]]
at = 13
action = "charger.garbage"
bytes = 64

[[event]]
at = 14
action = "charger.corrupt"
blocks = 2

[[event]]
at = 15
action = "charger.unplug"
for_s = 30

[[event]]
at = "02:00"
day = 1
action = "tamper.open"
"""


def local(hour: int, minute: int = 0, day: int = 20) -> datetime:
    return datetime(2024, 3, day, hour, minute, tzinfo=JAKARTA)


def test_a_file_with_every_action_parses_into_typed_events(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text(EVERY_ACTION, encoding="utf-8")
    scenario = load_scenario(path)
    assert (scenario.name, scenario.description) == ("all", "one of each")
    assert (scenario.start_time, scenario.seed, scenario.source) == (time(6, 30), 42, str(path))
    assert {e.action for e in scenario.events} == set(Action)
    first, recover, plug, plug_random = scenario.events[:4]
    assert first.number == 1
    assert first.at == EventTime(local_time=time(14, 30))
    assert (first.channel, first.note, first.port) == ("usb1", "loose", None)
    assert recover.at == EventTime(after_s=60.0)
    assert (plug.port, plug.amps, plug.at.after_s) == ("usb2", 1.2, 1.5)
    assert plug_random.amps is None
    by_action = {e.action: e for e in scenario.events}
    assert by_action[Action.BATTERY_SET].soc_pct == 12.5
    assert by_action[Action.CLOCK_JUMP].by_s == -7200.0
    assert by_action[Action.CHARGER_GARBAGE].byte_count == 64
    assert by_action[Action.CHARGER_CORRUPT].blocks == 2
    assert by_action[Action.CHARGER_UNPLUG].for_s == 30.0
    covers = [e.cover for e in scenario.events if e.action is Action.CLOUDS_SET]
    assert covers == [0.7, None]  # None: back to the random weather
    assert scenario.events[-1].at == EventTime(local_time=time(2), day=1)


def test_an_empty_file_is_an_empty_scenario_named_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "quiet-day.toml"
    path.write_text("", encoding="utf-8")
    scenario = load_scenario(path)
    assert (scenario.name, scenario.events, scenario.seed) == ("quiet-day", (), None)


def test_the_demo_day_loads_and_plays_against_the_bench_model() -> None:
    scenario = load_scenario(DEMO)
    assert scenario.start_time == time(6, 0)
    wanted = {
        Action.CLOUDS_SET, Action.PHONE_PLUG, Action.PORT_SHORT, Action.TAMPER_OPEN,
        Action.TAMPER_CLOSE, Action.SENSOR_FAIL, Action.SENSOR_RECOVER, Action.BATTERY_SET,
    }  # fmt: skip
    assert wanted <= {e.action for e in scenario.events}
    start = local(6)
    model = BenchModel(BenchParams(), start.astimezone(UTC), scenario.seed or 0)
    for output in ("usb1", "usb2", "wifi"):
        model.set_output(output, True)
    player = ScenarioPlayer(scenario, start)
    fired: list[int] = []
    usb2_shorted_amps = None
    now = start.astimezone(UTC)
    while player.pending:
        now += timedelta(minutes=1)
        model.advance(now)
        for event in player.due(now):
            fired.append(event.number)
            applied = apply_to_model(event, model)
            assert applied == (event.action in _PHYSICAL)
            if event.action is Action.PORT_SHORT:
                usb2_shorted_amps = model.channel("usb2").current_amps
    assert sorted(fired) == [e.number for e in scenario.events]  # each exactly once
    assert usb2_shorted_amps == pytest.approx(4.0)
    assert model.true_soc_pct < 12.0  # the evening drop happened
    assert now - start.astimezone(UTC) < timedelta(days=1)


_PHYSICAL = {
    Action.PHONE_PLUG, Action.PHONE_UNPLUG, Action.PORT_SHORT, Action.PORT_UNSHORT,
    Action.BATTERY_SET, Action.CLOUDS_SET,
}  # fmt: skip


def _event(body: str) -> str:
    return f"[[event]]\n{body}\n"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[[event]\nat = 1", "(toml)", ""),
        ("colour = 'red'", "colour", "unknown key"),
        ("[scenario]\nauthor = 'x'", "scenario.author", "unknown key"),
        ("scenario = 3", "scenario", "must be a table"),
        ("[scenario]\nname = 5", "scenario.name", "must be a string"),
        ("[scenario]\nstart_time = '6am'", "scenario.start_time", "HH:MM"),
        ("[scenario]\nseed = -1", "scenario.seed", "must be in"),
        ("[event]\nat = 1", "event", "array of tables"),
        ("event = [1]", "event[1]", "must be a table"),
        (_event("at = 1"), "event[1].action", "missing"),
        (_event("at = 1\naction = 'port.melt'"), "event[1].action", "unknown action 'port.melt'"),
        (_event("at = 1\naction = 7"), "event[1].action", "unknown action"),
        (_event("action = 'tamper.open'"), "event[1].at", "missing"),
        (_event("at = '25:00'\naction = 'tamper.open'"), "event[1].at", "not a time of day"),
        (_event("at = 'noon'\naction = 'tamper.open'"), "event[1].at", "HH:MM"),
        (_event("at = -5\naction = 'tamper.open'"), "event[1].at", "must be in"),
        (_event("at = true\naction = 'tamper.open'"), "event[1].at", "must be a number"),
        (_event("at = nan\naction = 'tamper.open'"), "event[1].at", "must be a number"),
        (_event("at = 5\nday = 1\naction = 'tamper.open'"), "event[1].day", "HH:MM"),
        (_event("at = '05:00'\nday = -1\naction = 'tamper.open'"), "event[1].day", "must be in"),
        (_event("at = 1\naction = 'tamper.open'\nport = 'usb1'"), "event[1].port", "unknown key"),
        (_event("at = 1\naction = 'sensor.fail'"), "event[1].channel", "missing"),
        (_event("at = 1\naction = 'sensor.fail'\nchannel = 'cpu'"), "event[1].channel", "one of"),
        (_event("at = 1\naction = 'phone.plug'\nport = 'usb3'"), "event[1].port", "one of"),
        (_event("at = 1\naction = 'phone.plug'\nport = 'usb1'\namps = 9"), "event[1].amps", "in"),
        (_event("at = 1\naction = 'battery.set'\nsoc_pct = 120"), "event[1].soc_pct", "0..100"),
        (_event("at = 1\naction = 'clouds.set'\ncover = 'grey'"), "event[1].cover", '"auto"'),
        (_event("at = 1\naction = 'clock.jump'\nby_s = 0"), "event[1].by_s", "must not be 0"),
        (_event("at = 1\naction = 'charger.garbage'\nbytes = 1.5"), "event[1].bytes", "whole"),
        (_event("at = 1\naction = 'charger.corrupt'\nblocks = 0"), "event[1].blocks", "1..10000"),
        (_event("at = 1\naction = 'charger.unplug'\nfor_s = 0"), "event[1].for_s", "must be in"),
        (_event("at = 1\naction = 'tamper.open'\nnote = 3"), "event[1].note", "string"),
        (
            _event("at = 1\naction = 'tamper.open'") + _event("at = 2\naction = 'x'"),
            "event[2].action",
            "unknown action",
        ),
    ],
)
def test_each_kind_of_error_names_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text, "bad.toml")
    assert (caught.value.file, caught.value.key) == ("bad.toml", key)
    assert problem in caught.value.problem
    assert "\n" not in str(caught.value)  # one line for the technician


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_scenario(missing)
    assert (caught.value.file, caught.value.key) == (str(missing), "(file)")


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[scenario]\nname = '\xe9t\xe9'\n")
    with pytest.raises(ConfigError, match=r"\(file\)"):
        load_scenario(path)


# ------------------------------------------------------------------------ player


def _player(text: str, start: datetime) -> ScenarioPlayer:
    return ScenarioPlayer(parse_scenario(text), start)


def test_each_event_is_due_once_when_its_time_has_come() -> None:
    player = _player(
        _event("at = 0\naction = 'tamper.open'")
        + _event("at = 90\naction = 'tamper.close'")
        + _event("at = '06:02'\naction = 'clock.sync'"),
        local(6),
    )
    start = local(6).astimezone(UTC)
    assert [e.number for e in player.due(start)] == [1]
    assert player.due(start) == []  # never twice
    assert player.due(start + timedelta(seconds=89)) == []
    assert player.next_due_utc() == start + timedelta(seconds=90)
    assert player.pending == 2
    assert [e.number for e in player.due(start + timedelta(seconds=200))] == [2, 3]
    assert player.pending == 0
    assert player.next_due_utc() is None
    assert player.due(start + timedelta(days=30)) == []


def test_a_late_call_returns_everything_missed_in_time_order() -> None:
    player = _player(
        _event("at = '09:00'\naction = 'tamper.close'")
        + _event("at = 60\naction = 'tamper.open'")
        + _event("at = '09:00'\naction = 'clock.sync'"),  # same instant: file order
        local(8),
    )
    due = player.due(local(12).astimezone(UTC))
    assert [e.number for e in due] == [2, 1, 3]


def test_times_of_day_cross_midnight_to_their_next_occurrence() -> None:
    start = local(22)
    player = _player(
        _event("at = '23:30'\naction = 'tamper.open'")
        + _event("at = '00:15'\naction = 'tamper.close'")
        + _event("at = '21:00'\naction = 'clock.sync'")  # already past: tomorrow
        + _event("at = '22:00'\naction = 'clock.jump'\nby_s = 5")  # the start itself
        + _event("at = '00:15'\nday = 1\naction = 'charger.unplug'\nfor_s = 9")
        + _event("at = 7200\naction = 'port.short'\nport = 'usb1'"),
        start,
    )
    times = {event.number: when for when, event in player.schedule}
    assert times[1] == local(23, 30).astimezone(UTC)
    assert times[2] == local(0, 15, day=21).astimezone(UTC)
    assert times[3] == local(21, 0, day=21).astimezone(UTC)
    assert times[4] == start.astimezone(UTC)
    assert times[5] == local(0, 15, day=22).astimezone(UTC)
    assert times[6] == local(0, 0, day=21).astimezone(UTC)
    assert [e.number for e in player.due(local(23, 59).astimezone(UTC))] == [4, 1]
    assert [e.number for e in player.due(local(0, 20, day=21).astimezone(UTC))] == [6, 2]
    assert [e.number for e in player.due(local(21, 0, day=21).astimezone(UTC))] == [3]
    assert [e.number for e in player.due(local(0, 15, day=22).astimezone(UTC))] == [5]


def test_the_player_and_event_times_refuse_naive_datetimes() -> None:
    scenario = parse_scenario(_event("at = 1\naction = 'tamper.open'"))
    naive = datetime(2024, 3, 20, 6)
    with pytest.raises(ValueError, match="aware"):
        ScenarioPlayer(scenario, naive)
    player = ScenarioPlayer(scenario, local(6))
    with pytest.raises(ValueError, match="aware"):
        player.due(naive)
    with pytest.raises(ValueError, match="aware"):
        EventTime(after_s=1.0).resolve(naive)


def test_event_time_validates_itself() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        EventTime()
    with pytest.raises(ValueError, match="exactly one"):
        EventTime(after_s=1.0, local_time=time(1))
    with pytest.raises(ValueError, match="day"):
        EventTime(after_s=1.0, day=1)


def test_physical_events_change_the_model_and_the_others_do_not() -> None:
    model = BenchModel(BenchParams(phone_traffic=0.0), local(20).astimezone(UTC), 1)
    model.set_output("usb1", True)
    scenario = parse_scenario(
        _event("at = 0\naction = 'phone.plug'\nport = 'usb1'\namps = 1.5")
        + _event("at = 0\naction = 'port.short'\nport = 'usb1'")
        + _event("at = 0\naction = 'battery.set'\nsoc_pct = 33")
        + _event("at = 0\naction = 'clouds.set'\ncover = 0.4")
        + _event("at = 0\naction = 'sensor.fail'\nchannel = 'usb1'")
    )
    plug, short, battery, clouds, sensor = scenario.events
    assert apply_to_model(plug, model)
    assert model.channel("usb1").current_amps == pytest.approx(1.5)
    assert apply_to_model(short, model)
    assert model.channel("usb1").current_amps == pytest.approx(4.0)
    assert apply_to_model(battery, model)
    assert model.true_soc_pct == 33.0
    assert apply_to_model(clouds, model)
    assert model.cloud_cover == 0.4
    before = model.channel("usb1")
    assert not apply_to_model(sensor, model)
    assert model.channel("usb1") == before
