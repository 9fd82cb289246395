"""What the controller knows now, as frozen values: each output and why, the battery,
the protections in force. Inside the process the parts read these; `payload()` is
the JSON of the retained `state` (schemas/state.schema.json), made only at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bench_agent.json_value import JsonObject


@dataclass(frozen=True, slots=True)
class OverrideView:
    on: bool
    expires_in_s: float | None  # None: until someone changes it
    source: str  # who set it, e.g. "technician:uid=1000(budi)", "ops", "uplink_recovery"

    def payload(self) -> JsonObject:
        return {
            "state": "on" if self.on else "off",
            "expires_in_s": self.expires_in_s,
            "source": self.source,
        }


@dataclass(frozen=True, slots=True)
class OutputState:
    on: bool | None  # None: the switch cannot be driven now (its state is unknown)
    reason: str  # a vocabulary.Reason value
    detail: str
    override: OverrideView | None

    def payload(self) -> JsonObject:
        return {
            "on": self.on,
            "reason": self.reason,
            "detail": self.detail,
            "override": None if self.override is None else self.override.payload(),
        }


@dataclass(frozen=True, slots=True)
class BatteryState:
    soc_pct: float | None  # None: not known yet
    source: str  # where the estimate comes from (soc.Source)
    confidence: float  # 0..1

    def payload(self) -> JsonObject:
        return {"soc_pct": self.soc_pct, "source": self.source, "confidence": self.confidence}


@dataclass(frozen=True, slots=True)
class Protections:
    """What the policy holds off now: each load class shed by either battery rule
    (state of charge or the voltage safety net), in shed order, and over-temperature."""

    shed: Mapping[str, bool]  # load class name ("wifi", "usb") -> held off for the battery
    over_temperature: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "shed", MappingProxyType(dict(self.shed)))

    def payload(self) -> JsonObject:
        # "wifi_shed", "usb_shed": a class's key in schemas/state.schema.json
        return {
            **{f"{name}_shed": shed for name, shed in self.shed.items()},
            "over_temperature": self.over_temperature,
        }


@dataclass(frozen=True, slots=True)
class PowerState:
    outputs: Mapping[str, OutputState]
    latched_faults: tuple[str, ...]  # e.g. ("overcurrent.usb2",)
    battery: BatteryState
    protections: Protections

    def __post_init__(self) -> None:
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))

    def payload(self) -> JsonObject:
        return {
            "outputs": {name: out.payload() for name, out in self.outputs.items()},
            "latched_faults": list(self.latched_faults),
            "battery": self.battery.payload(),
            "battery_protection": self.protections.payload(),
        }
