"""`bench-ops report`: one self-contained HTML file for a period, for the fleet and each
bench (README, "For city ops", "Reports").

    bench-ops report --db ARCHIVE [--since DAY] [--until DAY] [--bench ID|GLOB ...]
                     [--tz Asia/Jakarta] --out report.html
    bench-ops report --messages FILE.jsonl[.gz] ... [same flags]

It reads the archive (`bench-ops archive`'s SQLite file or `postgresql://…`), or files
of v1 messages (one JSON a line, as a subscriber to `<v1-prefix>/+/telemetry|event`
would write them, or bench/capture_records.py's capture lines), computes the figures
(report_data) and writes the page (report_page) to `--out` atomically.

`--since` and `--until` are days (YYYY-MM-DD, both included) or times (ISO 8601 with
a zone) in `--tz`; by default the last 7 days up to today. Time not yet come is not
counted as missing data.

Exit codes: 0 written; 64 a bad flag; 66 the archive or a messages file cannot be read;
73 the output cannot be written.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bench_agent import __version__
from bench_agent.errors import UsageError
from bench_agent.ops import report_input
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_store import ArchiveError
from bench_agent.ops.report_data import Observation, Period, fleet_figures
from bench_agent.ops.report_page import render

EXIT_OK = 0
EXIT_NO_INPUT = 66  # EX_NOINPUT
EXIT_CANT_CREATE = 73  # EX_CANTCREAT
DEFAULT_DAYS = 7
DEFAULT_TZ = "Asia/Jakarta"  # the reference deployment's zone (config/bench-agent.toml)
# Events this long before the period are read to know why an output was already off.
LOOKBACK = timedelta(days=2)
GLOB_CHARACTERS = frozenset("*?[")


class InputError(OSError):
    """The archive or a messages file cannot be read."""


def period_of(since: str | None, until: str | None, tz: ZoneInfo, now: datetime) -> Period:
    """The report's period from the flags (see the module's text). UsageError."""
    end = _bound(until, tz, end=True) if until else _day_start(now.astimezone(tz).date(), tz, 1)
    start = _bound(since, tz, end=False) if since else end - timedelta(days=DEFAULT_DAYS)
    if start >= end:
        raise UsageError("--since must come before --until")
    if end - start > timedelta(days=3660):
        raise UsageError("a period of more than ten years")
    return Period(start.astimezone(UTC), end.astimezone(UTC), tz)


def _day_start(day: date, tz: ZoneInfo, plus_days: int = 0) -> datetime:
    return datetime.combine(day + timedelta(days=plus_days), datetime.min.time(), tz)


def _bound(text: str, tz: ZoneInfo, *, end: bool) -> datetime:
    try:
        if len(text) == 10:
            return _day_start(date.fromisoformat(text), tz, 1 if end else 0)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{text!r}: not a day (YYYY-MM-DD) or an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=tz)


def select(patterns: Sequence[str], observations: Iterable[Observation]) -> Iterator[Observation]:
    """The observations of the benches named or matched by `patterns` (all: none given)."""
    for obs in observations:
        if not patterns or any(fnmatch.fnmatchcase(obs.bench, p) for p in patterns):
            yield obs


def from_archive(url: str, period: Period, skipped: report_input.Skipped) -> list[Observation]:
    """The period's records and events, and the output switches just before it."""
    try:
        with open_store(url, create=False) as store:
            before = store.events(
                ["output_switched"], since=period.start - LOOKBACK, until=period.start
            )
            during = store.records(since=period.start, until=period.end)
            return list(report_input.from_stored([*before, *during], skipped))
    except ArchiveError as exc:
        raise InputError(str(exc)) from None


def from_messages(paths: Sequence[Path], skipped: report_input.Skipped) -> list[Observation]:
    found: list[Observation] = []
    for path in paths:
        try:
            found.extend(report_input.read_jsonl(path, skipped))
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: {exc}") from None
    return found


def write_atomically(path: Path, text: str) -> None:
    """`text` in `path`, whole or not at all (a reader never sees half a report)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rp = commands.add_parser("report", help="an HTML report of a period, with charts")
    source = rp.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", help="the archive: a SQLite file or postgresql://…")
    source.add_argument(
        "--messages",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="files of v1 messages, one JSON a line (.gz read as gzip)",
    )
    rp.add_argument("--since", help="first day (YYYY-MM-DD) or time (default: 7 days back)")
    rp.add_argument("--until", help="last day, included, or end time (default: today)")
    rp.add_argument(
        "--bench",
        nargs="+",
        action="extend",
        default=[],
        metavar="ID|GLOB",
        help="only these benches (an id is shown even without data; 'tgk-*' matches)",
    )
    rp.add_argument("--tz", default=DEFAULT_TZ, help=f"the days' time zone ({DEFAULT_TZ})")
    rp.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    rp.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    try:
        tz = ZoneInfo(opts.tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"--tz {opts.tz!r}: not a time zone name") from None
    now = datetime.now(UTC)
    period = period_of(opts.since, opts.until, tz, now)
    skipped = report_input.Skipped()
    try:
        if opts.db:
            observations = from_archive(opts.db, period, skipped)
        else:
            observations = from_messages(opts.messages, skipped)
    except InputError as exc:
        print(f"bench-ops: {exc}", file=sys.stderr)
        return EXIT_NO_INPUT
    chosen = list(select(opts.bench, observations))
    named = [b for b in opts.bench if not GLOB_CHARACTERS & set(b)]
    # A bench clock ahead of ours still counts: data up to its newest record is not "future".
    horizon = max([now, *(o.when for o in chosen)])
    fleet = fleet_figures(chosen, period, horizon, benches=named)
    html = render(fleet, made_by=f"bench-ops report {__version__}")
    try:
        write_atomically(opts.out, html)
    except OSError as exc:
        print(f"bench-ops: {opts.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_CANT_CREATE
    note = f", {skipped.count} unreadable records skipped" if skipped.count else ""
    print(
        f"{opts.out}: {len(fleet.benches)} benches, {len(fleet.days)} days,"
        f" {len(html) // 1024} kB{note}"
    )
    return EXIT_OK
