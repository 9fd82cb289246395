"""The power-management policy, table-driven: each row is a situation and what must happen."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.power.policy import check_override, decide, reset_fault
from bench_agent.power.policy_config import (
    BatteryThresholds,
    LoadClass,
    PolicyConfig,
    PortLimits,
    Schedule,
    TemperatureLimits,
)
from bench_agent.power.policy_state import (
    Decision,
    Override,
    PolicyInputs,
    PolicyState,
    PortFault,
    VoltageWatch,
)
from bench_agent.vocabulary import WIFI

JAKARTA = ZoneInfo("Asia/Jakarta")
NOON = datetime(2024, 6, 14, 12, 0, tzinfo=JAKARTA)  # a Friday

LIMITS = PortLimits(
    trip_amps=2.4,
    hard_trip_amps=4.0,
    trip_samples=3,
    cooldown_s=30.0,
    latch_after_trips=3,
    trip_forget_s=600.0,
)
# The voltage safety net on, with the shipped LiFePO4 levels, as every configured bench has it.
WIFI_OFF_V, USB_OFF_V, RESTORE_V, DELAY_S, R_OHM = 12.4, 12.2, 13.0, 90.0, 0.02
LEVELS: dict[str, Any] = {
    "wifi_off_below_pct": 30.0,
    "wifi_on_above_pct": 40.0,
    "usb_off_below_pct": 15.0,
    "usb_on_above_pct": 25.0,
    "wifi_off_below_volts": WIFI_OFF_V,
    "usb_off_below_volts": USB_OFF_V,
    "restore_above_volts": RESTORE_V,
    "voltage_delay_s": DELAY_S,
    "internal_resistance_ohm": R_OHM,
}


def battery(ports: Sequence[str] = ("usb1", "usb2"), **change: Any) -> BatteryThresholds:
    """The two load classes the config loader builds from the file's keys (`LEVELS`,
    `change`d): the hotspot, then the USB `ports`, in shed order."""
    k = {**LEVELS, **change}
    loads = tuple(
        LoadClass(
            name,
            covers,
            k[f"{name}_off_below_pct"],
            k[f"{name}_on_above_pct"],
            k[f"{name}_off_below_volts"],
            label=label,
        )
        for name, covers, label in ((WIFI, (WIFI,), "Wi-Fi"), ("usb", tuple(ports), "USB"))
    )
    return BatteryThresholds(
        loads, k["restore_above_volts"], k["voltage_delay_s"], k["internal_resistance_ohm"]
    )


BATTERY = battery()
TEMPERATURE = TemperatureLimits(
    shed_above_c=60.0, resume_below_c=50.0, cpu_shed_above_c=80.0, cpu_resume_below_c=70.0
)
ALL_OUTPUTS = ("usb1", "usb2", WIFI)
SAFETY_REASONS = {"overcurrent_trip", "overcurrent_latched", "cooldown", "over_temperature"}
BATTERY_REASONS = {"battery_low", "battery_voltage_low"}


def make_cfg(
    schedules: Mapping[str, Schedule] | None = None, defaults: Mapping[str, bool] | None = None
) -> PolicyConfig:
    return PolicyConfig(
        ports={"usb1": LIMITS, "usb2": LIMITS},
        battery=BATTERY,
        temperature=TEMPERATURE,
        schedules=schedules or {},
        defaults=defaults or {},
    )


CFG = make_cfg()


def make_inputs(
    mono: float = 0.0,
    *,
    now: datetime = NOON,
    soc: float | None = 80.0,
    volts: float | None = 13.2,  # a healthy battery on its plateau
    battery_amps: float | None = 0.0,
    amps: Mapping[str, float | None] | None = None,
    enclosure: float | None = 35.0,
    cpu: float | None = 50.0,
    overrides: Mapping[str, Override] | None = None,
) -> PolicyInputs:
    return PolicyInputs(
        now_local=now,
        mono_s=mono,
        soc_pct=soc,
        battery_volts=volts,
        battery_amps=battery_amps,
        port_amps=amps if amps is not None else {"usb1": 0.5, "usb2": 0.0},
        enclosure_c=enclosure,
        cpu_c=cpu,
        overrides=overrides or {},
    )


def run(
    cfg: PolicyConfig, steps: Sequence[PolicyInputs], state: PolicyState | None = None
) -> list[tuple[PolicyState, dict[str, Decision]]]:
    """Feed samples one after the other, threading the state as the controller does."""
    out = []
    current = state or PolicyState()
    for step in steps:
        current, decisions = decide(cfg, step, current)
        out.append((current, decisions))
    return out


def amps_run(usb1_amps: Sequence[float | None], start: float = 0.0) -> list[PolicyInputs]:
    """One sample per second with the given usb1 current."""
    return [make_inputs(start + i, amps={"usb1": a, "usb2": 0.1}) for i, a in enumerate(usb1_amps)]


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: replace(LIMITS, trip_amps=0.0), "trip_amps"),
        (lambda: replace(LIMITS, trip_amps=math.nan), "trip_amps"),
        (lambda: replace(LIMITS, hard_trip_amps=2.4), "hard_trip_amps"),
        (lambda: replace(LIMITS, trip_samples=0), "trip_samples"),
        (lambda: replace(LIMITS, trip_samples=True), "trip_samples"),
        (lambda: replace(LIMITS, latch_after_trips=0), "latch_after_trips"),
        (lambda: replace(LIMITS, cooldown_s=-1.0), "cooldown_s"),
        (lambda: replace(LIMITS, trip_forget_s=math.inf), "trip_forget_s"),
        (lambda: battery(wifi_on_above_pct=30.0), "wifi_on_above_pct"),
        (lambda: battery(usb_on_above_pct=10.0), "usb_on_above_pct"),
        (
            lambda: battery(usb_off_below_pct=30.0, usb_on_above_pct=35.0),
            "usb_off_below_pct",
        ),
        (lambda: battery(wifi_on_above_pct=101.0), "wifi_on_above_pct"),
        (lambda: battery(usb_off_below_pct=-1.0), "usb_off_below_pct"),
        (lambda: replace(TEMPERATURE, resume_below_c=60.0), "resume_below_c"),
        (lambda: replace(TEMPERATURE, cpu_resume_below_c=85.0), "cpu_resume_below_c"),
        (lambda: Schedule(windows=((time(8), time(8)),)), "windows[0]"),
        (lambda: Schedule(windows=((time(8, tzinfo=UTC), time(9)),)), "windows[0]"),
        (lambda: Schedule(windows=[(time(8), time(9))]), "windows"),  # type: ignore[arg-type]
        (lambda: Schedule(weekdays=frozenset({7})), "weekdays"),
        (lambda: Schedule(weekdays=frozenset()), "weekdays"),
        (lambda: PolicyConfig({"wifi": LIMITS}, BATTERY, TEMPERATURE), "ports"),
        (lambda: PolicyConfig({"USB 1": LIMITS}, BATTERY, TEMPERATURE), "ports"),
        (lambda: make_cfg(schedules={"usb9": Schedule()}), "schedules"),
        (lambda: make_cfg(defaults={"usb9": True}), "defaults"),
        (lambda: make_cfg(defaults={"usb1": "yes"}), "defaults.usb1"),  # type: ignore[dict-item]
    ],
)
def test_bad_config_is_refused_naming_the_field(build: Any, field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field) + ": "):
        build()


def test_config_mappings_are_copied_read_only() -> None:
    ports = {"usb1": LIMITS}
    cfg = PolicyConfig(ports, battery(["usb1"]), TEMPERATURE)
    ports["usb2"] = LIMITS  # the caller's dict changing later must not change the config
    assert cfg.outputs == ("usb1", WIFI)
    with pytest.raises(TypeError):
        cfg.ports["usb3"] = LIMITS  # type: ignore[index]


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="now_local"):
        make_inputs(now=datetime(2024, 6, 14, 12, 0))


# --------------------------------------------------------------------------- battery hysteresis


@pytest.mark.parametrize(
    ("socs", "wifi", "usb"),
    [
        # falling through the Wi-Fi level: "below" is strict
        ([50, 30.0, 29.99], [1, 1, 0], [1, 1, 1]),
        # in the dead band Wi-Fi stays off until strictly above the on level
        ([29, 35, 39.99, 40.0, 40.01], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]),
        # USB: off strictly below 15, on strictly above 25
        ([20, 15.0, 14.99, 20, 25.0, 25.01], [0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 1]),
        # recovering from flat: USB comes back first, then Wi-Fi
        ([5, 26, 35, 41], [0, 0, 0, 1], [0, 1, 1, 1]),
        # the dead band entered from above keeps things on
        ([45, 35, 20, 35], [1, 1, 0, 0], [1, 1, 1, 1]),
    ],
)
def test_battery_hysteresis_at_each_boundary(
    socs: list[float], wifi: list[int], usb: list[int]
) -> None:
    results = run(CFG, [make_inputs(i, soc=s) for i, s in enumerate(socs)])
    assert [int(d[WIFI].on) for _, d in results] == wifi
    assert [int(d["usb1"].on) for _, d in results] == usb
    assert [int(d["usb2"].on) for _, d in results] == usb
    for (_, decisions), s in zip(results, socs, strict=True):
        for output in ALL_OUTPUTS:
            if not decisions[output].on:
                assert decisions[output].reason == "battery_low"
                assert f"battery {s:.1f}%" in decisions[output].detail


@pytest.mark.parametrize(
    ("centre", "start", "output"),
    [(30.0, 45.0, WIFI), (40.0, 20.0, WIFI), (15.0, 22.0, "usb1"), (25.0, 10.0, "usb1")],
)
def test_no_flapping_when_soc_wobbles_around_a_threshold(
    centre: float, start: float, output: str
) -> None:
    socs = [start] + [centre + (0.5 if i % 2 else -0.5) for i in range(40)]
    results = run(CFG, [make_inputs(i, soc=s) for i, s in enumerate(socs)])
    states = [d[output].on for _, d in results]
    switches = sum(a != b for a, b in itertools.pairwise(states))
    assert switches == 1


def test_battery_shed_and_restore_are_events_per_output() -> None:
    results = run(CFG, [make_inputs(0, soc=50), make_inputs(1, soc=10), make_inputs(2, soc=50)])
    shed = {(e.kind, e.output) for e in results[1][0].events}
    assert shed == {("battery_shed", WIFI), ("battery_shed", "usb1"), ("battery_shed", "usb2")}
    restored = {(e.kind, e.output) for e in results[2][0].events}
    assert restored == {
        ("battery_restored", WIFI),
        ("battery_restored", "usb1"),
        ("battery_restored", "usb2"),
    }
    assert results[0][0].events == ()


@pytest.mark.parametrize("unknown", [None, math.nan, math.inf])
@pytest.mark.parametrize(("before", "expect_on"), [(10.0, False), (80.0, True), (35.0, True)])
def test_unknown_soc_keeps_previous_protection(
    unknown: float | None, before: float, expect_on: bool
) -> None:
    results = run(CFG, [make_inputs(0, soc=before), make_inputs(1, soc=unknown)])
    _, decisions = results[1]
    assert decisions[WIFI].on is (before > 30.0)
    assert decisions["usb1"].on is expect_on
    if not expect_on:
        assert decisions["usb1"].reason == "battery_low"
        assert "unknown" in decisions["usb1"].detail
    assert results[1][0].events == ()


def test_unknown_soc_from_cold_start_leaves_loads_on() -> None:
    _, decisions = decide(CFG, make_inputs(soc=None), PolicyState())
    assert all(d.on for d in decisions.values())


# --------------------------------------------------------------------------- battery voltage


Sample = tuple[float | None, float | None] | tuple[float | None, float | None, float | None]


def volts_run(
    samples: Sequence[Sample],
    *,
    soc: float | None = 80.0,
    every_s: float = 30.0,
    state: PolicyState | None = None,
) -> list[tuple[PolicyState, dict[str, Decision]]]:
    """One sample every `every_s` s: (terminal volts, battery amps[, state of charge])."""
    steps = []
    for i, sample in enumerate(samples):
        volts, amps = sample[0], sample[1]
        step_soc = sample[2] if len(sample) == 3 else soc
        steps.append(make_inputs(i * every_s, soc=step_soc, volts=volts, battery_amps=amps))
    return run(CFG, steps, state)


def onoff(results: list[tuple[PolicyState, dict[str, Decision]]], output: str) -> list[int]:
    return [int(d[output].on) for _, d in results]


@pytest.mark.parametrize(
    ("case", "samples", "wifi", "usb"),
    [
        # "below" is strict; the level must then hold for the whole delay (90 s = 3 samples
        # 30 s apart), whatever the state of charge says (80 % here: the estimate is wrong)
        ("at the level", [(12.40, 0.0)] * 5, [1] * 5, [1] * 5),
        ("just below", [(12.39, 0.0)] * 5, [1, 1, 1, 0, 0], [1] * 5),
        ("a dip shorter than the delay", [(12.3, 0.0)] * 3 + [(12.46, 0.0)] + [(12.3, 0.0)] * 3,
         [1] * 7, [1] * 7),
        # noise of up to 50 mV above the level does not restart the delay
        ("noise at the level", [(12.36, 0.0), (12.44, 0.0)] * 2 + [(12.36, 0.0)],
         [1, 1, 1, 1, 0], [1] * 5),
        ("below both", [(12.19, 0.0)] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]),
        ("USB level exactly", [(12.20, 0.0)] * 5, [1, 1, 1, 0, 0], [1] * 5),
        # corrected by I·R (0.02 Ω): 12.35 V at -3 A is 12.41 V at rest, a phone's sag
        ("a load's sag is not an empty battery", [(12.35, -3.0)] * 5, [1] * 5, [1] * 5),
        ("the same terminal volts at a light load", [(12.35, -1.0)] * 5, [1, 1, 1, 0, 0],
         [1] * 5),
        # an unknown current is no correction: the terminal voltage itself (reads low)
        ("current unknown", [(12.39, None)] * 5, [1, 1, 1, 0, 0], [1] * 5),
        # an unknown voltage neither sheds nor restarts the delay: 0 s and 90 s known low
        ("a lost sample in the delay", [(12.3, 0.0), (None, None), (None, None), (12.3, 0.0)],
         [1, 1, 1, 0], [1] * 4),
        ("never known", [(None, None)] * 5, [1] * 5, [1] * 5),
        ("NaN", [(math.nan, 0.0)] * 5, [1] * 5, [1] * 5),
    ],
)  # fmt: skip
def test_low_battery_voltage_sheds_after_the_delay_whatever_the_estimate(
    case: str, samples: list[tuple[float | None, float | None]], wifi: list[int], usb: list[int]
) -> None:
    results = volts_run(samples)
    assert onoff(results, WIFI) == wifi, case
    assert onoff(results, "usb1") == usb, case
    assert onoff(results, "usb2") == usb, case
    for _, decisions in results:
        for output in ALL_OUTPUTS:
            if not decisions[output].on:
                assert decisions[output].reason == "battery_voltage_low", case
                assert re.search(r"< 12\.[24]0 V for \d+ s$", decisions[output].detail), case


LOW = (12.0, -0.5, 80.0)  # below both levels, the estimate still (wrongly) says 80 %


@pytest.mark.parametrize(
    ("case", "after", "wifi", "usb"),
    [
        # the restore level (13.0 V at rest) must hold for the delay AND the state of
        # charge be above each load's own on level (Wi-Fi 40 %, USB 25 %)
        ("between the levels", [(12.9, 0.0, 80.0)] * 6, [0] * 6, [0] * 6),
        ("at the restore level", [(13.0, 0.0, 80.0)] * 5, [0, 0, 0, 1, 1], [0, 0, 0, 1, 1]),
        ("not held for the delay", [(13.0, 0.0, 80.0)] * 2 + [(12.95, 0.0, 80.0)]
         + [(13.0, 0.0, 80.0)] * 3, [0] * 6, [0] * 6),
        ("corrected: the charge current lifts the voltage", [(13.05, 5.0, 80.0)] * 6,
         [0] * 6, [0] * 6),
        ("the estimate not yet back above 40 %", [(13.1, 1.0, 35.0)] * 5, [0] * 5,
         [0, 0, 0, 1, 1]),
        ("the estimate exactly at 40 %", [(13.1, 0.0, 40.0)] * 5, [0] * 5, [0, 0, 0, 1, 1]),
        ("the estimate unknown", [(13.1, 0.0, None)] * 5, [0] * 5, [0] * 5),
        # a missing voltage never restores, however good the estimate
        ("voltage lost", [(None, None, 90.0)] * 6, [0] * 6, [0] * 6),
        ("voltage lost during the delay", [(13.1, 0.0, 90.0)] * 2 + [(None, None, 90.0)]
         + [(13.1, 0.0, 90.0)], [0, 0, 0, 1], [0, 0, 0, 1]),
    ],
)  # fmt: skip
def test_a_voltage_shed_comes_back_only_on_voltage_and_state_of_charge(
    case: str,
    after: list[tuple[float | None, float | None, float | None]],
    wifi: list[int],
    usb: list[int],
) -> None:
    shed = volts_run([LOW] * 4)
    assert not shed[-1][1][WIFI].on and not shed[-1][1]["usb1"].on
    results = volts_run(after, state=shed[-1][0])
    assert onoff(results, WIFI) == wifi, case
    assert onoff(results, "usb1") == usb, case
    for state, decisions in results:
        for output in ALL_OUTPUTS:
            if not decisions[output].on:
                assert decisions[output].reason == "battery_voltage_low", case
        assert state.shed(WIFI) is not decisions[WIFI].on


@pytest.mark.parametrize(
    ("centre", "start", "output"),
    [(WIFI_OFF_V, 13.2, WIFI), (USB_OFF_V, 13.2, "usb1"), (RESTORE_V, 12.0, WIFI)],
)
def test_no_flapping_when_the_voltage_wobbles_around_a_level(
    centre: float, start: float, output: str
) -> None:
    """Sensor noise of ±50 mV at a level, one sample a minute for 40 minutes."""
    samples = [(start, 0.0)] * 3 + [(centre + (0.05 if i % 2 else -0.05), 0.0) for i in range(40)]
    states = [d[output].on for _, d in volts_run(samples, every_s=60.0)]
    switches = sum(a != b for a, b in itertools.pairwise(states))
    # One switch: off, once, at a shed level (the noise does not postpone it); or, for
    # the restore level, the shed from 12 V, never undone by a battery that does not
    # hold the restore level for the delay.
    assert switches == 1
    assert states[-1] is False


def test_voltage_shed_and_restore_are_one_event_per_output() -> None:
    results = volts_run([(13.2, 0.0)] + [LOW] * 4 + [(13.1, 0.5, 80.0)] * 4)
    kinds = [[(e.kind, e.output) for e in state.events] for state, _ in results]
    shed = {("battery_shed", WIFI), ("battery_shed", "usb1"), ("battery_shed", "usb2")}
    restored = {(k.replace("shed", "restored"), o) for k, o in shed}
    assert set(kinds[4]) == shed and len(kinds[4]) == 3
    assert set(kinds[8]) == restored and len(kinds[8]) == 3
    assert [k for i, k in enumerate(kinds) if i not in (4, 8)] == [[]] * 7
    detail = results[4][0].events[0].detail
    assert detail.startswith("battery 12.01 V (12.00 V at -0.50 A) < 12.40 V for 90 s"), detail


def test_a_load_shed_by_one_rule_is_not_shed_again_by_the_other() -> None:
    """The estimate sheds Wi-Fi at 29 %; then the voltage falls too: no second event,
    the detail gives both. The estimate recovers first (41 %): the voltage still holds
    the load off, now under its own reason; restored once, when both allow."""
    samples: list[tuple[float | None, float | None, float | None]] = [
        (12.8, -0.7, 29.0),  # the estimate sheds Wi-Fi (voltage fine)
        *[(12.3, -0.7, 28.0)] * 4,  # the voltage follows (below Wi-Fi's level only)
        *[(12.5, 3.0, 41.0)] * 2,  # the estimate back over 40 %, the voltage not yet
        *[(13.2, 3.0, 41.0)] * 4,  # charging: 13.14 V at rest, held for the delay
    ]
    results = volts_run(samples)
    reasons = [(d[WIFI].on, d[WIFI].reason) for _, d in results]
    assert reasons == [
        *[(False, "battery_low")] * 5,
        *[(False, "battery_voltage_low")] * 5,
        (True, "default"),
    ], reasons
    assert "battery 28.0% < 30.0%; battery 12.31 V" in results[4][1][WIFI].detail
    assert results[6][1][WIFI].detail.endswith("back on at 13.00 V and above 40.0%")
    events = [(e.kind, e.output) for state, _ in results for e in state.events]
    assert events == [("battery_shed", WIFI), ("battery_restored", WIFI)]
    assert all(d["usb1"].on for _, d in results)


def test_voltage_rule_off_without_levels() -> None:
    soc_only = battery(
        ["usb1"], wifi_off_below_volts=None, usb_off_below_volts=None, restore_above_volts=None
    )
    cfg = PolicyConfig({"usb1": LIMITS}, soc_only, TEMPERATURE)
    assert not soc_only.voltage_rule and BATTERY.voltage_rule
    steps = [make_inputs(i * 60.0, volts=11.0) for i in range(5)]
    assert all(d[WIFI].on and d["usb1"].on for _, d in run(cfg, steps))
    # and a state-of-charge shed comes back without any voltage reading
    steps = [make_inputs(0, soc=10.0), make_inputs(60, soc=50.0, volts=None)]
    assert [d["usb1"].on for _, d in run(cfg, steps)] == [False, True]


def test_a_state_of_charge_shed_comes_back_without_a_voltage_reading() -> None:
    """A voltage sensor fault does not keep loads off that only the estimate shed."""
    steps = [make_inputs(0, soc=10.0), make_inputs(60, soc=50.0, volts=None)]
    assert [d["usb1"].on for _, d in run(CFG, steps)] == [False, True]


def test_voltage_shed_survives_a_restart_and_needs_the_full_delay_again() -> None:
    shed = volts_run([LOW] * 4)[-1][0]
    data = shed.to_dict(CFG)
    assert data["wifi_voltage_shed"] is data["usb_voltage_shed"] is True
    restored = PolicyState.from_dict(data, CFG, mono_s=0.0)
    assert restored.shed(WIFI) and restored.shed("usb")
    assert not restored.battery_shed[WIFI]  # the estimate never shed anything
    results = volts_run([(13.1, 0.0)] * 4, state=restored)
    assert onoff(results, WIFI) == [0, 0, 0, 1]
    # a file from before the voltage rule: nothing shed by voltage
    del data["wifi_voltage_shed"], data["usb_voltage_shed"]
    assert not PolicyState.from_dict(data, CFG, mono_s=0.0).shed(WIFI)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"restore_above_volts": None}, "restore_above_volts"),
        ({"wifi_off_below_volts": None}, "wifi_off_below_volts"),
        ({"usb_off_below_volts": 12.4}, "usb_off_below_volts"),
        ({"usb_off_below_volts": 12.5}, "usb_off_below_volts"),
        ({"restore_above_volts": 12.49}, "restore_above_volts"),
        ({"wifi_off_below_volts": 7.9}, "wifi_off_below_volts"),
        ({"restore_above_volts": 16.1}, "restore_above_volts"),
        ({"usb_off_below_volts": math.nan}, "usb_off_below_volts"),
        ({"voltage_delay_s": -1.0}, "voltage_delay_s"),
        ({"voltage_delay_s": 3601.0}, "voltage_delay_s"),
        ({"internal_resistance_ohm": -0.01}, "internal_resistance_ohm"),
        ({"internal_resistance_ohm": 1.5}, "internal_resistance_ohm"),
    ],
)
def test_bad_voltage_levels_are_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field) + ": "):
        battery(**change)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(11.5, 13.6)),
            st.one_of(st.none(), st.floats(-5, 5)),
            st.one_of(st.none(), st.floats(0, 100)),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_voltage_invariants_hold_for_any_sequence(
    samples: list[tuple[float | None, float | None, float | None]],
) -> None:
    state = PolicyState()
    known_low_since: float | None = None  # first of the known samples below Wi-Fi's level
    for i, (volts, amps, soc) in enumerate(samples):
        mono = i * 30.0
        step = make_inputs(
            mono, soc=soc, volts=volts, battery_amps=amps,
            overrides={o: Override(True, None, "prop") for o in ALL_OUTPUTS},
        )  # fmt: skip
        before = state
        state, decisions = decide(CFG, step, state)
        corrected = None if volts is None else volts - (amps or 0.0) * R_OHM
        if corrected is not None and corrected < WIFI_OFF_V:
            known_low_since = mono if known_low_since is None else known_low_since
            # an override never beats it: known below the level for the delay means off
            if mono - known_low_since >= DELAY_S:
                assert not decisions[WIFI].on
        elif corrected is not None and corrected > WIFI_OFF_V + 0.05:
            known_low_since = None
        # only a known voltage at the restore level brings back a voltage shed
        if before.watch(WIFI).shed and decisions[WIFI].on:
            assert corrected is not None and corrected >= RESTORE_V
            assert soc is not None and soc > LEVELS["wifi_on_above_pct"]
        # an unknown voltage never sheds by voltage
        if corrected is None:
            assert state.watch(WIFI).shed is before.watch(WIFI).shed
        for output, decision in decisions.items():
            if decision.reason == "battery_voltage_low":
                assert not decision.on
            assert state.outputs[output] is decision.on


# --------------------------------------------------------------------------- load classes


# A display on usb2, shed after the hotspot and before the phone chargers on usb1.
DISPLAY = LoadClass(
    "display", ("usb2",), off_below_pct=20.0, on_above_pct=30.0, off_below_volts=12.3
)


def three_classes() -> PolicyConfig:
    hotspot, usb = battery(["usb1"]).loads
    return replace(CFG, battery=replace(BATTERY, loads=(hotspot, DISPLAY, usb)))


def test_a_third_load_class_is_shed_at_its_own_state_of_charge() -> None:
    """Load classes are data: a class the policy has never heard of is shed and
    restored at its own levels, with its own events, by the same code."""
    cfg = three_classes()
    socs = [50.0, 25.0, 18.0, 10.0, 28.0, 31.0, 45.0]
    results = run(cfg, [make_inputs(i, soc=s) for i, s in enumerate(socs)])
    assert onoff(results, WIFI) == [1, 0, 0, 0, 0, 0, 1]
    assert onoff(results, "usb2") == [1, 1, 0, 0, 0, 1, 1]  # off below 20 %, on above 30 %
    assert onoff(results, "usb1") == [1, 1, 1, 0, 1, 1, 1]
    assert results[2][1]["usb2"].reason == "battery_low"
    assert results[2][1]["usb2"].detail.startswith("battery 18.0% < 20.0%")
    assert [(e.kind, e.output) for e in results[2][0].events] == [("battery_shed", "usb2")]
    assert [(e.kind, e.output) for e in results[5][0].events] == [("battery_restored", "usb2")]
    state = results[2][0]
    assert state.battery_shed == {WIFI: True, "display": True, "usb": False}
    # saved and restored under its own keys, next to the others
    data = state.to_dict(cfg)
    assert data["display_battery_shed"] is True and data["display_voltage_shed"] is False
    assert PolicyState.from_dict(data, cfg, mono_s=0.0).shed("display")


def test_a_third_load_class_is_shed_at_its_own_voltage() -> None:
    cfg = three_classes()
    results = run(cfg, [make_inputs(i * 30.0, volts=12.25) for i in range(5)])
    assert onoff(results, WIFI) == onoff(results, "usb2") == [1, 1, 1, 0, 0]
    assert onoff(results, "usb1") == [1] * 5  # 12.25 V is above the USB ports' 12.2 V
    assert results[3][1]["usb2"].reason == "battery_voltage_low"
    assert results[3][1]["usb2"].detail.endswith("< 12.30 V for 90 s")


@pytest.mark.parametrize(
    ("loads", "message"),
    [
        # each class shed at a higher level than the next, in % and in V
        (
            lambda w, u: (w, replace(DISPLAY, off_below_pct=35.0, on_above_pct=45.0), u),
            "display_off_below_pct: must be below wifi_off_below_pct (30.0): Wi-Fi is shed first",
        ),
        (
            lambda w, u: (w, u, replace(DISPLAY, off_below_volts=12.1)),
            "display_off_below_pct: must be below usb_off_below_pct (15.0): USB is shed first",
        ),
        (
            lambda w, u: (w, replace(DISPLAY, off_below_volts=12.1), u),
            "usb_off_below_volts: must be below display_off_below_volts (12.1): display is",
        ),
        (
            lambda w, u: (w, replace(DISPLAY, off_below_volts=None), u),
            "display_off_below_volts: the voltage levels go together: set all four",
        ),
        (lambda w, u: (w, u, replace(DISPLAY, name="usb")), "loads: two load classes"),
        (lambda w, u: (), "loads: must be a non-empty tuple"),
    ],
)
def test_load_classes_are_refused_naming_the_key(loads: Any, message: str) -> None:
    hotspot, usb = battery(["usb1"]).loads
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        replace(BATTERY, loads=loads(hotspot, usb))


@pytest.mark.parametrize(
    ("display_covers", "usb_covers", "problem"),
    [
        ((), ("usb1",), "battery: outputs in no load class (got ['usb2'])"),  # never shed
        (("usb2",), ("usb1", "usb2"), "battery: load class 'usb': already in 'display'"),
        ((), ("usb1", "usb2", "usb9"), "battery: load class 'usb': unknown output (got 'usb9')"),
    ],
)
def test_every_output_is_in_exactly_one_load_class(
    display_covers: tuple[str, ...], usb_covers: tuple[str, ...], problem: str
) -> None:
    hotspot, usb = BATTERY.loads
    loads = (hotspot, replace(DISPLAY, outputs=display_covers), replace(usb, outputs=usb_covers))
    with pytest.raises(ValueError, match="^" + re.escape(problem)):
        replace(CFG, battery=replace(BATTERY, loads=loads))


# --------------------------------------------------------------------------- schedules


EVENING = Schedule(windows=((time(22, 0), time(2, 0)),))
TWO_WINDOWS = Schedule(windows=((time(6, 0), time(9, 0)), (time(17, 30), time(21, 0))))
FRIDAY_NIGHT = Schedule(windows=((time(22, 0), time(2, 0)),), weekdays=frozenset({4}))


@pytest.mark.parametrize(
    ("schedule", "local", "expected"),
    [
        (EVENING, datetime(2024, 6, 14, 21, 59, 59), False),
        (EVENING, datetime(2024, 6, 14, 22, 0), True),
        (EVENING, datetime(2024, 6, 14, 23, 59, 59), True),
        (EVENING, datetime(2024, 6, 15, 0, 0), True),
        (EVENING, datetime(2024, 6, 15, 1, 59, 59), True),
        (EVENING, datetime(2024, 6, 15, 2, 0), False),
        (EVENING, datetime(2024, 6, 15, 12, 0), False),
        (TWO_WINDOWS, datetime(2024, 6, 14, 5, 59), False),
        (TWO_WINDOWS, datetime(2024, 6, 14, 6, 0), True),
        (TWO_WINDOWS, datetime(2024, 6, 14, 9, 0), False),
        (TWO_WINDOWS, datetime(2024, 6, 14, 18, 0), True),
        (TWO_WINDOWS, datetime(2024, 6, 14, 21, 0), False),
        # the after-midnight part belongs to the day the window started
        (FRIDAY_NIGHT, datetime(2024, 6, 14, 23, 0), True),  # Friday
        (FRIDAY_NIGHT, datetime(2024, 6, 15, 1, 0), True),  # Saturday morning
        (FRIDAY_NIGHT, datetime(2024, 6, 15, 23, 0), False),  # Saturday night
        (FRIDAY_NIGHT, datetime(2024, 6, 14, 1, 0), False),  # Friday morning (Thursday's)
        (Schedule(), datetime(2024, 6, 14, 3, 0), True),  # empty = always
        (Schedule(weekdays=frozenset({5, 6})), datetime(2024, 6, 14, 3, 0), False),
    ],
)
def test_schedule_windows(schedule: Schedule, local: datetime, expected: bool) -> None:
    cfg = make_cfg(schedules={WIFI: schedule})
    _, decisions = decide(cfg, make_inputs(now=local.replace(tzinfo=JAKARTA)), PolicyState())
    assert decisions[WIFI].on is expected
    assert decisions[WIFI].reason == ("schedule_on" if expected else "schedule_off")
    assert decisions["usb1"].reason == "default"


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # Jakarta is UTC+7 all year: 15:00 UTC is 22:00 WIB
        (datetime(2024, 6, 14, 14, 59, tzinfo=UTC), False),
        (datetime(2024, 6, 14, 15, 0, tzinfo=UTC), True),
        (datetime(2024, 6, 14, 18, 59, tzinfo=UTC), True),
        (datetime(2024, 6, 14, 19, 0, tzinfo=UTC), False),
    ],
)
def test_schedule_uses_the_bench_wall_clock(utc: datetime, expected: bool) -> None:
    cfg = make_cfg(schedules={WIFI: EVENING})
    local = make_inputs(now=utc.astimezone(JAKARTA))
    assert decide(cfg, local, PolicyState())[1][WIFI].on is expected


@pytest.mark.parametrize(("default", "reason"), [(True, "default"), (False, "default")])
def test_default_when_no_schedule(default: bool, reason: str) -> None:
    cfg = make_cfg(defaults={"usb2": default})
    _, decisions = decide(cfg, make_inputs(), PolicyState())
    assert (decisions["usb2"].on, decisions["usb2"].reason) == (default, reason)
    assert decisions["usb1"].on  # unconfigured default: on


# --------------------------------------------------------------------------- overrides


def test_override_runs_until_it_expires_and_the_expiry_is_reported() -> None:
    cfg = make_cfg(schedules={WIFI: EVENING})  # noon: schedule says off
    override = {WIFI: Override(True, expires_mono_s=100.0, source="cli")}
    results = run(cfg, [make_inputs(m, overrides=override) for m in (0.0, 99.9, 100.0)])
    (_, d0), (_, d1), (s2, d2) = results
    assert (d0[WIFI].on, d0[WIFI].reason) == (True, "override_on")
    assert "cli" in d0[WIFI].detail
    assert "100 s left" in d0[WIFI].detail
    assert (d1[WIFI].on, d1[WIFI].reason) == (True, "override_on")
    assert (d2[WIFI].on, d2[WIFI].reason) == (False, "schedule_off")
    assert [(e.kind, e.output) for e in s2.events] == [("override_expired", WIFI)]
    assert "cli" in s2.events[0].detail


@pytest.mark.parametrize(
    ("override", "reason", "on"),
    [
        (Override(None, None, "cli"), "default", True),  # auto = no override
        (Override(False, None, "ops"), "override_off", False),  # no expiry
        (Override(True, 1e9, "ops"), "override_on", True),
    ],
)
def test_override_shapes(override: Override, reason: str, on: bool) -> None:
    _, decisions = decide(CFG, make_inputs(overrides={"usb2": override}), PolicyState())
    assert (decisions["usb2"].on, decisions["usb2"].reason) == (on, reason)


def test_override_of_unknown_output_is_ignored() -> None:
    overrides = {"usb9": Override(False, None, "cli")}
    state, decisions = decide(CFG, make_inputs(overrides=overrides), PolicyState())
    assert set(decisions) == set(ALL_OUTPUTS)
    assert state.events == ()


# --------------------------------------------------------------------------- priority


def _latched(port: str) -> PolicyState:
    return PolicyState(ports={port: PortFault(trips=3, latched=True, last_trip_mono_s=0.0)})


def _volts_low(**fields: Any) -> PolicyState:
    """Both loads' voltages known low for longer than the delay, nothing shed yet."""
    low = VoltageWatch(low_since_mono_s=-DELAY_S)
    return PolicyState(voltage={WIFI: low, "usb": low}, **fields)


