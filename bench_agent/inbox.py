"""The main loop's one queue, and what the agent's threads put on it.

Threads (paho's network thread, gpiozero's callbacks, the charger reader, the
control socket, signal handlers) never act: they put one of these items on the
`Inbox`, and the main loop in `service.py` handles each in order. The inbox also
carries the two ways another thread waits for the loop: `call()` (the control
socket runs a function on the loop and waits for its answer) and `wait_for()`
(shutdown waits for the broker's acknowledgement of "offline").
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from types import FrameType
from typing import Generic, TypeVar

from bench_agent.hardware.vedirect.reader import ChargerSample
from bench_agent.link.mqtt import LinkEvent
from bench_agent.local.control import ControlError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StopRequested:
    """SIGTERM or SIGINT (or a test): stop after this turn of the loop."""

    signal_name: str


@dataclass(frozen=True, slots=True)
class ReloadRequested:
    """SIGHUP: read the configuration file again."""


@dataclass(frozen=True, slots=True)
class TamperChanged:
    is_open: bool


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """Run `fn` on the main loop (for the control socket) and hand back its result
    (in `outcome`) or the exception it raised (in `failure`)."""

    fn: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: list[T] = field(default_factory=list)
    failure: list[Exception] = field(default_factory=list)

    def run(self) -> None:
        """On the main loop: never raises (the caller's thread gets the exception)."""
        try:
            self.outcome.append(self.fn())
        except Exception as exc:  # handed to the caller's thread, never kills the loop
            self.failure.append(exc)
        finally:
            self.done.set()


InboxItem = (
    LinkEvent | StopRequested | ReloadRequested | TamperChanged | Call[object] | ChargerSample
)


class Inbox:
    """Many threads put; the main loop takes."""

    def __init__(self) -> None:
        # SimpleQueue: its put() is reentrant, so the signal handlers may call it while
        # the main loop is inside get() (queue.Queue could deadlock on its lock).
        self._queue: queue.SimpleQueue[InboxItem] = queue.SimpleQueue()
        self.closed_to_calls = False  # set when the agent stops: calls are refused

    def put(self, item: InboxItem) -> None:
        self._queue.put(item)

    def take(self, timeout_s: float) -> Iterator[InboxItem]:
        """What is queued: waits up to `timeout_s` for the first item only."""
        try:
            item = self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return
        while True:
            yield item
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def call(self, fn: Callable[[], T], timeout_s: float) -> T:
        """From another thread: run `fn` on the main loop, wait at most `timeout_s`.

        Raises ControlError "busy" when the loop does not answer in time (the call
        may still run later), and re-raises what `fn` raised.
        """
        if self.closed_to_calls:
            raise ControlError("stopping", "the agent is stopping")
        call = Call(fn)
        self.put(call)  # type: ignore[arg-type]  # the loop runs it; only this thread reads T
        if not call.done.wait(timeout_s):
            raise ControlError("busy", f"the agent did not answer within {timeout_s:g} s")
        if call.failure:
            raise call.failure[0]
        return call.outcome[0]

    def wait_for(self, wanted: Callable[[InboxItem], bool], timeout_s: float) -> bool:
        """On the main loop while it stops: wait (bounded) for an item; drops the others."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                if wanted(self._queue.get(timeout=left)):
                    return True
            except queue.Empty:
                return False
        return False

    def install_signal_handlers(self, stack: ExitStack) -> None:
        """SIGTERM/SIGINT ask for a stop, SIGHUP for a reload; `stack` puts the old ones
        back. Only the main thread may set handlers (a test may run the agent on another)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: FrameType | None) -> None:
            self.put(StopRequested(signal.Signals(signum).name))

        for sig in (signal.SIGTERM, signal.SIGINT):
            stack.callback(signal.signal, sig, signal.signal(sig, stop))
        previous = signal.signal(signal.SIGHUP, lambda *_: self.put(ReloadRequested()))
        stack.callback(signal.signal, signal.SIGHUP, previous)
