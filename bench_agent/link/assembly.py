"""The link's parts, built together: what records, stores and sends.

The outbox (the queue that survives power cuts), the MQTT session, the
publisher that drains the outbox into it, the recorder that every record and
event goes through, the technician's event history, command replies, the
clock-sync corrector and the health report. `service.py` asks for them as one
bundle; which part needs which is decided here, where the parts are known.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from bench_agent.clock import Clock, TimeFloor
from bench_agent.config import Config
from bench_agent.eventlog import EventLog
from bench_agent.faults import FaultRegistry
from bench_agent.link.clock_sync import ClockSyncCorrector
from bench_agent.link.health import HealthReport
from bench_agent.link.mqtt import Link, LinkEvent, LinkFactory, Will
from bench_agent.link.outbox import Outbox
from bench_agent.link.publisher import Publisher
from bench_agent.link.recorder import Recorder, ReplyQueue
from bench_agent.link.state import status_message
from bench_agent.power.sampler import Sampler


@dataclass(frozen=True, slots=True)
class LinkParts:
    outbox: Outbox
    link: Link  # built, not started: the caller starts it once the rest is up
    publisher: Publisher
    recorder: Recorder
    events: EventLog
    replies: ReplyQueue
    clock_sync: ClockSyncCorrector
    health: HealthReport


def build_link_parts(
    cfg: Config,
    stack: ExitStack,
    *,
    clock: Clock,
    boot_id: str,
    config_hash: str | None = None,
    faults: FaultRegistry,
    time_floor: TimeFloor,
    sampler: Sampler,
    link_factory: LinkFactory,
    on_link_event: Callable[[LinkEvent], None],
) -> LinkParts:
    """The outbox is closed by `stack`; the link is the caller's to start and close."""
    cfg.storage.dir.mkdir(parents=True, exist_ok=True)
    outbox = stack.enter_context(
        Outbox(
            cfg.storage.dir / "outbox.sqlite3",
            max_bytes=cfg.storage.outbox_max_bytes,
            max_age_s=cfg.storage.outbox_max_age_s,
        )
    )
    # The Last Will: what the broker says for the bench when the connection dies.
    lost = status_message(
        cfg.bench.id,
        boot_id,
        clock,
        online=False,
        reason="connection_lost",
        config_hash=config_hash,
    )
    link = link_factory(
        cfg.mqtt,
        will=Will(cfg.topic("status"), lost),
        subscriptions=[cfg.topic("cmd")],
        on_event=on_link_event,
    )
    publisher = Publisher(
        outbox,
        link,
        bench_id=cfg.bench.id,
        topic=cfg.topic,
        max_payload_bytes=cfg.storage.max_payload_bytes,
        now=clock.monotonic,
        contract=cfg.mqtt.contract,
        batch_s=cfg.mqtt.telemetry_batch_s,
    )
    events = EventLog(cfg.storage.dir / "events.jsonl")
    recorder = Recorder(
        outbox,
        publisher,
        events=events,
        faults=faults,
        clock=clock,
        boot_id=boot_id,
        link_connected=lambda: link.connected,
    )
    return LinkParts(
        outbox=outbox,
        link=link,
        publisher=publisher,
        recorder=recorder,
        events=events,
        replies=ReplyQueue(lambda reply: link.publish(cfg.topic("cmd/reply"), reply)),
        clock_sync=ClockSyncCorrector(
            clock,
            outbox,
            time_floor=time_floor,
            boot_id=boot_id,
            emit_event=recorder.emit_event,
            on_storage_error=recorder.storage_failed,
        ),
        health=HealthReport(
            outbox=outbox,
            publisher=publisher,
            link=link,
            sampler=sampler,
            recorder=recorder,
            clock=clock,
        ),
    )
