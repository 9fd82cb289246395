"""The policy's configuration: port limits, battery thresholds per load class,
temperature limits, schedules (validated on construction; the config loader prefixes
file and key)."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, time
from types import MappingProxyType
from typing import Final

from bench_agent.checks import require, require_finite
from bench_agent.vocabulary import WIFI, usb_port_number

# --------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class PortLimits:
    """Over-current protection of one USB port."""

    trip_amps: float  # A; sustained current above this trips after trip_samples samples
    hard_trip_amps: float  # A; one sample above this trips at once
    trip_samples: int  # consecutive samples above trip_amps that trip the port
    cooldown_s: float  # s the port stays off after a trip before it is retried
    latch_after_trips: int  # the K-th trip (within trip_forget_s) latches the port off
    trip_forget_s: float = 3600.0  # s without a trip after which the trip count is cleared

    def __post_init__(self) -> None:
        for name in ("trip_amps", "hard_trip_amps", "cooldown_s", "trip_forget_s"):
            require_finite(name, getattr(self, name))
        require(self.trip_amps > 0, "trip_amps", "must be > 0", self.trip_amps)
        require(
            self.hard_trip_amps > self.trip_amps,
            "hard_trip_amps",
            f"must be above trip_amps ({self.trip_amps})",
            self.hard_trip_amps,
        )
        for name in ("trip_samples", "latch_after_trips"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                name,
                "must be an integer >= 1",
                value,
            )
        require(self.cooldown_s >= 0, "cooldown_s", "must be >= 0", self.cooldown_s)
        require(self.trip_forget_s > 0, "trip_forget_s", "must be > 0", self.trip_forget_s)


VOLTS_RANGE: Final = (8.0, 16.0)  # V: what a 12 V battery's levels can sensibly be
MIN_VOLTS_HYSTERESIS: Final = 0.1  # V between shedding and restoring: noise, load steps
VOLTS_NOISE: Final = 0.05  # V above a shed level that does not yet count as recovered
_LOAD_NAME = re.compile(r"[a-z][a-z0-9]*")
_COUNTS = ("none", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True, slots=True)
class LoadClass:
    """One class of load the battery protection sheds as a whole, e.g. the hotspot.

    ``name`` is the stem of its keys, in the config file, the error messages, the saved
    state and the retained state (``<name>_off_below_pct``, ``<name>_battery_shed``,
    ``<name>_shed``); ``label`` names it in words. ``outputs`` are the outputs it covers.
    Off below ``off_below_pct`` % state of charge, on again only above ``on_above_pct``;
    ``off_below_volts`` is its level in the voltage safety net (None: the net is off).
    """

    name: str
    outputs: tuple[str, ...]
    off_below_pct: float
    on_above_pct: float
    off_below_volts: float | None = None
    label: str = ""  # e.g. "Wi-Fi"; empty: the name

    @property
    def title(self) -> str:
        return self.label or self.name

    def key(self, level: str) -> str:
        """The key of one of its levels: "off_below_pct" -> "wifi_off_below_pct"."""
        return f"{self.name}_{level}"

    def __post_init__(self) -> None:
        require(
            isinstance(self.name, str) and _LOAD_NAME.fullmatch(self.name) is not None,
            "name",
            "a load class is named by lower-case letters and digits",
            self.name,
        )
        require(
            isinstance(self.outputs, tuple) and all(isinstance(o, str) for o in self.outputs),
            "outputs",
            f"of load class {self.name!r}: must be a tuple of output names",
            self.outputs,
        )
        for level in ("off_below_pct", "on_above_pct"):
            value = getattr(self, level)
            require_finite(self.key(level), value)
            require(0.0 <= value <= 100.0, self.key(level), "must be between 0 and 100", value)
        require(
            self.off_below_pct < self.on_above_pct,
            self.key("on_above_pct"),
            f"must be above {self.key('off_below_pct')} ({self.off_below_pct})",
            self.on_above_pct,
        )
        if self.off_below_volts is not None:
            _check_level(self.key("off_below_volts"), self.off_below_volts)


def _check_level(name: str, volts: float) -> None:
    require_finite(name, volts)
    lo, hi = VOLTS_RANGE
    require(lo <= volts <= hi, name, f"must be between {lo:g} and {hi:g} V", volts)


@dataclass(frozen=True, slots=True)
class BatteryThresholds:
    """Battery protection: the load classes in shed order, and the voltage safety net.

    ``loads``, first shed first: each class is shed at a higher state of charge (and a
    higher voltage) than the next, so the last is the service kept longest. The voltage
    levels are for the open-circuit voltage, i.e. the terminal voltage corrected by the
    current × ``internal_resistance_ohm``; every class's ``off_below_volts`` and
    ``restore_above_volts`` go together, all None turns the voltage rule off.
    """

    loads: tuple[LoadClass, ...]
    restore_above_volts: float | None = None
    voltage_delay_s: float = 90.0  # s a voltage must hold before it sheds or restores
    internal_resistance_ohm: float = 0.0  # battery + cabling, for the I·R correction

    @property
    def voltage_rule(self) -> bool:
        """Whether the voltage safety net is on."""
        return self.restore_above_volts is not None

    def __post_init__(self) -> None:
        require(
            isinstance(self.loads, tuple)
            and bool(self.loads)
            and all(isinstance(load, LoadClass) for load in self.loads),
            "loads",
            "must be a non-empty tuple of LoadClass",
            self.loads,
        )
        names = [load.name for load in self.loads]
        require(len(set(names)) == len(names), "loads", "two load classes of one name", names)
        self._check_volts()
        for first, then in itertools.pairwise(self.loads):
            require(
                then.off_below_pct < first.off_below_pct,
                then.key("off_below_pct"),
                f"must be below {first.key('off_below_pct')} ({first.off_below_pct}): "
                f"{first.title} is shed first",
                then.off_below_pct,
            )

    def _check_volts(self) -> None:
        require_finite("voltage_delay_s", self.voltage_delay_s)
        require(
            0.0 <= self.voltage_delay_s <= 3600.0,
            "voltage_delay_s",
            "must be between 0 and 3600",
            self.voltage_delay_s,
        )
        require_finite("internal_resistance_ohm", self.internal_resistance_ohm)
        require(
            0.0 <= self.internal_resistance_ohm <= 1.0,
            "internal_resistance_ohm",
            "must be between 0 and 1",
            self.internal_resistance_ohm,
        )
        levels = [(load.key("off_below_volts"), load.off_below_volts) for load in self.loads]
        levels.append(("restore_above_volts", self.restore_above_volts))
        if all(level is None for _, level in levels):
            return
        count = _COUNTS[len(levels)] if len(levels) < len(_COUNTS) else str(len(levels))
        for name, level in levels:
            require(
                level is not None, name, f"the voltage levels go together: set all {count}", level
            )
        restore = self.restore_above_volts
        assert restore is not None
        _check_level("restore_above_volts", restore)
        for first, then in itertools.pairwise(self.loads):
            high, low = first.off_below_volts, then.off_below_volts
            assert high is not None and low is not None
            require(
                low < high,
                then.key("off_below_volts"),
                f"must be below {first.key('off_below_volts')} ({high:g}): "
                f"{first.title} is shed first",
                low,
            )
        top = self.loads[0]
        assert top.off_below_volts is not None
        require(
            restore >= top.off_below_volts + MIN_VOLTS_HYSTERESIS,
            "restore_above_volts",
            f"must be at least {MIN_VOLTS_HYSTERESIS:g} V above {top.key('off_below_volts')} "
            f"({top.off_below_volts:g})",
            restore,
        )


@dataclass(frozen=True, slots=True)
class TemperatureLimits:
    """Over-temperature load shedding, in °C, with hysteresis.

    The CPU limits default to the Pi's own throttling region (it throttles from
    80-85 °C); shedding the USB loads lowers the heat dissipated in the box.
    """

    shed_above_c: float  # enclosure
    resume_below_c: float  # enclosure
    cpu_shed_above_c: float = 80.0
    cpu_resume_below_c: float = 70.0

    def __post_init__(self) -> None:
        for name in ("shed_above_c", "resume_below_c", "cpu_shed_above_c", "cpu_resume_below_c"):
            require_finite(name, getattr(self, name))
        require(
            self.resume_below_c < self.shed_above_c,
            "resume_below_c",
            f"must be below shed_above_c ({self.shed_above_c})",
            self.resume_below_c,
        )
        require(
            self.cpu_resume_below_c < self.cpu_shed_above_c,
            "cpu_resume_below_c",
            f"must be below cpu_shed_above_c ({self.cpu_shed_above_c})",
            self.cpu_resume_below_c,
        )


@dataclass(frozen=True, slots=True)
class Schedule:
    """When an output should be on, in the bench's local wall-clock time.

    ``windows`` are ``(start, end)`` pairs, start inclusive, end exclusive. A window
    whose end is before its start crosses midnight (22:00-02:00 is on from 22:00 to
    02:00 the next morning). An empty tuple means always on (on the allowed days).
    ``weekdays`` (0 = Monday ... 6 = Sunday) is the day a window STARTS on: the
    after-midnight part of a Friday 22:00-02:00 window is on Saturday morning.
    """

    windows: tuple[tuple[time, time], ...] = ()
    weekdays: frozenset[int] = frozenset(range(7))

    def __post_init__(self) -> None:
        require(isinstance(self.windows, tuple), "windows", "must be a tuple", self.windows)
        for i, window in enumerate(self.windows):
            name = f"windows[{i}]"
            require(
                isinstance(window, tuple) and len(window) == 2,
                name,
                "must be a (start, end) pair",
                window,
            )
            start, end = window
            for t in (start, end):
                require(isinstance(t, time), name, "start and end must be datetime.time", t)
                require(t.tzinfo is None, name, "times are local wall-clock, no tzinfo", t)
            require(start != end, name, "start equals end: empty or whole day is ambiguous", window)
        object.__setattr__(self, "weekdays", frozenset(self.weekdays))
        require(bool(self.weekdays), "weekdays", "must not be empty", self.weekdays)
        require(
            all(isinstance(d, int) and 0 <= d <= 6 for d in self.weekdays),
            "weekdays",
            "must be integers 0 (Monday) .. 6 (Sunday)",
            sorted(self.weekdays),
        )

    def is_active(self, now_local: datetime) -> bool:
        """Whether the output is scheduled on at ``now_local`` (wall clock of its tzinfo)."""
        t = now_local.time().replace(tzinfo=None)
        today = now_local.weekday()
        yesterday = (today - 1) % 7
        if not self.windows:
            return today in self.weekdays
        for start, end in self.windows:
            if start < end:
                if start <= t < end and today in self.weekdays:
                    return True
            elif (t >= start and today in self.weekdays) or (
                t < end and yesterday in self.weekdays
            ):
                return True
        return False

    def describe(self) -> str:
        """The windows as text, e.g. "06:00-09:00, 22:00-02:00"."""
        return _describe(self.windows)


@functools.lru_cache(maxsize=64)
def _describe(windows: tuple[tuple[time, time], ...]) -> str:
    """Schedule.describe, made once per set of windows (the policy asks every second)."""
    if not windows:
        return "always"
    return ", ".join(f"{s:%H:%M}-{e:%H:%M}" for s, e in windows)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Everything the policy needs from the configuration. Mappings are copied read-only."""

    ports: Mapping[str, PortLimits]
    battery: BatteryThresholds
    temperature: TemperatureLimits
    schedules: Mapping[str, Schedule] = field(default_factory=dict)
    defaults: Mapping[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("ports", "schedules", "defaults"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        for port, limits in self.ports.items():
            require(port != WIFI, "ports", f"{WIFI!r} is the hotspot, not a USB port", port)
            require(
                isinstance(port, str) and usb_port_number(port) is not None,
                "ports",
                "a USB port is named usb<N>",
                port,
            )
            require(isinstance(limits, PortLimits), f"ports.{port}", "must be PortLimits", limits)
        require(
            isinstance(self.battery, BatteryThresholds),
            "battery",
            "must be BatteryThresholds",
            self.battery,
        )
        require(
            isinstance(self.temperature, TemperatureLimits),
            "temperature",
            "must be TemperatureLimits",
            self.temperature,
        )
        outputs = set(self.outputs)
        covered: dict[str, str] = {}
        for load in self.battery.loads:
            for output in load.outputs:
                require(
                    output in outputs,
                    "battery",
                    f"load class {load.name!r}: unknown output",
                    output,
                )
                require(
                    output not in covered,
                    "battery",
                    f"load class {load.name!r}: already in {covered.get(output)!r}",
                    output,
                )
                covered[output] = load.name
        # An output in no class would never be shed for the battery: refused, not guessed.
        missing = [o for o in self.outputs if o not in covered]
        require(not missing, "battery", "outputs in no load class", missing)
        for output, schedule in self.schedules.items():
            require(output in outputs, "schedules", "unknown output", output)
            require(
                isinstance(schedule, Schedule), f"schedules.{output}", "must be Schedule", schedule
            )
        for output, on in self.defaults.items():
            require(output in outputs, "defaults", "unknown output", output)
            require(isinstance(on, bool), f"defaults.{output}", "must be true or false", on)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every output the policy decides: the USB ports, then "wifi"."""
        return (*self.ports, WIFI)