def _voltage_shed() -> PolicyState:
    return PolicyState(voltage={WIFI: VoltageWatch(shed=True), "usb": VoltageWatch(shed=True)})


def _cooling(port: str) -> PolicyState:
    return PolicyState(
        ports={port: PortFault(trips=1, cooldown_until_mono_s=50.0, last_trip_mono_s=20.0)}
    )


@pytest.mark.parametrize(
    ("situation", "state", "inputs", "output", "reason"),
    [
        ("battery beats override on", PolicyState(), {"soc": 10.0}, "usb1", "battery_low"),
        ("battery beats override on", PolicyState(), {"soc": 20.0}, WIFI, "battery_low"),
        ("latch beats override", _latched("usb1"), {}, "usb1", "overcurrent_latched"),
        ("cooldown beats override", _cooling("usb1"), {"mono": 40.0}, "usb1", "cooldown"),
        ("heat beats override", PolicyState(), {"enclosure": 70.0}, WIFI, "over_temperature"),
        ("heat beats override", PolicyState(), {"cpu": 85.0}, "usb2", "over_temperature"),
        ("voltage beats override on", _volts_low(), {"volts": 12.3}, WIFI, "battery_voltage_low"),
        ("voltage beats override on", _volts_low(), {"volts": 12.1}, "usb2", "battery_voltage_low"),
        (
            "an estimate of 95% does not help",
            _volts_low(),
            {"volts": 12.1, "soc": 95.0},
            "usb1",
            "battery_voltage_low",
        ),
        (
            "a lost reading keeps it shed",
            _voltage_shed(),
            {"volts": None},
            WIFI,
            "battery_voltage_low",
        ),
        # both: the estimate's reason (the voltage's is for when the estimate missed it)
        ("both rules", _volts_low(), {"volts": 12.1, "soc": 5.0}, "usb1", "battery_low"),
        ("latch beats battery", _latched("usb1"), {"soc": 5.0}, "usb1", "overcurrent_latched"),
        (
            "latch beats voltage",
            _volts_low(ports=_latched("usb1").ports),
            {"volts": 12.0},
            "usb1",
            "overcurrent_latched",
        ),
        (
            "heat beats voltage",
            _volts_low(),
            {"volts": 12.0, "cpu": 85.0},
            WIFI,
            "over_temperature",
        ),
        ("latch beats heat", _latched("usb1"), {"enclosure": 70.0}, "usb1", "overcurrent_latched"),
        (
            "heat beats battery",
            PolicyState(),
            {"enclosure": 70, "soc": 5},
            WIFI,
            "over_temperature",
        ),
    ],
)
def test_override_never_beats_safety_or_battery(
    situation: str, state: PolicyState, inputs: dict[str, Any], output: str, reason: str
) -> None:
    overrides = {output: Override(True, None, "ops")}
    step = make_inputs(overrides=overrides, **inputs)
    _, decisions = decide(CFG, step, state)
    assert (decisions[output].on, decisions[output].reason) == (False, reason), situation
    refusal = check_override(CFG, state, make_inputs(**inputs), output, True)
    assert refusal is not None
    assert refusal.startswith(f"{reason}: ")


