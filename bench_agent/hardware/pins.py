"""Where GPIO pins come from: the lgpio pin factory on a Pi, chosen explicitly, retried.

gpiozero's default factory selection tries four libraries in turn and, off a
Pi or without lgpio, prints a `PinFactoryFallback` warning for each before it
raises `BadPinFactory` — and the agent used to die with it, before MQTT, so ops
saw nothing. Here the agent asks for lgpio only (the one that works on every Pi
under Bookworm, Pi 5 included), checks first what a technician can fix, and
turns every failure into a `GpioUnavailable` whose message says what to do.

`PinSupply` hands the factory to the outputs and the tamper input. When the
factory cannot be had, every device built on it is "unavailable" (an output's
state is unknown, the tamper input reads None) and the supply tries again with
exponential backoff, so a bench whose `gpio` group membership was fixed, or
whose lgpio was installed, recovers without a restart.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_agent.errors import BenchAgentError

log = logging.getLogger(__name__)

DEV = Path("/dev")
RETRY_INITIAL_S = 5.0
RETRY_MAX_S = 300.0


class GpioUnavailable(BenchAgentError, OSError):
    """GPIO cannot be used now. An OSError, so a switch that cannot be driven is an
    `output_error` like any other; `fault` is a short stable code, the message says
    what a technician can do."""

    def __init__(self, fault: str, message: str) -> None:
        super().__init__(message)
        self.fault = fault


def open_lgpio_factory(dev: Path = DEV) -> Any:
    """gpiozero's lgpio factory, or GpioUnavailable saying why not and what to do."""
    chips = sorted(dev.glob("gpiochip*"))
    if not chips:
        raise GpioUnavailable(
            "gpio_missing",
            f"{dev / 'gpiochip0'} missing — not a Raspberry Pi, or its GPIO driver is not loaded",
        )
    if not any(os.access(chip, os.R_OK | os.W_OK) for chip in chips):
        raise GpioUnavailable(
            "gpio_permission",
            f"{chips[0]}: permission denied — is bench-agent in group gpio?",
        )
    try:
        from gpiozero.pins.lgpio import LGPIOFactory  # noqa: PLC0415 - imports lgpio
    except ImportError as exc:
        raise GpioUnavailable(
            "lgpio_missing",
            f"lgpio is not installed ({exc}) — run deploy/install.sh again (the pi extra)",
        ) from exc
    try:
        return LGPIOFactory()
    except Exception as exc:  # lgpio.error, gpiozero's PinError family, OSError
        raise unavailable_from(exc) from exc


def unavailable_from(exc: BaseException) -> GpioUnavailable:
    """A GpioUnavailable for what gpiozero or lgpio raised when a factory or pin was made."""
    if isinstance(exc, GpioUnavailable):
        return exc
    name = type(exc).__name__
    if name == "PinUnknownPi":
        return GpioUnavailable(
            "gpio_unknown_board",
            f"not a Raspberry Pi that gpiozero knows ({exc}) — check /proc/device-tree/model",
        )
    return GpioUnavailable("gpio_unavailable", f"GPIO: {name}: {exc}")


class PinSupply:
    """The pin factory, made on first use and made again after a failure, with backoff."""

    def __init__(
        self,
        open_factory: Callable[[], Any],
        *,
        now: Callable[[], float] = time.monotonic,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._open_factory = open_factory
        self._now = now
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._factory: Any = None
        self._error: GpioUnavailable | None = None
        self._retry_at = -float("inf")
        self._delay_s = retry_initial_s
        self._owns_factory = True  # closed when a device on it fails

    @classmethod
    def fixed(cls, factory: Any) -> PinSupply:
        """A factory that is always there (gpiozero's MockFactory in simulation and tests)."""
        supply = cls(lambda: factory)
        supply._factory = factory
        supply._owns_factory = False
        return supply

    @classmethod
    def of(cls, pins: Any) -> PinSupply:
        return pins if isinstance(pins, PinSupply) else cls.fixed(pins)

    @property
    def error(self) -> GpioUnavailable | None:
        """Why GPIO is unavailable now; None when it works (or was not tried yet)."""
        return self._error

    def get(self) -> Any:
        """The factory; raises GpioUnavailable (at once, without retrying) until a retry is due."""
        if self._factory is not None:
            return self._factory
        if self._now() < self._retry_at:
            assert self._error is not None
            raise self._error
        try:
            self._factory = self._open_factory()
        except Exception as exc:
            self.failed(exc)
            raise unavailable_from(exc) from exc
        if self._error is not None:
            log.warning("GPIO available again")
        self._error = None
        self._delay_s = self._retry_initial_s
        return self._factory

    def failed(self, exc: BaseException) -> None:
        """A device could not be made on the factory (e.g. an unknown board): drop it, back off."""
        error = unavailable_from(exc)
        if self._error is None or str(self._error) != str(error):
            log.error("GPIO unavailable: %s", error, extra={"fault": error.fault})
        else:
            self._delay_s = min(self._delay_s * 2, self._retry_max_s)
        self._error = error
        self._retry_at = self._now() + self._delay_s
        factory, self._factory = self._factory, None
        if factory is not None and self._owns_factory and hasattr(factory, "close"):
            try:
                factory.close()
            except Exception:  # already broken: nothing more to release
                log.debug("GPIO: closing the failed factory", exc_info=True)
