"""The readers of the tables the power side is built from: `[battery]`, `[policy]`
(with its battery, temperature, ports, schedule and defaults subtables), `[uplink]`
and `[counters]`, into the types of `bench_agent/power/`.

Apart from the other readers (`config_tables.py`) because these depend on each other
and on the rest of the file: the policy's voltage defaults follow the battery's
chemistry (`_VOLTAGE_NET`), its voltage rules need a sensor on the battery, its ports
and schedules are the configured outputs, the uplink's output must be a gpio one and
the counters' channels are the configured sensors. And the power types check their own
cross-field rules (`__post_init__`), which `_build` turns into one config error.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import time
from functools import partial
from typing import Any, TypeVar

from bench_agent.config import BatteryConfig, Ina219Config, OutputConfig
from bench_agent.power.counters import CountersConfig
from bench_agent.power.policy_config import (
    BatteryThresholds,
    LoadClass,
    PolicyConfig,
    PortLimits,
    Schedule,
    TemperatureLimits,
)
from bench_agent.power.soc import DEFAULT_REST_CURRENT_C
from bench_agent.power.uplink import UplinkConfig
from bench_agent.toml_table import TomlTable, checked
from bench_agent.vocabulary import WIFI

_T = TypeVar("_T")


def parse_battery(t: TomlTable) -> BatteryConfig:
    with checked(t):
        return BatteryConfig(
            capacity_ah=t.get_float("capacity_ah", 50.0, lo=1, hi=10_000),
            chemistry=t.get_choice("chemistry", ("lifepo4", "agm"), "lifepo4"),
            channel=t.get_str("channel", "battery"),
            # C/100 is true rest (the least that makes sense); above C/5 the I·R
            # correction is bigger than LiFePO4's whole plateau.
            rest_current_c=t.get_float("rest_current_c", DEFAULT_REST_CURRENT_C, lo=0.01, hi=0.2),
            internal_resistance_ohm=t.get_float("internal_resistance_ohm", None, lo=0, hi=1),
        )


# Voltage safety net defaults per chemistry, in V of a 12 V battery at rest (the policy
# corrects the measured voltage by I·R first): (Wi-Fi off below, USB off below, both
# back at). They sit BELOW the state-of-charge levels (30 % / 15 %) on purpose: they are
# the net for an estimate gone wrong, not a second opinion on a good one. And ABOVE the
# low-voltage disconnects that protect the battery itself (a BMS at 2.5-2.8 V per cell,
# 10-11.2 V; the load output of a solar controller or a BatteryProtect, typically set
# between 10.5 and 12 V; the simulated bench's controller at 12.0 V for LiFePO4 and
# 11.8 V for AGM), which cut everything, the Pi and the uplink included. The percentages
# below are read off the estimator's charts (bench_agent/power/chemistry.py), which the
# simulated battery also follows.
_VOLTAGE_NET: dict[str, tuple[float, float, float]] = {
    # LiFePO4 (4S): the plateau ends at ~3.2 V per cell (12.8 V, ~20 %); 3.10 V per
    # cell (12.4 V) is ~15 % left and 3.05 V (12.2 V) ~12 %, on the steep knee where a
    # volt means something (0.08 V per %), unlike the plateau (~0.01 V per %). Back at
    # 3.25 V per cell (13.0 V): on the plateau again, ~40 % at rest, where the Wi-Fi's
    # own state-of-charge level brings it back too.
    "lifepo4": (12.4, 12.2, 13.0),
    # AGM: a sloping curve (~0.013 V per %): 12.0 V is ~27 % and 11.9 V ~20 % at rest;
    # lead-acid is worn by every deep discharge, so the net sits higher in % than
    # LiFePO4's. Back at 12.5 V, ~65 % at rest, which a charging battery passes at
    # once and a resting one only when really recharged.
    "agm": (12.0, 11.9, 12.5),
}


DAY_S = 86400.0


def parse_uplink(t: TomlTable, outputs: tuple[OutputConfig, ...]) -> UplinkConfig:
    with checked(t):
        # Writing the table means wanting it; `enabled = false` keeps the settings, off.
        enabled = t.get_bool("enabled", True)
        output = t.get_str("output", "wifi")
        if enabled:
            by_name = {o.name: o for o in outputs}
            if output not in by_name:
                known = ", ".join(by_name) or "none"
                raise t.error("output", f"no output {output!r} in [outputs] (configured: {known})")
            if by_name[output].backend == "nmcli":
                # Taking a hotspot profile down does not power-cycle a hung router.
                raise t.error("output", f"{output!r} uses nmcli; a power cycle needs a gpio output")
        initial = t.get_float("backoff_initial_s", 3600.0, lo=60, hi=7 * DAY_S)
        return _build(
            t,
            "backoff_max_s",
            partial(
                UplinkConfig,
                enabled=enabled,
                output=output,
                offline_after_s=t.get_float("offline_after_s", 1800.0, lo=60, hi=7 * DAY_S),
                power_off_s=t.get_float("power_off_s", 30.0, lo=1, hi=3600),
                backoff_initial_s=initial,
                backoff_max_s=t.get_float("backoff_max_s", 21600.0, lo=initial, hi=7 * DAY_S),
                max_attempts_per_day=t.get_int("max_attempts_per_day", 4, lo=1, hi=96),
                backoff_reset_after_s=t.get_float(
                    "backoff_reset_after_s", 3600.0, lo=1, hi=7 * DAY_S
                ),
            ),
        )


def parse_counters(
    t: TomlTable, sensors: tuple[Ina219Config, ...], outputs: tuple[OutputConfig, ...]
) -> CountersConfig:
    channels = {s.name for s in sensors}
    with checked(t):
        panel = t.get_str("panel_channel", None)
        if panel is None:
            # The reference wiring names the panel's channel "solar"; a bench without
            # one (panel power from the charge controller only) has no solar_wh.
            panel = "solar" if "solar" in channels else None
        elif panel not in channels:
            known = ", ".join(sorted(channels)) or "none"
            raise t.error(
                "panel_channel", f"no channel {panel!r} in [ina219] (configured: {known})"
            )
        output_names = [o.name for o in outputs]
        return _build(
            t,
            "session_min_amps",
            partial(
                CountersConfig,
                panel_channel=panel,
                # A port and the access point are measured by the channel of their name.
                ports=tuple(n for n in output_names if n != WIFI and n in channels),
                ap_channel="wifi" if "wifi" in channels else None,
                hotspot_output="wifi" if "wifi" in output_names else None,
                session_min_amps=t.get_float("session_min_amps", 0.1, lo=0.001, hi=10),
                session_min_s=t.get_float("session_min_s", 120.0, lo=0, hi=DAY_S),
            ),
        )


def _parse_window(t: TomlTable, key: str, text: Any) -> tuple[time, time]:
    if not isinstance(text, str) or "-" not in text:
        raise t.error(key, 'windows are "HH:MM-HH:MM" strings')
    start, _, end = text.partition("-")
    try:
        return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise t.error(key, f"bad time window {text!r}") from None


def _parse_policy_battery(
    t: TomlTable, ports: list[str], battery: BatteryConfig, battery_measured: bool
) -> BatteryThresholds:
    wifi_v, usb_v, restore_v = _VOLTAGE_NET[battery.chemistry]
    with checked(t):
        pct = (
            t.get_float("wifi_off_below_pct", 30.0, lo=0, hi=100),
            t.get_float("wifi_on_above_pct", 40.0, lo=0, hi=100),
            t.get_float("usb_off_below_pct", 15.0, lo=0, hi=100),
            t.get_float("usb_on_above_pct", 25.0, lo=0, hi=100),
        )
        volts = (
            t.get_float("wifi_off_below_volts", wifi_v, lo=8, hi=16),
            t.get_float("usb_off_below_volts", usb_v, lo=8, hi=16),
            t.get_float("restore_above_volts", restore_v, lo=8, hi=16),
        )
        delay = t.get_float("voltage_delay_s", 90.0, lo=0, hi=3600)
    # Without a sensor on the battery there is no voltage to watch; a voltage rule
    # waiting for one would hold every shed load off forever.
    wifi_volts, usb_volts, restore_volts = volts if battery_measured else (None, None, None)
    try:
        # The load classes, in shed order, each with the keys named after it.
        return BatteryThresholds(
            loads=(
                LoadClass(WIFI, (WIFI,), pct[0], pct[1], wifi_volts, label="Wi-Fi"),
                LoadClass("usb", tuple(ports), pct[2], pct[3], usb_volts, label="USB"),
            ),
            restore_above_volts=restore_volts,
            voltage_delay_s=delay,
            internal_resistance_ohm=battery.resistance_ohm,
        )
    except ValueError as exc:
        # "usb_off_below_volts: must be below …": name the key that has to change.
        name, _, problem = str(exc).partition(": ")
        raise t.error(name, problem) from None


def parse_policy(
    t: TomlTable,
    ports: list[str],
    outputs: list[str],
    battery: BatteryConfig,
    battery_measured: bool,
) -> PolicyConfig:
    with checked(t):
        battery_t = t.table("battery") or TomlTable(t.file, t.key("battery"), {})
        thresholds = _parse_policy_battery(battery_t, ports, battery, battery_measured)
        temp_t = t.table("temperature") or TomlTable(t.file, t.key("temperature"), {})
        with checked(temp_t):
            temperature = (
                temp_t.get_float("enclosure_shed_above_c", 65.0, lo=-40, hi=125),
                temp_t.get_float("enclosure_resume_below_c", 55.0, lo=-40, hi=125),
                temp_t.get_float("cpu_shed_above_c", 80.0, lo=-40, hi=125),
                temp_t.get_float("cpu_resume_below_c", 70.0, lo=-40, hi=125),
            )
        port_t = t.table("ports") or TomlTable(t.file, t.key("ports"), {})
        with checked(port_t):
            limits = (
                port_t.get_float("trip_amps", 2.4, lo=0.01, hi=100),
                port_t.get_float("hard_trip_amps", 3.0, lo=0.01, hi=100),
                port_t.get_int("trip_samples", 3, lo=1, hi=1000),
                port_t.get_float("cooldown_s", 60.0, lo=0, hi=86400),
                port_t.get_int("latch_after_trips", 3, lo=1, hi=1000),
            )
        schedules: dict[str, Schedule] = {}
        schedule_t = t.table("schedule") or TomlTable(t.file, t.key("schedule"), {})
        with checked(schedule_t):
            for name in outputs:
                windows = schedule_t._get(name, list, "an array of windows", None)
                if windows is not None:
                    parsed = tuple(_parse_window(schedule_t, name, w) for w in windows)
                    schedules[name] = _build(schedule_t, name, partial(Schedule, parsed))
        defaults_t = t.table("defaults") or TomlTable(t.file, t.key("defaults"), {})
        with checked(defaults_t):
            defaults = {n: defaults_t.get_bool(n, True) for n in outputs}
        return _build(
            t,
            "battery",
            lambda: PolicyConfig(
                ports={p: PortLimits(*limits) for p in ports},
                battery=thresholds,
                temperature=TemperatureLimits(*temperature),
                schedules=schedules,
                defaults=defaults,
            ),
        )


def _build(t: TomlTable, key: str, make: Callable[[], _T]) -> _T:
    """Build a policy object whose own `__post_init__` checks cross-field rules."""
    try:
        return make()
    except ValueError as exc:
        raise t.error(key, str(exc)) from None
