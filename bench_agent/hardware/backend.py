"""The ONE place that picks real or simulated hardware for a configuration.

`build_hardware(cfg)` returns a `Hardware` bundle: channel openers for the
sampler, the switched outputs, the tamper input, the CPU temperature, the
clock, and `tick()` (which advances the simulated bench; a no-op on a Pi). The
rest of the agent never asks which backend it runs on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_agent.clock import Clock, SystemClock
from bench_agent.config import Config, Ina219Config
from bench_agent.hardware.gpio import GpioSwitch, NmcliHotspot, Switch, TamperSwitch
from bench_agent.hardware.ina219 import I2CBus, INA219Channel, open_pi_i2c_bus
from bench_agent.hardware.pins import GPIO_FAULT, PinSupply, open_lgpio_factory

I2C_FAULT = "i2c"

log = logging.getLogger(__name__)

Opener = Callable[[], Any]


@dataclass
class Hardware(AbstractContextManager["Hardware"]):
    clock: Clock
    channels: dict[str, Opener]
    outputs: dict[str, Switch]
    tamper: TamperSwitch | None
    read_cpu_temperature: Callable[[], float | None]
    tick: Callable[[], None] = lambda: None
    simulation: Any = None  # the SimulatedBench, on the "sim" backend (tests and demo)
    # The boot `clock.monotonic()` counts from, stamped on every record with its
    # uptime. None: the kernel's boot_id. A simulated clock restarts with the
    # process, so a simulated bench is a new "boot" each time the agent starts.
    boot_id: str | None = None
    # Where GPIO pins and the I2C bus come from on a Pi; None in simulation.
    pins: PinSupply | None = None
    i2c: I2CBusSupply | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def faults(self) -> dict[str, str]:
        """Parts of the bench that cannot be used now, with what to do: {fault: detail}."""
        faults = {}
        if self.pins is not None and self.pins.error is not None:
            faults[GPIO_FAULT] = str(self.pins.error)
        if self.i2c is not None and self.i2c.error is not None:
            faults[I2C_FAULT] = self.i2c.error
        return faults

    def tamper_open(self) -> bool | None:
        return None if self.tamper is None else self.tamper.is_open

    def cpu_temperature(self) -> float | None:
        return self.read_cpu_temperature()

    def wifi_clients(self) -> int | None:
        """Wi-Fi clients associated now, where the hotspot backend can tell; else None."""
        hotspot = self.outputs.get("wifi")
        count = getattr(hotspot, "client_count", None)
        return count() if callable(count) else None

    def close(self) -> None:
        """Outputs to their safe state first, then everything else. Idempotent."""
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                closer()
            except Exception:  # closing must go on whatever one part does
                log.exception("hardware: error while closing")

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_sysfs_temperature(path: Path) -> float | None:
    """CPU temperature in °C from a thermal zone (millidegrees), None when unreadable."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def ina219_opener(bus: Callable[[], I2CBus], sensor: Ina219Config) -> Opener:
    """Builds the channel on first use, and again after it was found absent."""

    def open_channel() -> INA219Channel:
        return INA219Channel(
            sensor.name,
            bus(),
            sensor.address,
            sensor.shunt_ohms,
            sensor.max_amps,
            sensor.bus_range_volts,
        )

    return open_channel


def build_outputs(cfg: Config, pin_factory: Any) -> dict[str, Switch]:
    outputs: dict[str, Switch] = {}
    for out in cfg.outputs:
        if out.backend == "nmcli":
            assert out.nmcli_connection is not None
            outputs[out.name] = NmcliHotspot(out.name, out.nmcli_connection, out.safe_state_on)
        else:
            assert out.pin is not None
            outputs[out.name] = GpioSwitch(out.name, out.pin, out.safe_state_on, pin_factory)
    return outputs


def build_hardware(cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware:
    if cfg.hardware.backend == "sim":
        from bench_agent.hardware.sim.bench import build_simulated_hardware  # noqa: PLC0415

        return build_simulated_hardware(cfg, on_tamper)
    return _build_pi_hardware(cfg, on_tamper)


def _build_pi_hardware(cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware:
    """The real bench. No missing part stops it: GPIO, the I2C bus and each sensor
    are tried when needed and again later, and each absence is a fault that says
    what to do (`Hardware.faults()`, the sampler's channel faults)."""
    bus = I2CBusSupply(cfg.hardware.i2c_bus)
    # lgpio, chosen explicitly: no fallback chain, no warnings, a fault instead of a crash.
    pins = PinSupply(open_lgpio_factory)
    hardware = Hardware(
        clock=SystemClock(),
        channels={s.name: ina219_opener(bus.get, s) for s in cfg.sensors},
        outputs={},
        tamper=None,
        read_cpu_temperature=lambda: read_sysfs_temperature(cfg.sampling.cpu_temperature_path),
        pins=pins,
        i2c=bus,
    )
    try:
        hardware.outputs = build_outputs(cfg, pins)
        for switch in hardware.outputs.values():
            hardware._closers.append(switch.close)
        if cfg.tamper is not None:
            tamper = TamperSwitch(
                cfg.tamper.pin,
                cfg.tamper.pull_up,
                cfg.tamper.open_when_active,
                pins,
                on_change=on_tamper,
            )
            hardware.tamper = tamper
            hardware.tick = tamper.poll  # tried again until GPIO is there
            hardware._closers.insert(0, tamper.close)
    except BaseException:
        hardware.close()
        raise
    return hardware


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
