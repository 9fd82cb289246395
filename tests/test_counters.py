"""Daily service and energy counters: what is counted, on which day, and across restarts."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.config_loader import load_config
from bench_agent.model import PowerReading
from bench_agent.power.counters import CountersConfig, DailyCounters

REPO = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Asia/Jakarta")
DAY = date(2026, 11, 27)
MORNING = datetime(2026, 11, 27, 8, 0, tzinfo=TZ)
CFG = CountersConfig(
    panel_channel="solar",
    ports=("usb1", "usb2"),
    ap_channel="wifi",
    hotspot_output="wifi",
    session_min_amps=0.1,
    session_min_s=120,
)
Readings = Mapping[str, PowerReading | None]


def reading(watts: float, amps: float | None = None, volts: float = 5.0) -> PowerReading:
    return PowerReading(volts=volts, amps=watts / volts if amps is None else amps, watts=watts)


def quiet(**changes: PowerReading | None) -> dict[str, PowerReading | None]:
    """Every channel reading 0 W, with `changes`."""
    base: dict[str, PowerReading | None] = {c: reading(0.0) for c in CFG.channels}
    base.update(changes)
    return base


def feed(
    counters: DailyCounters,
    samples: Sequence[Readings],
    *,
    start: datetime = MORNING,
    dt_s: float = 60.0,
    wifi_on: bool = True,
    clients: int | None = None,
) -> datetime:
    """One sample per `dt_s` from `start`; returns the time after the last."""
    now = start
    for sample in samples:
        counters.add_sample(now, dt_s, sample, {"wifi": wifi_on, "usb1": True}, clients)
        now += timedelta(seconds=dt_s)
    return now


def test_energy_per_channel_over_an_hour() -> None:
    counters = DailyCounters(CFG, DAY)
    sample = quiet(solar=reading(50.0, volts=18.0), usb1=reading(10.0), wifi=reading(3.0))
    feed(counters, [sample] * 60)
    today = counters.snapshot()["today"]
    assert today["solar_wh"] == 50.0
    assert today["usb_wh"] == {"usb1": 10.0, "usb2": 0.0}
    assert today["ap_wh"] == 3.0
    assert today["hotspot_h"] == 1.0
    assert today["unmeasured_h"] == {}
    assert today["date"] == "2026-11-27"


@pytest.mark.parametrize(
    ("usb2", "expected_wh", "expected_unmeasured_h"),
    [
        # The sensor fails for half an hour: what was measured is counted, and the
        # gap is said, rather than reported as a quiet half hour.
        ([reading(6.0)] * 30 + [None] * 30, 3.0, {"usb2": 0.5}),
        ([None] * 60, 0.0, {"usb2": 1.0}),
        ([PowerReading(5.0, math.nan, math.nan)] * 30 + [reading(6.0)] * 30, 3.0, {"usb2": 0.5}),
        # Current flowing backwards into a port is not delivered energy, but it is known.
        ([reading(6.0, amps=-1.2)] * 60, 0.0, {}),
    ],
)
def test_a_channel_without_a_reading_is_unmeasured_not_zero(
    usb2: list[PowerReading | None], expected_wh: float, expected_unmeasured_h: dict[str, float]
) -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(6.0), usb2=r) for r in usb2])
    today = counters.snapshot()["today"]
    assert today["usb_wh"] == {"usb1": 6.0, "usb2": expected_wh}
    assert today["unmeasured_h"] == expected_unmeasured_h


def test_a_channel_missing_from_the_readings_is_unmeasured() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [{"usb1": reading(6.0)}] * 60)
    assert counters.snapshot()["today"]["unmeasured_h"] == {"solar": 1.0, "usb2": 1.0, "wifi": 1.0}


def test_what_the_bench_cannot_measure_is_null() -> None:
    cfg = CountersConfig(panel_channel=None, ports=("usb1",), ap_channel=None, hotspot_output=None)
    counters = DailyCounters(cfg, DAY)
    feed(counters, [quiet(usb1=reading(6.0))] * 60)
    today = counters.snapshot()["today"]
    assert (today["solar_wh"], today["ap_wh"], today["hotspot_h"]) == (None, None, None)
    assert today["usb_wh"] == {"usb1": 6.0} and today["wifi_clients_max"] is None


@pytest.mark.parametrize(
    ("amps_per_10s", "sessions"),
    [
        ([0.5] * 11, 0),  # 110 s: just under the minimum duration
        ([0.5] * 12, 1),  # 120 s: at least session_min_s
        ([0.5] * 13, 1),
        ([0.1] * 100, 0),  # at the threshold is not above it
        ([0.101] * 12, 1),  # just above it
        ([0.5] * 12 + [0.0] + [0.5] * 12, 2),  # unplugged and plugged again
        ([0.5] * 6 + [0.05] + [0.5] * 6, 0),  # two short ones are not one long one
        ([0.5] * 6 + [None] * 5 + [0.5] * 6, 1),  # a failing sensor does not end it
        ([0.5] * 6 + [None] * 50, 0),  # nor does it prolong it
        ([2.0] * 1000, 1),  # a long charge is one session
    ],
)
def test_charging_sessions(amps_per_10s: list[float | None], sessions: int) -> None:
    counters = DailyCounters(CFG, DAY)
    samples = [quiet(usb1=None if a is None else reading(a * 5.0, amps=a)) for a in amps_per_10s]
    feed(counters, samples, dt_s=10)
    assert counters.snapshot()["today"]["sessions"] == {"usb1": sessions, "usb2": 0}


def test_hotspot_hours_and_clients() -> None:
    counters = DailyCounters(CFG, DAY)
    after = feed(counters, [quiet()] * 30, wifi_on=True, clients=3)
    after = feed(counters, [quiet()] * 30, start=after, wifi_on=False, clients=None)
    feed(counters, [quiet()] * 5, start=after, wifi_on=True, clients=7)
    feed(counters, [quiet()] * 5, start=after, wifi_on=True, clients=2)
    today = counters.snapshot()["today"]
    assert today["hotspot_h"] == pytest.approx(40 / 60, abs=0.005)
    assert today["wifi_clients_max"] == 7


def test_local_midnight_starts_a_new_day_and_keeps_yesterday() -> None:
    counters = DailyCounters(CFG, DAY)
    late = datetime(2026, 11, 27, 23, 0, tzinfo=TZ)
    after = feed(
        counters, [quiet(solar=reading(20.0), usb1=reading(5.0, amps=1.0))] * 60, start=late
    )
    assert after.date() == DAY + timedelta(days=1)
    feed(counters, [quiet(solar=reading(0.0), usb1=reading(10.0, amps=2.0))] * 30, start=after)
    snapshot = counters.snapshot()
    assert snapshot["yesterday"]["date"] == "2026-11-27"
    assert snapshot["yesterday"]["solar_wh"] == 20.0
    assert snapshot["yesterday"]["usb_wh"]["usb1"] == 5.0
    assert snapshot["yesterday"]["sessions"]["usb1"] == 1
    assert snapshot["today"]["date"] == "2026-11-28"
    assert snapshot["today"]["usb_wh"]["usb1"] == 5.0
    assert snapshot["today"]["solar_wh"] == 0.0
    # The phone plugged in before midnight is one session, counted on its first day.
    assert snapshot["today"]["sessions"]["usb1"] == 0


def test_a_clock_stepped_back_across_midnight_keeps_the_day() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(6.0))] * 10, start=datetime(2026, 11, 27, 23, 55, tzinfo=TZ))
    assert counters.today.day == DAY + timedelta(days=1)
    feed(counters, [quiet(usb1=reading(6.0))] * 10, start=datetime(2026, 11, 27, 23, 50, tzinfo=TZ))
    snapshot = counters.snapshot()
    assert snapshot["today"]["date"] == "2026-11-28"
    assert snapshot["yesterday"]["date"] == "2026-11-27"
    total = snapshot["today"]["usb_wh"]["usb1"] + snapshot["yesterday"]["usb_wh"]["usb1"]
    assert total == pytest.approx(2.0)  # nothing thrown away


def test_days_without_samples_leave_the_last_counted_day_as_yesterday() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(6.0))] * 60)
    feed(counters, [quiet()] * 1, start=MORNING + timedelta(days=3))
    snapshot = counters.snapshot()
    assert snapshot["yesterday"]["date"] == "2026-11-27"
    assert snapshot["yesterday"]["usb_wh"]["usb1"] == 6.0
    assert snapshot["today"]["date"] == "2026-11-30"


def test_snapshot_rounds_and_is_json() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(1.23456))] * 7, dt_s=13.7)
    text = json.dumps(counters.snapshot(), allow_nan=False)
    assert len(text) < 400
    today = counters.snapshot()["today"]
    assert today["usb_wh"]["usb1"] == round(1.23456 * 7 * 13.7 / 3600, 2)
    assert today["hotspot_h"] == round(7 * 13.7 / 3600, 2)


@pytest.mark.parametrize(
    ("schema_file", "pointer"),
    [
        ("control-status.schema.json", "today"),
        ("telemetry.schema.json", "day"),
    ],
)
def test_a_day_fits_the_schemas(schema_file: str, pointer: str) -> None:
    schema = json.loads((REPO / "bench_agent" / "schemas" / schema_file).read_text())
    # Validate against one part of the schema, with the schema's own $defs to resolve refs.
    part = schema["properties"].get(pointer) or {"$ref": f"#/$defs/{pointer}"}
    validator = jsonschema.Draft202012Validator({**part, "$defs": schema.get("$defs", {})})
    counters = DailyCounters(CFG, DAY)
    after = feed(counters, [quiet(solar=reading(40.0), usb1=reading(5.0, amps=1.0))] * 10)
    feed(counters, [quiet(usb2=None)] * 10, start=after + timedelta(days=1), clients=4)
    snapshot = counters.snapshot()
    for day in (snapshot["today"], snapshot["yesterday"]):
        validator.validate(day)
    bare = DailyCounters(CountersConfig(None, (), None, None), DAY).snapshot()["today"]
    validator.validate(bare)


def test_bad_dt_counts_nothing() -> None:
    counters = DailyCounters(CFG, DAY)
    for dt in (-5.0, math.nan, math.inf, 0.0):
        counters.add_sample(MORNING, dt, quiet(usb1=reading(6.0)), {"wifi": True}, None)
    today = counters.snapshot()["today"]
    assert today["usb_wh"]["usb1"] == 0.0 and today["hotspot_h"] == 0.0


# --------------------------------------------------------------------------- restarts


def _restart(counters: DailyCounters, today: date) -> DailyCounters:
    restored, problem = DailyCounters.restore(CFG, json.dumps(counters.to_dict()), today)
    assert problem is None
    return restored


def _day_of_samples() -> list[Readings]:
    """A morning: sun, a phone on usb1 (30 min), a short on usb2's sensor."""
    samples: list[Readings] = []
    for minute in range(240):
        usb1 = reading(7.5, amps=1.5) if 30 <= minute < 60 else reading(0.0)
        usb2 = None if 100 <= minute < 110 else reading(2.5, amps=0.5)
        samples.append(quiet(solar=reading(minute / 4.0, volts=18.0), usb1=usb1, usb2=usb2))
    return samples


