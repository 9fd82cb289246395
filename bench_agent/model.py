"""Value types shared across the agent. Frozen; units are in the field names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PowerReading:
    """One reading of an INA219 channel."""

    volts: float  # bus voltage, V- to ground
    amps: float  # current through the shunt; negative when it flows backwards
    watts: float  # power as the chip computes it (always >= 0)
