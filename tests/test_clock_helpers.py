"""The time helpers every payload and record shares: one ISO form, one boot id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from bench_agent.clock import iso_utc, next_due, read_boot_id


def test_iso_utc_takes_a_datetime_or_epoch_seconds_and_writes_one_form() -> None:
    jakarta = timezone(timedelta(hours=7))
    moment = datetime(2026, 12, 5, 8, 30, 15, 123456, tzinfo=jakarta)
    assert iso_utc(moment) == "2026-12-05T01:30:15.123Z"
    assert iso_utc(moment.timestamp()) == "2026-12-05T01:30:15.123Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


def test_boot_id_from_the_kernel_or_unknown(tmp_path: Path) -> None:
    path = tmp_path / "boot_id"
    path.write_text("3d1219c7-c4c5-404a-aa1f-6d2a48adfda4\n")
    assert read_boot_id(path) == "3d1219c7-c4c5-404a-aa1f-6d2a48adfda4"
    assert read_boot_id(tmp_path / "missing") == "unknown"
    assert len(read_boot_id()) == 36  # this Linux machine has one


def test_a_periodic_job_skips_the_ticks_a_stall_missed_instead_of_bursting() -> None:
    assert next_due(100.0, 100.0, 10.0) == 110.0  # on time
    assert next_due(100.0, 104.0, 10.0) == 110.0  # a little late: the grid is kept
    assert next_due(100.0, 135.0, 10.0) == 140.0  # three ticks missed: one run, then on grid
    assert next_due(100.0, 140.0, 10.0) == 150.0
