"""Keeps the daily counters (`counters.DailyCounters`) fed, saved and reported.

The counters themselves are pure; this part gives them what the main loop has:
each sample's readings and the outputs' states over the interval that just
ended, the time since the last sample (a stalled loop is not extrapolated: a
sample stands for at most three intervals), the number of Wi-Fi clients (a
subprocess on a Pi, so asked once a minute), and a save every 15 minutes and at
the stop, so a restart does not zero the day.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Final

from bench_agent import statefile
from bench_agent.json_value import JsonObject
from bench_agent.model import PowerReading
from bench_agent.power.counters import CountersConfig, DailyCounters

log = logging.getLogger(__name__)

SAVE_EVERY_S: Final = 15 * 60.0
WIFI_CLIENTS_EVERY_S: Final = 60.0
MAX_SAMPLES_PER_STEP: Final = 3


class CounterKeeper:
    def __init__(
        self,
        cfg: CountersConfig,
        state_path: Path,
        today: date,
        sample_interval_s: float,
        wifi_clients: Callable[[], int | None],
    ) -> None:
        self._state_path = state_path
        self._sample_interval_s = sample_interval_s
        self._wifi_clients_now = wifi_clients
        saved = statefile.read_text(state_path)
        self.counters, problem = DailyCounters.restore(cfg, saved, today)
        if problem is not None:
            log.warning("daily counters start at zero: %s", problem)
        self._last_mono: float | None = None
        self._saved_mono: float | None = None
        self._reported_yesterday: date | None = None
        self._wifi_clients: int | None = None
        self._next_clients_query_mono = float("-inf")

    def count(
        self,
        local_now: datetime,
        mono_s: float,
        readings: Mapping[str, PowerReading | None],
        outputs_on: Mapping[str, bool],
    ) -> None:
        """One sample: what was measured, and what was on during the interval before it."""
        dt_s = 0.0
        if self._last_mono is not None:
            dt_s = min(mono_s - self._last_mono, MAX_SAMPLES_PER_STEP * self._sample_interval_s)
        self._last_mono = mono_s
        if mono_s >= self._next_clients_query_mono:
            self._wifi_clients = self._wifi_clients_now()
            self._next_clients_query_mono = mono_s + WIFI_CLIENTS_EVERY_S
        self.counters.add_sample(local_now, dt_s, readings, outputs_on, self._wifi_clients)
        if self._saved_mono is None:
            self._saved_mono = mono_s
        elif mono_s - self._saved_mono >= SAVE_EVERY_S:
            self.save()
            self._saved_mono = mono_s

    def save(self) -> None:
        statefile.write_json(self._state_path, self.counters.to_dict())

    def today(self) -> JsonObject:
        """Today's counters, as in telemetry and the technician's status."""
        return self.counters.day_payload(self.counters.today)

    def for_telemetry(self) -> JsonObject:
        """`today`, and `yesterday` once, in the first record after local midnight."""
        body: JsonObject = {"today": self.today()}
        yesterday = self.counters.yesterday
        if yesterday is not None and yesterday.day != self._reported_yesterday:
            body["yesterday"] = self.counters.day_payload(yesterday)
            self._reported_yesterday = yesterday.day
        return body