@pytest.mark.parametrize(
    ("schedule_time", "desired", "reason"),
    [
        (time(23, 0), False, "override_off"),  # inside the window, override off wins
        (time(12, 0), True, "override_on"),  # outside the window, override on wins
    ],
)
def test_override_beats_schedule(schedule_time: time, desired: bool, reason: str) -> None:
    cfg = make_cfg(schedules={WIFI: EVENING})
    now = datetime.combine(NOON.date(), schedule_time, tzinfo=JAKARTA)
    step = make_inputs(now=now, overrides={WIFI: Override(desired, None, "cli")})
    decision = decide(cfg, step, PolicyState())[1][WIFI]
    assert (decision.on, decision.reason) == (desired, reason)
    assert check_override(cfg, PolicyState(), make_inputs(now=now), WIFI, desired) is None


@pytest.mark.parametrize(
    ("output", "desired", "state", "soc", "refused"),
    [
        ("usb1", False, _latched("usb1"), 80.0, None),  # off is always possible
        ("usb1", None, _latched("usb1"), 80.0, None),  # auto is always accepted
        (WIFI, True, PolicyState(), 80.0, None),
        (WIFI, True, PolicyState(), 29.0, "battery_low: battery 29.0% < 30.0%"),
        ("usb1", True, _latched("usb1"), 80.0, "overcurrent_latched: "),
        (WIFI, True, _voltage_shed(), 80.0, "battery_voltage_low: battery 13.20 V, back on at"),
        ("usb7", True, PolicyState(), 80.0, "unknown_output: "),
    ],
)
def test_check_override(
    output: str, desired: bool | None, state: PolicyState, soc: float, refused: str | None
) -> None:
    answer = check_override(CFG, state, make_inputs(soc=soc), output, desired)
    if refused is None:
        assert answer is None
    else:
        assert answer is not None
        assert answer.startswith(refused)


