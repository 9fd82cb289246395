"""A register-level model of the TI INA219 current/power monitor (datasheet SBOS448).

It answers I2C transfers the way the chip does, so the real `adafruit_ina219` driver
can run on top of it through `SimulatedI2CBus`:

- a pointer register: a 1-byte write sets it, a 3-byte write sets it and writes the
  16-bit big-endian register it points at; a read returns the register at the pointer;
- 0x00 config (power-on 0x399F; bit 15 resets every register and self-clears),
  0x01 shunt voltage (signed, 10 µV/LSB, clipped to the PGA range),
  0x02 bus voltage (bits 15..3 in 4 mV steps, bit 1 CNVR, bit 0 OVF),
  0x03 power and 0x04 current (computed from the calibration, 0 while it is 0),
  0x05 calibration (bit 0 reads 0).

The physical truth (bus volts, shunt amps) comes from `set_conditions`, called by the
bench model's thread while the sampler's thread reads; one lock guards both.
"""

from __future__ import annotations

import errno
import os
import threading
import time

REG_CONFIG = 0x00
REG_SHUNT_VOLTAGE = 0x01
REG_BUS_VOLTAGE = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CALIBRATION = 0x05

CONFIG_POWER_ON = 0x399F  # 32 V range, PGA /8 (±320 mV), 12-bit ADCs, continuous
_CONFIG_RESET_BIT = 0x8000
_CONFIG_WRITABLE = 0x3FFF  # bit 14 is unused and reads 0; bit 15 self-clears

SHUNT_LSB_VOLTS = 10e-6
BUS_LSB_VOLTS = 4e-3
# PGA field (config bits 12..11) -> full-scale shunt voltage in 10 µV counts.
_PGA_FULL_SCALE_COUNTS = (4_000, 8_000, 16_000, 32_000)  # ±40, 80, 160, 320 mV
# BRNG (config bit 13) -> full-scale bus voltage in 4 mV counts.
_BUS_FULL_SCALE_COUNTS = (4_000, 8_000)  # 16 V, 32 V

# Conversion time in seconds for a 4-bit ADC setting (datasheet table 5); settings
# 0b0100..0b0111 are 12-bit single-sample, the same as 0b0011 and 0b1000.
_CONVERSION_SECONDS = {
    0b0000: 84e-6,
    0b0001: 148e-6,
    0b0010: 276e-6,
    0b0011: 532e-6,
    0b1001: 1.06e-3,
    0b1010: 2.13e-3,
    0b1011: 4.26e-3,
    0b1100: 8.51e-3,
    0b1101: 17.02e-3,
    0b1110: 34.05e-3,
    0b1111: 68.10e-3,
}

_INT16_MAX = 0x7FFF
_INT16_MIN = -0x8000
_UINT16_MAX = 0xFFFF


