"""INA219 power channels through the real `adafruit_ina219` driver, calibrated for any shunt.

A channel is one INA219 on an I2C bus (solar, battery, a USB port, the access point).
The bus is injected: Blinka's/ExtendedI2C on the Pi, `SimulatedI2CBus` elsewhere.
"""

from __future__ import annotations

import errno
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, TypeAlias

from adafruit_ina219 import INA219, ADCResolution, BusVoltageRange, Gain, Mode

from bench_agent.errors import SensorAbsent, SensorError
from bench_agent.model import PowerReading

ReadableBuffer: TypeAlias = bytes | bytearray | memoryview
WriteableBuffer: TypeAlias = bytearray | memoryview

# PGA full-scale shunt voltage (V) for each Gain setting, smallest first.
_PGA_RANGES_VOLTS = (
    (0.04, Gain.DIV_1_40MV),
    (0.08, Gain.DIV_2_80MV),
    (0.16, Gain.DIV_4_160MV),
    (0.32, Gain.DIV_8_320MV),
)
_BUS_RANGES = {16: BusVoltageRange.RANGE_16V, 32: BusVoltageRange.RANGE_32V}
_CAL_MAX = 0xFFFE  # bit 0 of the calibration register is read-only 0
_CURRENT_REGISTER_MAX = 32767  # signed 16-bit current register

# adafruit_register descriptors share ONE module-level scratch buffer for every
# driver in the process, and fill it before taking the bus lock; two threads reading
# two channels at once would corrupt each other's transfers. Every driver call goes
# through this lock.
_DRIVER_LOCK = threading.Lock()


class I2CBus(Protocol):
    """What `adafruit_bus_device.I2CDevice` needs from a bus (busio.I2C's surface)."""

    def try_lock(self) -> bool: ...

    def unlock(self) -> None: ...

    def writeto(
        self, address: int, buffer: ReadableBuffer, *, start: int = 0, end: int | None = None
    ) -> None: ...

    def readfrom_into(
        self, address: int, buffer: WriteableBuffer, *, start: int = 0, end: int | None = None
    ) -> None: ...

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: ReadableBuffer,
        buffer_in: WriteableBuffer,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Calibration:
    """An INA219 calibration, computed per the datasheet's calibration procedure."""

    cal_value: int  # written to register 0x05
    current_lsb_amps: float  # A per count of the current register
    power_lsb_watts: float  # W per count of the power register (20 × current LSB)
    gain: int  # adafruit_ina219.Gain value (PGA field)
    bus_range: int  # adafruit_ina219.BusVoltageRange value
    shunt_full_scale_volts: float  # PGA range: shunt voltages beyond ± this clip

    def __post_init__(self) -> None:
        if not 1 <= self.cal_value <= _CAL_MAX or self.cal_value % 2:
            raise ValueError(f"calibration value {self.cal_value} not an even 1..0xFFFE")


def _round_up_convenient(value: float) -> Fraction:
    """The smallest 1-2-5 × 10^n at or above `value` (datasheet: "a round number")."""
    exact = Fraction(repr(value))
    step = Fraction(1, 10**20)
    while True:
        for multiplier in (1, 2, 5):
            if step * multiplier >= exact:
                return step * multiplier
        step *= 10


def compute_calibration(
    shunt_ohms: float, max_expected_amps: float, bus_range_volts: int = 32
) -> Calibration:
    """Calibration for a `shunt_ohms` (Ω) shunt measuring up to ±`max_expected_amps` (A).

    Raises ValueError when the shunt cannot measure that current (the voltage across
    it would exceed the chip's ±320 mV range) or the bus range is not 16 or 32 V.
    """
    if shunt_ohms <= 0 or max_expected_amps <= 0:
        raise ValueError("shunt_ohms and max_expected_amps must be > 0")
    if bus_range_volts not in _BUS_RANGES:
        raise ValueError(f"bus_range_volts must be 16 or 32, got {bus_range_volts}")
    ohms = Fraction(repr(shunt_ohms))
    # Exact arithmetic: 3.2 A × 0.1 Ω is 320 mV, not 320.00000000000006 mV.
    max_shunt_volts = Fraction(repr(max_expected_amps)) * ohms
    fitting = [
        (volts, gain)
        for volts, gain in _PGA_RANGES_VOLTS
        if Fraction(repr(volts)) >= max_shunt_volts
    ]
    if not fitting:
        raise ValueError(
            f"{max_expected_amps} A through {shunt_ohms} Ω is"
            f" {float(max_shunt_volts) * 1000:.0f} mV, beyond the INA219's 320 mV shunt range;"
            " fit a smaller shunt"
        )
    full_scale_volts, gain = fitting[0]
    current_lsb = _round_up_convenient(max_expected_amps / _CURRENT_REGISTER_MAX)
    # Datasheet eq. 1: Cal = trunc(0.04096 / (Current_LSB × R_SHUNT)), exactly, so
    # 0.04096 / (0.0001 × 0.1) is 4096 and not 4095.
    cal = int(Fraction("0.04096") / (current_lsb * ohms))
    cal = min(cal, _CAL_MAX) & ~1
    # The LSB the chip really applies follows from the truncated register value; the
    # driver's own presets compute it the same way.
    true_lsb = Fraction("0.04096") / (cal * ohms)
    return Calibration(
        cal_value=cal,
        current_lsb_amps=float(true_lsb),
        power_lsb_watts=float(20 * true_lsb),
        gain=gain,
        bus_range=_BUS_RANGES[bus_range_volts],
        shunt_full_scale_volts=full_scale_volts,
    )


