"""The simulated I2C bus and the INA219 register model, driven at the byte level."""

from __future__ import annotations

import errno
import struct
import threading
from collections.abc import Iterator

import pytest

from bench_agent.hardware.sim.i2c_bus import SimulatedI2CBus
from bench_agent.hardware.sim.ina219_chip import (
    CONFIG_POWER_ON,
    REG_BUS_VOLTAGE,
    REG_CALIBRATION,
    REG_CONFIG,
    REG_CURRENT,
    REG_POWER,
    REG_SHUNT_VOLTAGE,
    SimulatedINA219,
)

ADDRESS = 0x40


@pytest.fixture
def chip() -> SimulatedINA219:
    return SimulatedINA219(shunt_ohms=0.1)


@pytest.fixture
def bus(chip: SimulatedINA219) -> Iterator[SimulatedI2CBus]:
    with SimulatedI2CBus() as bus:
        bus.attach(ADDRESS, chip)
        assert bus.try_lock()
        yield bus
        bus.unlock()


def read_register(bus: SimulatedI2CBus, register: int) -> int:
    buffer = bytearray(3)
    buffer[0] = register
    # The same buffer out and in, as adafruit_register does.
    bus.writeto_then_readfrom(ADDRESS, buffer, buffer, out_end=1, in_start=1, in_end=3)
    return int(struct.unpack_from(">H", buffer, 1)[0])


def write_register(bus: SimulatedI2CBus, register: int, value: int) -> None:
    bus.writeto(ADDRESS, struct.pack(">BH", register, value))


def test_power_on_registers(bus: SimulatedI2CBus) -> None:
    assert read_register(bus, REG_CONFIG) == CONFIG_POWER_ON == 0x399F
    assert read_register(bus, REG_CALIBRATION) == 0


def test_same_buffer_in_and_out_reads_the_register_not_the_pointer(bus: SimulatedI2CBus) -> None:
    buffer = bytearray([REG_CONFIG, 0xEE, 0xEE])
    bus.writeto_then_readfrom(ADDRESS, buffer, buffer, out_end=1, in_start=1)
    assert buffer == bytearray([REG_CONFIG, 0x39, 0x9F])


def test_overlapping_same_buffer_sends_the_pointer_before_reading(bus: SimulatedI2CBus) -> None:
    write_register(bus, REG_CALIBRATION, 0x2000)
    buffer = bytearray([REG_CALIBRATION, 0xEE])
    bus.writeto_then_readfrom(ADDRESS, buffer, buffer, out_end=1)  # in = the whole buffer
    assert buffer == bytearray([0x20, 0x00])


def test_writeto_honours_start_and_end(bus: SimulatedI2CBus, chip: SimulatedINA219) -> None:
    bus.writeto(ADDRESS, b"\xaa\x05\x12\x34\xbb", start=1, end=4)
    assert chip.calibration_register == 0x1234


def test_readfrom_into_fills_only_the_slice(bus: SimulatedI2CBus) -> None:
    bus.writeto(ADDRESS, bytes([REG_CONFIG]))  # a 1-byte write only sets the pointer
    buffer = bytearray(b"\x00\x00\x00\x00")
    bus.readfrom_into(ADDRESS, buffer, start=1, end=3)
    assert buffer == bytearray(b"\x00\x39\x9f\x00")


def test_calibration_bit0_is_read_only(bus: SimulatedI2CBus) -> None:
    write_register(bus, REG_CALIBRATION, 0x1235)
    assert read_register(bus, REG_CALIBRATION) == 0x1234


def test_reset_bit_restores_config_and_clears_calibration(bus: SimulatedI2CBus) -> None:
    write_register(bus, REG_CONFIG, 0x019F)
    write_register(bus, REG_CALIBRATION, 4096)
    write_register(bus, REG_CONFIG, 0x8000)
    assert read_register(bus, REG_CONFIG) == 0x399F  # bit 15 self-clears
    assert read_register(bus, REG_CALIBRATION) == 0


def test_current_and_power_are_zero_until_calibrated(
    bus: SimulatedI2CBus, chip: SimulatedINA219
) -> None:
    chip.set_conditions(bus_volts=12.0, current_amps=1.0)
    assert read_register(bus, REG_SHUNT_VOLTAGE) == 10_000  # 100 mV / 10 µV
    assert read_register(bus, REG_CURRENT) == 0
    assert read_register(bus, REG_POWER) == 0
    write_register(bus, REG_CALIBRATION, 4096)
    assert read_register(bus, REG_CURRENT) == 10_000  # 10000 × 4096 / 4096
    assert read_register(bus, REG_POWER) == 10_000 * 3000 // 5000  # bus 12 V = 3000 counts


