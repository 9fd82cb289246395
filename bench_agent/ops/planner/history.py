"""A real bench's history, as the planner compares it with its model: per local day,
the solar energy the bench measured and the energy each load drew, and whether the
policy shed a load that day.

The figures are `bench-ops report`'s, not computed a second way: each local day of
the bench's records goes through `report_data.fleet_figures` (records deduplicated on
their key, energies summed per channel, the day's completeness, hours each output
was off and why), read from the archive (`archive_db.open_store`) or from files of v1
messages / capture lines (`report_input.read_jsonl`).

Only **full days** count: the records received cover at least `FULL_DAY` of the day
(a day with records lost on the way, or the agent down, is left out and counted), so a
history with gaps, or a month of it, is enough. A day is **shed** when an output of
the bench was off for the battery (the policy's `battery_low` or
`battery_voltage_low`): on those days a load drew less than people asked of it.

What the bench measures and the planner's words: its `solar` channel is the panel's
side of the charge controller (the planner's harvest is after the controller's
efficiency: calibrate.py converts); its ports' channels (`usb1`, …) are the planner's
"usb", the access point's channel (`wifi`) the planner's "wifi". Any problem is one
`ConfigError` line, exit 78 as the planner's other inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from bench_agent.errors import ConfigError
from bench_agent.ops import report_input
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_store import ArchiveError
from bench_agent.ops.report_data import HARVEST_CHANNEL, Observation, Period, fleet_figures
from bench_agent.vocabulary import WIFI, EventType, Reason

FULL_DAY: Final = 0.99  # of the day's seconds covered by records (~15 min may be missing)
SHED_REASONS: Final = frozenset({Reason.BATTERY_LOW.value, Reason.BATTERY_VOLTAGE_LOW.value})
USB: Final = "usb"  # the planner's name of all USB ports together (run.DayRecord)
FLAG: Final = "--history"
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class HistoryDay:
    """One full local day of the bench. Wh; a load not measured by the bench is absent."""

    day: date
    solar_wh: float | None  # the panel's side of the charge controller; None: no sensor
    delivered_wh: dict[str, float]  # "usb" (all ports), "wifi"
    shed: bool  # the policy switched an output off for the battery that day


@dataclass(frozen=True, slots=True)
class History:
    bench: str
    source: str  # what was read, for the report (a URL without its password)
    days: tuple[HistoryDay, ...]  # the full days, in date order
    days_with_records: int  # full or not

    def months(self) -> list[tuple[int, int]]:
        return sorted({(d.day.year, d.day.month) for d in self.days})


def read_history(sources: Sequence[str], bench: str, ports: Sequence[str], tz: ZoneInfo) -> History:
    """The full days of `bench` in an archive (a URL or SQLite file) or in files of v1
    messages. ConfigError (one line) when unreadable, or no full day of that bench."""
    label = ", ".join(_shown(s) for s in sources)
    found: set[str] = set()
    days: list[HistoryDay] = []
    seen = 0
    for day, day_obs in _by_local_day(_observations(sources, bench, found), tz):
        seen += 1
        full = _full_day(bench, day, day_obs, ports, tz)
        if full is not None:
            days.append(full)
    if not seen:
        held = ", ".join(sorted(found)[:5]) or "none"
        raise ConfigError(label, FLAG, f"no records of bench {bench!r} (benches in it: {held})")
    if not days:
        raise ConfigError(
            label, FLAG, f"bench {bench!r}: no full day of records ({seen} days with some)"
        )
    return History(bench, label, tuple(days), seen)


def _shown(source: str) -> str:
    """A source as the report may print it: a database URL without its password."""
    scheme, sep, rest = source.partition("://")
    if sep and "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def _observations(sources: Sequence[str], bench: str, found: set[str]) -> Iterator[Observation]:
    """`bench`'s observations in time order. One archive is streamed (a year of a
    bench's records does not fit in memory whole); files are read whole and sorted."""
    if len(sources) == 1 and _is_archive(sources[0]):
        yield from _from_archive(sources[0], bench, found)
        return
    mine: list[Observation] = []
    for source in sources:
        if _is_archive(source):
            mine.extend(_from_archive(source, bench, found))
            continue
        try:
            read = list(report_input.read_jsonl(Path(source), report_input.Skipped()))
        except FileNotFoundError:
            raise ConfigError(source, FLAG, "no such file") from None
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise ConfigError(source, FLAG, f"unreadable: {exc}") from None
        found.update(o.bench for o in read)
        mine.extend(o for o in read if o.bench == bench)
    mine.sort(key=lambda o: o.when)
    yield from mine


def _is_archive(source: str) -> bool:
    if source.startswith(("postgresql://", "postgres://", "sqlite://")):
        return True
    try:
        with Path(source).open("rb") as f:
            return f.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False  # read_jsonl says why


def _from_archive(url: str, bench: str, found: set[str]) -> Iterator[Observation]:
    try:
        with open_store(url, create=False) as store:
            found.update(store.benches())
            rows = store.records(bench=bench)
            yield from report_input.from_stored(rows, report_input.Skipped())
    except ArchiveError as exc:
        raise ConfigError(_shown(url), FLAG, f"unreadable archive: {exc}") from None


def _by_local_day(
    ordered: Iterable[Observation], tz: ZoneInfo
) -> Iterator[tuple[date, list[Observation]]]:
    """The observations of each local day with a telemetry record, in date order, each
    day headed by the newest `output_switched` event of each output before it (so the
    reason of an output already off at midnight is known, as in the report)."""
    last_switch: dict[str, Observation] = {}
    day: date | None = None
    bucket: list[Observation] = []
    for obs in ordered:
        local = obs.when.astimezone(tz).date()
        if local != day:
            if day is not None and any(o.kind == "telemetry" for o in bucket):
                yield day, bucket
            day, bucket = local, list(last_switch.values())
        bucket.append(obs)
        output = obs.record.get("output")
        if obs.record.get("type") == EventType.OUTPUT_SWITCHED.value and isinstance(output, str):
            last_switch[output] = obs
    if day is not None and any(o.kind == "telemetry" for o in bucket):
        yield day, bucket


def _full_day(
    bench: str, day: date, observations: list[Observation], ports: Sequence[str], tz: ZoneInfo
) -> HistoryDay | None:
    start = datetime.combine(day, datetime.min.time(), tz)
    end = start + timedelta(days=1)
    # `now` at the day's end: every second of it counts towards completeness.
    figures = fleet_figures(observations, Period(start, end, tz), end, benches=[bench])
    (one,) = figures.benches
    (figs,) = one.days
    if figs.completeness is None or figs.completeness < FULL_DAY:
        return None
    channels = _channel_names(observations)
    delivered: dict[str, float] = {}
    measured_ports = [p for p in ports if p in channels]
    if measured_ports:
        delivered[USB] = sum(figs.delivered_wh.get(p, 0.0) for p in measured_ports)
    if WIFI in channels:
        delivered[WIFI] = figs.delivered_wh.get(WIFI, 0.0)
    shed = any(SHED_REASONS & set(reasons) for reasons in one.off_hours.values())
    return HistoryDay(
        day=day,
        solar_wh=figs.harvested_wh if HARVEST_CHANNEL in channels else None,
        delivered_wh=delivered,
        shed=shed,
    )


def _channel_names(observations: Iterable[Observation]) -> set[str]:
    names: set[str] = set()
    for obs in observations:
        channels = obs.record.get("channels")
        if obs.kind == "telemetry" and isinstance(channels, Mapping):
            names.update(channels)
    return names
