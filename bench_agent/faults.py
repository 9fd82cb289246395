"""The bench's faults: their names in one place, and the registry every source reports to.

A fault is something wrong *now* that ops and the technician must see (in
`state.faults`, the technician's status and the self-test): a part that cannot
be used, a store that cannot be written. Each raise and clear is an event
(`fault_raised`, `fault_cleared`), so the history is in the outbox too.

Names are either a fixed `Fault` or one of the families below, built by their
functions (never by string formatting elsewhere): `sensor.<channel>`,
`thread.<name>`, `overcurrent.<port>` (latched by the policy, reset by a
command).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import StrEnum

from bench_agent.vocabulary import EmitEvent, EventType

log = logging.getLogger(__name__)


class Fault(StrEnum):
    STORAGE = "storage"  # the outbox cannot be written (disk full, read-only, corrupt)
    CONTROL_SOCKET = "control_socket"  # the technician's socket cannot be served
    BROKER_REFUSED = "broker_refused"  # the broker refuses publishes (ACL, quota)
    OPS_KEYS = "ops_keys"  # ops' key files that could not be used (skipped)
    MQTT_SETUP = "mqtt_setup"  # the bench's own side of the link (TLS files)
    REPLAY_STORE = "replay_store"  # remote commands refused: their replay store is unusable
    GPIO = "gpio"  # no GPIO: outputs and the tamper input cannot be driven or read
    I2C = "i2c"  # no I2C bus: no INA219 can be read
    CHARGER = "charger"  # no valid block from the charge controller for too long


def sensor_fault(channel: str) -> str:
    """A power channel that does not answer (its detail: the sampler's code)."""
    return f"sensor.{channel}"


def thread_fault(thread_name: str) -> str:
    """An agent thread that ended although nobody stopped it."""
    return f"thread.{thread_name}"


def overcurrent_fault(port: str) -> str:
    """A USB port latched off by repeated over-current trips, until reset."""
    return f"overcurrent.{port}"


class FaultRegistry(Mapping[str, str]):
    """The faults present now, {name: detail}; read like a dict, changed only here.

    `on_change(kind, data)` receives `fault_raised` / `fault_cleared` with the
    event's data, once per change (raising a fault again with the same detail
    is not a change).
    """

    def __init__(self, on_change: EmitEvent) -> None:
        self._present: dict[str, str] = {}
        self._on_change = on_change

    def __getitem__(self, name: str) -> str:
        return self._present[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._present)

    def __len__(self) -> int:
        return len(self._present)

    def raise_(self, name: str, detail: str) -> bool:
        """Present with `detail`; True when that is a change."""
        if self._present.get(name) == detail:
            return False
        self._present[name] = detail
        self._on_change(EventType.FAULT_RAISED, {"fault": name, "detail": detail})
        return True

    def clear(self, name: str) -> bool:
        """Gone; True when it was present."""
        if self._present.pop(name, None) is None:
            return False
        self._on_change(EventType.FAULT_CLEARED, {"fault": name})
        return True

    def set(self, name: str, detail: str | None) -> bool:
        """Raise `name` with `detail`, or clear it when `detail` is None."""
        return self.clear(name) if detail is None else self.raise_(name, detail)

    def sync(self, owned: Iterable[str], present: Mapping[str, str]) -> bool:
        """For a source that reports all its faults at once: raise what is in
        `present`, clear the rest of `owned`. True when anything changed."""
        changed = False
        for name in set(owned) - present.keys():
            changed |= self.clear(name)
        for name, detail in present.items():
            changed |= self.raise_(name, detail)
        return changed

    def as_list(self) -> list[dict[str, str]]:
        """The payload form, sorted by name: [{"name": …, "detail": …}]."""
        return [{"name": name, "detail": self._present[name]} for name in sorted(self._present)]


class ThreadWatch:
    """The agent's threads that ended although nobody stopped them, each a fault.

    Nothing is restarted here: the fault reaches ops, and the main loop withholds
    systemd's watchdog pings, so systemd restarts the whole agent (WatchdogSec),
    which brings every part back in a known state. (The control socket restarts
    its own thread; it is watched all the same.)
    """

    def __init__(self, faults: FaultRegistry) -> None:
        self._faults = faults
        self._alive: dict[str, Callable[[], bool]] = {}

    def watch(self, name: str, alive: Callable[[], bool]) -> None:
        self._alive[name] = alive

    def dead(self) -> list[str]:
        dead = [name for name, alive in self._alive.items() if not alive()]
        for name in dead:
            if thread_fault(name) not in self._faults:
                log.error("thread %s ended unexpectedly: watchdog pings withheld", name)
            self._faults.raise_(thread_fault(name), "ended unexpectedly; the agent will restart")
        return dead