# --------------------------------------------------------------------------- over-current


@pytest.mark.parametrize(
    ("usb1_amps", "trip_at"),
    [
        ([2.5, 2.5, 2.5], 2),  # three in a row above trip_amps
        ([2.5, 2.5, 2.4, 2.5, 2.5, 2.5], 5),  # exactly trip_amps is not above: count restarts
        ([2.5, 2.5, 1.0, 2.5, 2.5], None),
        ([2.5, None, 2.5, math.nan, 2.5], 4),  # a lost sample neither counts nor resets
        ([0.5, 4.01], 1),  # above the hard limit: at once
        ([4.0, 4.0], None),  # exactly the hard limit is only above trip_amps (2 of 3)
        ([None, None, None], None),
    ],
)
def test_trip_after_consecutive_samples_or_at_once(
    usb1_amps: list[float | None], trip_at: int | None
) -> None:
    results = run(CFG, amps_run(usb1_amps))
    reasons = [d["usb1"].reason for _, d in results]
    expected = [
        "default" if trip_at is None or i < trip_at else "overcurrent_trip"
        for i in range(len(usb1_amps))
    ]
    if trip_at is not None:
        expected = expected[: trip_at + 1]
        reasons = reasons[: trip_at + 1]
        state = results[trip_at][0]
        assert [e.kind for e in state.events] == ["overcurrent_trip"]
        assert state.events[0].output == "usb1"
        assert not results[trip_at][1]["usb1"].on
    assert reasons == expected
    assert all(d["usb2"].on for _, d in results)  # the other port is untouched


