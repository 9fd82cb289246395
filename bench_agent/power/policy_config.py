"""The policy's configuration: port limits, battery thresholds, temperature limits,
schedules (validated on construction; the config loader prefixes file and key)."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class BatteryThresholds:
    """Battery-protection levels: state of charge in %, and the voltage safety net in V.

    The voltage levels are for the open-circuit voltage, i.e. the terminal voltage
    corrected by the current × ``internal_resistance_ohm``; all three None turns the
    voltage rule off.
    """

    wifi_off_below_pct: float
    wifi_on_above_pct: float
    usb_off_below_pct: float
    usb_on_above_pct: float
    wifi_off_below_volts: float | None = None
    usb_off_below_volts: float | None = None
    restore_above_volts: float | None = None
    voltage_delay_s: float = 90.0  # s a voltage must hold before it sheds or restores
    internal_resistance_ohm: float = 0.0  # battery + cabling, for the I·R correction

    @property
    def voltage_rule(self) -> bool:
        """Whether the voltage safety net is on."""
        return self.wifi_off_below_volts is not None

    def __post_init__(self) -> None:
        self._check_volts()
        for name in (
            "wifi_off_below_pct",
            "wifi_on_above_pct",
            "usb_off_below_pct",
            "usb_on_above_pct",
        ):
            value = getattr(self, name)
            require_finite(name, value)
            require(0.0 <= value <= 100.0, name, "must be between 0 and 100", value)
        require(
            self.wifi_off_below_pct < self.wifi_on_above_pct,
            "wifi_on_above_pct",
            f"must be above wifi_off_below_pct ({self.wifi_off_below_pct})",
            self.wifi_on_above_pct,
        )
        require(
            self.usb_off_below_pct < self.usb_on_above_pct,
            "usb_on_above_pct",
            f"must be above usb_off_below_pct ({self.usb_off_below_pct})",
            self.usb_on_above_pct,
        )
        require(
            self.usb_off_below_pct < self.wifi_off_below_pct,
            "usb_off_below_pct",
            f"must be below wifi_off_below_pct ({self.wifi_off_below_pct}): Wi-Fi is shed first",
            self.usb_off_below_pct,
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
        names = ("wifi_off_below_volts", "usb_off_below_volts", "restore_above_volts")
        levels = [getattr(self, name) for name in names]
        if all(level is None for level in levels):
            return
        lo, hi = VOLTS_RANGE
        for name, level in zip(names, levels, strict=True):
            require(level is not None, name, "the voltage levels go together: set all three", level)
            assert level is not None
            require_finite(name, level)
            require(lo <= level <= hi, name, f"must be between {lo:g} and {hi:g} V", level)
        wifi, usb, restore = levels
        assert wifi is not None and usb is not None and restore is not None
        require(
            usb < wifi,
            "usb_off_below_volts",
            f"must be below wifi_off_below_volts ({wifi:g}): Wi-Fi is shed first",
            usb,
        )
        require(
            restore >= wifi + MIN_VOLTS_HYSTERESIS,
            "restore_above_volts",
            f"must be at least {MIN_VOLTS_HYSTERESIS:g} V above wifi_off_below_volts ({wifi:g})",
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
        if not self.windows:
            return "always"
        return ", ".join(f"{s:%H:%M}-{e:%H:%M}" for s, e in self.windows)


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