@pytest.mark.parametrize("restart_at", [1, 45, 105, 200])
def test_a_restart_mid_day_loses_and_doubles_nothing(restart_at: int) -> None:
    samples = _day_of_samples()
    whole = DailyCounters(CFG, DAY)
    feed(whole, samples)
    interrupted = DailyCounters(CFG, DAY)
    after = feed(interrupted, samples[:restart_at])
    restored = _restart(interrupted, DAY)
    feed(restored, samples[restart_at:], start=after)
    assert restored.snapshot() == whole.snapshot()
    assert restored.snapshot()["today"]["sessions"] == {"usb1": 1, "usb2": 1}


def test_a_restart_across_midnight_keeps_yesterday() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(6.0))] * 60)
    restored = _restart(counters, DAY + timedelta(days=1))
    snapshot = restored.snapshot()
    assert snapshot["today"] == {
        "date": "2026-11-28",
        "solar_wh": 0.0,
        "usb_wh": {"usb1": 0.0, "usb2": 0.0},
        "ap_wh": 0.0,
        "sessions": {"usb1": 0, "usb2": 0},
        "hotspot_h": 0.0,
        "wifi_clients_max": None,
        "unmeasured_h": {},
    }
    assert snapshot["yesterday"]["usb_wh"]["usb1"] == 6.0


