"""What the MQTT session reports, and what each report sets going on the link side.

Acks and refusals move records out of the outbox (or hold the backlog back) and
raise or clear `broker_refused`; a connection sends the retained status and
state first, then the backlog drains; set-up problems (TLS files) are a fault.
`changed_mono` is when the link last came up or went down, for the technician.
"""

from __future__ import annotations

from bench_agent.clock import Clock
from bench_agent.faults import Fault, FaultRegistry
from bench_agent.link.mqtt import Acked, Connected, Disconnected, LinkEvent, Refused, SetupFailed
from bench_agent.link.publisher import Publisher
from bench_agent.link.recorder import Recorder
from bench_agent.link.state import StatePublisher

MAX_DETAIL_CHARS = 300  # a set-up problem's text in the fault (TLS errors can be long)


class LinkSession:
    def __init__(
        self,
        *,
        publisher: Publisher,
        recorder: Recorder,
        state: StatePublisher,
        faults: FaultRegistry,
        clock: Clock,
    ) -> None:
        self._publisher = publisher
        self._recorder = recorder
        self._state = state
        self._faults = faults
        self._clock = clock
        self.changed_mono = clock.monotonic()

    def handle(self, event: LinkEvent) -> None:
        match event:
            case Acked(generation, mid):
                self._publisher.on_acked(generation, mid)
                if self._publisher.refused_reason is None:
                    self._faults.clear(Fault.BROKER_REFUSED)
            case Refused(generation, mid, reason):
                self._publisher.on_refused(generation, mid, reason)
                self._faults.raise_(Fault.BROKER_REFUSED, reason)
            case Connected(generation, max_packet_size):
                self.changed_mono = self._clock.monotonic()
                self._state.publish_online()
                self._state.publish(force=True)
                self._publisher.on_connected(generation, max_packet_size)
                self._recorder.report_drops()
            case Disconnected():
                self.changed_mono = self._clock.monotonic()
                self._publisher.on_disconnected()
            case SetupFailed(detail):
                self._faults.set(
                    Fault.MQTT_SETUP, None if detail is None else detail[:MAX_DETAIL_CHARS]
                )
