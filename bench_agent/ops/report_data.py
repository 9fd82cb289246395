"""`bench-ops report`'s figures, pure: v1 records and events in, per-day and per-bench
figures out. No I/O, no clock: the period and "now" are given (report.py reads the
archive; report_page.py draws the page).

What each figure is, from the contract's fields (README, "MQTT contract"):
- **harvested** energy: the sum of the telemetry records' `channels.solar.wh`;
  **delivered**: of the other channels' `wh` but `battery` (the loads: each USB port,
  the access point), per channel. A record counts on the day (report time zone) of its
  `ts`, which ends its `interval_s`.
- **state of charge**: `battery.soc_pct` of each record (null: unknown, left out), as
  min / mean / max per day and per hour.
- **hours off, and why**: each record's `outputs` flag (true on, false off, null not
  drivable) counts for its `interval_s`; an output that is off takes the reason of the
  newest `output_switched` event that turned it off (events from before the period
  tell the reason of a state that began earlier), else "unknown".
- **the bench's day counters** (`today`, and `yesterday`, which is final): charging
  sessions per port, hotspot hours, the day's largest number of Wi-Fi clients at once
  (the bench counts clients, never who), and its own solar/USB/AP Wh — counted on the
  bench, so they stay whole when records are lost on the way. Days are the bench's.
- **data completeness**: the seconds covered by the records received (`interval_s`
  each) over the seconds of the period (up to now).
- **uptime**: the share of the period in which the bench was recording: covered by a
  received record, or lying between two records of one seq epoch whose seqs between
  them are missing (records were made and lost on the way). A stretch with no record
  and no missing seq is down time (the agent did not run, or the bench had no power).
- **lost records**: the seqs missing between the first and last one received in each
  seq epoch (records and events share the counter); **dropped by the bench**: the
  `records` of its `outbox_dropped` events. **Reboots**: changes of `boot_id`.
Records are deduplicated on (bench, seq_epoch, seq); one without a seq (the bench could
not store it) is kept as it came.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from bench_agent.json_value import Json

Kind = Literal["telemetry", "event"]
HARVEST_CHANNEL = "solar"
NOT_A_LOAD = frozenset({"solar", "battery"})
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Observation:
    """One v1 telemetry record or event of one bench."""

    bench: str
    kind: Kind
    record: Mapping[str, Json]
    when: datetime  # its `ts`, aware (UTC)

    @property
    def key(self) -> tuple[str, str, int] | None:
        seq, epoch = self.record.get("seq"), self.record.get("seq_epoch")
        if isinstance(seq, int) and not isinstance(seq, bool):
            return (self.bench, epoch if isinstance(epoch, str) else "", seq)
        return None


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC; days and hours are counted in `tz`."""

    start: datetime
    end: datetime
    tz: ZoneInfo

    def days(self) -> list[date]:
        first = self.start.astimezone(self.tz).date()
        last = (self.end - timedelta(microseconds=1)).astimezone(self.tz).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The part of local `day` inside the period, in UTC."""
        start = datetime.combine(day, datetime.min.time(), self.tz)
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), self.tz)
        return max(start, self.start), min(end, self.end)

    def local_day(self, when: datetime) -> date:
        return when.astimezone(self.tz).date()


@dataclass(frozen=True)
class DayCounters:
    """The bench's own counters of one of its days (`today` / `yesterday`)."""

    solar_wh: float | None
    usb_wh: float | None  # all ports
    ap_wh: float | None
    sessions: int | None  # all ports
    hotspot_h: float | None
    wifi_clients_max: int | None
    final: bool  # from `yesterday` (the day was over), not a `today` seen during it


@dataclass(frozen=True)
class DayFigures:
    day: date
    harvested_wh: float
    delivered_wh: Mapping[str, float]  # per load channel
    soc_min: float | None
    soc_mean: float | None
    soc_max: float | None
    records: int
    completeness: float | None  # None: the day lies after `now`
    counters: DayCounters | None

    @property
    def delivered_total_wh(self) -> float:
        return sum(self.delivered_wh.values())


