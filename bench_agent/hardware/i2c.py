"""The Pi's I2C bus for the INA219 sensors: opened when first needed, a fault when missing."""

from __future__ import annotations

import os
from pathlib import Path

from bench_agent.hardware.ina219 import I2CBus, open_pi_i2c_bus


class I2CBusSupply:
    """/dev/i2c-N, opened on first use (by a sensor read) and again after a failure.

    A missing bus is not a crash: each sensor on it fails (the sampler's faults,
    retried with backoff) and `error` says what to do, for the `i2c` fault.
    """

    def __init__(self, bus_number: int, dev: Path = Path("/dev")) -> None:
        self.bus_number = bus_number
        self._dev = dev
        self._bus: I2CBus | None = None
        self.error: str | None = None

    def get(self) -> I2CBus:
        if self._bus is None:
            try:
                check_i2c_device(self.bus_number, self._dev)
                self._bus = open_pi_i2c_bus(self.bus_number)
            except (OSError, ImportError, RuntimeError, ValueError) as exc:
                self.error = str(exc) if isinstance(exc, OSError) else f"I2C bus: {exc}"
                raise OSError(self.error) from exc
            self.error = None
        return self._bus


def check_i2c_device(bus_number: int, dev: Path = Path("/dev")) -> None:
    """OSError with what to do when /dev/i2c-N is missing or not ours to open."""
    node = dev / f"i2c-{bus_number}"
    if not node.exists():
        raise OSError(
            f"{node} missing — enable I2C (sudo raspi-config nonint do_i2c 0, then reboot)"
        )
    if not os.access(node, os.R_OK | os.W_OK):
        raise OSError(f"{node}: permission denied — is bench-agent in group i2c?")
