"""`bench-ops gaps`: what the archive is missing, per bench and seq epoch, and why
(`archive_gaps`), as a table for a person or `--json` for a script.

    bench-ops gaps [--db bench-archive.sqlite] [--since 7d | 2026-11-27 | 2026-11-27T06:00Z]
                   [--bench ID] [--min-silence 900] [--json]

Exit codes: 0 the report was made (whatever it found); 64 a bad flag; 75 the archive
cannot be read.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import TextIO

from bench_agent.errors import UsageError
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_gaps import EpochGaps, GapReport, gap_report
from bench_agent.ops.archive_service import DEFAULT_DB, EXIT_DATABASE
from bench_agent.ops.archive_store import ArchiveError

RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([dhm])")
UNITS = {"d": 86_400, "h": 3_600, "m": 60}
SHOWN_RANGES = 12  # per epoch in the table; --json has every one


def parse_since(text: str, now: float | None = None) -> datetime:
    """`7d`, `12h`, `30m` ago, or an ISO 8601 date or time (UTC unless it says)."""
    relative = RELATIVE.fullmatch(text)
    if relative:
        ago = float(relative.group(1)) * UNITS[relative.group(2)]
        return datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(
            seconds=ago
        )
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r}: 7d, 12h, 30m, or an ISO 8601 date/time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gp = commands.add_parser("gaps", help="what the archive is missing, per bench and epoch")
    gp.add_argument("--db", default=DEFAULT_DB, help="the archive (default: %(default)s)")
    gp.add_argument("--since", help="7d, 12h, 30m, or an ISO 8601 date/time (default: all)")
    gp.add_argument("--bench", help="one bench only")
    gp.add_argument(
        "--min-silence",
        type=float,
        default=900.0,
        help="seconds without telemetry that count as a silence (default: %(default)s)",
    )
    gp.add_argument("--json", action="store_true", help="one JSON document")
    gp.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    since = parse_since(opts.since) if opts.since else None
    if opts.min_silence <= 0:
        raise UsageError("--min-silence must be > 0")
    try:
        with open_store(opts.db, create=False) as store:
            report = gap_report(
                store, since=since, bench=opts.bench, min_silence_s=opts.min_silence
            )
    except ArchiveError as exc:
        print(f"bench-ops: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    if opts.json:
        json.dump(report.json(), sys.stdout, indent=1)
        print()
    else:
        render(report, sys.stdout)
    return 0


def _ranges(epoch: EpochGaps, cause: str) -> str:
    ranges = [r for r in epoch.ranges if r.cause == cause]
    text = ", ".join(
        str(r.first) if r.count == 1 else f"{r.first}-{r.last}" for r in ranges[:SHOWN_RANGES]
    )
    return text + (f", … ({len(ranges) - SHOWN_RANGES} more)" if len(ranges) > SHOWN_RANGES else "")


def render(report: GapReport, out: TextIO) -> None:
    t = report.totals
    print(
        f"{t['benches']} benches, {t['epochs']} seq epochs, {t['stored']} records stored\n"
        f"lost {t['lost']}, dropped by the benches {t['dropped_by_bench']},"
        f" before the first stored {t['before_first']}"
        + (f" (since {report.since})" if report.since else ""),
        file=out,
    )
    previous_bench = None
    for e in report.epochs:
        new_epoch = e.bench == previous_bench
        previous_bench = e.bench
        note = "  (a new epoch: the bench's store was replaced)" if new_epoch else ""
        print(f"\n{e.bench}  epoch {e.seq_epoch}{note}", file=out)
        print(
            f"  seq {e.first_seq}-{e.last_seq}, {e.stored} stored, {e.first_ts} .. {e.last_ts}",
            file=out,
        )
        for cause, label in (
            ("lost", "lost (never arrived)"),
            ("dropped_by_bench", "dropped by the bench"),
            ("before_first", "before the first stored"),
        ):
            count = e.missing(cause)  # type: ignore[arg-type]
            if count:
                print(f"  {label}: {count}  [{_ranges(e, cause)}]", file=out)
        if e.reported_drops:
            print(f"  the bench reported {e.reported_drops} dropped from its outbox", file=out)
        for r in e.restarts:
            print(f"  restart at {r.ts} (seq {r.seq}), boot {r.boot_after}", file=out)
        if e.unsynced or e.corrected:
            print(
                f"  clock: {e.unsynced} records with an unsynced time,"
                f" {e.corrected} corrected afterwards",
                file=out,
            )
        for c in e.clock_syncs:
            print(
                f"  clock synced at {c.ts} (seq {c.seq}): {c.corrected_records} corrected", file=out
            )
    if report.silences:
        print(f"\nsilences (no telemetry for more than {report.min_silence_s:.0f} s):", file=out)
        for s in report.silences:
            end = s.end or "now (still silent)"
            print(f"  {s.bench}  {s.start} .. {end}  ({_duration(s.seconds)})", file=out)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h {minutes % 60} min" if hours < 48 else f"{hours // 24} d {hours % 24} h"
