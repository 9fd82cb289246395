"""What both benches are built from: INA219 channels on a bus, outputs on a pin factory.

Shared by the Pi's builder (`pi.py`) and the simulated bench (`sim/bench.py`),
which differ only in where the bus and the pins come from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench_agent.config import Config, Ina219Config
from bench_agent.hardware.gpio import GpioSwitch
from bench_agent.hardware.hotspot import NmcliHotspot
from bench_agent.hardware.ina219 import I2CBus, INA219Channel
from bench_agent.hardware.ports import Hotspot, SensorOpener, Switch
from bench_agent.vocabulary import WIFI


def ina219_opener(bus: Callable[[], I2CBus], sensor: Ina219Config) -> SensorOpener:
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
    """`pin_factory`: a PinSupply or a gpiozero pin factory (MockFactory in simulation)."""
    outputs: dict[str, Switch] = {}
    for out in cfg.outputs:
        if out.backend == "nmcli":
            assert out.nmcli_connection is not None
            outputs[out.name] = NmcliHotspot(out.name, out.nmcli_connection, out.safe_state_on)
        else:
            assert out.pin is not None
            outputs[out.name] = GpioSwitch(out.name, out.pin, out.safe_state_on, pin_factory)
    return outputs


def hotspot_of(outputs: Mapping[str, Switch]) -> Hotspot | None:
    """The wifi output when it is a hotspot that can count its clients; else None
    (a gpio-powered access point cannot tell)."""
    wifi = outputs.get(WIFI)
    return wifi if isinstance(wifi, NmcliHotspot) else None
