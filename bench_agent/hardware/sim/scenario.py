"""Scripted faults on the simulated timeline: a TOML scenario file and its player.

The format is documented in `config/scenarios/README.md`. In short::

    [scenario]                  # optional
    name = "demo day"
    start_time = "06:00"        # a hint for the runner: local time to start at

    [[event]]
    at = "14:30"                # local time, first occurrence at or after the start
    action = "port.short"
    port = "usb2"

    [[event]]
    at = 5400                   # or seconds of simulated time after the start
    action = "clouds.set"
    cover = "auto"

A file is parsed once into frozen dataclasses; anything unknown or out of range is a
`ConfigError(file, key, problem)` naming the event (numbered from 1) and its key.
`ScenarioPlayer.due(now)` hands each event out exactly once, when its time has come.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final, TypeVar

from bench_agent.errors import ConfigError
from bench_agent.hardware.sim.params import CHANNELS, PORTS
from bench_agent.hardware.sim.physics import BenchModel


class Action(StrEnum):
    """What an event does. Physical ones are applied to the `BenchModel` by
    `apply_to_model`; the others are for the simulated sensors, pins, clock and
    charge controller, which the simulated backend applies."""

    SENSOR_FAIL = "sensor.fail"
    SENSOR_RECOVER = "sensor.recover"
    PHONE_PLUG = "phone.plug"
    PHONE_UNPLUG = "phone.unplug"
    PORT_SHORT = "port.short"
    PORT_UNSHORT = "port.unshort"
    TAMPER_OPEN = "tamper.open"
    TAMPER_CLOSE = "tamper.close"
    BATTERY_SET = "battery.set"
    CLOUDS_SET = "clouds.set"
    CLOCK_JUMP = "clock.jump"
    CLOCK_SYNC = "clock.sync"
    CHARGER_GARBAGE = "charger.garbage"
    CHARGER_CORRUPT = "charger.corrupt"
    CHARGER_UNPLUG = "charger.unplug"


# For each action: (keys it requires, keys it may have), besides at, action, day, note.
_ARGS: Final[dict[Action, tuple[frozenset[str], frozenset[str]]]] = {
    Action.SENSOR_FAIL: (frozenset({"channel"}), frozenset()),
    Action.SENSOR_RECOVER: (frozenset({"channel"}), frozenset()),
    Action.PHONE_PLUG: (frozenset({"port"}), frozenset({"amps"})),
    Action.PHONE_UNPLUG: (frozenset({"port"}), frozenset()),
    Action.PORT_SHORT: (frozenset({"port"}), frozenset()),
    Action.PORT_UNSHORT: (frozenset({"port"}), frozenset()),
    Action.TAMPER_OPEN: (frozenset(), frozenset()),
    Action.TAMPER_CLOSE: (frozenset(), frozenset()),
    Action.BATTERY_SET: (frozenset({"soc_pct"}), frozenset()),
    Action.CLOUDS_SET: (frozenset({"cover"}), frozenset()),
    Action.CLOCK_JUMP: (frozenset({"by_s"}), frozenset()),
    Action.CLOCK_SYNC: (frozenset(), frozenset()),
    Action.CHARGER_GARBAGE: (frozenset({"bytes"}), frozenset()),
    Action.CHARGER_CORRUPT: (frozenset({"blocks"}), frozenset()),
    Action.CHARGER_UNPLUG: (frozenset({"for_s"}), frozenset()),
}
_COMMON_KEYS: Final = frozenset({"at", "action", "day", "note"})
_SCENARIO_KEYS: Final = frozenset({"name", "description", "start_time", "seed"})
_TOP_KEYS: Final = frozenset({"scenario", "event"})
_CLOCK_RE: Final = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")

_T = TypeVar("_T")

MAX_JUMP_S: Final = 10 * 365 * 86400.0  # a Pi without RTC can be wrong by years, not more


@dataclass(frozen=True, slots=True)
class EventTime:
    """When an event fires: `after_s` seconds after the start, or at `local_time` on the
    first day that reaches it at or after the start, plus `day` whole days."""

    after_s: float | None = None
    local_time: time | None = None
    day: int = 0

    def __post_init__(self) -> None:
        if (self.after_s is None) == (self.local_time is None):
            raise ValueError("exactly one of after_s and local_time must be given")
        if self.after_s is not None and not (math.isfinite(self.after_s) and self.after_s >= 0):
            raise ValueError("after_s must be a finite number >= 0")
        if self.day < 0 or (self.day and self.local_time is None):
            raise ValueError("day must be >= 0 and only goes with local_time")

    def resolve(self, start_local: datetime) -> datetime:
        """The UTC instant of this time for a run starting at `start_local` (aware; its
        zone is the bench's local zone)."""
        if start_local.tzinfo is None:
            raise ValueError("start_local must be timezone-aware")
        if self.after_s is not None:
            return (start_local + timedelta(seconds=self.after_s)).astimezone(UTC)
        assert self.local_time is not None  # by __post_init__
        when = datetime.combine(start_local.date(), self.local_time, start_local.tzinfo)
        if when < start_local:
            when += timedelta(days=1)
        return (when + timedelta(days=self.day)).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class ScenarioEvent:
    """One scripted event. Only the fields its action takes are set; the rest are None.

    channel: INA219 channel name; port: "usb1" | "usb2"; amps: a plugged phone's
    constant-current draw (None: random); soc_pct: battery state of charge, per cent;
    cover: cloud cover 0..1 (None with clouds.set: back to the random weather);
    by_s: clock jump, seconds (negative: backwards); byte_count: garbage bytes on the
    VE.Direct line; blocks: VE.Direct blocks sent with a bad checksum; for_s: how long
    the charge controller's cable stays unplugged, seconds.
    """

    number: int  # position in the file, from 1
    at: EventTime
    action: Action
    note: str = ""
    channel: str | None = None
    port: str | None = None
    amps: float | None = None
    soc_pct: float | None = None
    cover: float | None = None
    by_s: float | None = None
    byte_count: int | None = None
    blocks: int | None = None
    for_s: float | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    source: str  # the file it came from, for messages
    name: str
    description: str
    start_time: time | None  # local time the runner should start at, if it cares
    seed: int | None  # seed the runner should give the bench model, if it cares
    events: tuple[ScenarioEvent, ...]


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file. Raises ConfigError on any problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "(file)", f"cannot read: {exc}") from exc
    return parse_scenario(text, source)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse scenario TOML text; `source` names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(toml)", str(exc)) from exc
    _reject_unknown(source, "", data, _TOP_KEYS)

    meta = data.get("scenario", {})
    if not isinstance(meta, dict):
        raise ConfigError(source, "scenario", "must be a table")
    _reject_unknown(source, "scenario.", meta, _SCENARIO_KEYS)
    name = _string(source, "scenario.name", meta.get("name", Path(source).stem))
    description = _string(source, "scenario.description", meta.get("description", ""))
    start_time = None
    if "start_time" in meta:
        start_time = _clock(source, "scenario.start_time", meta["start_time"])
    seed = None
    if "seed" in meta:
        seed = _integer(source, "scenario.seed", meta["seed"], 0, 2**63 - 1)

    raw_events = data.get("event", [])
    if not isinstance(raw_events, list):
        raise ConfigError(source, "event", "must be an array of tables: [[event]]")
    events = tuple(
        _parse_event(source, number, raw) for number, raw in enumerate(raw_events, start=1)
    )
    return Scenario(source, name, description, start_time, seed, events)


