"""Daily service and energy counters: what the city reports about each bench.

Per local day: Wh harvested from the panel, Wh delivered per USB port and to the
access point, charging sessions per port, hours the hotspot was on, and the
largest Wi-Fi client count seen (a count only: no MAC address ever reaches this
module, let alone leaves the bench).

Pure: :meth:`DailyCounters.add_sample` is given the local time, the seconds the
sample stands for and the readings; nothing here reads a clock or a file. The
caller persists :meth:`DailyCounters.to_dict` and restores it with
:meth:`DailyCounters.from_dict` so a restart does not zero the day.

Which channel measures what comes from the configuration: the panel is
``[counters] panel_channel`` (default ``"solar"``); a USB port, and the access
point (``"wifi"``), are measured by the INA219 channel of the same name, the
convention the controller already uses for port currents.

A channel without a reading (failing sensor) adds nothing to its energy — it is
not a zero, it is unknown — and the seconds it was unknown are reported as
``unmeasured_h`` so a short day total is never silently taken for a quiet day.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final

from bench_agent.checks import is_finite_number, require
from bench_agent.json_value import JsonObject
from bench_agent.model import PowerReading

WH_DIGITS: Final = 2  # 10 mWh: well below what a phone charge (~10 Wh) needs
HOURS_DIGITS: Final = 2  # 36 s


@dataclass(frozen=True, slots=True)
class CountersConfig:
    """What is counted, and what a charging session is."""

    panel_channel: str | None = "solar"  # INA219 channel on the solar panel; None: not measured
    ports: tuple[str, ...] = ()  # USB ports with an INA219 channel of the same name
    ap_channel: str | None = None  # INA219 channel on the access point; None: not measured
    hotspot_output: str | None = "wifi"  # the output whose on-time is hotspot_h
    session_min_amps: float = 0.1  # A; a port drawing more than this is charging something
    session_min_s: float = 120.0  # s; for at least this long, to count as a session

    def __post_init__(self) -> None:
        require(
            is_finite_number(self.session_min_amps) and self.session_min_amps > 0,
            "session_min_amps",
            "must be a number > 0",
            self.session_min_amps,
        )
        require(
            is_finite_number(self.session_min_s) and self.session_min_s >= 0,
            "session_min_s",
            "must be a number >= 0",
            self.session_min_s,
        )
        object.__setattr__(self, "ports", tuple(self.ports))
        require(len(set(self.ports)) == len(self.ports), "ports", "listed twice", self.ports)

    @property
    def channels(self) -> tuple[str, ...]:
        """Every INA219 channel whose energy is counted."""
        named = (self.panel_channel, *self.ports, self.ap_channel)
        return tuple(c for c in named if c is not None)


@dataclass(slots=True)
class _Day:
    """One local day's totals, unrounded."""

    day: date
    solar_wh: float = 0.0
    usb_wh: dict[str, float] = field(default_factory=dict)
    ap_wh: float = 0.0
    sessions: dict[str, int] = field(default_factory=dict)
    hotspot_s: float = 0.0
    wifi_clients_max: int | None = None
    unmeasured_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        return {
            "date": self.day.isoformat(),
            "solar_wh": self.solar_wh,
            "usb_wh": dict(self.usb_wh),
            "ap_wh": self.ap_wh,
            "sessions": dict(self.sessions),
            "hotspot_s": self.hotspot_s,
            "wifi_clients_max": self.wifi_clients_max,
            "unmeasured_s": dict(self.unmeasured_s),
        }


@dataclass(slots=True)
class _Session:
    """A port's charging session in progress (it outlives midnight and restarts)."""

    above_s: float = 0.0  # seconds in a row above session_min_amps
    counted: bool = False


