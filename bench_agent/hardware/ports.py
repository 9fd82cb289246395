"""The hardware seams: one Protocol per kind of device the agent uses.

The core (sampler, controller, service) sees only these; `gpio`, `hotspot`,
`ina219` and the simulators in `sim/` implement them, and `backend` picks
which. A new kind of device starts here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from bench_agent.model import PowerReading


class PowerSensor(Protocol):
    """One named power channel (an INA219 on a Pi, its simulator on the sim bench)."""

    @property
    def name(self) -> str:
        """Channel name from the config, e.g. "solar" or "usb1"."""

    def read(self) -> PowerReading:
        """One reading now; raises SensorError when the sensor does not answer."""


# Builds a channel's sensor on first use and again after it was found absent.
SensorOpener = Callable[[], PowerSensor]


class Switch(Protocol):
    """One switched load."""

    name: str
    safe_state_on: bool  # the state it takes before the first decision and on stop

    def set(self, on: bool) -> None:
        """Switch the load; raises OSError when the switch cannot be driven."""

    @property
    def is_on(self) -> bool | None:
        """None when the switch cannot be driven now (its state is unknown)."""

    def close(self) -> None:
        """Return to the safe state and release the pin. Idempotent."""


class Hotspot(Switch, Protocol):
    """A switch that is a Wi-Fi access point and can tell how many phones use it."""

    fault: str | None  # a short code while the hotspot cannot be read or switched

    def client_count(self) -> int | None:
        """Stations associated now; None when it cannot tell."""


class TamperInput(Protocol):
    """The electronics box's lid switch."""

    @property
    def is_open(self) -> bool | None:
        """None while the input cannot be read."""

    def poll(self) -> None:
        """Try an input that was missing again (called every tick)."""

    def close(self) -> None:
        """Release the input. Idempotent."""
