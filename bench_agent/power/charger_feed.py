"""The charge controller (or battery monitor) as the rest of the agent sees it.

The VE.Direct reader thread (`hardware/vedirect/reader.py`) only enqueues samples;
the main loop hands each one to `take`. This part keeps the latest, says when
it is stale (no valid block for `stale_after_s`: the `charger` fault, with
why the port does not open when that is the reason), gives the summary that
goes into telemetry and the technician's status, and hands a BMV's own state
of charge to the estimator, which it outranks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from bench_agent.faults import Fault, FaultRegistry
from bench_agent.hardware.vedirect.fields import ChargerReading
from bench_agent.hardware.vedirect.reader import ChargerSample, VEDirectReader
from bench_agent.json_value import JsonObject

log = logging.getLogger(__name__)

# The reading's fields that go into telemetry (units in the names).
TELEMETRY_FIELDS: Final = (
    "battery_volts",
    "battery_amps",
    "panel_volts",
    "panel_watts",
    "charge_state",
    "mppt_mode",
    "error",
    "yield_today_kwh",
    "yield_yesterday_kwh",
    "yield_total_kwh",
    "max_power_today_w",
    "max_power_yesterday_w",
    "state_of_charge_pct",
    "model",
    "firmware",
    "serial_number",
)


class ChargerFeed:
    def __init__(
        self,
        reader: VEDirectReader,
        stale_after_s: float,
        faults: FaultRegistry,
        take_bmv_soc: Callable[[float], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`take_bmv_soc(pct)` raises ValueError for a value out of range."""
        self.reader = reader
        self._stale_after_s = stale_after_s
        self._faults = faults
        self._take_bmv_soc = take_bmv_soc
        self._monotonic = monotonic
        self.latest: ChargerSample | None = None

    @property
    def open_error(self) -> str | None:
        """Why the serial port does not open, while it does not."""
        return self.reader.open_error

    def take(self, sample: ChargerSample) -> None:
        """A sample from the reader's queue, on the main loop."""
        self.latest = sample
        soc_pct = sample.reading.state_of_charge_pct
        if soc_pct is None:  # a charge controller sends none; a BMV does
            return
        try:
            self._take_bmv_soc(soc_pct)
        except ValueError as exc:  # out of range: a garbled block that passed its checksum
            log.warning("battery monitor: state of charge ignored: %s", exc)

    def stale(self) -> bool:
        """No valid block for `stale_after_s` (a reader just started has that much grace)."""
        return self.reader.is_stale(self._monotonic(), self._stale_after_s)

    def reading(self) -> ChargerReading | None:
        """The latest valid reading, or None (none yet, or stale)."""
        if self.latest is None or self.stale():
            return None
        return self.latest.reading

    def summary(self) -> JsonObject | None:
        """The latest valid reading as telemetry's `charger`, or None (none yet, or stale)."""
        reading = self.reading()
        if reading is None:
            return None
        # JSON has no infinity: a BMV's "time to go: infinite" is sent as null.
        summary: JsonObject = {}
        for name in TELEMETRY_FIELDS:
            value = getattr(reading, name)
            summary[name] = None if isinstance(value, float) and value == float("inf") else value
        # Values refused since the start (garbage, out of physical range): sent as null.
        summary["bad_fields"] = self.reader.stats.value_errors
        return summary

    def for_telemetry(self) -> JsonObject | None:
        """The summary; raises or clears the `charger` fault on the way."""
        if self.stale():
            why = self.open_error
            self._faults.raise_(Fault.CHARGER, "no_valid_block" + (f": {why}" if why else ""))
        else:
            self._faults.clear(Fault.CHARGER)
        return self.summary()