def apply_to_model(event: ScenarioEvent, model: BenchModel) -> bool:
    """Apply a physical event (phones, shorts, battery, clouds) to the bench model.
    Returns False, doing nothing, for the events the simulated hardware applies."""
    match event.action:
        case Action.PHONE_PLUG:
            model.plug_phone(_required(event.port), event.amps)
        case Action.PHONE_UNPLUG:
            model.unplug_phone(_required(event.port))
        case Action.PORT_SHORT | Action.PORT_UNSHORT:
            model.short_port(_required(event.port), event.action is Action.PORT_SHORT)
        case Action.BATTERY_SET:
            model.set_soc(_required(event.soc_pct))
        case Action.CLOUDS_SET:
            model.set_cloud_cover(event.cover)
        case _:
            return False
    return True


class ScenarioPlayer:
    """Hands out a scenario's events, each exactly once, when their time has come.

    Times are resolved once, against `start_local` (aware; the bench's local zone), so
    the player follows the simulated timeline it is given, not any clock.
    """

    def __init__(self, scenario: Scenario, start_local: datetime) -> None:
        if start_local.tzinfo is None:
            raise ValueError("start_local must be timezone-aware")
        timed = [(event.at.resolve(start_local), event.number, event) for event in scenario.events]
        timed.sort(key=lambda item: (item[0], item[1]))  # ties: in file order
        self._schedule = [(when, event) for when, _, event in timed]
        self._next = 0

    @property
    def schedule(self) -> tuple[tuple[datetime, ScenarioEvent], ...]:
        """Every event with its UTC time, in firing order."""
        return tuple(self._schedule)

    @property
    def pending(self) -> int:
        return len(self._schedule) - self._next

    def next_due_utc(self) -> datetime | None:
        """When the next event fires, or None when all have been handed out."""
        if self._next >= len(self._schedule):
            return None
        return self._schedule[self._next][0]

    def due(self, now_utc: datetime) -> list[ScenarioEvent]:
        """Events whose time is at or before `now_utc` and not handed out before."""
        if now_utc.tzinfo is None:
            raise ValueError("now_utc must be timezone-aware")
        out: list[ScenarioEvent] = []
        while self._next < len(self._schedule) and self._schedule[self._next][0] <= now_utc:
            out.append(self._schedule[self._next][1])
            self._next += 1
        return out


