"""Sampling of the power channels and their per-interval aggregation.

Every sample interval every channel is read once. A channel that fails gives a
null reading and a fault; it never stops the others, and it is retried with a
capped exponential backoff (a sensor that is gone should not cost an I2C timeout
every second). Every publish interval, `close_interval()` gives per channel the
min/avg/max of volts, amps and watts and the energy over the interval.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench_agent.errors import SensorAbsent, SensorError
from bench_agent.hardware.ports import PowerSensor, SensorOpener
from bench_agent.json_value import JsonObject
from bench_agent.model import PowerReading

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


@dataclass(slots=True)
class _Aggregate:
    """Running min/sum/max of one quantity; None while there is no sample."""

    n: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.low = min(self.low, value)
        self.high = max(self.high, value)

    def summary(self, digits: int) -> list[float] | None:
        if self.n == 0:
            return None
        return [
            round(self.low, digits),
            round(self.total / self.n, digits),
            round(self.high, digits),
        ]


@dataclass(slots=True)
class _Channel:
    name: str
    opener: SensorOpener  # raises SensorAbsent/SensorError
    sensor: PowerSensor | None = None
    fault: str | None = None
    retry_at_s: float = 0.0
    backoff_s: float = RETRY_MIN_S
    errors_total: int = 0
    last_reading: PowerReading | None = None
    last_mono_s: float | None = None
    volts: _Aggregate = field(default_factory=_Aggregate)
    amps: _Aggregate = field(default_factory=_Aggregate)
    watts: _Aggregate = field(default_factory=_Aggregate)
    watt_hours: float = 0.0

    def reset_interval(self) -> None:
        self.volts = _Aggregate()
        self.amps = _Aggregate()
        self.watts = _Aggregate()
        self.watt_hours = 0.0


FaultCallback = Callable[[str, str | None], object]  # (channel, fault code or None when cleared)


class Sampler:
    """Reads every channel; aggregates per publish interval. Used from the main loop only."""

    def __init__(
        self,
        channels: Mapping[str, SensorOpener],
        sample_interval_s: float,
        on_fault: FaultCallback | None = None,
    ) -> None:
        self._channels = [_Channel(name, opener) for name, opener in channels.items()]
        self._sample_interval_s = sample_interval_s
        self._on_fault = on_fault or (lambda _channel, _fault: None)
        self.samples_total = 0

    def faults(self) -> dict[str, str]:
        return {c.name: c.fault for c in self._channels if c.fault is not None}

    def latest(self) -> dict[str, PowerReading | None]:
        """The newest reading of each channel (None while it is failing)."""
        return {c.name: (None if c.fault else c.last_reading) for c in self._channels}

    def sample(self, mono_s: float) -> dict[str, PowerReading | None]:
        """Read every channel once, at agent monotonic time `mono_s`."""
        self.samples_total += 1
        for channel in self._channels:
            self._sample_one(channel, mono_s)
        return self.latest()

    def _sample_one(self, channel: _Channel, mono_s: float) -> None:
        if channel.fault is not None and mono_s < channel.retry_at_s:
            return
        try:
            if channel.sensor is None:
                channel.sensor = channel.opener()
            reading = channel.sensor.read()
        except SensorAbsent as exc:
            self._failed(channel, mono_s, "sensor_absent", exc)
            return
        except (SensorError, OSError) as exc:
            self._failed(channel, mono_s, "sensor_no_answer", exc)
            return
        except ValueError as exc:  # a driver's sanity check on nonsense register values
            self._failed(channel, mono_s, "sensor_bad_value", exc)
            return
        if not all(map(math.isfinite, (reading.volts, reading.amps, reading.watts))):
            self._failed(channel, mono_s, "sensor_bad_value", ValueError("non-finite reading"))
            return
        if channel.fault is not None:
            log.info("channel %s recovered", channel.name)
            channel.fault = None
            channel.backoff_s = RETRY_MIN_S
            self._on_fault(channel.name, None)
        self._accumulate(channel, reading, mono_s)

    def _accumulate(self, channel: _Channel, reading: PowerReading, mono_s: float) -> None:
        channel.volts.add(reading.volts)
        channel.amps.add(reading.amps)
        channel.watts.add(reading.watts)
        if channel.last_mono_s is not None and channel.last_reading is not None:
            # Left-rectangle integration; a gap (a failing stretch, a stalled loop) is
            # capped at two sample intervals rather than extrapolated across.
            dt_s = min(mono_s - channel.last_mono_s, 2 * self._sample_interval_s)
            channel.watt_hours += channel.last_reading.watts * max(dt_s, 0.0) / 3600.0
        channel.last_reading = reading
        channel.last_mono_s = mono_s

    def _failed(self, channel: _Channel, mono_s: float, code: str, exc: Exception) -> None:
        channel.errors_total += 1
        channel.sensor = None if code == "sensor_absent" else channel.sensor
        channel.last_mono_s = None  # do not integrate energy across the failure
        channel.retry_at_s = mono_s + channel.backoff_s
        channel.backoff_s = min(channel.backoff_s * 2, RETRY_MAX_S)
        if channel.fault != code:
            log.warning("channel %s: %s (%s)", channel.name, code, exc)
            channel.fault = code
            self._on_fault(channel.name, code)

    def errors_total(self) -> int:
        return sum(c.errors_total for c in self._channels)

    def close_interval(self) -> dict[str, JsonObject]:
        """The per-channel summary of the interval that ends now; starts a new one.

        Per channel: `v`, `a`, `w` as [min, avg, max] (null without samples), `wh`
        the energy in watt-hours, `n` the number of good samples, `fault` or null.
        Rounded to what the INA219 resolves (4 mV, ~0.1 mA at our ranges) so no
        byte on the uplink carries noise.
        """
        summary: dict[str, JsonObject] = {}
        for c in self._channels:
            summary[c.name] = {
                "v": c.volts.summary(3),
                "a": c.amps.summary(4),
                "w": c.watts.summary(3),
                "wh": round(c.watt_hours, 4),
                "n": c.volts.n,
                "fault": c.fault,
            }
            c.reset_interval()
        return summary
