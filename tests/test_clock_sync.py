"""Records stamped before the clock synced get their time once it has; the health block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench_agent.clock import TimeFloor, iso_utc
from bench_agent.errors import StorageError
from bench_agent.link.clock_sync import ClockSyncCorrector
from bench_agent.link.outbox import Outbox
from tests.link_clock import ManualClock

BOOT = "boot-test"


class Rig:
    def __init__(self, tmp_path: Path, synced: bool) -> None:
        self.clock = ManualClock(synced=synced)
        self.outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000_000, boot_id=BOOT)
        self.outbox.open()
        self.floor = TimeFloor(tmp_path / "time-floor.json", monotonic=self.clock.monotonic)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.storage_errors: list[StorageError] = []
        self.sync = ClockSyncCorrector(
            self.clock,
            self.outbox,
            time_floor=self.floor,
            boot_id=BOOT,
            emit_event=lambda kind, data: self.events.append((kind, data)),
            on_storage_error=self.storage_errors.append,
        )

    def put(self, quality: str) -> int:
        return self.outbox.put(
            "event",
            '{"type":"tamper","open":true}',
            boot_id=BOOT,
            mono_s=self.clock.mono,
            ts=iso_utc(self.clock.wall()),
            time_quality=quality,
        )


@pytest.fixture
def unsynced(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path, synced=False)
    yield rig
    rig.outbox.close()


def test_records_of_this_boot_get_their_time_once_the_clock_syncs(unsynced: Rig) -> None:
    rig = unsynced
    rig.put("unsynced")
    rig.sync.follow()
    assert rig.events == [] and rig.floor.now_at_least() is None
    # NTP: the wall clock jumps a day ahead of what the Pi guessed, and is now trusted.
    rig.clock.start = rig.clock.start.replace(day=5)
    rig.clock.is_synced = True
    rig.clock.advance(30)
    rig.sync.follow()
    assert rig.events == [("clock_synced", {"corrected_records": 1})]
    [item] = rig.outbox.oldest(10, 1 << 20)
    assert item.time_quality == "corrected"
    assert item.ts == iso_utc(rig.clock.wall().timestamp() - 30)  # its own moment, corrected
    assert rig.floor.now_at_least() == pytest.approx(rig.clock.wall().timestamp())
    rig.sync.follow()
    assert len(rig.events) == 1  # once


def test_a_clock_synced_from_the_start_with_nothing_to_correct_says_nothing(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, synced=True)
    rig.put("synced")
    rig.sync.follow()
    assert rig.events == []
    assert rig.sync.synced
    rig.outbox.close()


def test_a_storage_error_is_reported_and_the_correction_tried_again(
    unsynced: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = unsynced
    rig.put("unsynced")
    rig.clock.is_synced = True

    def broken(_boot: str, _offset: float) -> int:
        raise StorageError("disk I/O error")

    monkeypatch.setattr(rig.outbox, "correct_timestamps", broken)
    rig.sync.follow()
    assert len(rig.storage_errors) == 1 and not rig.sync.synced
    monkeypatch.undo()
    rig.sync.follow()
    assert rig.events == [("clock_synced", {"corrected_records": 1})]


def test_losing_sync_flags_new_records_again(
    unsynced: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig = unsynced
    rig.clock.is_synced = True
    rig.sync.follow()
    rig.clock.is_synced = False
    rig.sync.follow()
    assert not rig.sync.synced
    assert "no longer synced" in caplog.text
