"""What the agent's threads put on the main loop's one queue.

Threads (paho's network thread, gpiozero's callbacks, the charger reader, the
control socket, signal handlers) never act: they enqueue one of these, and the
main loop in `service.py` handles each in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench_agent.hardware.vedirect.reader import ChargerSample
from bench_agent.link.mqtt import LinkEvent


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
class Call:
    """Run `fn` on the main loop (for the control socket) and hand back its result
    or the exception it raised, in `outcome` as ("ok", value) or ("error", exc)."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    outcome: list[tuple[str, Any]] = field(default_factory=list)

    def run(self) -> None:
        """On the main loop: never raises (the caller's thread gets the exception)."""
        try:
            self.outcome.append(("ok", self.fn()))
        except Exception as exc:  # handed to the caller's thread, never kills the loop
            self.outcome.append(("error", exc))
        finally:
            self.done.set()


InboxItem = LinkEvent | StopRequested | ReloadRequested | TamperChanged | Call | ChargerSample