def test_cooldown_then_retry_then_latch_then_reset() -> None:
    t = 0.0
    state = PolicyState()

    def tick(amps: float) -> Decision:
        nonlocal t, state
        state, decisions = decide(CFG, make_inputs(t, amps={"usb1": amps}), state)
        t += 1.0
        return decisions["usb1"]

    for trip in (1, 2):
        assert tick(5.0).reason == "overcurrent_trip"
        assert state.port("usb1").trips == trip
        cooling = [tick(5.0) for _ in range(29)]  # readings during cooldown are ignored
        assert {d.reason for d in cooling} == {"cooldown"}
        assert not any(d.on for d in cooling)
        assert "retry in 1 s" in cooling[-1].detail
        retry = tick(0.2)  # 30 s after the trip: retried
        assert (retry.on, retry.reason) == (True, "default")

    latched = tick(5.0)
    assert (latched.on, latched.reason) == (False, "overcurrent_latched")
    assert [e.kind for e in state.events] == ["overcurrent_trip", "overcurrent_latched"]
    assert state.latched_ports == ("usb1",)
    t += 10_000.0  # a latch never times out
    assert tick(0.0).reason == "overcurrent_latched"

    state = reset_fault(state, "usb1")
    assert [(e.kind, e.output) for e in state.events] == [("fault_reset", "usb1")]
    assert state.port("usb1") == PortFault()
    after = tick(0.2)
    assert (after.on, after.reason) == (True, "default")


