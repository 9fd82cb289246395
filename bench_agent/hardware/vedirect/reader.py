"""The serial reader thread: a VE.Direct port read with pyserial, blocks framed, merged
and mapped, samples handed to the main loop; the port reopened with backoff."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import serial

from bench_agent.hardware.vedirect.fields import BlockMerger, ChargerReading, map_block
from bench_agent.hardware.vedirect.framing import DEFAULT_BAUDRATE, VEDirectFramer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- serial reader


@dataclass(frozen=True, slots=True)
class ChargerSample:
    """A merged reading and the time.monotonic() (s) at which its last block arrived."""

    reading: ChargerReading
    monotonic_s: float


@dataclass(frozen=True, slots=True)
class ReaderStats:
    """A snapshot of the reader's counters (cumulative over reconnects)."""

    blocks_ok: int
    checksum_errors: int
    bytes_discarded: int
    hex_frames: int
    value_errors: int  # values that did not parse, per block
    reconnects: int  # successful re-opens after the first open
    open_failures: int
    unexpected_errors: int  # exceptions other than serial/OS errors (logged with traceback)
    sink_errors: int  # the callback raised, or the queue was full
    connected: bool
    last_block_monotonic: float | None  # s, time.monotonic() of the last valid block


ReadingSink = Callable[[ChargerSample], None] | queue.Queue[ChargerSample]