def test_a_restart_with_a_port_removed_from_the_config_drops_it() -> None:
    counters = DailyCounters(CFG, DAY)
    feed(counters, [quiet(usb1=reading(6.0), usb2=None)] * 60)
    smaller = replace(CFG, ports=("usb1",))
    restored = DailyCounters.from_dict(smaller, json.loads(json.dumps(counters.to_dict())))
    today = restored.snapshot()["today"]
    assert today["usb_wh"] == {"usb1": 6.0} and "usb2" not in today["unmeasured_h"]


@pytest.mark.parametrize(
    "saved",
    [
        "",
        b"\xff\xfe",
        "{",
        "null",
        '{"v": 2}',
        '{"v": 1}',
        '{"v": 1, "today": {"date": "yesterday"}}',
        '{"v": 1, "today": {"date": "2026-11-27", "solar_wh": -1}}',
        '{"v": 1, "today": {"date": "2026-11-27", "solar_wh": NaN}}',
        '{"v": 1, "today": {"date": "2026-11-27", "usb_wh": {"usb1": "6"}}}',
        '{"v": 1, "today": {"date": "2026-11-27", "sessions": {"usb1": 1.5}}}',
        '{"v": 1, "today": {"date": "2026-11-27", "hotspot_s": 1' + "0" * 400 + "}}",
        '{"v": 1, "today": {"date": "2026-11-27"}, "sessions_active": {"usb1": []}}',
        '{"v": 1, "today": {"date": "2026-11-27"}, "yesterday": 5}',
        "[" * 100_000,
    ],
)
def test_a_garbled_save_starts_today_at_zero_and_says_why(saved: str | bytes) -> None:
    counters, problem = DailyCounters.restore(CFG, saved, DAY)
    assert problem is not None and "ignored" in problem
    assert counters.snapshot() == DailyCounters(CFG, DAY).snapshot()


