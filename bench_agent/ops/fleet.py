"""`bench-ops fleet`'s logic, pure: MQTT messages in, one row per bench out.

What it reads: every bench's retained `status` and `state` under the benches'
prefix (so the table is complete as soon as the broker has sent them), and the
newest record per bench from the v1 `telemetry` and `event` messages (those the
bridge republishes under its v1 prefix, and a contract-1 bench's own). Nothing
here touches the network or the clock: the caller passes the time
(`time.monotonic()`, for ages) with each message and each `rows()`.

A record's age is the time since it *arrived here* (a bench's own clock may be
unsynced or, in the simulator, faster than real time); a bench that has sent no
record since the watch began is as old as the watch at least. A bench is STALE
when its newest record is older than two batch intervals, whatever its status says
(a frozen bench, a dead bridge, a link that half-works).

Whatever a payload is -- garbage, JSON of another shape, another bench's -- it is
skipped (`feed` returns False), never an exception.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime

from bench_agent.json_value import JsonObject

BENCH_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

# The worst first: rank 0 offline (or no status at all), 1 stale, 2 faults, 3 fine.
RANK_OFFLINE, RANK_STALE, RANK_FAULTS, RANK_OK = 0, 1, 2, 3
PROBLEMS = {RANK_OFFLINE: "offline", RANK_STALE: "stale", RANK_FAULTS: "faults", RANK_OK: "ok"}


def _obj(value: object) -> dict[str, object] | None:
    return value if isinstance(value, dict) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _parse(payload: bytes) -> dict[str, object] | None:
    """A JSON object, or None for anything else (garbage, a list, NaN-laden text)."""
    try:
        return _obj(json.loads(payload))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


@dataclass
class BenchView:
    """What has been seen of one bench (the newest of each)."""

    status: dict[str, object] | None = None
    state: dict[str, object] | None = None
    telemetry: dict[str, object] | None = None  # the newest live telemetry record
    record_at: float | None = None  # when the newest live record (telemetry or event) came


@dataclass
class Fleet:
    """Every bench seen under the prefixes; `feed` each message, `rows()` at any time."""

    prefix: str = "smartbench"
    v1_prefix: str = "smartbench-v1"
    batch_s: float = 300.0
    started_at: float = 0.0
    benches: dict[str, BenchView] = field(default_factory=dict)
    skipped: int = 0

    def topics(self) -> list[str]:
        """What to subscribe to."""
        out = [f"{self.prefix}/+/status", f"{self.prefix}/+/state"]
        for prefix in dict.fromkeys((self.v1_prefix, self.prefix)):
            out += [f"{prefix}/+/telemetry", f"{prefix}/+/event"]
        return out

    def feed(self, topic: str, payload: bytes, now: float) -> bool:
        """One message; False (and counted in `skipped`) when it is not understood."""
        if self._feed(topic, payload, now):
            return True
        self.skipped += 1
        return False

    def _feed(self, topic: str, payload: bytes, now: float) -> bool:
        head, _, leaf = topic.rpartition("/")
        prefix, _, bench = head.rpartition("/")
        retained = leaf in {"status", "state"} and prefix == self.prefix
        records = leaf in {"telemetry", "event"} and prefix in {self.prefix, self.v1_prefix}
        if not BENCH_ID.fullmatch(bench) or not (retained or records):
            return False
        if retained and not payload:
            self._clear(bench, leaf)  # an empty retained payload: cleared
            return True
        message = _parse(payload)
        if message is None or message.get("bench") != bench:
            return False
        if records:
            return self._record(bench, leaf, message, now)
        if leaf == "status" and _bool(message.get("online")) is None:
            return False
        setattr(self._view(bench), leaf, message)
        return True

    def _clear(self, bench: str, leaf: str) -> None:
        view = self.benches.get(bench)
        if view is not None:
            setattr(view, leaf, None)
            if view.status is None and view.state is None and view.record_at is None:
                del self.benches[bench]

    def _record(self, bench: str, leaf: str, message: dict[str, object], now: float) -> bool:
        if leaf == "telemetry":
            return self._telemetry(bench, message, now)
        if _str(message.get("type")) is None:
            return False
        if message.get("historical") is not True:  # a late one from the backlog is old news
            self._view(bench).record_at = now
        return True

    def _telemetry(self, bench: str, message: dict[str, object], now: float) -> bool:
        records = message.get("records")
        if not isinstance(records, list):
            return False
        live = [r for r in records if isinstance(r, dict) and r.get("historical") is not True]
        if live:
            view = self._view(bench)
            view.telemetry = live[-1]  # records come in seq order: the last is the newest
            view.record_at = now
        return True

    def _view(self, bench: str) -> BenchView:
        return self.benches.setdefault(bench, BenchView())

    def rows(self, now: float) -> list[JsonObject]:
        """One row per bench, the worst first (offline, stale, faults, then by SoC)."""
        rows = [bench_row(bench, view, self, now) for bench, view in self.benches.items()]
        return sorted(rows, key=_sort_key)


def _sort_key(row: JsonObject) -> tuple[int, int, float, str]:
    rank = _int(row["rank"])
    faults = _int(row["fault_count"])
    soc = _number(row["soc_pct"])
    return (
        RANK_OK if rank is None else rank,
        -(faults or 0),
        -1.0 if soc is None else soc,  # an unknown SoC before the lowest known
        str(row["bench"]),
    )


def _outputs(
    state: dict[str, object] | None, record: dict[str, object] | None
) -> tuple[list[str], dict[str, str]]:
    """(the outputs on, {output off or unknown: why}) from `state`, else the record."""
    on: list[str] = []
    off: dict[str, str] = {}
    outputs = _obj(state.get("outputs")) if state else None
    if outputs is not None:
        for name, value in outputs.items():
            output = _obj(value) or {}
            is_on = output.get("on")
            if is_on is True:
                on.append(name)
            else:
                why = _str(output.get("reason")) or "?"
                off[name] = why if is_on is False else f"unknown ({why})"
        return on, off
    plain = _obj(record.get("outputs")) if record else None
    for name, value in (plain or {}).items():
        if value is True:
            on.append(name)
        else:
            off[name] = "" if value is False else "unknown"
    return on, off


def _faults(state: dict[str, object] | None, record: dict[str, object] | None) -> list[str]:
    """The fault names: `state`'s ({name, detail} each), else the record's (names)."""
    listed = state.get("faults") if state else None
    if not isinstance(listed, list):
        listed = record.get("faults") if record else None
    names: list[str] = []
    for fault in listed if isinstance(listed, list) else []:
        name = _str(fault) if isinstance(fault, str) else _str((_obj(fault) or {}).get("name"))
        if name:
            names.append(name)
    return names


def _battery(
    state: dict[str, object] | None, record: dict[str, object] | None
) -> tuple[float | None, str | None]:
    """(SoC %, its source): the newest record's (telemetry is fresher), else `state`'s."""
    for holder in (record, state):
        battery = _obj(holder.get("battery")) if holder else None
        if battery is not None and _number(battery.get("soc_pct")) is not None:
            return _number(battery.get("soc_pct")), _str(battery.get("source"))
    return None, None


def _today(record: dict[str, object] | None) -> tuple[float | None, int | None]:
    """(solar Wh today, USB sessions today) from the newest telemetry record."""
    today = _obj(record.get("today")) if record else None
    if today is None:
        return None, None
    sessions = _obj(today.get("sessions"))
    counts = [_int(v) for v in sessions.values()] if sessions is not None else []
    total = sum(c for c in counts if c is not None) if sessions is not None else None
    return _number(today.get("solar_wh")), total


def bench_row(bench: str, view: BenchView, fleet: Fleet, now: float) -> JsonObject:
    """One bench's row: every field `bench-ops fleet --json` gives."""
    status, state, record = view.status, view.state, view.telemetry
    online = _bool(status.get("online")) if status else None
    age = None if view.record_at is None else max(0.0, now - view.record_at)
    quiet_s = max(0.0, now - fleet.started_at) if age is None else age
    stale = online is True and quiet_s > 2 * fleet.batch_s
    faults = _faults(state, record)
    if online is not True:
        rank = RANK_OFFLINE
    elif stale:
        rank = RANK_STALE
    elif faults:
        rank = RANK_FAULTS
    else:
        rank = RANK_OK
    on, off = _outputs(state, record)
    soc, soc_source = _battery(state, record)
    solar_wh, sessions = _today(record)
    health = _obj(record.get("health")) if record else None
    tamper = _bool(state.get("tamper_open")) if state else None
    if tamper is None and record is not None:
        tamper = _bool(record.get("tamper_open"))
    latched = state.get("latched_faults") if state else None
    return {
        "bench": bench,
        "problem": PROBLEMS[rank],
        "rank": rank,
        "online": online,
        "since": _since(status),
        "reason": _str(status.get("reason")) if status else None,
        "record_age_s": None if age is None else round(age, 1),
        "quiet_s": round(quiet_s, 1),
        "stale": stale,
        "soc_pct": soc,
        "soc_source": soc_source,
        "outputs_on": on,
        "outputs_off": off,
        "fault_count": len(faults),
        "faults": faults,
        "latched_faults": [x for x in latched if isinstance(x, str)]
        if isinstance(latched, list)
        else [],
        "tamper_open": tamper,
        "solar_wh_today": solar_wh,
        "usb_sessions_today": sessions,
        "agent_version": _str(status.get("agent_version")) if status else None,
        "config_hash": _str(status.get("config_hash")) if status else None,
        "outbox_depth": _int(health.get("outbox_depth")) if health else None,
    }


def _since(status: dict[str, object] | None) -> str | None:
    """Since when the bench is online or offline: the status's `ts`, except in a Last
    Will, whose `ts` is when the session began, not when it ended (unknown then)."""
    if status is None or status.get("reason") == "connection_lost":
        return None
    return _str(status.get("ts"))


def since_text(ts: str | None, wall: datetime) -> str:
    """How long ago an ISO 8601 UTC time was, short ("3h", "2d"); "" when unknown or ahead."""
    if ts is None:
        return ""
    try:
        then = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        seconds = (wall - then).total_seconds()
    except (ValueError, TypeError):
        return ""
    return "" if seconds < 0 else duration_text(seconds)


def duration_text(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