class VEDirectReader:
    """Reads a VE.Direct device on a serial port in its own daemon thread.

    Each valid block is merged (see BlockMerger), mapped and handed, as a ChargerSample,
    to ``sink``: a callable (called on the reader thread; it must be quick) or a
    ``queue.Queue`` (put without blocking; when full the oldest item is dropped).
    When the port errors or disappears the reader closes it and re-opens it with
    capped exponential backoff, forever; it also re-opens a port that has been open
    but silent for ``reopen_after_silence_s``.
    """

    def __init__(
        self,
        port: str,
        sink: ReadingSink,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        read_timeout_s: float = 1.0,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        reopen_after_silence_s: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if read_timeout_s <= 0 or reconnect_initial_s <= 0 or reconnect_max_s < reconnect_initial_s:
            raise ValueError("timeouts must be > 0 and reconnect_max_s >= reconnect_initial_s")
        self._port_name = port
        self._sink = sink
        self._baudrate = baudrate
        self._read_timeout_s = read_timeout_s
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._reopen_after_silence_s = reopen_after_silence_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open_error: str | None = None
        self._serial: Any = None  # serial.Serial while open
        self._merger = BlockMerger()
        self._started_monotonic: float | None = None
        # counters, guarded by _lock
        self._blocks_ok = 0
        self._checksum_errors = 0
        self._bytes_discarded = 0
        self._hex_frames = 0
        self._value_errors = 0
        self._reconnects = 0
        self._open_failures = 0
        self._unexpected_errors = 0
        self._sink_errors = 0
        self._connected = False
        self._ever_connected = False
        self._last_block_monotonic: float | None = None

    # -- lifecycle

    def start(self) -> None:
        """Start the reader thread. Starting twice is an error; after close() it is too."""
        if self._thread is not None:
            raise RuntimeError("VEDirectReader already started")
        self._started_monotonic = self._clock()
        self._thread = threading.Thread(
            target=self._run, name=f"vedirect:{self._port_name}", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the thread and close the port. Idempotent; waits up to ``timeout_s``."""
        self._stop.set()
        serial_port = self._serial
        if serial_port is not None:
            with contextlib.suppress(Exception):
                serial_port.cancel_read()  # wakes a read() that is waiting for bytes
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("VE.Direct reader thread did not stop within %.1f s", timeout_s)

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

    @property
    def open_error(self) -> str | None:
        """Why the port cannot be opened now, with what to do; None once it is open."""
        with self._lock:
            return self._open_error

    @property
    def is_alive(self) -> bool:
        """True while the reader thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # -- observation

    @property
    def stats(self) -> ReaderStats:
        with self._lock:
            return ReaderStats(
                blocks_ok=self._blocks_ok,
                checksum_errors=self._checksum_errors,
                bytes_discarded=self._bytes_discarded,
                hex_frames=self._hex_frames,
                value_errors=self._value_errors,
                reconnects=self._reconnects,
                open_failures=self._open_failures,
                unexpected_errors=self._unexpected_errors,
                sink_errors=self._sink_errors,
                connected=self._connected,
                last_block_monotonic=self._last_block_monotonic,
            )

    def is_stale(self, now_monotonic: float, stale_after_s: float) -> bool:
        """True when no valid block arrived in the last ``stale_after_s`` seconds.

        Before the first block the reader's start time counts as the last block, so a
        freshly started reader gets ``stale_after_s`` of grace; a never-started one is stale.
        """
        with self._lock:
            last = self._last_block_monotonic
        if last is None:
            last = self._started_monotonic
        return last is None or now_monotonic - last > stale_after_s

    # -- the thread

    def _run(self) -> None:
        delay = self._reconnect_initial_s
        while not self._stop.is_set():
            try:
                if self._open():
                    delay = self._reconnect_initial_s
                    self._read_until_error()
            except Exception:  # the thread must survive anything; say what happened
                log.exception("VE.Direct reader on %s: unexpected error", self._port_name)
                with self._lock:
                    self._unexpected_errors += 1
            finally:
                self._close_port()
            if self._stop.wait(delay):
                break
            delay = min(delay * 2.0, self._reconnect_max_s)

    def _open(self) -> bool:
        try:
            port = serial.Serial(
                self._port_name,
                self._baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=self._read_timeout_s,
                exclusive=True,
            )
        except (OSError, ValueError) as exc:  # SerialException is an OSError
            with self._lock:
                self._open_failures += 1
                self._open_error = _open_error_text(self._port_name, exc)
            log.debug("VE.Direct: cannot open %s: %s", self._port_name, exc)
            return False
        self._serial = port
        if self._stop.is_set():  # close() ran while we were opening
            return False
        with self._lock:
            if self._ever_connected:
                self._reconnects += 1
            self._ever_connected = True
            self._connected = True
            self._open_error = None
        log.info("VE.Direct: %s open", self._port_name)
        return True

    def _close_port(self) -> None:
        port, self._serial = self._serial, None
        with self._lock:
            self._connected = False
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _read_until_error(self) -> None:
        # A fresh framer per connection: the partial block at attach is discarded.
        framer = VEDirectFramer()
        counted = (0, 0, 0, 0)
        self._merger.clear()
        last_data = self._clock()
        port = self._serial
        while not self._stop.is_set():
            try:
                data = port.read(max(1, port.in_waiting))
            except OSError as exc:  # SerialException included: unplugged, EIO…
                log.warning("VE.Direct: %s read failed: %s; reconnecting", self._port_name, exc)
                return
            now = self._clock()
            if not data:
                silence = self._reopen_after_silence_s
                if silence is not None and now - last_data > silence:
                    log.warning(
                        "VE.Direct: %s silent for %.0f s; re-opening", self._port_name, silence
                    )
                    return
                continue
            last_data = now
            blocks = framer.feed(data)
            totals = (
                framer.blocks_ok,
                framer.checksum_errors,
                framer.bytes_discarded,
                framer.hex_frames,
            )
            with self._lock:
                self._blocks_ok += totals[0] - counted[0]
                self._checksum_errors += totals[1] - counted[1]
                self._bytes_discarded += totals[2] - counted[2]
                self._hex_frames += totals[3] - counted[3]
                if blocks:
                    self._last_block_monotonic = now
            counted = totals
            for block in blocks:
                self._deliver(block, now)

    def _deliver(self, block: Mapping[str, str], now: float) -> None:
        reading = map_block(self._merger.add(block))
        new_errors = sum(1 for label in reading.invalid_labels if label in block)
        sample = ChargerSample(reading, now)
        ok = True
        if isinstance(self._sink, queue.Queue):
            ok = _put_newest(self._sink, sample)
        else:
            try:
                self._sink(sample)
            except Exception:
                log.exception("VE.Direct: reading callback failed")
                ok = False
        with self._lock:
            self._value_errors += new_errors
            if not ok:
                self._sink_errors += 1


def _put_newest(target: queue.Queue[ChargerSample], sample: ChargerSample) -> bool:
    """Put without blocking; when full, drop the oldest. False when something was dropped."""
    try:
        target.put_nowait(sample)
        return True
    except queue.Full:
        with contextlib.suppress(queue.Empty):
            target.get_nowait()
        with contextlib.suppress(queue.Full):
            target.put_nowait(sample)
        return False


def _open_error_text(port: str, exc: BaseException) -> str:
    """What a technician can do about a serial port that does not open."""
    errno = getattr(exc, "errno", None)
    if isinstance(exc, FileNotFoundError) or errno == 2:
        return f"{port}: no such device — is the VE.Direct USB cable plugged in?"
    if isinstance(exc, PermissionError) or errno == 13:
        return f"{port}: permission denied — is bench-agent in group dialout?"
    return f"{port}: {exc}"
