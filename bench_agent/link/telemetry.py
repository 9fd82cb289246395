"""One telemetry record's body, as a snapshot: what the bench measured and was.

The service takes it at the end of each publish interval from the parts that
know each piece; `payload()` is the record's body in the contract (its envelope,
seq and time are the recorder's). Field order is the order on the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench_agent.json_value import Json, JsonObject
from bench_agent.link.health import Health
from bench_agent.power.snapshot import BatteryState


@dataclass(frozen=True, slots=True)
class TelemetryRecord:
    interval_s: float
    channels: Mapping[str, Mapping[str, Json]]  # the sampler's summary per power channel
    outputs: Mapping[str, bool | None]  # None: the output cannot be driven now
    battery: BatteryState
    tamper_open: bool | None  # None: no tamper input, or it cannot be read
    cpu_temp_c: float | None
    charger: Mapping[str, Json] | None  # None: no charge controller configured
    faults: tuple[str, ...]
    health: Health
    counters: Mapping[str, Json]  # `today`, and `yesterday` once after midnight

    def payload(self) -> JsonObject:
        return {
            "interval_s": self.interval_s,
            "channels": self.channels,
            "outputs": self.outputs,
            "battery": self.battery.payload(),
            "tamper_open": self.tamper_open,
            "cpu_temp_c": self.cpu_temp_c,
            "charger": self.charger,
            "faults": list(self.faults),
            "health": self.health.payload(),
            **self.counters,
        }
