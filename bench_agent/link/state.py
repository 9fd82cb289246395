"""The retained `state` and `status` messages: assembled in one place, sent on change.

`state` is what ops see of the bench now (outputs and why, battery, latched
faults, tamper, the fault list); it is retained, published on connect and
whenever the controller's state version or a fault changes. `status` is the
online/offline message (also the Last Will's payload).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from bench_agent import __version__
from bench_agent.clock import Clock, iso_utc
from bench_agent.faults import FaultRegistry
from bench_agent.json_value import JsonObject
from bench_agent.link import payloads
from bench_agent.link.mqtt import Link
from bench_agent.power.controller import Controller


class StatePublisher:
    def __init__(
        self,
        *,
        bench_id: str,
        topic: Callable[[str], str],
        link: Link,
        controller: Controller,
        faults: FaultRegistry,
        clock: Clock,
        boot_id: str,
        tamper_open: Callable[[], bool | None],
        config_hash: str | None = None,
    ) -> None:
        self._bench_id = bench_id
        self._topic = topic
        self._link = link
        self._controller = controller
        self._faults = faults
        self._clock = clock
        self._boot_id = boot_id
        self._tamper_open = tamper_open
        self._config_hash = config_hash
        self._published_version = -1

    def body(self) -> JsonObject:
        """The state without its envelope: what `state.get` answers."""
        return {
            **self._controller.state_payload(self._clock.monotonic()),
            "tamper_open": self._tamper_open(),
            "faults": self._faults.as_list(),
        }

    def publish(self, *, force: bool = False) -> None:
        """When the controller's state changed since the last one sent, or `force`."""
        version = self._controller.state_version
        if not force and version == self._published_version:
            return
        payload = {
            "v": payloads.CONTRACT_VERSION,
            "bench": self._bench_id,
            "ts": iso_utc(self._clock.wall()),
            **self.body(),
        }
        if self._link.publish(self._topic("state"), payloads.encode(payload), retain=True):
            self._published_version = version

    def status(self, *, online: bool, reason: str | None = None) -> bytes:
        return status_message(
            self._bench_id,
            self._boot_id,
            self._clock,
            online,
            reason,
            config_hash=self._config_hash,
        )

    def publish_online(self) -> None:
        self._link.publish(self._topic("status"), self.status(online=True), retain=True)

    def say_offline(self, wait_for_ack: Callable[[int], object]) -> None:
        """Clean shutdown: the retained status "offline"; `wait_for_ack(mid)` waits
        (bounded) for the broker's acknowledgement when the link is up."""
        offline = self.status(online=False, reason="shutdown")
        mid = self._link.publish(self._topic("status"), offline, retain=True)
        if mid is not None:
            wait_for_ack(mid)


def config_hash(source: Path) -> str | None:
    """The first 12 hex digits of the SHA-256 of the configuration file's bytes, so ops
    see which benches run which configuration; None when the file cannot be read now."""
    try:
        return hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def status_message(
    bench_id: str,
    boot_id: str,
    clock: Clock,
    online: bool,
    reason: str | None = None,
    *,
    config_hash: str | None = None,
) -> bytes:
    """The `status` payload; the Last Will is built with it before the link exists."""
    return payloads.status_message(
        bench_id,
        online=online,
        boot_id=boot_id,
        ts=iso_utc(clock.wall()),
        version=__version__,
        reason=reason,
        config_hash=config_hash,
    )
