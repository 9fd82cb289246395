"""A simulated I2C bus with the exact surface of Blinka's `busio.I2C`.

Drivers (through `adafruit_bus_device.I2CDevice`) lock it, write, read and
write-then-read; simulated chips answer at their addresses. An address nobody
answers raises `OSError(EREMOTEIO)`, as Linux i2c-dev does on a NACK, so the real
I2CDevice probe turns it into the driver's `ValueError` at construction.
"""

from __future__ import annotations

import errno
import os
import threading
from types import TracebackType
from typing import Protocol, TypeAlias

# What busio.I2C accepts; spelled out because collections.abc.Buffer is Python 3.12+.
ReadableBuffer: TypeAlias = bytes | bytearray | memoryview
WriteableBuffer: TypeAlias = bytearray | memoryview


class I2CTarget(Protocol):
    """A chip on the simulated bus: one method per I2C transaction direction."""

    def write(self, data: bytes) -> None:
        """Receive one write transaction (may be empty: an address probe)."""

    def read(self, count: int) -> bytes:
        """Answer one read transaction with exactly `count` bytes."""


def _nack(address: int) -> OSError:
    return OSError(errno.EREMOTEIO, f"{os.strerror(errno.EREMOTEIO)} (no ACK from 0x{address:02x})")


class SimulatedI2CBus:
    """The bus: holds chips by 7-bit address and serialises transfers with its lock.

    Like CircuitPython's busio.I2C (stricter than Blinka, to catch races in tests),
    transfers and scans need `try_lock()` first.
    """

    def __init__(self) -> None:
        self._chips: dict[int, I2CTarget] = {}
        self._chips_lock = threading.Lock()
        self._bus_lock = threading.Lock()
        self._deinited = False

    # --- wiring --------------------------------------------------------------

    def attach(self, address: int, chip: I2CTarget) -> None:
        """Solder `chip` onto the bus at 7-bit `address` (0x08..0x77)."""
        if not 0x08 <= address <= 0x77:
            raise ValueError(f"I2C address 0x{address:02x} outside 0x08..0x77")
        with self._chips_lock:
            if address in self._chips:
                raise ValueError(f"I2C address 0x{address:02x} already taken")
            self._chips[address] = chip

    def detach(self, address: int) -> None:
        """Unsolder the chip at `address` (a cut wire); its transfers then NACK."""
        with self._chips_lock:
            self._chips.pop(address, None)

    # --- busio.I2C surface ---------------------------------------------------

    def try_lock(self) -> bool:
        """Take the bus without blocking; True if this caller now holds it."""
        self._check_alive()
        return self._bus_lock.acquire(blocking=False)

    def unlock(self) -> None:
        """Release the bus (no-op when it is not held, as Blinka does)."""
        if self._bus_lock.locked():
            self._bus_lock.release()

    def scan(self) -> list[int]:
        """Addresses that ACK an empty write, ascending, as i2cdetect shows them."""
        self._check_usable()
        with self._chips_lock:
            chips = sorted(self._chips.items())
        found = []
        for address, chip in chips:
            try:
                chip.write(b"")
            except OSError:
                continue
            found.append(address)
        return found

    def writeto(
        self, address: int, buffer: ReadableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Write `buffer[start:end]` to the chip at `address`, then stop."""
        self._check_usable()
        data = bytes(memoryview(buffer)[start:end])
        self._chip_at(address).write(data)

    def readfrom_into(
        self, address: int, buffer: WriteableBuffer, *, start: int = 0, end: int | None = None
    ) -> None:
        """Fill `buffer[start:end]` with bytes read from the chip at `address`."""
        self._check_usable()
        view = memoryview(buffer).cast("B")[start:end]
        view[:] = self._chip_at(address).read(len(view))

    def writeto_then_readfrom(
        self,
        address: int,
        buffer_out: ReadableBuffer,
        buffer_in: WriteableBuffer,
        *,
        out_start: int = 0,
        out_end: int | None = None,
        in_start: int = 0,
        in_end: int | None = None,
    ) -> None:
        """Write `buffer_out[out_start:out_end]`, repeated start, read into `buffer_in[...]`.

        The two buffers may be the same object (adafruit_register does that), so the
        outgoing bytes are copied before anything is read in.
        """
        self._check_usable()
        data = bytes(memoryview(buffer_out)[out_start:out_end])
        view = memoryview(buffer_in).cast("B")[in_start:in_end]
        chip = self._chip_at(address)
        chip.write(data)
        view[:] = chip.read(len(view))

    def deinit(self) -> None:
        """Release the bus; any later use raises ValueError. Idempotent."""
        self._deinited = True

    def __enter__(self) -> SimulatedI2CBus:
        self._check_alive()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deinit()

    # --- internals -----------------------------------------------------------

    def _check_alive(self) -> None:
        if self._deinited:
            raise ValueError("Object has been deinitialized and can no longer be used.")

    def _check_usable(self) -> None:
        self._check_alive()
        if not self._bus_lock.locked():
            raise RuntimeError("Function requires lock")

    def _chip_at(self, address: int) -> I2CTarget:
        with self._chips_lock:
            chip = self._chips.get(address)
        if chip is None:
            raise _nack(address)
        return chip
