"""The `health` block of telemetry: how the bench's own machinery is doing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from bench_agent.clock import Clock
from bench_agent.errors import StorageError
from bench_agent.json_value import JsonObject
from bench_agent.link.mqtt import Link
from bench_agent.link.outbox import Outbox, OutboxStats
from bench_agent.link.publisher import Publisher
from bench_agent.link.recorder import Recorder
from bench_agent.power.sampler import Sampler


@dataclass(frozen=True, slots=True)
class Health:
    """A snapshot of the bench's own machinery; `payload()` is telemetry's `health`."""

    reconnects: int
    sensor_errors: int
    storage_errors: int
    outbox_depth: int
    outbox_drops: int
    outbox_oldest_age_s: float | None  # None: empty, or the age cannot be trusted
    last_publish_age_s: float | None  # None: nothing acknowledged yet this run

    def payload(self) -> JsonObject:
        return asdict(self)


class HealthReport:
    def __init__(
        self,
        *,
        outbox: Outbox,
        publisher: Publisher,
        link: Link,
        sampler: Sampler,
        recorder: Recorder,
        clock: Clock,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._link = link
        self._sampler = sampler
        self._recorder = recorder
        self._clock = clock

    def __call__(self, mono_s: float) -> Health:
        stats = self._outbox.stats()
        last_ack = self._publisher.last_ack_mono
        return Health(
            reconnects=self._link.reconnects,
            sensor_errors=self._sampler.errors_total(),
            storage_errors=self._recorder.storage_errors,
            outbox_depth=stats.depth,
            outbox_drops=stats.drops_total,
            outbox_oldest_age_s=self._oldest_age_s(stats, mono_s),
            last_publish_age_s=None if last_ack is None else round(mono_s - last_ack, 1),
        )

    def _oldest_age_s(self, stats: OutboxStats, mono_s: float) -> float | None:
        """Age of the oldest waiting record: boot-relative when it is of this boot,
        else from its wall time when both it and the clock can be trusted."""
        if stats.oldest_mono_s is None:
            return None
        if stats.oldest_boot_id == self._recorder.boot_id:
            return round(max(0.0, mono_s - stats.oldest_mono_s), 1)
        try:
            oldest = self._outbox.oldest(1, 1 << 30)
        except StorageError:
            return None
        if not oldest or oldest[0].time_quality == "unsynced" or not self._clock.synced():
            return None
        recorded = datetime.fromisoformat(oldest[0].ts)
        return round(max(0.0, (self._clock.wall() - recorded).total_seconds()), 1)