def _clip(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _conversion_seconds(adc_setting: int) -> float:
    return _CONVERSION_SECONDS.get(adc_setting, 532e-6)


class SimulatedINA219:
    """One INA219 chip. `shunt_ohms` is the resistor fitted on the simulated board (Ω)."""

    def __init__(self, shunt_ohms: float) -> None:
        if shunt_ohms <= 0:
            raise ValueError(f"shunt_ohms must be > 0, got {shunt_ohms}")
        self.shunt_ohms = shunt_ohms
        self._lock = threading.Lock()
        self._bus_volts = 0.0
        self._current_amps = 0.0
        self._failing = False
        self._pointer = REG_CONFIG
        self._config = CONFIG_POWER_ON
        self._calibration = 0
        # Last converted ADC results, in register counts; the chip keeps them while
        # it is powered down or waiting for a trigger.
        self._shunt_counts = 0
        self._bus_counts = 0
        self._conversion_started = time.monotonic()

    # --- the physical world -------------------------------------------------

    def set_conditions(self, bus_volts: float, current_amps: float) -> None:
        """Set the truth: bus voltage V- to ground (V), current through the shunt (A).

        Negative current flows backwards through the shunt (a battery charging).
        """
        with self._lock:
            self._bus_volts = bus_volts
            self._current_amps = current_amps

    def fail_reads(self, failing: bool) -> None:
        """Make every transfer fail as a chip that stopped answering: OSError(EREMOTEIO)."""
        with self._lock:
            self._failing = failing

    def reset_by_load_spike(self) -> None:
        """A sharp load browned the chip out: config back to 0x399F, calibration to 0."""
        with self._lock:
            self._power_on_reset()

    # --- what tests may inspect without going through I2C -------------------

    @property
    def calibration_register(self) -> int:
        """The calibration register as the chip holds it (what the driver last wrote)."""
        with self._lock:
            return self._calibration

    @property
    def config_register(self) -> int:
        """The configuration register as the chip holds it."""
        with self._lock:
            return self._config

    # --- I2C target side (called by SimulatedI2CBus) ------------------------

    def write(self, data: bytes) -> None:
        """One I2C write transaction addressed to this chip."""
        with self._lock:
            self._check_answering()
            if not data:
                return  # an address-only probe: the chip ACKs and nothing changes
            self._pointer = data[0]
            # A register is written only when both data bytes arrive (MSB first);
            # a 2-byte write only moves the pointer.
            if len(data) >= 3:
                self._write_register(data[0], (data[1] << 8) | data[2])

    def read(self, count: int) -> bytes:
        """One I2C read transaction: `count` bytes of the register at the pointer."""
        with self._lock:
            self._check_answering()
            value = self._read_register(self._pointer)
            # Past the two register bytes the chip stops driving SDA: the pull-ups
            # make the master read 0xFF.
            register_bytes = bytes(((value >> 8) & 0xFF, value & 0xFF))
            return (register_bytes + b"\xff" * max(0, count - 2))[:count]

    # --- internals (lock held) ----------------------------------------------

    def _check_answering(self) -> None:
        if self._failing:
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))

    def _power_on_reset(self) -> None:
        self._config = CONFIG_POWER_ON
        self._calibration = 0
        self._shunt_counts = 0
        self._bus_counts = 0
        self._conversion_started = time.monotonic()

    def _write_register(self, register: int, value: int) -> None:
        if register == REG_CONFIG:
            if value & _CONFIG_RESET_BIT:
                self._power_on_reset()
                return
            self._config = value & _CONFIG_WRITABLE
            # Writing the config starts a new conversion (and is how a triggered
            # mode is triggered).
            self._conversion_started = time.monotonic()
            if self._mode in (1, 2, 3):
                self._convert()
        elif register == REG_CALIBRATION:
            self._calibration = value & 0xFFFE  # bit 0 is read-only 0
        # The other registers are read-only; the chip ignores writes to them.

    @property
    def _mode(self) -> int:
        return self._config & 0b111

    def _convert(self) -> None:
        """Digitise the truth into the shunt and bus registers, as the mode allows."""
        mode = self._mode
        if mode in (1, 3, 5, 7):
            pga = (self._config >> 11) & 0b11
            full_scale = _PGA_FULL_SCALE_COUNTS[pga]
            counts = round(self._current_amps * self.shunt_ohms / SHUNT_LSB_VOLTS)
            self._shunt_counts = _clip(counts, -full_scale, full_scale)
        if mode in (2, 3, 6, 7):
            brng = (self._config >> 13) & 0b1
            counts = round(self._bus_volts / BUS_LSB_VOLTS)
            self._bus_counts = _clip(counts, 0, _BUS_FULL_SCALE_COUNTS[brng])

    def _conversion_ready(self) -> bool:
        if self._mode in (0, 4):
            return False
        bus_adc = (self._config >> 7) & 0b1111
        shunt_adc = (self._config >> 3) & 0b1111
        needed = max(_conversion_seconds(bus_adc), _conversion_seconds(shunt_adc))
        return time.monotonic() - self._conversion_started >= needed

    def _current_counts(self) -> tuple[int, bool]:
        """Current register (signed) and whether the calculation overflowed."""
        # Datasheet eq. 4: Current = ShuntVoltage * Calibration / 4096.
        exact = int(self._shunt_counts * self._calibration / 4096)
        clipped = _clip(exact, _INT16_MIN, _INT16_MAX)
        return clipped, clipped != exact

    def _power_counts(self) -> tuple[int, bool]:
        """Power register (unsigned) and whether the calculation overflowed."""
        current, current_overflow = self._current_counts()
        # Datasheet eq. 5: Power = Current * BusVoltage / 5000; the chip reports the
        # magnitude, so power is never negative.
        exact = abs(current) * self._bus_counts // 5000
        clipped = min(exact, _UINT16_MAX)
        return clipped, current_overflow or clipped != exact

    def _read_register(self, register: int) -> int:
        if self._mode in (5, 6, 7):
            # Continuous mode converts every ~0.5 ms: a read always sees fresh data.
            self._convert()
        value = 0  # no register at this pointer
        if register == REG_CONFIG:
            value = self._config
        elif register == REG_SHUNT_VOLTAGE:
            value = self._shunt_counts & 0xFFFF
        elif register == REG_BUS_VOLTAGE:
            _, overflow = self._power_counts()
            cnvr = 0b10 if self._conversion_ready() else 0
            value = (self._bus_counts << 3) | cnvr | int(overflow)
        elif register == REG_POWER:
            value, _ = self._power_counts()
            # Reading the power register clears CNVR until the next conversion ends.
            self._conversion_started = time.monotonic()
        elif register == REG_CURRENT:
            current, _ = self._current_counts()
            value = current & 0xFFFF
        elif register == REG_CALIBRATION:
            value = self._calibration
        return value