def test_bus_register_layout_and_overflow_flag(bus: SimulatedI2CBus, chip: SimulatedINA219) -> None:
    chip.set_conditions(bus_volts=12.0, current_amps=3.0)  # 300 mV
    write_register(bus, REG_CALIBRATION, 4096)
    assert read_register(bus, REG_BUS_VOLTAGE) >> 3 == 3000
    assert read_register(bus, REG_BUS_VOLTAGE) & 0b1 == 0
    write_register(bus, REG_CALIBRATION, 8192)  # 30000 × 2 counts overflows int16
    assert read_register(bus, REG_BUS_VOLTAGE) & 0b1 == 1
    assert read_register(bus, REG_CURRENT) == 0x7FFF


def test_negative_shunt_voltage_is_twos_complement(
    bus: SimulatedI2CBus, chip: SimulatedINA219
) -> None:
    chip.set_conditions(bus_volts=12.0, current_amps=-0.5)
    assert read_register(bus, REG_SHUNT_VOLTAGE) == 0x10000 - 5_000


def test_powerdown_holds_values_and_a_trigger_converts(
    bus: SimulatedI2CBus, chip: SimulatedINA219
) -> None:
    chip.set_conditions(bus_volts=12.0, current_amps=1.0)
    assert read_register(bus, REG_SHUNT_VOLTAGE) == 10_000
    write_register(bus, REG_CONFIG, CONFIG_POWER_ON & ~0b111)  # power-down
    chip.set_conditions(bus_volts=5.0, current_amps=2.0)
    assert read_register(bus, REG_SHUNT_VOLTAGE) == 10_000
    assert read_register(bus, REG_BUS_VOLTAGE) & 0b10 == 0  # no conversion ready
    write_register(bus, REG_CONFIG, (CONFIG_POWER_ON & ~0b111) | 0b011)  # trigger both
    assert read_register(bus, REG_SHUNT_VOLTAGE) == 20_000
    assert read_register(bus, REG_BUS_VOLTAGE) >> 3 == 1250


def test_absent_address_nacks_with_eremoteio(bus: SimulatedI2CBus) -> None:
    with pytest.raises(OSError) as caught:
        bus.writeto(0x41, b"")
    assert caught.value.errno == errno.EREMOTEIO == 121


def test_failing_chip_raises_eremoteio_and_leaves_scan(
    bus: SimulatedI2CBus, chip: SimulatedINA219
) -> None:
    other = SimulatedINA219(shunt_ohms=0.01)
    bus.attach(0x44, other)
    assert bus.scan() == [0x40, 0x44]
    chip.fail_reads(True)
    with pytest.raises(OSError) as caught:
        read_register(bus, REG_CONFIG)
    assert caught.value.errno == errno.EREMOTEIO
    assert bus.scan() == [0x44]
    bus.detach(0x44)
    assert bus.scan() == []
    chip.fail_reads(False)
    assert read_register(bus, REG_CONFIG) == 0x399F


def test_transfers_need_the_lock() -> None:
    with SimulatedI2CBus() as bus:
        bus.attach(ADDRESS, SimulatedINA219(shunt_ohms=0.1))
        with pytest.raises(RuntimeError, match="requires lock"):
            bus.writeto(ADDRESS, b"\x00")
        assert bus.try_lock()
        assert not bus.try_lock()
        # Another thread cannot take it either.
        taken_elsewhere: list[bool] = []
        thread = threading.Thread(target=lambda: taken_elsewhere.append(bus.try_lock()))
        thread.start()
        thread.join()
        assert taken_elsewhere == [False]
        bus.unlock()
        assert bus.try_lock()
        bus.unlock()
        bus.unlock()  # unlocking an unlocked bus is harmless


def test_deinit_makes_the_bus_unusable() -> None:
    bus = SimulatedI2CBus()
    with bus:
        pass
    with pytest.raises(ValueError, match="deinitialized"):
        bus.try_lock()
    bus.deinit()  # idempotent


def test_attach_rejects_taken_and_reserved_addresses() -> None:
    bus = SimulatedI2CBus()
    bus.attach(0x40, SimulatedINA219(shunt_ohms=0.1))
    with pytest.raises(ValueError, match="taken"):
        bus.attach(0x40, SimulatedINA219(shunt_ohms=0.1))
    with pytest.raises(ValueError, match="outside"):
        bus.attach(0x02, SimulatedINA219(shunt_ohms=0.1))
    bus.deinit()
