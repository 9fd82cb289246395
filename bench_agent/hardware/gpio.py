"""Switched outputs (USB ports, access point) and the tamper input, through gpiozero.

The pin factory is chosen in ONE place (`hardware.backend`) and injected here:
the default factory on a Pi (lgpio on Bookworm), gpiozero's `MockFactory` in
simulation and tests. Outputs are wired active-high with a hardware pull-down,
so a pin the agent no longer drives means OFF.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

from gpiozero import DigitalInputDevice, OutputDevice  # pure Python: imports off a Pi too

log = logging.getLogger(__name__)


class Switch(Protocol):
    """One switched load."""

    name: str

    def set(self, on: bool) -> None:
        """Switch the load; raises OSError when the switch cannot be driven."""

    @property
    def is_on(self) -> bool: ...

    def close(self) -> None:
        """Return to the safe state and release the pin. Idempotent."""


class GpioSwitch:
    """A load switch on a GPIO output (gpiozero `OutputDevice`)."""

    def __init__(self, name: str, pin: int, safe_state_on: bool, pin_factory: Any) -> None:
        self.name = name
        self.safe_state_on = safe_state_on
        self._device: Any = OutputDevice(
            pin, active_high=True, initial_value=safe_state_on, pin_factory=pin_factory
        )

    def set(self, on: bool) -> None:
        if self._device.closed:
            raise OSError(f"output {self.name} is closed")
        if on:
            self._device.on()
        else:
            self._device.off()

    @property
    def is_on(self) -> bool:
        return (not self._device.closed) and bool(self._device.value)

    def close(self) -> None:
        if self._device.closed:
            return
        try:
            self.set(self.safe_state_on)
        finally:
            self._device.close()


class NmcliHotspot:
    """The Pi's own radio as a NetworkManager hotspot profile, switched with nmcli.

    `nmcli connection up|down id <profile>`; a polkit rule in deploy/ allows the
    service user to do it. State is what we last asked for and NetworkManager
    accepted: asking nmcli on every read would cost a D-Bus round trip per sample.
    """

    def __init__(
        self,
        name: str,
        connection: str,
        safe_state_on: bool,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
        timeout_s: float = 20.0,
    ) -> None:
        self.name = name
        self.connection = connection
        self.safe_state_on = safe_state_on
        self._run = run
        self._timeout_s = timeout_s
        self._on = False
        self._closed = False
        self.set(safe_state_on)

    def set(self, on: bool) -> None:
        verb = "up" if on else "down"
        argv = [
            "nmcli",
            "--wait",
            str(int(self._timeout_s)),
            "connection",
            verb,
            "id",
            self.connection,
        ]
        try:
            result = self._run(
                argv, capture_output=True, text=True, timeout=self._timeout_s + 5, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OSError(f"nmcli connection {verb} {self.connection!r} failed: {exc}") from exc
        # "down" of a connection that is not active exits 10 ("no active connection"):
        # the hotspot is off, which is what we wanted.
        if result.returncode != 0 and not (not on and result.returncode == 10):
            message = (result.stderr or result.stdout).strip().splitlines()
            detail = message[-1] if message else f"exit {result.returncode}"
            raise OSError(f"nmcli connection {verb} {self.connection!r}: {detail}")
        self._on = on

    @property
    def is_on(self) -> bool:
        return self._on

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.set(self.safe_state_on)
        except OSError as exc:
            log.warning("hotspot %s: could not return to its safe state: %s", self.name, exc)


class TamperSwitch:
    """The electronics-box tamper switch on a GPIO input.

    gpiozero calls back on its own thread; `on_change(is_open)` must only enqueue.
    """

    def __init__(
        self,
        pin: int,
        pull_up: bool,
        open_when_active: bool,
        pin_factory: Any,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._open_when_active = open_when_active
        # 50 ms debounce: a box lid rattling in the wind is one event, not twenty.
        self._device: Any = DigitalInputDevice(
            pin, pull_up=pull_up, bounce_time=0.05, pin_factory=pin_factory
        )
        if on_change is not None:
            self._device.when_activated = lambda: on_change(self._open_when_active)
            self._device.when_deactivated = lambda: on_change(not self._open_when_active)

    @property
    def is_open(self) -> bool:
        return bool(self._device.value) == self._open_when_active

    def close(self) -> None:
        self._device.close()
