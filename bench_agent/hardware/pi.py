"""The real bench on a Raspberry Pi: lgpio pins, /dev/i2c-N, sysfs temperature.

No missing part stops it: GPIO, the I2C bus and each sensor are tried when
needed and again later, and each absence is a fault that says what to do
(`Hardware.faults()`, the sampler's channel faults).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from bench_agent.clock import SystemClock
from bench_agent.config import Config
from bench_agent.hardware.bundle import Hardware, closing
from bench_agent.hardware.gpio import TamperSwitch
from bench_agent.hardware.i2c import I2CBusSupply
from bench_agent.hardware.parts import build_outputs, hotspot_of, ina219_opener
from bench_agent.hardware.pins import PinSupply, open_lgpio_factory


def read_sysfs_temperature(path: Path) -> float | None:
    """CPU temperature in °C from a thermal zone (millidegrees), None when unreadable."""
    try:
        return round(int(path.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def build_pi_hardware(cfg: Config, on_tamper: Callable[[bool], None]) -> Hardware:
    bus = I2CBusSupply(cfg.hardware.i2c_bus)
    # lgpio, chosen explicitly: no fallback chain, no warnings, a fault instead of a crash.
    pins = PinSupply(open_lgpio_factory)
    with ExitStack() as stack:
        # Closed in reverse: the outputs (to their safe state) first, the tamper input last.
        tamper = None
        if cfg.tamper is not None:
            tamper = TamperSwitch(
                cfg.tamper.pin,
                cfg.tamper.pull_up,
                cfg.tamper.open_when_active,
                pins,
                on_change=on_tamper,
            )
            closing(stack, tamper.close, "the tamper input")
        outputs = build_outputs(cfg, pins)
        for name, switch in outputs.items():
            closing(stack, switch.close, f"output {name}")
        return Hardware(
            clock=SystemClock(),
            channels={s.name: ina219_opener(bus.get, s) for s in cfg.sensors},
            outputs=outputs,
            hotspot=hotspot_of(outputs),
            tamper=tamper,
            read_cpu_temperature=lambda: read_sysfs_temperature(cfg.sampling.cpu_temperature_path),
            tick=tamper.poll if tamper is not None else lambda: None,  # GPIO may come later
            pins=pins,
            i2c=bus,
            resources=stack.pop_all(),
        )
