"""INA219 channels: the real adafruit_ina219 driver over the simulated chip and bus."""

from __future__ import annotations

import errno
import math
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.errors import SensorAbsent, SensorError
from bench_agent.hardware.ina219 import (
    INA219Channel,
    compute_calibration,
    open_pi_i2c_bus,
)
from bench_agent.hardware.ports import PowerSensor
from bench_agent.hardware.sim.i2c_bus import SimulatedI2CBus
from bench_agent.hardware.sim.ina219_chip import REG_BUS_VOLTAGE, SimulatedINA219
from bench_agent.model import PowerReading


@dataclass(frozen=True)
class Board:
    """One channel's hardware: shunt (Ω), expected max (A), bus range (V)."""

    label: str
    shunt_ohms: float
    max_amps: float
    bus_range_volts: int


DEFAULT_BREAKOUT = Board("breakout 0.1 Ω / 3.2 A", 0.1, 3.2, 32)
SOLAR_BATTERY = Board("solar/battery 0.01 Ω / 10 A", 0.01, 10.0, 32)
USB_PORT = Board("USB port 0.05 Ω / 2 A", 0.05, 2.0, 16)
SMALL_LOAD = Board("access point 0.1 Ω / 0.4 A", 0.1, 0.4, 16)
BOARDS = [DEFAULT_BREAKOUT, SOLAR_BATTERY, USB_PORT, SMALL_LOAD]


@pytest.fixture
def bus() -> Iterator[SimulatedI2CBus]:
    with SimulatedI2CBus() as bus:
        yield bus


def make_channel(
    bus: SimulatedI2CBus, board: Board, address: int = 0x40, name: str = "chan"
) -> tuple[INA219Channel, SimulatedINA219]:
    chip = SimulatedINA219(shunt_ohms=board.shunt_ohms)
    bus.attach(address, chip)
    channel = INA219Channel(
        name, bus, address, board.shunt_ohms, board.max_amps, board.bus_range_volts
    )
    return channel, chip


def assert_matches_truth(reading: PowerReading, board: Board, volts: float, amps: float) -> None:
    """Within the chip's resolution: 4 mV bus steps, 10 µV shunt steps, the current and
    power LSBs (the chip truncates)."""
    cal = compute_calibration(board.shunt_ohms, board.max_amps, board.bus_range_volts)
    volts_tol = 0.002 + 1e-9
    amps_tol = 0.5 * 10e-6 / board.shunt_ohms + cal.current_lsb_amps + 1e-9
    watts_tol = abs(amps) * volts_tol + volts * amps_tol + cal.power_lsb_watts + 1e-9
    assert math.isclose(reading.volts, volts, abs_tol=volts_tol), (reading, volts)
    assert math.isclose(reading.amps, amps, abs_tol=amps_tol), (reading, amps)
    assert math.isclose(reading.watts, abs(volts * amps), abs_tol=watts_tol), reading
    assert reading.watts >= 0


@pytest.mark.parametrize(
    ("board", "volts", "amps"),
    [
        (DEFAULT_BREAKOUT, 12.0, 0.25),
        (DEFAULT_BREAKOUT, 24.6, 3.1),
        (SOLAR_BATTERY, 19.5, 6.2),  # the panel at noon
        (SOLAR_BATTERY, 12.8, -4.5),  # the battery charging: current flows backwards
        (SOLAR_BATTERY, 13.1, 0.003),  # a trickle, near the 1 mA shunt step
        (USB_PORT, 5.1, 1.7),
        (USB_PORT, 5.0, 0.0),
        (SMALL_LOAD, 12.3, 0.35),
        (SMALL_LOAD, 12.3, -0.2),
    ],
    ids=lambda value: value.label if isinstance(value, Board) else str(value),
)
def test_reading_matches_physical_truth(
    bus: SimulatedI2CBus, board: Board, volts: float, amps: float
) -> None:
    channel, chip = make_channel(bus, board)
    chip.set_conditions(bus_volts=volts, current_amps=amps)
    assert_matches_truth(channel.read(), board, volts, amps)


@pytest.mark.parametrize(
    ("board", "cal_value", "config"),
    [
        # Datasheet eq. 1 with the current LSB rounded up to 1-2-5:
        # 3.2 A / 32767 -> 100 µA; 0.04096 / (100 µA × 0.1 Ω) = 4096 (the driver's own value)
        (DEFAULT_BREAKOUT, 4096, 0x399F),  # 32 V, PGA /8 (320 mV)
        # 10 A / 32767 -> 500 µA; 0.04096 / (500 µA × 0.01 Ω) = 8192; 100 mV -> PGA /4
        (SOLAR_BATTERY, 8192, 0x319F),
        # 2 A / 32767 -> 100 µA; 0.04096 / (100 µA × 0.05 Ω) = 8192; 100 mV -> PGA /4, 16 V
        (USB_PORT, 8192, 0x119F),
        # 0.4 A / 32767 -> 20 µA; 0.04096 / (20 µA × 0.1 Ω) = 20480; 40 mV -> PGA /1, 16 V
        (SMALL_LOAD, 20480, 0x019F),
    ],
    ids=lambda value: value.label if isinstance(value, Board) else hex(value),
)
def test_chip_gets_the_datasheet_calibration(
    bus: SimulatedI2CBus, board: Board, cal_value: int, config: int
) -> None:
    _, chip = make_channel(bus, board)
    assert chip.calibration_register == cal_value
    assert chip.config_register == config