def test_trips_are_forgotten_after_a_quiet_period() -> None:
    state = PolicyState()
    for start in (0.0, 700.0, 1400.0):  # each trip more than trip_forget_s after the last
        steps = amps_run([5.0], start) + amps_run([0.1] * 40, start + 1)
        (state, first), *_ = run(CFG, steps[:1], state)
        state = run(CFG, steps[1:], state)[-1][0]
        assert first["usb1"].reason == "overcurrent_trip"
        assert state.port("usb1").trips == 1
    assert not state.port("usb1").latched


@pytest.mark.parametrize(("port", "left"), [("usb1", ["usb2"]), (None, [])])
def test_reset_fault_one_or_all(port: str | None, left: list[str]) -> None:
    state = PolicyState(
        ports={"usb1": PortFault(trips=3, latched=True), "usb2": PortFault(trips=3, latched=True)}
    )
    new = reset_fault(state, port)
    assert list(new.latched_ports) == left
    assert state.latched_ports == ("usb1", "usb2")  # the old state is untouched
    assert reset_fault(PolicyState(), "usb1").events == ()


# --------------------------------------------------------------------------- temperature


@pytest.mark.parametrize(
    ("readings", "shed"),
    [
        # (enclosure, cpu) per sample
        ([(35, 50), (60, 50), (60.1, 50)], [0, 0, 1]),
        ([(61, 50), (55, 50), (50, 50), (49.9, 50)], [1, 1, 1, 0]),
        ([(35, 80.1), (35, 75), (35, 69.9)], [1, 1, 0]),
        ([(61, 50), (None, None), (None, 50), (45, 50)], [1, 1, 0, 0]),  # unknown keeps state
        ([(61, 50), (None, 75), (45, 69)], [1, 1, 0]),
        ([(None, None), (math.nan, None)], [0, 0]),
    ],
)
def test_over_temperature_sheds_everything_with_hysteresis(
    readings: list[tuple[float | None, float | None]], shed: list[int]
) -> None:
    steps = [make_inputs(i, enclosure=e, cpu=c) for i, (e, c) in enumerate(readings)]
    results = run(CFG, steps)
    for (state, decisions), expect in zip(results, shed, strict=True):
        assert state.over_temperature is bool(expect)
        for output in ALL_OUTPUTS:
            assert decisions[output].on is not bool(expect)
            if expect:
                assert decisions[output].reason == "over_temperature"
    kinds = [e.kind for state, _ in results for e in state.events]
    assert kinds.count("over_temperature") == (1 if any(shed) else 0)
    assert kinds.count("temperature_restored") == (1 if any(shed) and not shed[-1] else 0)


