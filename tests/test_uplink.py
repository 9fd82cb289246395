"""Uplink recovery: when a hung router is power-cycled, how often, and when never.

Times are agent monotonic seconds. Most tests drive the state machine the way the
daemon does: one step per sample, with the output held off while a cycle asks for
it, and read back the actions as (time, kind) rows.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.config_loader import load_config
from bench_agent.hardware.gpio import GpioSwitch
from bench_agent.power.controller import Controller
from bench_agent.power.soc import SocEstimator
from bench_agent.power.uplink import (
    EVENT_TYPE,
    OVERRIDE_SOURCE,
    UplinkAction,
    UplinkConfig,
    UplinkRecovery,
)
from bench_agent.power.uplink_supervisor import UplinkSupervisor
from tests.support import MINIMAL_CONFIG

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 27)
CFG = UplinkConfig(
    enabled=True,
    output="wifi",
    offline_after_s=600,
    power_off_s=30,
    backoff_initial_s=1000,
    backoff_max_s=2500,
    max_attempts_per_day=4,
    backoff_reset_after_s=500,
)
STEP_S = 10.0

Flag = Callable[[float], bool]


def always(_t: float) -> bool:
    return True


def never(_t: float) -> bool:
    return False


def between(start: float, end: float) -> Flag:
    return lambda t: start <= t < end


def outside(start: float, end: float) -> Flag:
    return lambda t: not start <= t < end


@dataclass
class Run:
    actions: list[tuple[float, UplinkAction]]

    @property
    def rows(self) -> list[tuple[float, str]]:
        return [(t, a.kind) for t, a in self.actions]


def drive(
    recovery: UplinkRecovery,
    until_s: float,
    *,
    connected: Flag = never,
    output_wanted_on: Flag = always,
    day: Callable[[float], date] = lambda _t: DAY,
    start_s: float = 0.0,
) -> Run:
    """Step every STEP_S; the output is on when the policy wants it and no cycle holds it off."""
    actions = []
    t = start_s
    while t <= until_s:
        output_on = output_wanted_on(t) and not recovery.holding_off
        action = recovery.step(t, day(t), connected(t), output_on)
        if action is not None:
            actions.append((t, action))
        t += STEP_S
    return Run(actions)


def test_a_router_down_for_good_is_cycled_with_doubling_capped_backoff_then_given_up() -> None:
    run = drive(UplinkRecovery(CFG), 20_000)
    assert run.rows == [
        (600, "power_off"),  # offline_after_s with the output on
        (630, "power_on"),  # power_off_s later
        (1630, "power_off"),  # backoff_initial_s after the power-on
        (1660, "power_on"),
        (3660, "power_off"),  # doubled: 2000
        (3690, "power_on"),
        (6190, "power_off"),  # 4000 capped at backoff_max_s 2500
        (6220, "power_on"),
        (8720, "gave_up"),  # the 5th would be due: the daily limit of 4 says no, once
    ]
    offs = [a for _, a in run.actions if a.kind == "power_off"]
    assert [a.attempt for a in offs] == [1, 2, 3, 4]
    assert {a.attempts_max for a in offs} == {4}
    assert [a.down_for_s for a in offs] == [600, 1630, 3660, 6190]
    assert {(a.hold_off_s, a.reason, a.output) for a in offs} == {
        (30, "broker_unreachable", "wifi")
    }
    on = run.actions[1][1]
    assert on.reason == "power_off_done" and on.hold_off_s == 0
    gave_up = run.actions[-1][1]
    assert (gave_up.reason, gave_up.attempt) == ("daily_limit", 4)
    assert "attempt 1 of 4" in offs[0].detail and "600 s" in offs[0].detail


@pytest.mark.parametrize(
    ("name", "connected", "output_wanted_on", "expected"),
    [
        ("connected all along", always, always, []),
        ("output off all along (battery shed, schedule)", never, never, []),
        ("broker back just before the deadline", outside(0, 590), always, []),
        (
            "output switched on late: the full wait starts then",
            never,
            outside(0, 1000),
            [(1600, "power_off"), (1630, "power_on")],
        ),
        (
            "output shed for a moment: the wait starts over",
            never,
            outside(500, 700),
            [(1300, "power_off"), (1330, "power_on")],
        ),
        (
            "broker back during the off window: the output still comes back",
            outside(0, 610),
            always,
            [(600, "power_off"), (630, "power_on")],
        ),
    ],
)
def test_when_a_cycle_starts(
    name: str, connected: Flag, output_wanted_on: Flag, expected: list[tuple[float, str]]
) -> None:
    assert (
        drive(
            UplinkRecovery(CFG), 1700, connected=connected, output_wanted_on=output_wanted_on
        ).rows
        == expected
    ), name


def test_never_cycles_an_output_that_is_off_for_another_reason() -> None:
    recovery = UplinkRecovery(CFG)
    for t in range(0, 100_000, 10):
        assert recovery.step(t, DAY, broker_connected=False, output_on=False) is None
    assert recovery.attempts_today == 0 and not recovery.holding_off


@pytest.mark.parametrize(
    ("connected_until", "next_off"),
    [
        # Up for 600 s >= backoff_reset_after_s: the backoff starts over, so the next
        # attempt only waits offline_after_s, and the one after it backoff_initial_s.
        (2300, [2900, 3930]),
        # Up for 100 s: not long enough to trust; the doubled wait (2000) still holds.
        (1800, [3660, 6190]),
    ],
)
def test_backoff_starts_over_only_after_a_stable_connection(
    connected_until: float, next_off: list[float]
) -> None:
    run = drive(UplinkRecovery(CFG), 7000, connected=between(1700, connected_until))
    offs = [t for t, kind in run.rows if kind == "power_off"]
    assert offs[:2] == [600, 1630]
    assert offs[2:4] == next_off


def test_the_daily_limit_starts_over_on_the_next_local_day() -> None:
    def day(t: float) -> date:
        return DAY if t < 10_000 else DAY + timedelta(days=1)

    run = drive(UplinkRecovery(CFG), 12_000, day=day)
    assert (8720, "gave_up") in run.rows
    after = [(t, a) for t, a in run.actions if t >= 10_000]
    assert [(t, a.kind, a.attempt) for t, a in after][:2] == [
        (10_000, "power_off", 1),
        (10_030, "power_on", 1),
    ]


def test_midnight_inside_the_off_window() -> None:
    def day(t: float) -> date:
        return DAY if t < 615 else DAY + timedelta(days=1)

    run = drive(UplinkRecovery(CFG), 2000, day=day)
    assert [(t, a.kind, a.attempt) for t, a in run.actions] == [
        (600, "power_off", 1),
        (630, "power_on", 1),  # the attempt it ends, though the new day has none yet
        (1630, "power_off", 1),  # the new day's first
        (1660, "power_on", 1),
    ]


def test_gave_up_is_said_once_per_day() -> None:
    run = drive(UplinkRecovery(replace(CFG, max_attempts_per_day=1)), 50_000)
    assert run.rows == [(600, "power_off"), (630, "power_on"), (1630, "gave_up")]


def test_disabled_does_nothing() -> None:
    recovery = UplinkRecovery(replace(CFG, enabled=False))
    assert drive(recovery, 20_000).rows == []


def test_event_fields() -> None:
    run = drive(UplinkRecovery(CFG), 700)
    off, on = (a.event() for _, a in run.actions)
    assert off == {
        "action": "power_off",
        "output": "wifi",
        "reason": "broker_unreachable",
        "detail": off["detail"],
        "attempt": 1,
        "attempts_max": 4,
        "down_for_s": 600,
        "hold_off_s": 30,
    }
    assert on["action"] == "power_on" and "hold_off_s" not in on
    json.dumps([off, on])  # JSON-ready


def test_status_says_what_it_is_doing() -> None:
    recovery = UplinkRecovery(CFG)
    drive(recovery, 610)
    assert recovery.status(610) == {
        "enabled": True,
        "output": "wifi",
        "attempts_today": 1,
        "attempts_max": 4,
        "holding_off": True,
        "next_attempt_in_s": None,
        "gave_up_today": False,
    }
    recovery.step(630, DAY, False, False)
    assert recovery.status(700)["next_attempt_in_s"] == 930


# --------------------------------------------------------------------------- restarts


def _restart(recovery: UplinkRecovery, saved_at: float, restored_at: float) -> UplinkRecovery:
    text = json.dumps(recovery.to_dict(saved_at))
    restored, problem = UplinkRecovery.restore(CFG, text, restored_at)
    assert problem is None
    return restored


def test_a_restart_keeps_todays_attempts_and_the_wait() -> None:
    recovery = UplinkRecovery(CFG)
    drive(recovery, 1700)  # two attempts; the next is due at 3660
    assert recovery.attempts_today == 2
    # The Pi reboots; the new agent's monotonic clock starts near zero.
    restored = _restart(recovery, saved_at=1700, restored_at=5)
    assert restored.attempts_today == 2 and restored.day == DAY
    run = drive(restored, 20_000, start_s=5)
    # 1960 s of wait were left; only the two attempts left today, then gave_up.
    assert run.rows[0] == (5.0 + 1960.0, "power_off")
    assert [a.attempt for _, a in run.actions if a.kind == "power_off"] == [3, 4]
    assert run.rows[-1][1] == "gave_up"


def test_a_restart_across_midnight_starts_a_new_days_count() -> None:
    recovery = UplinkRecovery(replace(CFG, max_attempts_per_day=1))
    drive(recovery, 2000)
    assert recovery.gave_up_today
    restored = _restart(recovery, saved_at=2000, restored_at=0)
    run = drive(restored, 700, day=lambda _t: DAY + timedelta(days=1))
    assert run.rows == [(600, "power_off"), (630, "power_on")]


def test_a_restart_in_the_off_window_counts_the_attempt_as_done() -> None:
    recovery = UplinkRecovery(CFG)
    drive(recovery, 610)
    assert recovery.holding_off
    restored = _restart(recovery, saved_at=610, restored_at=0)
    assert not restored.holding_off and restored.attempts_today == 1
    run = drive(restored, 3000)
    assert run.rows[0] == (1000, "power_off")  # backoff_initial_s after the restart


@pytest.mark.parametrize(
    "saved",
    [
        "",
        "not json",
        "[]",
        '{"v": 2}',
        '{"v": 1}',
        '{"v": 1, "day": "2026-13-01", "attempts_today": 1, "gave_up_today": false,'
        ' "backoff_s": 1000, "next_attempt_in_s": null, "holding_off": false}',
        '{"v": 1, "day": null, "attempts_today": -1, "gave_up_today": false,'
        ' "backoff_s": 1000, "next_attempt_in_s": null, "holding_off": false}',
        '{"v": 1, "day": null, "attempts_today": 1, "gave_up_today": false,'
        ' "backoff_s": 1e999, "next_attempt_in_s": null, "holding_off": false}',
        '{"v": 1, "day": null, "attempts_today": 1, "gave_up_today": false,'
        ' "backoff_s": 1000, "next_attempt_in_s": 1' + "0" * 400 + ', "holding_off": false}',
        "[" * 100_000,
    ],
)
def test_a_garbled_save_starts_afresh_and_says_why(saved: str) -> None:
    recovery, problem = UplinkRecovery.restore(CFG, saved, 0.0)
    assert problem is not None and "ignored" in problem
    assert recovery.attempts_today == 0 and recovery.next_attempt_mono_s is None


def test_no_save_starts_afresh_quietly() -> None:
    recovery, problem = UplinkRecovery.restore(CFG, None, 0.0)
    assert problem is None and recovery.attempts_today == 0


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
_saved_keys = st.fixed_dictionaries(
    {
        "v": st.just(1),
        "day": st.none() | st.text(max_size=12) | st.just("2026-11-27"),
        "attempts_today": _json,
        "gave_up_today": _json,
        "backoff_s": _json,
        "next_attempt_in_s": _json,
        "holding_off": _json,
    }
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_json, _saved_keys))
def test_from_dict_raises_only_value_error(data: Any) -> None:
    with contextlib.suppress(ValueError):
        UplinkRecovery.from_dict(CFG, data, 0.0)


# --------------------------------------------------------------------------- properties


_worlds = st.lists(
    # (dt_s, broker connected, policy wants the output on, a new local day starts)
    st.tuples(
        st.sampled_from([1.0, 10.0, 60.0, 400.0, 2000.0]),
        st.booleans(),
        st.booleans(),
        st.integers(0, 30).map(lambda n: n == 0),
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(_worlds)
def test_invariants_whatever_the_broker_and_policy_do(
    world: list[tuple[float, bool, bool, bool]],
) -> None:
    recovery = UplinkRecovery(CFG)
    t = 0.0
    last_on_at: float | None = None
    off_at: float | None = None
    per_day: dict[int, list[str]] = {}
    day = 0
    for dt, connected, wanted_on, new_day in world:
        t += dt
        day += new_day
        output_on = wanted_on and not recovery.holding_off
        action = recovery.step(t, DAY + timedelta(days=day), connected, output_on)
        if action is None:
            continue
        per_day.setdefault(day, []).append(action.kind)
        if action.kind == "power_off":
            # Only a router that is on, with the broker unreachable, and not too soon.
            assert output_on and not connected and off_at is None
            if last_on_at is not None:
                assert t - last_on_at >= CFG.offline_after_s
            off_at = t
        elif action.kind == "power_on":
            assert off_at is not None and t - off_at >= CFG.power_off_s
            off_at, last_on_at = None, t
    for kinds in per_day.values():
        assert kinds.count("power_off") <= CFG.max_attempts_per_day
        assert kinds.count("gave_up") <= 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"offline_after_s": 0}, "offline_after_s"),
        ({"power_off_s": float("nan")}, "power_off_s"),
        ({"backoff_max_s": 10}, "backoff_max_s"),
        ({"max_attempts_per_day": 0}, "max_attempts_per_day"),
        ({"max_attempts_per_day": True}, "max_attempts_per_day"),
        ({"output": ""}, "output"),
    ],
)
def test_config_checks_itself(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        replace(CFG, **change)


def test_the_simulated_bench_recovers_its_uplink_within_a_demo() -> None:
    cfg = load_config(REPO / "config" / "sim-bench.toml")
    assert cfg.uplink.enabled and cfg.uplink.output in {o.name for o in cfg.outputs}
    assert cfg.sim is not None
    # Offline long enough to rule out a keepalive hiccup, short enough to see in a demo.
    assert cfg.uplink.offline_after_s > 2 * cfg.mqtt.keepalive_s
    assert cfg.uplink.offline_after_s / cfg.sim.speed < 10
    # The off window lasts a few samples, so the hold is seen by the policy.
    assert cfg.uplink.power_off_s >= 2 * cfg.sampling.sample_interval_s


def test_the_reference_bench_leaves_it_off_until_asked() -> None:
    assert not load_config(REPO / "config" / "bench-agent.toml").uplink.enabled


@pytest.mark.parametrize(
    ("table", "enabled", "output"),
    [
        ("", False, "wifi"),  # no table: off
        ("[outputs.wifi]\npin = 22\n[uplink]\n", True, "wifi"),  # a table: on, defaults
        ('[outputs.usb3]\npin = 23\n[uplink]\noutput = "usb3"\n', True, "usb3"),
        # Off with its settings kept: the output is not checked then.
        ('[uplink]\nenabled = false\noutput = "usb9"\n', False, "usb9"),
    ],
)
def test_the_uplink_table(tmp_path: Path, table: str, enabled: bool, output: str) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(MINIMAL_CONFIG + table)
    uplink = load_config(path).uplink
    assert (uplink.enabled, uplink.output) == (enabled, output)
    assert (uplink.offline_after_s, uplink.power_off_s) == (1800, 30)
    assert (uplink.backoff_initial_s, uplink.backoff_max_s) == (3600, 6 * 3600)
    assert uplink.max_attempts_per_day == 4


# --------------------------------------------------------------------------- with the controller


class _Bench:
    """The real controller and policy on gpiozero's MockFactory, with the agent's own
    uplink supervisor carrying out the recovery (as `service.Agent` wires it)."""

    def __init__(self, soc_pct: float, state_dir: Path) -> None:
        cfg = load_config(REPO / "config" / "sim-bench.toml")
        self.factory = MockFactory()
        switches = {
            o.name: GpioSwitch(o.name, o.pin or 0, o.safe_state_on, self.factory)
            for o in cfg.outputs
        }
        self.pin = self.factory.pin(next(o.pin for o in cfg.outputs if o.name == "wifi") or 0)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.controller = Controller(
            cfg.policy,
            switches,
            SocEstimator(cfg.battery.capacity_ah, cfg.battery.chemistry, initial_pct=soc_pct),
            emit_event=lambda kind, data: self.events.append((kind, data)),
        )
        self.state_path = state_dir / "uplink-recovery.json"
        self.supervisor = UplinkSupervisor(
            replace(CFG, output="wifi"),
            self.controller,
            self.state_path,
            lambda kind, data: self.events.append((kind, data)),
            0.0,
        )
        self.tz = ZoneInfo(cfg.bench.timezone)

    def sample(self, t: float, connected: bool) -> None:
        """One sample: uplink recovery first, so a hold applies in this same step."""
        now_local = datetime(2026, 11, 27, 10, 0, tzinfo=self.tz) + timedelta(seconds=t)
        self.supervisor.step(t, now_local.date(), connected)
        self.controller.step(now_local, t, {}, cpu_c=45.0)

    def run(self, times: Iterable[float], connected: bool = False) -> list[tuple[float, int]]:
        """Pin states of the access point, one per sample."""
        states = []
        for t in times:
            self.sample(t, connected)
            states.append((t, self.pin.state))
        return states


def test_the_access_point_pin_goes_off_for_the_hold_then_back_on(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    states = dict(bench.run(range(0, 700, 10)))
    # Safe state (off) until the first decision at t=0: on since then, so the router
    # has been on for offline_after_s at t=610.
    assert states[600] == 1
    assert all(states[t] == 0 for t in range(610, 640, 10))
    assert states[640] == 1
    wifi = bench.controller.state_payload(650)["outputs"]["wifi"]
    assert wifi["on"] and wifi["override"] is None
    switched = [d for k, d in bench.events if k == "output_switched" and d["output"] == "wifi"]
    assert [(d["to"], d["reason"]) for d in switched] == [
        ("on", "default"),
        ("off", "override_off"),
        ("on", "default"),
    ]
    assert "uplink_recovery" in switched[1]["detail"]
    assert [d["action"] for k, d in bench.events if k == EVENT_TYPE] == ["power_off", "power_on"]


def test_during_the_hold_the_state_says_why_the_access_point_is_off(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    bench.run(range(0, 620, 10))
    wifi = bench.controller.state_payload(620)["outputs"]["wifi"]
    assert not wifi["on"] and wifi["reason"] == "override_off"
    assert wifi["override"]["source"] == OVERRIDE_SOURCE
    assert 0 < wifi["override"]["expires_in_s"] <= CFG.power_off_s


def test_the_end_of_a_hold_never_switches_on_what_battery_protection_keeps_off(
    tmp_path: Path,
) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    bench.run(range(0, 620, 10))
    assert bench.pin.state == 0  # in the off window
    # The battery falls below the Wi-Fi threshold during the window.
    bench.controller.soc = SocEstimator(50, "lifepo4", initial_pct=10)
    states = bench.run(range(620, 5000, 10))
    assert all(state == 0 for _, state in states)
    wifi = bench.controller.state_payload(5000)["outputs"]["wifi"]
    assert wifi["reason"] == "battery_low"
    # And a router kept off by the battery is never cycled again.
    assert [d["action"] for k, d in bench.events if k == EVENT_TYPE] == ["power_off", "power_on"]


def test_a_battery_shed_access_point_is_left_alone(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=10, state_dir=tmp_path)
    states = bench.run(range(0, 20_000, 10))
    assert all(state == 0 for _, state in states)
    assert not [k for k, _ in bench.events if k == EVENT_TYPE]


def test_a_technicians_override_comes_back_after_the_cycle(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    bench.run(range(0, 100, 10))
    # A technician forces the access point on for an hour; the broker stays away.
    assert bench.controller.set_override("wifi", True, 3600, "technician", 100) is None
    bench.run(range(100, 720, 10))
    assert [d["action"] for k, d in bench.events if k == EVENT_TYPE] == ["power_off", "power_on"]
    wifi = bench.controller.state_payload(720)["outputs"]["wifi"]
    assert wifi["on"] and wifi["override"]["source"] == "technician"
    # Its end stays where it was: an hour from when it was set, not from the restore.
    assert 3600 - 720 + 100 - 10 <= wifi["override"]["expires_in_s"] <= 3600 - 720 + 100
    # The recovery's state was saved after each action, for a restart.
    saved = json.loads(bench.state_path.read_text())
    assert saved["attempts_today"] == 1 and saved["holding_off"] is False


def test_an_override_chosen_during_the_hold_stands(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    bench.run(range(0, 620, 10))  # in the off window now
    assert bench.controller.set_override("wifi", False, None, "technician", 620) is None
    bench.run(range(620, 700, 10))
    wifi = bench.controller.state_payload(700)["outputs"]["wifi"]
    assert not wifi["on"] and wifi["override"]["source"] == "technician"


def test_settings_reloaded_during_a_hold_wait_for_its_end(tmp_path: Path) -> None:
    bench = _Bench(soc_pct=80, state_dir=tmp_path)
    bench.run(range(0, 620, 10))
    assert bench.supervisor.recovery.holding_off
    bench.supervisor.reconfigure(replace(CFG, output="wifi", power_off_s=5), 620)
    assert bench.supervisor.recovery.cfg.power_off_s == CFG.power_off_s  # not yet
    bench.run(range(620, 700, 10))
    assert [d["action"] for k, d in bench.events if k == EVENT_TYPE] == ["power_off", "power_on"]
    assert bench.supervisor.recovery.cfg.power_off_s == 5
