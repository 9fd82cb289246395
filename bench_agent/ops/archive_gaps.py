"""What the archive is missing, and why, per bench and seq epoch (`bench-ops gaps`).

Records and events share one seq space per (bench, seq_epoch), so every seq between
the lowest and the highest stored one should be there. Each hole is classified:

- `dropped_by_bench`: the bench itself dropped it before sending (its bounded outbox
  drops the oldest records when full, or those older than its age limit), and said so:
  an `outbox_dropped` event (`records`: how many this time, `total`: ever, for this
  store) comes once the link is back, after the records it dropped. The dropped ones
  are the oldest waiting, just below the backlog the bench then sends; so the `n` new
  drops an event reports are taken from the top of the holes below it, those just
  under a backlog (`historical` records) first, then the nearest (`classify`). The
  counts are exact; the place of each drop is inferred.
- `lost`: missing and not explained by the bench: lost on the way (or still on its way:
  a backlog not yet delivered shows as lost until it comes).
- `before_first`: below the lowest stored seq of the epoch (the archive started after
  the bench, retention deleted them, or they were lost): counted, never called a loss.

A bench whose state directory (its outbox) is wiped starts a new `seq_epoch` at seq 1:
a new epoch in the report, not a gap. Also per epoch: restarts (the `boot_id` changes,
in seq order), the records whose time is `unsynced` (never corrected: their `ts` is the
bench's wrong clock) or `corrected`, and the `clock_synced` events; per bench, the
silences: periods longer than `min_silence_s` with no telemetry (by `ts`; records with
an unsynced clock are left out), including one still going on.

`since` limits holes, restarts, clock events and silences to those ending at or after
it (by the bench's `ts`), and epochs to those with a record since then; the seq
arithmetic always uses the whole epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final, Literal

from bench_agent.clock import iso_utc
from bench_agent.json_value import JsonObject
from bench_agent.ops.archive_store import TABLE, ArchiveStore, Moment, as_ts

Cause = Literal["lost", "dropped_by_bench", "before_first"]
DROPPED_EVENT: Final = "outbox_dropped"
CLOCK_EVENT: Final = "clock_synced"


@dataclass(frozen=True, slots=True)
class SeqRange:
    first: int
    last: int
    cause: Cause

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def json(self) -> JsonObject:
        return {"first": self.first, "last": self.last, "count": self.count, "cause": self.cause}


@dataclass(frozen=True, slots=True)
class Restart:
    seq: int  # the first record of the new boot
    ts: str
    boot_before: str
    boot_after: str

    def json(self) -> JsonObject:
        return {"seq": self.seq, "ts": self.ts, "boot_before": self.boot_before,
                "boot_after": self.boot_after}  # fmt: skip


@dataclass(frozen=True, slots=True)
class ClockSync:
    seq: int
    ts: str
    corrected_records: int

    def json(self) -> JsonObject:
        return {"seq": self.seq, "ts": self.ts, "corrected_records": self.corrected_records}


@dataclass(frozen=True, slots=True)
class EpochGaps:
    bench: str
    seq_epoch: str
    first_seq: int
    last_seq: int
    stored: int
    first_ts: str
    last_ts: str
    first_received: str
    unsynced: int  # records whose ts is the bench's unsynced clock
    corrected: int  # records whose ts was corrected after the clock synced
    reported_drops: int  # what the bench said it dropped in this epoch (its latest total)
    ranges: tuple[SeqRange, ...] = ()
    restarts: tuple[Restart, ...] = ()
    clock_syncs: tuple[ClockSync, ...] = ()

    def missing(self, cause: Cause) -> int:
        return sum(r.count for r in self.ranges if r.cause == cause)

    def json(self) -> JsonObject:
        return {
            "bench": self.bench, "seq_epoch": self.seq_epoch,
            "first_seq": self.first_seq, "last_seq": self.last_seq, "stored": self.stored,
            "first_ts": self.first_ts, "last_ts": self.last_ts,
            "first_received": self.first_received,
            "lost": self.missing("lost"), "dropped_by_bench": self.missing("dropped_by_bench"),
            "before_first": self.missing("before_first"),
            "reported_drops": self.reported_drops,
            "missing": [r.json() for r in self.ranges],
            "restarts": [r.json() for r in self.restarts],
            "unsynced_records": self.unsynced, "corrected_records": self.corrected,
            "clock_syncs": [c.json() for c in self.clock_syncs],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Silence:
    bench: str
    start: str  # the last record before it
    end: str | None  # the first record after it; None: still silent
    seconds: float

    def json(self) -> JsonObject:
        return {"bench": self.bench, "start": self.start, "end": self.end,
                "seconds": round(self.seconds, 1)}  # fmt: skip


@dataclass(frozen=True)
class GapReport:
    since: str | None
    generated_at: str
    min_silence_s: float
    epochs: tuple[EpochGaps, ...]
    silences: tuple[Silence, ...]
    totals: dict[str, int] = field(default_factory=dict)

    def json(self) -> JsonObject:
        return {
            "v": 1, "since": self.since, "generated_at": self.generated_at,
            "min_silence_s": self.min_silence_s, "totals": dict(self.totals),
            "epochs": [e.json() for e in self.epochs],
            "silences": [s.json() for s in self.silences],
        }  # fmt: skip


def classify(
    first_seq: int, holes: list[tuple[int, int, bool]], drops: list[tuple[int, int]]
) -> list[SeqRange]:
    """The missing seqs of one epoch, by cause. Pure.

    `holes`: (first, last, backlog_after) inside the stored span, sorted; backlog_after:
    the record just above the hole came from the bench's backlog (`historical`).
    `drops`: (event seq, newly dropped count) of the bench's `outbox_dropped` events, in
    seq order. The bench drops the oldest records waiting in its outbox, so what it
    dropped lies just below the backlog it sent once the link came back, and below the
    event: each event's count is taken from the top of the holes below it, those
    followed by a backlog first, nearest first. The counts are exact; where a loss on
    the way touches a drop in one hole, which of its seqs were which is a guess."""
    pieces: list[list[int]] = [[1, first_seq - 1, 0]] if first_seq > 1 else []
    pieces += [[a, b, int(backlog)] for a, b, backlog in holes]
    attributed: list[tuple[int, int]] = []
    for event_seq, count in drops:
        left = count
        candidates = [p for p in pieces if p[0] < event_seq]
        candidates.sort(key=lambda p: (-p[2], -p[0]))  # after a backlog first, then nearest
        for piece in candidates:
            if left <= 0:
                break
            top = min(piece[1], event_seq - 1)
            if top < piece[0]:
                continue
            take = min(left, top - piece[0] + 1)
            attributed.append((top - take + 1, top))
            left -= take
        pieces = _minus(pieces, attributed)
    out = [SeqRange(a, b, "dropped_by_bench") for a, b in attributed]
    out += [SeqRange(a, b, "before_first" if b < first_seq else "lost") for a, b, _ in pieces]
    return sorted(out, key=lambda r: r.first)


def _minus(ranges: list[list[int]], taken: list[tuple[int, int]]) -> list[list[int]]:
    """`ranges` ([first, last, flag]) less the seqs of `taken`; each piece keeps its flag."""
    out: list[list[int]] = []
    for first, last, flag in ranges:
        pieces = [[first, last]]
        for a, b in taken:
            next_pieces = []
            for p, q in pieces:
                if b < p or a > q:
                    next_pieces.append([p, q])
                    continue
                if p < a:
                    next_pieces.append([p, a - 1])
                if b < q:
                    next_pieces.append([b + 1, q])
            pieces = next_pieces
        out += [[p, q, flag] for p, q in pieces]
    return out


def gap_report(
    store: ArchiveStore,
    *,
    since: Moment = None,
    bench: str | None = None,
    min_silence_s: float = 900.0,
    now: float | None = None,
) -> GapReport:
    """The whole report from the archive (read-only)."""
    since_ts = as_ts(since)
    epochs = _epochs(store, since_ts, bench)
    holes = _by_epoch(
        _windowed(
            store, "seq, LAG(seq) OVER w AS prev, historical", "seq > prev + 1", since_ts, bench
        )
    )
    restarts = _by_epoch(
        _windowed(store, "seq, boot_id, LAG(boot_id) OVER w AS prev",
                  "prev <> boot_id", since_ts, bench)
    )  # fmt: skip
    drops: dict[tuple[str, str], list[tuple[int, int]]] = {}
    totals_seen: dict[tuple[str, str], int] = {}
    for event in store.events([DROPPED_EVENT], bench=bench):
        key = (event.bench, event.seq_epoch)
        total = _int(event.body.get("total"))
        before = totals_seen.get(key, 0)
        new = total - before if total else _int(event.body.get("records"))
        totals_seen[key] = max(before, total or before + new)
        drops.setdefault(key, []).append((event.seq, max(0, new)))
    clocks: dict[tuple[str, str], list[ClockSync]] = {}
    for event in store.events([CLOCK_EVENT], since=since_ts, bench=bench):
        corrected = _int(event.body.get("corrected_records"))
        clocks.setdefault((event.bench, event.seq_epoch), []).append(
            ClockSync(event.seq, event.ts, corrected)
        )
    report: list[EpochGaps] = []
    for e in epochs:
        key = (e.bench, e.seq_epoch)
        hole_list = [(int(r[4]) + 1, int(r[3]) - 1, bool(r[5])) for r in holes.get(key, [])]
        ranges = classify(e.first_seq, hole_list, sorted(drops.get(key, [])))
        if since_ts is not None:
            ranges = [r for r in ranges if r.cause != "before_first"]
        report.append(
            replace(
                e,
                reported_drops=totals_seen.get(key, 0),
                ranges=tuple(ranges),
                restarts=tuple(Restart(int(r[3]), r[2], r[5], r[4]) for r in restarts.get(key, [])),
                clock_syncs=tuple(clocks.get(key, [])),
            )
        )
    silences = _silences(store, since_ts, bench, min_silence_s, now)
    totals = {
        "benches": len({e.bench for e in report}),
        "epochs": len(report),
        "stored": sum(e.stored for e in report),
        "lost": sum(e.missing("lost") for e in report),
        "dropped_by_bench": sum(e.missing("dropped_by_bench") for e in report),
        "before_first": sum(e.missing("before_first") for e in report),
        "restarts": sum(len(e.restarts) for e in report),
        "silences": len(silences),
    }
    return GapReport(
        since_ts, iso_utc(time.time() if now is None else now), min_silence_s,
        tuple(report), tuple(silences), totals,
    )  # fmt: skip


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _where(since_ts: str | None, bench: str | None, *extra: str) -> tuple[str, list[Any]]:
    clauses, params = list(extra), []
    if bench is not None:
        clauses.append("bench = ?")
        params.append(bench)
    if since_ts is not None:
        clauses.append("ts >= ?")
        params.append(since_ts)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _epochs(store: ArchiveStore, since_ts: str | None, bench: str | None) -> list[EpochGaps]:
    where, params = _where(None, bench)
    having = ""
    if since_ts is not None:
        having, params = " HAVING MAX(ts) >= ?", [*params, since_ts]
    rows = store.query(
        "SELECT bench, seq_epoch, MIN(seq), MAX(seq), COUNT(*), MIN(ts), MAX(ts),"
        " MIN(received_at),"
        " SUM(CASE WHEN time_quality = 'unsynced' THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN time_quality = 'corrected' THEN 1 ELSE 0 END)"
        f" FROM {TABLE}{where} GROUP BY bench, seq_epoch{having}"
        " ORDER BY bench, MIN(received_at), MIN(ts), seq_epoch",
        params,
    )
    return [
        EpochGaps(
            bench=r[0],
            seq_epoch=r[1],
            first_seq=int(r[2]),
            last_seq=int(r[3]),
            stored=int(r[4]),
            first_ts=r[5],
            last_ts=r[6],
            first_received=r[7],
            unsynced=int(r[8]),
            corrected=int(r[9]),
            reported_drops=0,
        )
        for r in rows
    ]


def _windowed(
    store: ArchiveStore, columns: str, condition: str, since_ts: str | None, bench: str | None
) -> list[tuple[Any, ...]]:
    """Rows (bench, seq_epoch, ts, *columns) where `condition` holds, the window `w` being
    each epoch's rows in seq order (computed over the whole epoch, then filtered)."""
    inner_where, params = _where(None, bench)
    outer, outer_params = _where(since_ts, None, condition)
    return store.query(
        f"SELECT * FROM (SELECT bench, seq_epoch, ts, {columns} FROM {TABLE}{inner_where}"
        " WINDOW w AS (PARTITION BY bench, seq_epoch ORDER BY seq)) AS t"
        f"{outer} ORDER BY bench, seq_epoch, seq",
        [*params, *outer_params],
    )