def test_calibration_is_clamped_to_the_register() -> None:
    cal = compute_calibration(shunt_ohms=1.0, max_expected_amps=0.001)
    assert cal.cal_value == 0xFFFE
    # The LSB follows from the clamped register, so readings stay right.
    assert cal.current_lsb_amps == pytest.approx(0.04096 / (0xFFFE * 1.0))
    assert cal.power_lsb_watts == pytest.approx(20 * cal.current_lsb_amps)


@pytest.mark.parametrize(
    ("shunt_ohms", "max_amps", "bus_range", "problem"),
    [
        (0.1, 5.0, 32, "320 mV"),  # 500 mV across the shunt: beyond the PGA
        (0.1, 1.0, 24, "16 or 32"),
        (0.0, 1.0, 32, "> 0"),
        (0.1, -1.0, 32, "> 0"),
    ],
)
def test_impossible_calibrations_are_refused(
    bus: SimulatedI2CBus, shunt_ohms: float, max_amps: float, bus_range: int, problem: str
) -> None:
    bus.attach(0x40, SimulatedINA219(shunt_ohms=0.1))
    with pytest.raises(ValueError, match=problem):
        INA219Channel("x", bus, 0x40, shunt_ohms, max_amps, bus_range)


def test_still_right_after_a_load_spike_resets_the_chip(bus: SimulatedI2CBus) -> None:
    channel, chip = make_channel(bus, USB_PORT)
    chip.set_conditions(bus_volts=5.05, current_amps=1.2)
    assert_matches_truth(channel.read(), USB_PORT, 5.05, 1.2)
    chip.reset_by_load_spike()
    assert chip.calibration_register == 0
    assert chip.config_register == 0x399F
    assert_matches_truth(channel.read(), USB_PORT, 5.05, 1.2)
    assert chip.calibration_register == 8192  # the driver rewrote it before reading


def test_failing_sensor_raises_sensor_error_and_others_keep_reading(
    bus: SimulatedI2CBus,
) -> None:
    solar, solar_chip = make_channel(bus, SOLAR_BATTERY, 0x40, "solar")
    usb1, usb1_chip = make_channel(bus, USB_PORT, 0x44, "usb1")
    solar_chip.set_conditions(bus_volts=18.0, current_amps=3.0)
    usb1_chip.set_conditions(bus_volts=5.1, current_amps=0.9)
    usb1_chip.fail_reads(True)
    with pytest.raises(SensorError) as caught:
        usb1.read()
    assert caught.value.errno == errno.EREMOTEIO == 121
    assert "usb1" in str(caught.value)
    assert "121" in str(caught.value)
    assert "0x44" in str(caught.value)
    assert not isinstance(caught.value, SensorAbsent)
    # The failure left the bus unlocked: the other channel on it still reads.
    assert_matches_truth(solar.read(), SOLAR_BATTERY, 18.0, 3.0)
    usb1_chip.fail_reads(False)
    assert_matches_truth(usb1.read(), USB_PORT, 5.1, 0.9)


def test_cut_wire_after_start_is_a_sensor_error(bus: SimulatedI2CBus) -> None:
    channel, _ = make_channel(bus, DEFAULT_BREAKOUT, 0x41, "battery")
    bus.detach(0x41)
    with pytest.raises(SensorError) as caught:
        channel.read()
    assert caught.value.errno == errno.EREMOTEIO


def test_absent_address_is_sensor_absent(bus: SimulatedI2CBus) -> None:
    bus.attach(0x40, SimulatedINA219(shunt_ohms=0.1))
    with pytest.raises(SensorAbsent, match=r"usb2: no INA219 answers at 0x45") as caught:
        INA219Channel("usb2", bus, 0x45, 0.05, 2.0)
    assert isinstance(caught.value.__cause__, ValueError)  # the driver's own probe said so
    assert bus.try_lock()  # the probe released the bus
    bus.unlock()


def test_chip_failing_at_start_is_a_sensor_error(bus: SimulatedI2CBus) -> None:
    chip = SimulatedINA219(shunt_ohms=0.1)
    bus.attach(0x40, chip)
    chip.fail_reads(True)
    # A chip that NACKs everything looks absent to the probe, as on a real bus.
    with pytest.raises(SensorAbsent):
        INA219Channel("solar", bus, 0x40, 0.1, 3.2)