class DailyCounters:
    """Today's and yesterday's counters. Used from the main loop only."""

    def __init__(self, cfg: CountersConfig, today: date) -> None:
        self.cfg = cfg
        self.today = self._new_day(today)
        self.yesterday: _Day | None = None
        self._sessions = {port: _Session() for port in cfg.ports}

    def _new_day(self, day: date) -> _Day:
        ports = self.cfg.ports
        return _Day(day, usb_wh=dict.fromkeys(ports, 0.0), sessions=dict.fromkeys(ports, 0))

    # -- counting -----------------------------------------------------------------

    def roll_to(self, day: date) -> None:
        """Make ``day`` (local) today; the day before it becomes ``yesterday``.

        A clock stepped back across midnight (the new date is the day before) keeps
        counting into today rather than throwing today away; any other change of
        date starts a new day, and ``yesterday`` is the last day that has counts
        (its ``date`` says which).
        """
        current = self.today.day
        if day == current or current - day == timedelta(days=1):
            return
        self.yesterday = self.today
        self.today = self._new_day(day)

    def add_sample(
        self,
        local_now: datetime,
        dt_s: float,
        readings: Mapping[str, PowerReading | None],
        outputs_on: Mapping[str, bool],
        clients: int | None = None,
    ) -> None:
        """Count one sample.

        ``local_now`` is the bench's local time (its date picks the day); ``dt_s`` the
        seconds this sample stands for (the time since the previous one, capped by
        the caller so a stalled loop is not extrapolated; 0 for the first);
        ``readings`` what ``Sampler.sample`` returned (None: no reading);
        ``outputs_on`` the actual output states; ``clients`` the number of Wi-Fi
        clients, None where the backend cannot tell.
        """
        self.roll_to(local_now.date())
        dt = float(dt_s) if is_finite_number(dt_s) and dt_s > 0 else 0.0
        day = self.today
        cfg = self.cfg
        if cfg.panel_channel is not None:
            day.solar_wh += self._energy_wh(cfg.panel_channel, readings, dt)
        for port in cfg.ports:
            day.usb_wh[port] += self._energy_wh(port, readings, dt)
            self._count_session(port, readings.get(port), dt)
        if cfg.ap_channel is not None:
            day.ap_wh += self._energy_wh(cfg.ap_channel, readings, dt)
        if cfg.hotspot_output is not None and outputs_on.get(cfg.hotspot_output) is True:
            day.hotspot_s += dt
        if isinstance(clients, int) and not isinstance(clients, bool) and clients >= 0:
            day.wifi_clients_max = max(day.wifi_clients_max or 0, clients)

    def _energy_wh(
        self, channel: str, readings: Mapping[str, PowerReading | None], dt: float
    ) -> float:
        """The energy the channel delivered forward over ``dt``; unknown counts as unmeasured."""
        reading = readings.get(channel)
        if reading is None or not (
            is_finite_number(reading.watts) and is_finite_number(reading.amps)
        ):
            if dt > 0:
                unmeasured = self.today.unmeasured_s
                unmeasured[channel] = unmeasured.get(channel, 0.0) + dt
            return 0.0
        # The INA219's power register is unsigned: current flowing backwards (a
        # battery leaking into the panel at night) is not harvest or delivery.
        if reading.amps < 0:
            return 0.0
        return max(reading.watts, 0.0) * dt / 3600.0

    def _count_session(self, port: str, reading: PowerReading | None, dt: float) -> None:
        session = self._sessions[port]
        if reading is None or not is_finite_number(reading.amps):
            return  # a missed sample neither ends a session nor proves one
        if reading.amps <= self.cfg.session_min_amps:
            session.above_s = 0.0
            session.counted = False
            return
        session.above_s += dt
        if not session.counted and session.above_s >= self.cfg.session_min_s:
            session.counted = True
            self.today.sessions[port] += 1

    # -- what is reported ----------------------------------------------------------

    def snapshot(self) -> JsonObject:
        """``{"today": {...}, "yesterday": {...} | None}``, JSON-ready and rounded.

        A day: ``date``, ``solar_wh``, ``usb_wh`` {port: Wh}, ``ap_wh``,
        ``sessions`` {port: n}, ``hotspot_h``, ``wifi_clients_max`` and
        ``unmeasured_h`` {channel: hours without a reading, only when > 0}. A value
        the bench has no means to measure (no panel channel, no AP channel, no
        hotspot output, no client count) is null.
        """
        return {
            "today": self.day_payload(self.today),
            "yesterday": None if self.yesterday is None else self.day_payload(self.yesterday),
        }

    def day_payload(self, day: _Day) -> JsonObject:
        cfg = self.cfg
        return {
            "date": day.day.isoformat(),
            "solar_wh": None if cfg.panel_channel is None else _wh(day.solar_wh),
            "usb_wh": {port: _wh(day.usb_wh.get(port, 0.0)) for port in cfg.ports},
            "ap_wh": None if cfg.ap_channel is None else _wh(day.ap_wh),
            "sessions": {port: day.sessions.get(port, 0) for port in cfg.ports},
            "hotspot_h": None if cfg.hotspot_output is None else _hours(day.hotspot_s),
            "wifi_clients_max": day.wifi_clients_max,
            "unmeasured_h": {
                channel: _hours(seconds)
                for channel, seconds in sorted(day.unmeasured_s.items())
                if seconds > 0
            },
        }

    # -- persistence ---------------------------------------------------------------

    def to_dict(self) -> JsonObject:
        """JSON-able form, unrounded, with the sessions in progress."""
        return {
            "v": 1,
            "today": self.today.to_dict(),
            "yesterday": None if self.yesterday is None else self.yesterday.to_dict(),
            "sessions_active": {
                port: {"above_s": s.above_s, "counted": s.counted}
                for port, s in self._sessions.items()
                if s.above_s > 0 or s.counted
            },
        }

    @classmethod
    def from_dict(cls, cfg: CountersConfig, data: object) -> DailyCounters:
        """Restore :meth:`to_dict`'s output; ports and channels no longer configured are dropped.

        Raises ValueError, and nothing else, on anything that is not what ``to_dict``
        writes (a truncated or garbled file): the caller starts from zero then.
        """
        require(isinstance(data, Mapping) and data.get("v") == 1, "v", "unknown version", data)
        assert isinstance(data, Mapping)
        today = _parse_day(cfg, "today", data.get("today"))
        counters = cls(cfg, today.day)
        counters.today = today
        raw_yesterday = data.get("yesterday")
        if raw_yesterday is not None:
            counters.yesterday = _parse_day(cfg, "yesterday", raw_yesterday)
        active = data.get("sessions_active", {})
        require(isinstance(active, Mapping), "sessions_active", "must be an object", active)
        assert isinstance(active, Mapping)
        for port, raw in active.items():
            if port not in counters._sessions:
                continue
            name = f"sessions_active.{port}"
            require(isinstance(raw, Mapping), name, "must be an object", raw)
            above, counted = raw.get("above_s"), raw.get("counted")
            require(
                is_finite_number(above) and above >= 0, f"{name}.above_s", "must be >= 0", above
            )
            require(isinstance(counted, bool), f"{name}.counted", "must be true or false", counted)
            counters._sessions[port] = _Session(float(above), bool(counted))
        return counters

    @classmethod
    def restore(
        cls, cfg: CountersConfig, saved: str | bytes | None, today: date
    ) -> tuple[DailyCounters, str | None]:
        """Counters from a saved file's content (None: no file), rolled to ``today``.

        Never raises: a missing, truncated or garbled file gives zero counters for
        today and, for the log, why the saved ones were not used.
        """
        problem = None
        counters = cls(cfg, today)
        if saved is not None:
            try:
                counters = cls.from_dict(cfg, json.loads(saved))
            except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
                problem = f"saved counters ignored: {exc}"
        counters.roll_to(today)
        return counters, problem