def _by_epoch(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for row in rows:
        out.setdefault((row[0], row[1]), []).append(row)
    return out


def _silences(
    store: ArchiveStore,
    since_ts: str | None,
    bench: str | None,
    min_silence_s: float,
    now: float | None,
) -> list[Silence]:
    where, params = _where(since_ts, bench, "kind = 'telemetry'", "time_quality <> 'unsynced'")
    seconds = store.seconds_between("ts", "next_ts")
    rows = store.query(
        f"SELECT bench, ts, next_ts, {seconds} FROM (SELECT bench, ts,"
        f" LEAD(ts) OVER (PARTITION BY bench ORDER BY ts) AS next_ts FROM {TABLE}{where}) AS t"
        f" WHERE next_ts IS NOT NULL AND {seconds} > ? ORDER BY bench, ts",
        [*params, min_silence_s],
    )
    found = [Silence(r[0], r[1], r[2], float(r[3])) for r in rows]
    last_rows = store.query(f"SELECT bench, MAX(ts) FROM {TABLE}{where} GROUP BY bench", params)
    now_s = time.time() if now is None else now
    for name, last_ts in last_rows:
        quiet = now_s - datetime.fromisoformat(last_ts).timestamp()
        if quiet > min_silence_s:
            found.append(Silence(name, last_ts, None, quiet))
    return sorted(found, key=lambda s: (s.bench, s.start))