@dataclass(frozen=True)
class SocPoint:
    hour: datetime  # the local hour's start
    low: float
    mean: float
    high: float


@dataclass(frozen=True)
class BenchFigures:
    bench: str
    days: tuple[DayFigures, ...]
    soc_hours: tuple[SocPoint, ...]
    off_hours: Mapping[str, Mapping[str, float]]  # output -> reason -> hours
    on_hours: Mapping[str, float]
    records: int
    events: int
    event_types: Mapping[str, int]
    uptime: float | None  # None: no record at all
    completeness: float
    lost: int
    dropped_by_bench: int
    reboots: int
    epochs: tuple[str, ...]
    unsynced: int  # records stamped before the bench's clock synced
    first: datetime | None
    last: datetime | None

    @property
    def harvested_wh(self) -> float:
        return sum(d.harvested_wh for d in self.days)

    @property
    def delivered_wh(self) -> float:
        return sum(d.delivered_total_wh for d in self.days)

    @property
    def sessions(self) -> int | None:
        found = [d.counters.sessions for d in self.days if d.counters]
        counts = [c for c in found if c is not None]
        return sum(counts) if counts else None

    @property
    def hotspot_h(self) -> float | None:
        hours = [d.counters.hotspot_h for d in self.days if d.counters]
        found = [h for h in hours if h is not None]
        return sum(found) if found else None

    @property
    def wifi_clients_max(self) -> int | None:
        found = [d.counters.wifi_clients_max for d in self.days if d.counters]
        counts = [c for c in found if c is not None]
        return max(counts) if counts else None

    @property
    def soc_min(self) -> float | None:
        lows = [d.soc_min for d in self.days if d.soc_min is not None]
        return min(lows) if lows else None

    def shed_hours(self) -> float:
        return sum(sum(r.values()) for r in self.off_hours.values())


@dataclass(frozen=True)
class FleetFigures:
    period: Period
    now: datetime
    benches: tuple[BenchFigures, ...]
    days: tuple[date, ...]
    harvested_wh: Mapping[date, float] = field(default_factory=dict)
    delivered_wh: Mapping[date, float] = field(default_factory=dict)