def _wh(value: float) -> float:
    return round(value, WH_DIGITS)


def _hours(seconds: float) -> float:
    return round(seconds / 3600.0, HOURS_DIGITS)


def _parse_day(cfg: CountersConfig, name: str, raw: object) -> _Day:
    require(isinstance(raw, Mapping), name, "must be an object", raw)
    assert isinstance(raw, Mapping)
    text = raw.get("date")
    require(isinstance(text, str), f"{name}.date", "must be a date", text)
    assert isinstance(text, str)
    day = _Day(date.fromisoformat(text))  # ValueError on a bad date

    def amount(key: str) -> float:
        value = raw.get(key, 0.0)
        require(
            is_finite_number(value) and value >= 0, f"{name}.{key}", "must be a number >= 0", value
        )
        return float(value)

    def per_key(key: str, known: tuple[str, ...], integer: bool) -> dict[str, Any]:
        values = raw.get(key, {})
        require(isinstance(values, Mapping), f"{name}.{key}", "must be an object", values)
        assert isinstance(values, Mapping)
        kept: dict[str, Any] = {}
        for k, v in values.items():
            if k not in known:
                continue
            ok = is_finite_number(v) and v >= 0 and (not integer or isinstance(v, int))
            require(ok, f"{name}.{key}.{k}", "must be a number >= 0", v)
            kept[k] = v if integer else float(v)
        return kept

    day.solar_wh = amount("solar_wh")
    day.ap_wh = amount("ap_wh")
    day.hotspot_s = amount("hotspot_s")
    day.usb_wh = {p: 0.0 for p in cfg.ports} | per_key("usb_wh", cfg.ports, integer=False)
    day.sessions = {p: 0 for p in cfg.ports} | per_key("sessions", cfg.ports, integer=True)
    day.unmeasured_s = per_key("unmeasured_s", cfg.channels, integer=False)
    clients = raw.get("wifi_clients_max")
    require(
        clients is None or (isinstance(clients, int) and not isinstance(clients, bool)),
        f"{name}.wifi_clients_max",
        "must be an integer or null",
        clients,
    )
    if clients is not None:
        assert isinstance(clients, int)
        require(clients >= 0, f"{name}.wifi_clients_max", "must be >= 0", clients)
        day.wifi_clients_max = clients
    return day


__all__ = ["CountersConfig", "DailyCounters"]