# mypy sees the untyped driver as Any; subclassing it is deliberate.
class _CalibratedINA219(INA219):  # type: ignore[misc]
    """The driver plus calibration for any shunt.

    The driver sets its cached `_cal_value`, `_current_lsb` (mA) and `_power_lsb` (W)
    inside its own `set_calibration_32V_2A()`-style methods; this adds one more such
    method instead of patching the library's attributes from outside.
    """

    def set_calibration(self, calibration: Calibration) -> None:
        """Configure the chip and the driver's scaling for `calibration`."""
        self.bus_voltage_range = calibration.bus_range
        self.gain = calibration.gain
        self.calibration = calibration.cal_value  # writes 0x05 and caches _cal_value
        self._current_lsb = calibration.current_lsb_amps * 1000  # the driver reports mA
        self._power_lsb = calibration.power_lsb_watts
        self.bus_adc_resolution = ADCResolution.ADCRES_12BIT_1S
        self.shunt_adc_resolution = ADCResolution.ADCRES_12BIT_1S
        self.mode = Mode.SANDBVOLT_CONTINUOUS


def _sensor_error(name: str, address: int, exc: OSError) -> SensorError:
    what = f"{name}: INA219 at 0x{address:02x} did not answer: {exc.strerror or exc}"
    return SensorError(exc.errno, what) if exc.errno is not None else SensorError(what)


class INA219Channel:
    """One INA219 power channel: `read()` gives bus volts (V), amps (A) and watts (W)."""

    # Positional parameters as the sampler/backend were promised; hence the noqa.
    def __init__(  # noqa: PLR0917
        self,
        name: str,
        i2c_bus: I2CBus,
        address: int,
        shunt_ohms: float,
        max_expected_amps: float,
        bus_range_volts: int = 32,
    ) -> None:
        self.name = name
        self.address = address
        self.shunt_ohms = shunt_ohms
        self.calibration = compute_calibration(shunt_ohms, max_expected_amps, bus_range_volts)
        with _DRIVER_LOCK:
            try:
                driver = _CalibratedINA219(i2c_bus, address)
                driver.set_calibration(self.calibration)
            except ValueError as exc:  # I2CDevice's probe: nothing ACKs the address
                raise SensorAbsent(
                    errno.ENXIO, f"{name}: no INA219 answers at 0x{address:02x}"
                ) from exc
            except OSError as exc:
                raise _sensor_error(name, address, exc) from exc
        self._driver = driver

    def read(self) -> PowerReading:
        """Read the chip now. Raises SensorError (with the errno) if a transfer fails.

        A load spike that resets the chip is harmless: the driver rewrites the
        calibration before each current/power read, and the power-on config (PGA /8,
        32 V) only widens the ranges, with the same 10 µV and 4 mV steps.
        """
        with _DRIVER_LOCK:
            try:
                volts = float(self._driver.bus_voltage)
                amps = float(self._driver.current) / 1000
                watts = float(self._driver.power)
                overflow = bool(self._driver.overflow)
                if overflow:
                    shunt_volts = float(self._driver.shunt_voltage)
            except OSError as exc:
                raise _sensor_error(self.name, self.address, exc) from exc
        if overflow:
            # The current register saturated (e.g. a phone shorting a port). The shunt
            # register still holds the voltage, clipped at the PGA range: report that,
            # a lower bound of the true current, so over-current protection still sees it.
            amps = shunt_volts / self.shunt_ohms
            watts = abs(amps) * volts
        return PowerReading(volts=volts, amps=amps, watts=watts)


def open_pi_i2c_bus(bus_number: int) -> I2CBus:
    """Open /dev/i2c-`bus_number` on a Raspberry Pi. Imports Pi libraries only when called."""
    try:
        # Lazy: the package must import on a machine without the Pi extras.
        from adafruit_extended_bus import ExtendedI2C  # noqa: PLC0415
    except ImportError:
        if bus_number != 1:
            raise ImportError(
                f"I2C bus {bus_number} needs adafruit-extended-bus: pip install 'bench-agent[pi]'"
            ) from None
        import board  # noqa: PLC0415  # Blinka's board.I2C() is bus 1 on a Pi

        blinka_bus: I2CBus = board.I2C()
        return blinka_bus
    bus: I2CBus = ExtendedI2C(bus_number)
    return bus