# ---------------------------------------------------------------- validation helpers


def _parse_event(source: str, number: int, raw: object) -> ScenarioEvent:
    prefix = f"event[{number}]"
    if not isinstance(raw, dict):
        raise ConfigError(source, prefix, "must be a table")
    if "action" not in raw:
        raise ConfigError(source, f"{prefix}.action", "missing")
    action_name = raw["action"]
    try:
        if not isinstance(action_name, str):
            raise ValueError(action_name)
        action = Action(action_name)
    except ValueError:
        known = ", ".join(a.value for a in Action)
        raise ConfigError(
            source, f"{prefix}.action", f"unknown action {action_name!r}; expected one of {known}"
        ) from None
    required, allowed = _ARGS[action]
    _reject_unknown(source, f"{prefix}.", raw, _COMMON_KEYS | required | allowed)
    for key in sorted(required):
        if key not in raw:
            raise ConfigError(source, f"{prefix}.{key}", f"missing; {action} needs it")

    at = _event_time(source, prefix, raw)
    note = _string(source, f"{prefix}.note", raw.get("note", ""))

    def given(key: str, parse: Callable[[str, object], _T]) -> _T | None:
        return parse(f"{prefix}.{key}", raw[key]) if key in raw else None

    return ScenarioEvent(
        number=number,
        at=at,
        action=action,
        note=note,
        channel=given("channel", lambda k, v: _choice(source, k, v, CHANNELS)),
        port=given("port", lambda k, v: _choice(source, k, v, PORTS)),
        amps=given("amps", lambda k, v: _number(source, k, v, 0.05, 3.0)),
        soc_pct=given("soc_pct", lambda k, v: _number(source, k, v, 0.0, 100.0)),
        cover=given("cover", lambda k, v: _cover(source, k, v)),
        by_s=given("by_s", lambda k, v: _jump(source, k, v)),
        byte_count=given("bytes", lambda k, v: _integer(source, k, v, 1, 1_000_000)),
        blocks=given("blocks", lambda k, v: _integer(source, k, v, 1, 10_000)),
        for_s=given("for_s", lambda k, v: _number(source, k, v, 0.001, 7 * 86400.0)),
    )


def _cover(source: str, key: str, value: object) -> float | None:
    """Cloud cover 0..1, or "auto" (None): back to the random weather."""
    if value == "auto":
        return None
    return _number(source, key, value, 0.0, 1.0, alternative='or "auto"')


def _jump(source: str, key: str, value: object) -> float:
    by_s = _number(source, key, value, -MAX_JUMP_S, MAX_JUMP_S)
    if by_s == 0:
        raise ConfigError(source, key, "must not be 0")
    return by_s


def _event_time(source: str, prefix: str, raw: Mapping[str, object]) -> EventTime:
    if "at" not in raw:
        raise ConfigError(source, f"{prefix}.at", "missing")
    at = raw["at"]
    if isinstance(at, str):
        local = _clock(source, f"{prefix}.at", at)
        day = _integer(source, f"{prefix}.day", raw.get("day", 0), 0, 366)
        return EventTime(local_time=local, day=day)
    if "day" in raw:
        raise ConfigError(source, f"{prefix}.day", 'only goes with at = "HH:MM"')
    after_s = _number(source, f"{prefix}.at", at, 0.0, 366 * 86400.0, alternative='or "HH:MM"')
    return EventTime(after_s=after_s)


def _reject_unknown(
    source: str, prefix: str, table: Mapping[str, object], known: frozenset[str]
) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(
                source, f"{prefix}{key}", f"unknown key; expected one of {', '.join(sorted(known))}"
            )


def _string(source: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(source, key, f"must be a string, got {value!r}")
    return value


def _clock(source: str, key: str, value: object) -> time:
    match = _CLOCK_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(source, key, f'must be "HH:MM" or "HH:MM:SS", got {value!r}')
    hour, minute, second = int(match[1]), int(match[2]), int(match[3] or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ConfigError(source, key, f"not a time of day: {value!r}")
    return time(hour, minute, second)


def _number(
    source: str, key: str, value: object, low: float, high: float, *, alternative: str = ""
) -> float:
    # bool is an int in Python; `true` is never a number in a scenario.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        extra = f" {alternative}" if alternative else ""
        raise ConfigError(source, key, f"must be a number{extra}, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(source, key, f"must be in {low:g}..{high:g}, got {value!r}")
    return float(value)


def _integer(source: str, key: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(source, key, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(source, key, f"must be in {low}..{high}, got {value!r}")
    return value


def _choice(source: str, key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(source, key, f"must be one of {', '.join(choices)}, got {value!r}")
    assert isinstance(value, str)
    return value


def _required(value: _T | None) -> _T:
    assert value is not None  # parse_scenario guarantees the action's arguments
    return value