# --------------------------------------------------------------------------- state, purity


def test_state_round_trips_latches_and_restarts_cooldown() -> None:
    state = PolicyState(
        ports={
            "usb1": PortFault(trips=3, latched=True, last_trip_mono_s=5.0),
            "usb2": PortFault(trips=1, cooldown_until_mono_s=90.0, last_trip_mono_s=60.0),
            "gone": PortFault(trips=1),
        },
        battery_shed={"usb": True},
    )
    restored = PolicyState.from_dict(state.to_dict(CFG), CFG, mono_s=3.0)
    assert restored.latched_ports == ("usb1",)
    assert restored.port("usb2").cooldown_until_mono_s == 33.0  # a full cooldown from boot
    assert restored.port("usb2").trips == 1
    assert "gone" not in restored.ports
    assert restored.battery_shed["usb"]
    assert not restored.battery_shed[WIFI]


def test_the_saved_state_has_the_keys_of_the_agents_before_load_classes() -> None:
    """An older agent reads this one's file, and this one an older agent's."""
    state = PolicyState(battery_shed={"usb": True}, voltage={WIFI: VoltageWatch(shed=True)})
    assert json.dumps(state.to_dict(CFG), separators=(",", ":")) == (
        '{"v":1,"ports":{},"wifi_battery_shed":false,"usb_battery_shed":true,'
        '"over_temperature":false,"wifi_voltage_shed":true,"usb_voltage_shed":false}'
    )
    older = {"v": 1, "ports": {}, "wifi_battery_shed": True, "usb_battery_shed": False}
    older |= {"over_temperature": False, "wifi_voltage_shed": False, "usb_voltage_shed": True}
    restored = PolicyState.from_dict(older, CFG, mono_s=0.0)
    assert restored.battery_shed == {WIFI: True, "usb": False}
    assert not restored.watch(WIFI).shed and restored.watch("usb").shed
    assert restored.to_dict(CFG) == older


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"v": 2},
        {"v": 1, "ports": []},
        {"v": 1, "ports": {"usb1": {"trips": -1, "latched": False, "cooling_down": False}}},
        {"v": 1, "ports": {"usb1": {"trips": 1, "latched": "yes", "cooling_down": False}}},
        {"v": 1, "over_temperature": 1},
    ],
)
def test_bad_persisted_state_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PolicyState.from_dict(data, CFG, mono_s=0.0)


