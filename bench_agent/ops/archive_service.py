"""`bench-ops archive` as a service (its flags: `register`): the worker's loop — store
what comes in, acknowledge it, apply retention, log the summary (and give it to
systemd as STATUS=) — until SIGTERM or SIGINT (exit 0), a refused subscription (77), a
database error (75: systemd restarts it; nothing unacknowledged is lost) or the end of
paho's network thread (70)."""

from __future__ import annotations

import argparse
import logging
import socket
import time

from bench_agent.clock import next_due
from bench_agent.errors import UsageError
from bench_agent.logsetup import register_secret, setup_logging
from bench_agent.ops.archive import Archive, ArchiveOptions, summary_line
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_store import ArchiveError
from bench_agent.ops.broker_access import (
    TOPIC_LEVEL,
    BrokerAccess,
    add_broker_options,
    check_prefix,
)
from bench_agent.ops.service import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, stop_on_signals
from bench_agent.systemd import Notifier

log = logging.getLogger(__name__)

EXIT_DATABASE = 75  # EX_TEMPFAIL: the database failed; a restart retries
DEFAULT_DB = "bench-archive.sqlite"


def run(archive: Archive, notifier: Notifier, *, install_signals: bool = True) -> int:
    if install_signals:
        stop_on_signals(archive.stop_event)
    o = archive.options
    log.info("archive %s: %s -> %s", o.client_id, ", ".join(o.filters()), archive.store.url)
    archive.start()
    notifier.ready()
    last = time.monotonic()
    due = last + o.status_interval_s
    retention_due = last  # at once, then every retention_every_s
    previous = archive.snapshot()
    code = EXIT_OK
    try:
        while not archive.stop_event.is_set():
            messages = archive.take(timeout_s=0.5)
            if messages:
                archive.store_messages(messages)
            now = time.monotonic()
            if now >= retention_due:
                archive.apply_retention()
                retention_due = next_due(retention_due, now, o.retention_every_s)
            if now >= due:
                if not archive.network_thread_alive():
                    log.error("paho's network thread ended: stopping (exit %d)", EXIT_FAILED)
                    code = EXIT_FAILED
                    break
                counters = archive.snapshot()
                line = summary_line(counters, previous, now - last, archive.queued())
                log.info("%s", line)
                notifier.status(line)
                previous, last, due = counters, now, next_due(due, now, o.status_interval_s)
    except ArchiveError as exc:
        log.error("the archive's database failed: %s (exit %d; unacknowledged messages"
                  " are delivered again)", exc, EXIT_DATABASE)  # fmt: skip
        code = EXIT_DATABASE
    if archive.fatal is not None:
        code = EXIT_REFUSED
    notifier.stopping()
    archive.stop()
    log.info("%s", summary_line(archive.snapshot(), previous, time.monotonic() - last, 0))
    return code


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ar = commands.add_parser("archive", help="store every record and event in a database")
    add_broker_options(ar)
    ar.add_argument(
        "--db",
        default=DEFAULT_DB,
        help="a SQLite file (default: %(default)s) or postgresql://user@host/db",
    )
    ar.add_argument("--prefix", default="smartbench", help="the benches' topic prefix")
    share = ar.add_mutually_exclusive_group()
    share.add_argument(
        "--group",
        default="bench-ops-archive",
        help="shared subscription group: workers in one group split the load",
    )
    share.add_argument(
        "--no-share",
        action="store_true",
        help="a plain subscription (one worker; kept over a mosquitto 2.0 restart)",
    )
    ar.add_argument(
        "--client-id",
        default=f"bench-ops-archive-{socket.gethostname()}",
        help="stable per worker: its persistent session (default: bench-ops-archive-HOSTNAME)",
    )
    ar.add_argument(
        "--session-expiry",
        type=int,
        default=7 * 86_400,
        help="seconds the broker keeps the session while the worker is away",
    )
    ar.add_argument("--batch-records", type=int, default=1_000, help="rows per transaction")
    ar.add_argument(
        "--max-rate", type=float, default=5_000.0, help="records/s stored at most (0: no limit)"
    )
    ar.add_argument(
        "--retention-days",
        type=float,
        default=None,
        help="delete rows received longer ago than this (default: keep everything)",
    )
    ar.add_argument(
        "--retention-every", type=float, default=3_600.0, help="seconds between retention runs"
    )
    ar.add_argument("--status-interval", type=float, default=60.0, help="seconds between summaries")
    ar.add_argument("--debug", action="store_true", help="log at DEBUG")
    ar.set_defaults(run=_run)


def options_from(opts: argparse.Namespace) -> ArchiveOptions:
    """The worker's options from its flags; UsageError names the bad one."""
    check_prefix("--prefix", opts.prefix)
    for flag, word in (("--group", opts.group), ("--client-id", opts.client_id)):
        if not TOPIC_LEVEL.fullmatch(word):
            raise UsageError(f"{flag} {word!r}: one topic level, without + # or /")
    if opts.session_expiry < 0:
        raise UsageError("--session-expiry must be >= 0")
    if opts.batch_records < 1 or opts.max_rate < 0:
        raise UsageError("--batch-records >= 1, --max-rate >= 0")
    if opts.retention_days is not None and opts.retention_days <= 0:
        raise UsageError("--retention-days must be > 0")
    if opts.retention_every <= 0 or opts.status_interval <= 0:
        raise UsageError("--retention-every and --status-interval must be > 0")
    return ArchiveOptions(
        access=BrokerAccess.from_options(opts),
        client_id=opts.client_id,
        prefix=opts.prefix,
        group=None if opts.no_share else opts.group,
        session_expiry_s=opts.session_expiry,
        batch_records=opts.batch_records,
        max_rate=opts.max_rate,
        retention_s=None if opts.retention_days is None else opts.retention_days * 86_400,
        retention_every_s=opts.retention_every,
        status_interval_s=opts.status_interval,
    )


def _run(opts: argparse.Namespace) -> int:
    options = options_from(opts)
    setup_logging(opts.debug)
    if options.access.password:
        register_secret(options.access.password)
    try:
        store = open_store(opts.db)
    except ArchiveError as exc:
        log.error("cannot open the archive: %s (exit %d)", exc, EXIT_DATABASE)
        return EXIT_DATABASE
    with store, Notifier() as notifier:
        return run(Archive(options, store), notifier)
