"""What is planned: the bench (the agent's own configuration, with the owner's
what-ifs applied through the real config types, which validate themselves) and how
people use it (the usage profile: phones per hour, their draw, the hotspot's watts,
the bench's own consumption, prices for the sweep)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from datetime import time
from pathlib import Path
from typing import Final

from bench_agent.config import Config
from bench_agent.errors import ConfigError
from bench_agent.power.chemistry import CHEMISTRIES
from bench_agent.power.policy_config import LoadClass, PolicyConfig, Schedule
from bench_agent.toml_table import TomlTable, checked
from bench_agent.vocabulary import WIFI

DEFAULT_USAGE: Final = Path(__file__).resolve().parent / "data" / "town-square.toml"
CLI: Final = "<command line>"  # the "file" of a bad flag in a one-line error


@dataclass(frozen=True, slots=True)
class Usage:
    """How a bench is used, and what its parts cost."""

    arrivals_per_port_per_hour: tuple[float, ...]  # local hours 0..23
    mean_stay_s: float  # a phone leaves after this long on average (or when full)
    phone_min_amps: float  # constant-current draw of a phone, uniform between these
    phone_max_amps: float
    hotspot_watts: float  # the access point, straight off the battery bus
    pi_watts: float  # the Pi at its 5 V input, always on
    panel_watts_peak: float  # the panel fitted, unless the command line says otherwise
    panel_per_watt: float  # price of a watt of panel
    battery_per_ah: float  # price of an Ah of battery
    currency: str


@dataclass(frozen=True, slots=True)
class Bench:
    """One bench as planned: the agent's real policy config plus the physical parts."""

    policy: PolicyConfig
    chemistry: str  # "lifepo4" | "agm"
    capacity_ah: float
    rest_current_c: float
    resistance_ohm: float  # battery + cabling: the estimator's and the policy's I·R
    panel_watts_peak: float
    timezone: str
    usage: Usage

    @property
    def ports(self) -> tuple[str, ...]:
        return tuple(self.policy.ports)


def load_usage(path: Path) -> Usage:
    file = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(file, "<file>", "no such file") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ConfigError(file, "<file>", f"unreadable: {exc}") from None
    top = TomlTable(file, "", raw)
    with checked(top):
        phones = top.table("phones", required=True)
        assert phones is not None
        with checked(phones):
            arrivals = phones._get("arrivals_per_port_per_hour", list, "an array", None)
            if not isinstance(arrivals, list) or len(arrivals) != 24:
                raise phones.error("arrivals_per_port_per_hour", "must be 24 numbers (hours 0-23)")
            for i, a in enumerate(arrivals):
                if isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 60:
                    raise phones.error(f"arrivals_per_port_per_hour[{i}]", "must be 0-60")
            stay = phones.get_float("mean_stay_min", 45.0, lo=1, hi=1440) * 60.0
            lo_a = phones.get_float("min_amps", 1.0, lo=0.05, hi=3.0)
            hi_a = phones.get_float("max_amps", 2.1, lo=0.05, hi=3.0)
            if hi_a < lo_a:
                raise phones.error("max_amps", f"must be at least min_amps ({lo_a})")
        loads = top.table("loads") or TomlTable(file, "loads", {})
        with checked(loads):
            hotspot = loads.get_float("hotspot_watts", 6.0, lo=0, hi=200)
            pi = loads.get_float("pi_watts", 2.5, lo=0, hi=50)
        parts = top.table("parts") or TomlTable(file, "parts", {})
        with checked(parts):
            panel = parts.get_float("panel_watts_peak", 100.0, lo=1, hi=10_000)
            per_w = parts.get_float("panel_per_watt", 1.0, lo=0, hi=1e9)
            per_ah = parts.get_float("battery_per_ah", 1.0, lo=0, hi=1e9)
            currency = parts.get_str("currency", "units")
    return Usage(
        tuple(float(a) for a in arrivals), stay, lo_a, hi_a, hotspot, pi, panel, per_w, per_ah,
        currency,
    )  # fmt: skip