@pytest.mark.parametrize("amps", [0.6, -0.6])
def test_shunt_beyond_pga_range_clips_like_the_chip(bus: SimulatedI2CBus, amps: float) -> None:
    channel, chip = make_channel(bus, SMALL_LOAD)  # PGA /1: ±40 mV = ±0.4 A on 0.1 Ω
    chip.set_conditions(bus_volts=12.0, current_amps=amps)
    reading = channel.read()
    assert reading.amps == pytest.approx(math.copysign(0.4, amps))
    assert reading.volts == pytest.approx(12.0)


def test_current_register_overflow_reports_the_shunt_current(bus: SimulatedI2CBus) -> None:
    # 0.41 A on 0.1 Ω: PGA /2 (80 mV), current LSB 20 µA, so the current register
    # saturates at 0.655 A while the shunt register still reads up to 0.8 A.
    board = Board("port 0.1 Ω / 0.41 A", 0.1, 0.41, 16)
    channel, chip = make_channel(bus, board)
    chip.set_conditions(bus_volts=5.0, current_amps=0.7)  # a phone shorting the port
    reading = channel.read()
    assert bus.try_lock()
    buffer = bytearray([REG_BUS_VOLTAGE, 0, 0])
    bus.writeto_then_readfrom(0x40, buffer, buffer, out_end=1, in_start=1)
    bus.unlock()
    assert struct.unpack_from(">H", buffer, 1)[0] & 0b1 == 1  # the chip flagged OVF
    assert reading.amps == pytest.approx(0.7, abs=1e-4)
    assert reading.watts == pytest.approx(3.5, abs=1e-3)


def test_readings_while_the_model_thread_changes_conditions(bus: SimulatedI2CBus) -> None:
    channel, chip = make_channel(bus, SOLAR_BATTERY)
    states = [(12.5, 2.0), (13.5, -3.0)]
    chip.set_conditions(*states[0])
    stop = threading.Event()

    def model() -> None:
        flip = 0
        while not stop.is_set():
            flip ^= 1
            chip.set_conditions(*states[flip])

    thread = threading.Thread(target=model)
    thread.start()
    try:
        amps_seen = {round(channel.read().amps, 3) for _ in range(200)}
    finally:
        stop.set()
        thread.join()
    assert amps_seen <= {2.0, -3.0}


BOARD_AND_TRUTH = st.sampled_from([DEFAULT_BREAKOUT, SOLAR_BATTERY, USB_PORT, SMALL_LOAD]).flatmap(
    lambda board: st.tuples(
        st.just(board),
        st.floats(0.0, board.bus_range_volts - 0.01),
        st.floats(-board.max_amps, board.max_amps),
    )
)


@settings(max_examples=150, deadline=None)
@given(BOARD_AND_TRUTH)
def test_any_reading_within_range_matches_truth(case: tuple[Board, float, float]) -> None:
    board, volts, amps = case
    with SimulatedI2CBus() as bus:
        channel, chip = make_channel(bus, board)
        chip.set_conditions(bus_volts=volts, current_amps=amps)
        assert_matches_truth(channel.read(), board, volts, amps)


def test_channel_is_a_power_sensor(bus: SimulatedI2CBus) -> None:
    channel, _ = make_channel(bus, USB_PORT, 0x44, "usb1")
    sensor: PowerSensor = channel
    assert sensor.name == "usb1"
    assert channel.address == 0x44
    assert isinstance(sensor.read(), PowerReading)


def test_package_imports_without_pi_libraries() -> None:
    code = (
        "import sys, bench_agent.hardware.ina219\n"
        "assert 'board' not in sys.modules and 'adafruit_extended_bus' not in sys.modules"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=30)


def test_other_buses_need_extended_bus() -> None:
    try:
        import adafruit_extended_bus  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("adafruit-extended-bus is installed here")
    with pytest.raises(ImportError, match=r"bench-agent\[pi\]"):
        open_pi_i2c_bus(3)


def test_two_sampler_threads_on_one_bus_never_mix_registers(bus: SimulatedI2CBus) -> None:
    # adafruit_register shares one scratch buffer across all drivers; the channel's
    # lock keeps two threads from swapping each other's register pointers.
    solar, solar_chip = make_channel(bus, SOLAR_BATTERY, 0x40, "solar")
    usb1, usb1_chip = make_channel(bus, USB_PORT, 0x44, "usb1")
    solar_chip.set_conditions(bus_volts=18.0, current_amps=6.0)
    usb1_chip.set_conditions(bus_volts=5.0, current_amps=1.0)
    wrong: list[PowerReading] = []

    def sample(channel: INA219Channel, volts: float, amps: float) -> None:
        for _ in range(300):
            reading = channel.read()
            if abs(reading.volts - volts) > 0.01 or abs(reading.amps - amps) > 0.01:
                wrong.append(reading)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    try:
        threads = [
            threading.Thread(target=sample, args=(solar, 18.0, 6.0)),
            threading.Thread(target=sample, args=(usb1, 5.0, 1.0)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)
    assert wrong == []
