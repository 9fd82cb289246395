"""A simulated Victron SmartSolar MPPT writing real VE.Direct text frames into a pty.

The real VEDirectReader opens the pty through a stable symlink, exactly as it would
open /dev/ttyUSB0, so the whole serial path (pyserial, termios, framing, reconnect)
is exercised. Faults are injected at the wire: garbage bytes, corrupted checksums,
an unplugged cable (the pty disappears, then a new one appears at the same path).
A capture file can also be replayed at line speed (19200 baud ≈ 1920 bytes/s).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bench_agent.hardware.vedirect.fields import CHARGE_STATES, ERRORS, MPPT_MODES
from bench_agent.hardware.vedirect.framing import encode_block

log = logging.getLogger(__name__)

LINE_BYTES_PER_S: Final = 1920.0  # 19200 baud, 10 bits per byte (8N1)
_TICK_S: Final = 0.01  # pacing granularity while replaying

_CS_CODES: Final = {name: code for code, name in CHARGE_STATES.items()}
_MPPT_CODES: Final = {name: code for code, name in MPPT_MODES.items()}
_ERR_CODES: Final = {name: code for code, name in ERRORS.items()}


@dataclass(frozen=True, slots=True)
class ChargerSnapshot:
    """What the simulated charge controller reports right now. Names as in vedirect."""

    battery_volts: float  # V
    battery_amps: float  # A, positive = charging
    panel_volts: float  # V
    panel_watts: float  # W
    load_amps: float  # A, load output
    load_on: bool
    charge_state: str  # a vedirect.CHARGE_STATES name, e.g. "bulk"
    mppt_mode: str  # a vedirect.MPPT_MODES name
    error: str  # a vedirect.ERRORS name, "no_error" normally
    yield_today_kwh: float
    yield_yesterday_kwh: float
    yield_total_kwh: float
    max_power_today_w: float
    max_power_yesterday_w: float
    day_sequence: int = 0  # HSDS, days since the device's history began

    def __post_init__(self) -> None:
        for name, codes in (
            ("charge_state", _CS_CODES),
            ("mppt_mode", _MPPT_CODES),
            ("error", _ERR_CODES),
        ):
            if getattr(self, name) not in codes:
                raise ValueError(f"{name}: unknown value {getattr(self, name)!r}")
        for name in (
            "battery_volts",
            "battery_amps",
            "panel_volts",
            "panel_watts",
            "load_amps",
            "yield_today_kwh",
            "yield_yesterday_kwh",
            "yield_total_kwh",
            "max_power_today_w",
            "max_power_yesterday_w",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"{name}: not a finite number: {value!r}")
            if name != "battery_amps" and value < 0:
                raise ValueError(f"{name}: negative: {value!r}")
        if self.day_sequence < 0:
            raise ValueError(f"day_sequence: negative: {self.day_sequence!r}")


def snapshot_fields(
    snapshot: ChargerSnapshot, *, product_id: int, firmware: str, serial_number: str
) -> list[tuple[str, str]]:
    """The fields of one block, in the order a SmartSolar MPPT sends them."""
    return [
        ("PID", f"0x{product_id:04X}"),
        ("FW", firmware),
        ("SER#", serial_number),
        ("V", str(round(snapshot.battery_volts * 1000))),
        ("I", str(round(snapshot.battery_amps * 1000))),
        ("VPV", str(round(snapshot.panel_volts * 1000))),
        ("PPV", str(round(snapshot.panel_watts))),
        ("CS", str(_CS_CODES[snapshot.charge_state])),
        ("MPPT", str(_MPPT_CODES[snapshot.mppt_mode])),
        ("ERR", str(_ERR_CODES[snapshot.error])),
        ("LOAD", "ON" if snapshot.load_on else "OFF"),
        ("IL", str(round(snapshot.load_amps * 1000))),
        ("H19", str(round(snapshot.yield_total_kwh * 100))),
        ("H20", str(round(snapshot.yield_today_kwh * 100))),
        ("H21", str(round(snapshot.max_power_today_w))),
        ("H22", str(round(snapshot.yield_yesterday_kwh * 100))),
        ("H23", str(round(snapshot.max_power_yesterday_w))),
        ("HSDS", str(snapshot.day_sequence)),
    ]


class _Replay:
    def __init__(self, data: bytes, bytes_per_s: float, started: float) -> None:
        self.data = data
        self.bytes_per_s = bytes_per_s
        self.started = started
        self.position = 0
        self.done = threading.Event()


class SimulatedCharger:
    """A SmartSolar MPPT on a pty whose slave is reachable at ``link_path``.

    Every ``interval_s`` it writes one block built from ``snapshot()`` (skipped while
    a replay runs, or when ``snapshot`` is None). Thread-based: ``start()``,
    ``close()`` (idempotent, removes the symlink), context manager.
    """

    def __init__(
        self,
        link_path: str | os.PathLike[str],
        snapshot: Callable[[], ChargerSnapshot] | None = None,
        *,
        interval_s: float = 1.0,
        product_id: int = 0xA05F,
        firmware: str = "139",
        serial_number: str = "HQ2132SIM01",
        seed: int | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self._link = Path(link_path)
        self._snapshot = snapshot
        self._interval_s = interval_s
        self._product_id = product_id
        self._firmware = firmware
        self._serial_number = serial_number
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_name: str | None = None
        # requests from other threads, guarded by _lock
        self._garbage = bytearray()
        self._corrupt_next = 0
        self._unplug_for_s: float | None = None
        self._unplugged = threading.Event()
        self._replays: list[_Replay] = []
        # counters
        self.blocks_written = 0
        self.bytes_dropped = 0  # nobody was draining the pty and its buffer was full
        self.snapshot_errors = 0

    # -- lifecycle

    @property
    def link_path(self) -> Path:
        return self._link

    @property
    def pty_name(self) -> str | None:
        """The current /dev/pts/N, or None while unplugged."""
        return self._pty_name

    def start(self) -> None:
        """Create the pty and symlink, then start writing. The symlink exists on return."""
        if self._thread is not None:
            raise RuntimeError("SimulatedCharger already started")
        self._plug()
        self._thread = threading.Thread(target=self._run, name="vedirect-sim", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop writing, close the pty and remove the symlink. Idempotent."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        self._unplug_now()
        with self._lock:
            for replay in self._replays:
                replay.done.set()
            self._replays.clear()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- fault injection

    def inject_garbage(self, n_bytes: int) -> None:
        """Write ``n_bytes`` of random line noise between blocks, as soon as possible."""
        noise = bytes(self._random.getrandbits(8) for _ in range(n_bytes))
        with self._lock:
            self._garbage += noise
        self._wake.set()

    def corrupt_checksums(self, n_blocks: int) -> None:
        """Send the next ``n_blocks`` blocks with a wrong checksum byte."""
        with self._lock:
            self._corrupt_next += n_blocks

    def unplug(self, for_s: float) -> None:
        """Pull the cable: the pty closes and the symlink goes; after ``for_s`` seconds a
        NEW pty appears at the same path. Returns once unplugged (or after 2 s)."""
        self._unplugged.clear()
        with self._lock:
            self._unplug_for_s = max(0.0, for_s)
        self._wake.set()
        self._unplugged.wait(2.0)

    def replay(self, path: str | os.PathLike[str], speed: float = 1.0) -> threading.Event:
        """Play a raw capture through the pty at ``speed`` × line speed (math.inf: at once).

        Live blocks pause meanwhile. Returns an Event set when the last byte is written.
        """
        if not speed > 0:
            raise ValueError("speed must be > 0")
        data = Path(path).read_bytes()
        replay = _Replay(data, LINE_BYTES_PER_S * speed, time.monotonic())
        with self._lock:
            self._replays.append(replay)
        self._wake.set()
        return replay.done

    # -- the thread

    def _run(self) -> None:
        next_block = time.monotonic() + self._interval_s
        replug_at: float | None = None
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                replug_at = self._handle_plugging(now, replug_at)
                timeout = self._interval_s
                if self._master is not None:
                    self._write_garbage()
                    if self._replay_step(now):
                        timeout = _TICK_S
                        next_block = now + self._interval_s
                    elif now >= next_block:
                        self._write_block()
                        # Keep the cadence, but never burst to catch up after a stall.
                        next_block = max(next_block + self._interval_s, now)
                    timeout = min(timeout, max(0.0, next_block - now))
                if replug_at is not None:
                    timeout = min(timeout, max(0.0, replug_at - now))
                self._wake.wait(timeout)
                self._wake.clear()
            except Exception:  # a simulator bug must not hang the tests silently
                log.exception("VE.Direct simulator error")
                self._stop.wait(0.1)

    def _handle_plugging(self, now: float, replug_at: float | None) -> float | None:
        with self._lock:
            unplug_for, self._unplug_for_s = self._unplug_for_s, None
        if unplug_for is not None:
            self._unplug_now()
            self._unplugged.set()
            return now + unplug_for
        if replug_at is not None and now >= replug_at:
            self._plug()
            return None
        return replug_at

    def _plug(self) -> None:
        master, slave = os.openpty()
        # Raw, no echo: the line discipline must not rewrite '\r' or echo bytes back.
        tty.setraw(slave)
        os.set_blocking(master, False)
        # The simulator keeps the slave open too, so writes never fail with EIO while no
        # reader is attached (a real device also talks to an empty line).
        self._master, self._slave = master, slave
        self._pty_name = os.ttyname(slave)
        self._link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._link.with_name(f".{self._link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(self._pty_name)
        tmp.replace(self._link)

    def _unplug_now(self) -> None:
        if self._pty_name is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self._link) == self._pty_name:
                    self._link.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._pty_name = None

    def _write(self, data: bytes, *, must_deliver: bool) -> None:
        view = memoryview(data)
        while view and self._master is not None and not self._stop.is_set():
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                if not must_deliver:
                    self.bytes_dropped += len(view)
                    return
                self._stop.wait(0.005)  # a replay waits for the reader to drain
                continue
            view = view[written:]

    def _write_garbage(self) -> None:
        with self._lock:
            garbage, self._garbage = bytes(self._garbage), bytearray()
        if garbage:
            self._write(garbage, must_deliver=True)

    def _write_block(self) -> None:
        if self._snapshot is None:
            return
        try:
            snapshot = self._snapshot()
        except Exception:
            log.exception("VE.Direct simulator: snapshot callback failed")
            self.snapshot_errors += 1
            return
        fields = snapshot_fields(
            snapshot,
            product_id=self._product_id,
            firmware=self._firmware,
            serial_number=self._serial_number,
        )
        block = bytearray(encode_block(fields))
        with self._lock:
            corrupt = self._corrupt_next > 0
            if corrupt:
                self._corrupt_next -= 1
        if corrupt:
            block[-1] = (block[-1] + 1) & 0xFF
        self._write(bytes(block), must_deliver=False)
        self.blocks_written += 1

    def _replay_step(self, now: float) -> bool:
        """Write what the current replay owes by now. True while a replay is running."""
        with self._lock:
            if not self._replays:
                return False
            replay = self._replays[0]
        if math.isinf(replay.bytes_per_s):
            due = len(replay.data)
        else:
            due = min(len(replay.data), int((now - replay.started) * replay.bytes_per_s))
        if due > replay.position:
            self._write(replay.data[replay.position : due], must_deliver=True)
            replay.position = due
        if replay.position >= len(replay.data):
            with self._lock:
                self._replays.pop(0)
                if self._replays:
                    self._replays[0].started = time.monotonic()
            replay.done.set()
        return True
