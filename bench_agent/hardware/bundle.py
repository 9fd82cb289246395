"""`Hardware`: the bench's parts as the core sees them, built once and closed once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Protocol

from bench_agent.clock import Clock
from bench_agent.faults import Fault
from bench_agent.hardware.ports import Hotspot, SensorOpener, Switch, TamperInput

log = logging.getLogger(__name__)


class Supply(Protocol):
    """Where GPIO pins or the I2C bus come from; `error` says why they are not there."""

    @property
    def error(self) -> object | None: ...


@dataclass(frozen=True)
class Hardware(AbstractContextManager["Hardware"]):
    """Built by `backend.build_hardware` with the ExitStack that closes its parts
    (`resources`): outputs first, to their safe state, then the rest."""

    clock: Clock
    channels: Mapping[str, SensorOpener]
    outputs: Mapping[str, Switch]
    tamper: TamperInput | None
    read_cpu_temperature: Callable[[], float | None]
    tick: Callable[[], None] = lambda: None
    # The wifi output when it can count its clients (the nmcli hotspot), else None.
    hotspot: Hotspot | None = None
    # The SimulatedBench on the "sim" backend (tests and demo); None on a Pi.
    simulation: object | None = None
    # The boot `clock.monotonic()` counts from, stamped on every record with its
    # uptime. None: the kernel's boot_id. A simulated clock restarts with the
    # process, so a simulated bench is a new "boot" each time the agent starts.
    boot_id: str | None = None
    # Where GPIO pins and the I2C bus come from on a Pi; None in simulation.
    pins: Supply | None = None
    i2c: Supply | None = None
    resources: ExitStack = field(default_factory=ExitStack, repr=False)

    def faults(self) -> dict[str, str]:
        """Parts of the bench that cannot be used now, with what to do: {fault: detail}."""
        faults: dict[str, str] = {}
        if self.pins is not None and self.pins.error is not None:
            faults[Fault.GPIO] = str(self.pins.error)
        if self.i2c is not None and self.i2c.error is not None:
            faults[Fault.I2C] = str(self.i2c.error)
        return faults

    def tamper_open(self) -> bool | None:
        return None if self.tamper is None else self.tamper.is_open

    def cpu_temperature(self) -> float | None:
        return self.read_cpu_temperature()

    def wifi_clients(self) -> int | None:
        """Wi-Fi clients associated now, where the hotspot backend can tell; else None
        (a gpio-powered access point cannot tell)."""
        return None if self.hotspot is None else self.hotspot.client_count()

    def close(self) -> None:
        """Every part closed, in reverse order of building. Idempotent."""
        self.resources.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def closing(stack: ExitStack, close: Callable[[], None], what: str) -> None:
    """Register `close` on `stack`; an error in it is logged and the others still run."""

    def guarded() -> None:
        try:
            close()
        except Exception:  # closing must go on whatever one part does
            log.exception("hardware: error while closing %s", what)

    stack.callback(guarded)
