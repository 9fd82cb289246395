"""Records stamped before the clock synced get their time corrected once it has.

A Pi has no real-time clock: until NTP syncs, the wall time is a guess and
records carry `time_quality: "unsynced"`. Once the clock is synced -- it
became so, or already was when this run started -- the records of this boot
still stored with an unsynced time are corrected from their monotonic time
(an earlier run of the same boot may have left some), and a `clock_synced`
event says so when it was a change or corrected any. While synced, the time
floor (what time has certainly passed, across reboots) follows the clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bench_agent.clock import Clock, TimeFloor
from bench_agent.errors import StorageError
from bench_agent.link.outbox import Outbox
from bench_agent.vocabulary import EmitEvent, EventType

log = logging.getLogger(__name__)


class ClockSyncCorrector:
    def __init__(
        self,
        clock: Clock,
        outbox: Outbox,
        *,
        time_floor: TimeFloor,
        boot_id: str,
        emit_event: EmitEvent,
        on_storage_error: Callable[[StorageError], None],
    ) -> None:
        self._clock = clock
        self._outbox = outbox
        self._time_floor = time_floor
        self._boot_id = boot_id
        self._emit = emit_event
        self._on_storage_error = on_storage_error
        self.synced = False  # this run has corrected for a synced clock
        self._seen_unsynced = False

    def follow(self) -> None:
        """Once per sample."""
        synced = self._clock.synced()
        if synced:  # saved at most hourly, and at the stop
            self._time_floor.observe(self._clock.wall().timestamp(), save_now=False)
        if synced and not self.synced:
            wall_minus_mono_s = self._clock.wall().timestamp() - self._clock.monotonic()
            try:
                corrected = self._outbox.correct_timestamps(self._boot_id, wall_minus_mono_s)
            except StorageError as exc:
                self._on_storage_error(exc)
                return  # tried again at the next sample
            self.synced = True
            if corrected or self._seen_unsynced:
                log.info("clock synced: %d stored records got corrected timestamps", corrected)
                self._emit(EventType.CLOCK_SYNCED, {"corrected_records": corrected})
        elif not synced:
            if self.synced:
                log.warning("clock no longer synced: records are flagged unsynced")
            self.synced = False
            self._seen_unsynced = True
