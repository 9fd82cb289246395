"""Load switches (the USB ports; an access point powered through a GPIO load switch)
and the tamper input, on GPIO.

The pin factory is injected: lgpio on a Pi (`pi.py`, through a `PinSupply`),
gpiozero's `MockFactory` in simulation (`sim/bench.py`) and tests. Outputs are
wired active-high with a hardware pull-down, so a pin the agent no longer drives
means OFF.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gpiozero import DigitalInputDevice, OutputDevice  # pure Python: imports off a Pi too

from bench_agent.hardware.pins import GpioUnavailable, PinSupply, unavailable_from

log = logging.getLogger(__name__)


class GpioSwitch:
    """A load switch on a GPIO output (gpiozero `OutputDevice`).

    `pins` is a PinSupply (or a pin factory). When GPIO is unavailable the
    switch cannot be driven: `is_on` is None (unknown; with the hardware
    pull-down the load is in fact off) and `set` raises GpioUnavailable, trying
    the pin again each time the supply's backoff allows.
    """

    def __init__(self, name: str, pin: int, safe_state_on: bool, pins: Any) -> None:
        self.name = name
        self.safe_state_on = safe_state_on
        self._pin = pin
        self._pins = PinSupply.of(pins)
        self._device: Any = None
        self._closed = False
        with contextlib.suppress(GpioUnavailable):
            self._open()

    def _open(self) -> Any:
        if self._device is None:
            factory = self._pins.get()
            try:
                self._device = OutputDevice(
                    self._pin,
                    active_high=True,
                    initial_value=self.safe_state_on,
                    pin_factory=factory,
                )
            except Exception as exc:  # PinUnknownPi, lgpio.error, a pin in use…
                self._pins.failed(exc)
                raise unavailable_from(exc) from exc
        return self._device

    def set(self, on: bool) -> None:
        if self._closed:
            raise OSError(f"output {self.name} is closed")
        device = self._open()
        if on:
            device.on()
        else:
            device.off()

    @property
    def is_on(self) -> bool | None:
        if self._device is None:
            return None if not self._closed else False
        return (not self._device.closed) and bool(self._device.value)

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._device is not None and not self._device.closed:
                self.set(self.safe_state_on)
        finally:
            self._closed = True
            if self._device is not None:
                self._device.close()


class TamperSwitch:
    """The electronics-box tamper switch on a GPIO input.

    gpiozero calls back on its own thread; `on_change(is_open)` must only enqueue.
    When GPIO is unavailable `is_open` is None (unknown) and `poll()` tries
    again as the pin supply's backoff allows; once the input is there,
    `on_change` reports its state.
    """

    def __init__(
        self,
        pin: int,
        pull_up: bool,
        open_when_active: bool,
        pins: Any,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._pin = pin
        self._pull_up = pull_up
        self._open_when_active = open_when_active
        self._pins = PinSupply.of(pins)
        self._on_change = on_change
        self._device: Any = None
        with contextlib.suppress(GpioUnavailable):
            self._open()

    def _open(self) -> None:
        factory = self._pins.get()
        try:
            # 50 ms debounce: a box lid rattling in the wind is one event, not twenty.
            device = DigitalInputDevice(
                self._pin, pull_up=self._pull_up, bounce_time=0.05, pin_factory=factory
            )
        except Exception as exc:
            self._pins.failed(exc)
            raise unavailable_from(exc) from exc
        on_change = self._on_change
        if on_change is not None:
            device.when_activated = lambda: on_change(self._open_when_active)
            device.when_deactivated = lambda: on_change(not self._open_when_active)
        self._device = device

    def poll(self) -> None:
        """Try the input again if it is not there yet; report its state once it is."""
        if self._device is not None:
            return
        with contextlib.suppress(GpioUnavailable):
            self._open()
            if self._on_change is not None and self.is_open is not None:
                self._on_change(self.is_open)

    @property
    def is_open(self) -> bool | None:
        if self._device is None:
            return None
        return bool(self._device.value) == self._open_when_active

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