def parse_hours(text: str, flag: str) -> Schedule:
    """ "06:00-22:00" (24:00 is midnight) as a Schedule; ConfigError naming the flag."""
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError(text)
        times = [
            time(0, 0) if part.strip() == "24:00" else time.fromisoformat(part.strip())
            for part in (start, end)
        ]
        return Schedule(windows=((times[0], times[1]),))
    except ValueError as exc:
        raise ConfigError(CLI, flag, f"bad window {text!r}: HH:MM-HH:MM ({exc})") from None


def plan_bench(
    cfg: Config,
    usage: Usage,
    *,
    panel_w: float | None = None,
    battery_ah: float | None = None,
    usb_ports: int | None = None,
    wifi_hours: str | None = None,
) -> Bench:
    """The agent's configuration with the owner's what-ifs; ConfigError on a bad one."""
    if panel_w is not None and not 1 <= panel_w <= 10_000:
        raise ConfigError(CLI, "--panel-w", f"must be 1-10000 W, got {panel_w:g}")
    if battery_ah is not None and not 1 <= battery_ah <= 10_000:
        raise ConfigError(CLI, "--battery-ah", f"must be 1-10000 Ah, got {battery_ah:g}")
    if usb_ports is not None and not 0 <= usb_ports <= 16:
        raise ConfigError(CLI, "--usb-ports", f"must be 0-16, got {usb_ports}")
    policy = cfg.policy
    capacity = cfg.battery.capacity_ah if battery_ah is None else battery_ah
    resistance = cfg.battery.resistance_ohm
    if battery_ah is not None and battery_ah != cfg.battery.capacity_ah:
        # Another battery: its own typical resistance, not the fitted one's.
        resistance = CHEMISTRIES[cfg.battery.chemistry].resistance_ohm_ah / capacity
    try:
        if usb_ports is not None:
            policy = _with_ports(policy, usb_ports)
        if wifi_hours is not None:
            schedules = dict(policy.schedules)
            schedules[WIFI] = parse_hours(wifi_hours, "--wifi-hours")
            policy = replace(policy, schedules=schedules)
        policy = replace(
            policy, battery=replace(policy.battery, internal_resistance_ohm=resistance)
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(cfg.source), "policy", str(exc)) from None
    return Bench(
        policy=policy,
        chemistry=cfg.battery.chemistry,
        capacity_ah=capacity,
        rest_current_c=cfg.battery.rest_current_c,
        resistance_ohm=resistance,
        panel_watts_peak=usage.panel_watts_peak if panel_w is None else panel_w,
        timezone=cfg.bench.timezone,
        usage=usage,
    )


def _with_ports(policy: PolicyConfig, count: int) -> PolicyConfig:
    """The same policy with USB ports usb1..usbN, each limited and scheduled as the
    first configured port is, in the same load class."""
    if not policy.ports:
        raise ConfigError(CLI, "--usb-ports", "the bench configuration has no USB port to copy")
    first = next(iter(policy.ports))
    names = tuple(f"usb{i}" for i in range(1, count + 1))
    ports = {n: policy.ports[first] for n in names}
    schedules = {o: s for o, s in policy.schedules.items() if o not in policy.ports}
    defaults = {o: d for o, d in policy.defaults.items() if o not in policy.ports}
    if first in policy.schedules:
        schedules.update(dict.fromkeys(names, policy.schedules[first]))
    if first in policy.defaults:
        defaults.update(dict.fromkeys(names, policy.defaults[first]))
    loads: list[LoadClass] = []
    for load in policy.battery.loads:
        if first in load.outputs:
            rest = tuple(o for o in load.outputs if o not in policy.ports)
            loads.append(replace(load, outputs=(*names, *rest)))
        else:
            loads.append(load)
    battery = replace(policy.battery, loads=tuple(loads))
    return replace(policy, ports=ports, battery=battery, schedules=schedules, defaults=defaults)