def test_no_save_starts_today_at_zero_quietly() -> None:
    counters, problem = DailyCounters.restore(CFG, None, DAY)
    assert problem is None and counters.snapshot()["today"]["date"] == "2026-11-27"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["usb1", "usb2", "solar", "x"]) | st.text(), children)
    ),
    max_leaves=12,
)
_days = st.fixed_dictionaries(
    {"date": st.sampled_from(["2026-11-27", "x", ""]) | _json},
    optional={
        k: _json
        for k in (
            "solar_wh",
            "usb_wh",
            "ap_wh",
            "sessions",
            "hotspot_s",
            "wifi_clients_max",
            "unmeasured_s",
        )
    },
)
_saves = st.fixed_dictionaries(
    {"v": st.just(1), "today": _days | _json},
    optional={"yesterday": _days | _json, "sessions_active": _json},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _saves))
def test_from_dict_raises_only_value_error(data: Any) -> None:
    with contextlib.suppress(ValueError):
        DailyCounters.from_dict(CFG, data)


_samples = st.lists(
    st.tuples(
        st.sampled_from([0.5, 10.0, 60.0, 900.0]),  # dt_s
        st.none() | st.floats(0, 60),  # solar W
        st.none() | st.floats(-0.5, 3.0),  # usb1 A at 5 V
        st.booleans(),  # wifi on
        st.none() | st.integers(0, 50),  # clients
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(_samples, st.integers(0, 80))
def test_save_restore_anywhere_is_invisible(
    samples: list[tuple[float, float | None, float | None, bool, int | None]], cut: int
) -> None:
    def run(counters: DailyCounters, part: list[Any], now: datetime) -> datetime:
        for dt, solar, usb1, wifi, clients in part:
            readings = quiet(
                solar=None if solar is None else reading(solar, volts=18.0),
                usb1=None if usb1 is None else PowerReading(5.0, usb1, abs(usb1) * 5.0),
            )
            counters.add_sample(now, dt, readings, {"wifi": wifi}, clients)
            now += timedelta(seconds=dt)
        return now

    whole = DailyCounters(CFG, DAY)
    run(whole, samples, MORNING)
    first = DailyCounters(CFG, DAY)
    now = run(first, samples[:cut], MORNING)
    second = DailyCounters.from_dict(CFG, json.loads(json.dumps(first.to_dict())))
    run(second, samples[cut:], now)
    assert second.snapshot() == whole.snapshot()
    for day in (whole.snapshot()["today"], whole.snapshot()["yesterday"] or {}):
        for key in ("solar_wh", "ap_wh", "hotspot_h"):
            assert day.get(key, 0) >= 0
        assert all(v >= 0 for v in day.get("usb_wh", {}).values())


# --------------------------------------------------------------------------- config


def test_the_reference_bench_counts_panel_and_ports() -> None:
    cfg = load_config(REPO / "config" / "bench-agent.toml").counters
    assert cfg.panel_channel == "solar" and cfg.ports == ("usb1", "usb2")
    assert cfg.ap_channel is None  # no INA219 on its access point
    assert cfg.hotspot_output == "wifi"
    assert (cfg.session_min_amps, cfg.session_min_s) == (0.1, 120.0)


def test_the_simulated_bench_measures_its_access_point() -> None:
    cfg = load_config(REPO / "config" / "sim-bench.toml").counters
    assert cfg.ap_channel == "wifi" and cfg.ports == ("usb1", "usb2")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"session_min_amps": 0}, "session_min_amps"),
        ({"session_min_s": -1}, "session_min_s"),
        ({"session_min_s": math.nan}, "session_min_s"),
        ({"ports": ("usb1", "usb1")}, "ports"),
    ],
)
def test_config_checks_itself(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        replace(CFG, **change)