def fleet_figures(
    observations: Iterable[Observation],
    period: Period,
    now: datetime,
    benches: Sequence[str] = (),
) -> FleetFigures:
    """The report's figures for `period` (figures past `now` are not counted as missing).
    Every bench in `benches` gets a section, with data or without; so does every bench
    with an observation in the period. Observations before the period only tell why an
    output was already off when it began."""
    by_bench: dict[str, list[Observation]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for obs in observations:
        key = obs.key
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        by_bench[obs.bench].append(obs)
    names = sorted(
        set(benches)
        | {b for b, obs in by_bench.items() if any(o.when >= period.start for o in obs)}
    )
    figures = tuple(bench_figures(name, by_bench.get(name, []), period, now) for name in names)
    days = tuple(period.days())
    return FleetFigures(
        period=period,
        now=now,
        benches=figures,
        days=days,
        harvested_wh={d: sum(b.days[i].harvested_wh for b in figures) for i, d in enumerate(days)},
        delivered_wh={
            d: sum(b.days[i].delivered_total_wh for b in figures) for i, d in enumerate(days)
        },
    )


def bench_figures(
    bench: str, observations: Sequence[Observation], period: Period, now: datetime
) -> BenchFigures:
    ordered = sorted(observations, key=_order)
    inside = [o for o in ordered if period.start <= o.when < period.end]
    telemetry = [o for o in inside if o.kind == "telemetry"]
    events = [o for o in inside if o.kind == "event"]
    horizon = min(period.end, max(now, period.start))
    covered = sum(_interval_s(o) for o in telemetry)
    seconds = (horizon - period.start).total_seconds()
    off, on = _output_hours(ordered, period)
    return BenchFigures(
        bench=bench,
        days=tuple(_day(period, horizon, day, telemetry) for day in period.days()),
        soc_hours=_soc_hours(period, telemetry),
        off_hours=off,
        on_hours=on,
        records=len(telemetry),
        events=len(events),
        event_types=dict(Counter(str(o.record.get("type")) for o in events)),
        uptime=_uptime(inside, period.start, horizon) if telemetry else None,
        completeness=min(1.0, covered / seconds) if seconds > 0 else 0.0,
        lost=_lost(inside),
        dropped_by_bench=sum(
            _int(o.record.get("records")) or 0
            for o in events
            if o.record.get("type") == "outbox_dropped"
        ),
        reboots=sum(
            1
            for a, b in itertools.pairwise(telemetry)
            if a.record.get("boot_id") != b.record.get("boot_id")
        ),
        epochs=tuple(dict.fromkeys(str(o.record.get("seq_epoch")) for o in inside)),
        unsynced=sum(1 for o in inside if o.record.get("time_quality") == "unsynced"),
        first=inside[0].when if inside else None,
        last=inside[-1].when if inside else None,
    )


def _order(obs: Observation) -> tuple[datetime, int]:
    seq = obs.record.get("seq")
    return (obs.when, seq if isinstance(seq, int) else -1)


def _interval_s(obs: Observation) -> float:
    value = _float(obs.record.get("interval_s"))
    return value if value is not None and value > 0 else 0.0


def _day(
    period: Period, horizon: datetime, day: date, telemetry: Sequence[Observation]
) -> DayFigures:
    start, end = period.day_bounds(day)
    mine = [o for o in telemetry if start <= o.when < end]
    harvested = 0.0
    delivered: dict[str, float] = defaultdict(float)
    socs: list[float] = []
    for obs in mine:
        for name, channel in _channels(obs).items():
            wh = _float(channel.get("wh")) if isinstance(channel, Mapping) else None
            if wh is None:
                continue
            if name == HARVEST_CHANNEL:
                harvested += wh
            elif name not in NOT_A_LOAD:
                delivered[name] += wh
        soc = _soc(obs)
        if soc is not None:
            socs.append(soc)
    seconds = (min(end, horizon) - start).total_seconds()
    covered = sum(_interval_s(o) for o in mine)
    return DayFigures(
        day=day,
        harvested_wh=harvested,
        delivered_wh=dict(sorted(delivered.items())),
        soc_min=min(socs) if socs else None,
        soc_mean=sum(socs) / len(socs) if socs else None,
        soc_max=max(socs) if socs else None,
        records=len(mine),
        completeness=min(1.0, covered / seconds) if seconds > 0 else None,
        counters=_counters(day, telemetry),
    )


def _channels(obs: Observation) -> Mapping[str, Json]:
    channels = obs.record.get("channels")
    return channels if isinstance(channels, Mapping) else {}


def _soc(obs: Observation) -> float | None:
    battery = obs.record.get("battery")
    return _float(battery.get("soc_pct")) if isinstance(battery, Mapping) else None


def _soc_hours(period: Period, telemetry: Sequence[Observation]) -> tuple[SocPoint, ...]:
    hours: dict[datetime, list[float]] = defaultdict(list)
    for obs in telemetry:
        soc = _soc(obs)
        if soc is not None:
            local = obs.when.astimezone(period.tz)
            hours[local.replace(minute=0, second=0, microsecond=0)].append(soc)
    return tuple(
        SocPoint(hour, min(v), sum(v) / len(v), max(v)) for hour, v in sorted(hours.items())
    )


def _counters(day: date, telemetry: Sequence[Observation]) -> DayCounters | None:
    """The final `yesterday` block for `day` if one came, else the newest `today`."""
    latest: Mapping[str, Json] | None = None
    for obs in telemetry:
        final = obs.record.get("yesterday")
        if isinstance(final, Mapping) and final.get("date") == day.isoformat():
            return _day_counters(final, final=True)
        today = obs.record.get("today")
        if isinstance(today, Mapping) and today.get("date") == day.isoformat():
            latest = today  # telemetry is in time order: the last one wins
    return _day_counters(latest, final=False) if latest is not None else None


def _day_counters(block: Mapping[str, Json], *, final: bool) -> DayCounters:
    usb, sessions = block.get("usb_wh"), block.get("sessions")
    usb_values = [_float(v) for v in usb.values()] if isinstance(usb, Mapping) else []
    session_values = [_int(v) for v in sessions.values()] if isinstance(sessions, Mapping) else []
    return DayCounters(
        solar_wh=_float(block.get("solar_wh")),
        usb_wh=sum(v for v in usb_values if v is not None) if usb_values else None,
        ap_wh=_float(block.get("ap_wh")),
        sessions=sum(v for v in session_values if v is not None) if session_values else None,
        hotspot_h=_float(block.get("hotspot_h")),
        wifi_clients_max=_int(block.get("wifi_clients_max")),
        final=final,
    )


def _output_hours(
    ordered: Sequence[Observation], period: Period
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    reason: dict[str, str] = {}
    off: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    on: dict[str, float] = defaultdict(float)
    for obs in ordered:
        if obs.when >= period.end:
            break
        if obs.kind == "event":
            if obs.record.get("type") == "output_switched":
                output, to = obs.record.get("output"), obs.record.get("to")
                if isinstance(output, str):
                    why = obs.record.get("reason")
                    reason[output] = str(why) if to == "off" and why else UNKNOWN
            continue
        if obs.when < period.start:
            continue
        outputs = obs.record.get("outputs")
        if not isinstance(outputs, Mapping):
            continue
        hours = _interval_s(obs) / 3600.0
        for output, state in outputs.items():
            if state is True:
                on[output] += hours
            elif state is False:
                off[output][reason.get(output, UNKNOWN)] += hours
            else:
                off[output]["not drivable"] += hours
    return (
        {o: dict(sorted(r.items(), key=lambda kv: -kv[1])) for o, r in sorted(off.items())},
        dict(sorted(on.items())),
    )


def _uptime(inside: Sequence[Observation], start: datetime, horizon: datetime) -> float:
    """The share of [start, horizon) the bench was recording (see the module's text)."""
    span = (horizon - start).total_seconds()
    if span <= 0:
        return 0.0
    seqs_seen = {(str(o.record.get("seq_epoch")), o.record.get("seq")) for o in inside}
    up = 0.0
    previous: Observation | None = None
    for obs in (o for o in inside if o.kind == "telemetry"):
        interval = _interval_s(obs)
        begin = obs.when - timedelta(seconds=interval)
        if previous is None:
            up += (obs.when - max(begin, start)).total_seconds()
        else:
            gap = (begin - previous.when).total_seconds()
            if gap <= 0 or _records_lost_between(previous, obs, seqs_seen):
                up += (obs.when - previous.when).total_seconds()
            else:
                up += interval
        previous = obs
    return max(0.0, min(1.0, up / span))


def _records_lost_between(
    a: Observation, b: Observation, seen: set[tuple[str, Json | None]]
) -> bool:
    epoch = a.record.get("seq_epoch")
    first, last = _int(a.record.get("seq")), _int(b.record.get("seq"))
    if epoch != b.record.get("seq_epoch") or first is None or last is None:
        return False
    return any((str(epoch), s) not in seen for s in range(first + 1, last))


def _lost(inside: Sequence[Observation]) -> int:
    by_epoch: dict[str, set[int]] = defaultdict(set)
    for obs in inside:
        seq = _int(obs.record.get("seq"))
        if seq is not None:
            by_epoch[str(obs.record.get("seq_epoch"))].add(seq)
    return sum(max(s) - min(s) + 1 - len(s) for s in by_epoch.values())


def _float(value: Json | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Json | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