def test_decide_is_pure() -> None:
    state = _cooling("usb1")
    step = make_inputs(40.0, amps={"usb1": 3.0, "usb2": 3.0}, soc=20.0)
    first = decide(CFG, step, state)
    second = decide(CFG, step, state)
    assert first == second
    assert state == _cooling("usb1")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.floats(0, 100)),
            st.one_of(st.none(), st.floats(0, 6)),
            st.one_of(st.none(), st.floats(20, 75)),
            st.sampled_from([None, True, False]),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_invariants_hold_for_any_sequence(
    samples: list[tuple[float | None, float | None, float | None, bool | None]],
) -> None:
    state = PolicyState()
    for i, (soc, amps, enclosure, wanted) in enumerate(samples):
        overrides = {o: Override(wanted, None, "prop") for o in ALL_OUTPUTS}
        step = make_inputs(
            float(i), soc=soc, amps={"usb1": amps, "usb2": amps}, enclosure=enclosure,
            overrides=overrides,
        )  # fmt: skip
        state, decisions = decide(CFG, step, state)
        assert set(decisions) == set(ALL_OUTPUTS)
        for output, decision in decisions.items():
            if soc is not None and soc < 15.0:
                assert not decision.on
            if soc is not None and soc < 30.0 and output == WIFI:
                assert not decision.on
            if enclosure is not None and enclosure > 60.0:
                assert not decision.on
            if amps is not None and amps > 4.0 and output != WIFI:
                assert not decision.on
            if decision.on:
                assert decision.reason not in SAFETY_REASONS | BATTERY_REASONS
            assert state.outputs[output] is decision.on
