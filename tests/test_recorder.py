"""The recorder: every record stored first, then sent live; the reply queue.

A real SQLite outbox and the real publisher, over a link that records what it is
handed (no broker at this level; the agent over a real broker is in
test_agent_integration.py and test_outbox_agent.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench_agent.errors import StorageError
from bench_agent.eventlog import EventLog
from bench_agent.faults import Fault, FaultRegistry
from bench_agent.link.outbox import Outbox, encode_body, pack_body
from bench_agent.link.publisher import Publisher
from bench_agent.link.recorder import MAX_PENDING_REPLIES, Recorder, ReplyQueue
from tests.link_clock import ManualClock
from tests.link_support import RecordingLink
from tests.test_publisher import telemetry_body

BENCH = "bench-test-01"
BOOT = "boot-test"


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock()
        self.link = RecordingLink()
        self.outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000_000, boot_id=BOOT)
        self.outbox.open()
        self.publisher = Publisher(
            self.outbox,
            self.link,
            bench_id=BENCH,
            topic=lambda leaf: f"smartbench/{BENCH}/{leaf}",
            max_payload_bytes=100_000,
            now=self.clock.monotonic,
        )
        self.events = EventLog(tmp_path / "events.jsonl")
        self.changes: list[tuple[str, dict[str, Any]]] = []
        self.faults = FaultRegistry(lambda kind, data: self.changes.append((kind, data)))
        self.recorder = Recorder(
            self.outbox,
            self.publisher,
            events=self.events,
            faults=self.faults,
            clock=self.clock,
            boot_id=BOOT,
            link_connected=lambda: self.link.online,
        )

    def online(self) -> None:
        self.link.connect()
        self.publisher.on_connected(1, None)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    made = Rig(tmp_path)
    yield made
    made.outbox.close()


def telemetry(channels: int = 1) -> dict[str, Any]:
    return telemetry_body(channels)


def test_a_record_is_committed_with_its_seq_then_sent_live(rig: Rig) -> None:
    rig.online()
    item, stored = rig.recorder.record("event", {"type": "tamper", "open": True}, rig.clock.mono)
    assert stored and item.seq == 1 and item.seq_epoch == rig.outbox.seq_epoch
    assert rig.outbox.stats().depth == 1  # in the outbox until the broker acks
    sent = json.loads(rig.link.sent[-1].payload)
    assert (sent["seq"], sent["type"], sent.get("stored", True)) == (1, "tamper", True)


def test_offline_the_record_waits_in_the_outbox(rig: Rig) -> None:
    rig.recorder.record("event", {"type": "tamper", "open": False}, rig.clock.mono)
    assert rig.link.sent == []
    assert rig.outbox.stats().depth == 1


def test_a_refused_disk_still_sends_the_record_once_without_a_seq_and_raises_the_fault(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.online()

    def full(*_args: object, **_kwargs: object) -> int:
        raise StorageError("database or disk is full")

    monkeypatch.setattr(rig.outbox, "put", full)
    item, stored = rig.recorder.record("event", {"type": "tamper", "open": True}, rig.clock.mono)
    assert not stored and item.seq == 0
    sent = json.loads(rig.link.sent[-1].payload)
    assert sent["stored"] is False and "seq" not in sent
    assert rig.recorder.storage_errors == 1
    assert "disk is full" in rig.faults[Fault.STORAGE]
    # The disk takes records again: the next stored telemetry clears the fault.
    monkeypatch.undo()
    rig.recorder.record("telemetry", telemetry(), rig.clock.mono)
    assert Fault.STORAGE not in rig.faults
    assert [kind for kind, _ in rig.changes] == ["fault_raised", "fault_cleared"]


def test_an_event_is_also_kept_in_the_benchs_own_history(rig: Rig) -> None:
    rig.recorder.emit_event("config_reloaded", {"tables": ["policy"]})
    recent = rig.events.recent(since=None, limit=10)
    assert [(e["type"], e["tables"]) for e in recent] == [("config_reloaded", ["policy"])]
    assert recent[0]["seq"] == 1


def test_drops_are_reported_once_when_the_broker_is_back(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.outbox.close()
    body = telemetry(channels=12)
    stored = len(pack_body(encode_body(body)))  # what the cap counts
    # Half a record of room above whole records: the outbox_dropped event itself fits
    # and drops nothing more (else a second report would be right).
    cap = 25 * stored + stored // 2
    rig.outbox = Outbox(tmp_path / "small.sqlite3", max_bytes=cap, boot_id=BOOT)
    rig.outbox.open()
    rig.recorder.outbox = rig.outbox
    rig.publisher = Publisher(
        rig.outbox, rig.link, bench_id=BENCH, topic=lambda leaf: f"x/{leaf}", max_payload_bytes=1000
    )
    rig.recorder._publisher = rig.publisher
    for _ in range(40):  # offline: the cap drops the oldest
        rig.recorder.record("telemetry", body, rig.clock.mono)
    assert rig.outbox.stats().drops_total > 0
    assert not [s for s in rig.link.sent if s.leaf == "event"]
    rig.online()
    rig.recorder.report_drops()
    rig.recorder.report_drops()
    dropped = [json.loads(s.payload) for s in rig.link.sent if s.leaf == "event"]
    assert [e["type"] for e in dropped] == ["outbox_dropped"]
    assert dropped[0]["total"] == rig.outbox.stats().drops_total
    rig.outbox.close()


def test_replies_wait_for_the_link_in_order_and_the_queue_is_bounded() -> None:
    sent: list[bytes] = []
    room = [False]

    def publish(reply: bytes) -> int | None:
        if not room[0]:
            return None
        sent.append(reply)
        return len(sent)

    replies = ReplyQueue(publish)
    for n in range(MAX_PENDING_REPLIES + 10):
        replies.put(str(n).encode())
    assert sent == [] and replies.dropped == 10
    room[0] = True
    replies.send()
    assert sent[0] == b"10" and sent[-1] == str(MAX_PENDING_REPLIES + 9).encode()
    assert len(sent) == MAX_PENDING_REPLIES


def test_the_health_block_reads_the_outbox_the_link_and_the_sensors(rig: Rig) -> None:
    from bench_agent.link.health import HealthReport
    from bench_agent.power.sampler import Sampler

    class Link:
        reconnects = 2

    health = HealthReport(
        outbox=rig.outbox,
        publisher=rig.publisher,
        link=Link(),  # type: ignore[arg-type]
        sampler=Sampler({}, 1.0),
        recorder=rig.recorder,
        clock=rig.clock,
    )
    empty = health(rig.clock.mono)
    assert empty.outbox_depth == 0 and empty.outbox_oldest_age_s is None
    rig.recorder.record("telemetry", telemetry(), rig.clock.mono)
    rig.clock.advance(90)
    report = health(rig.clock.mono)
    assert report.reconnects == 2 and report.sensor_errors == 0
    assert report.outbox_depth == 1
    assert report.outbox_oldest_age_s == 90.0  # this boot's record: by its uptime
    assert report.last_publish_age_s is None  # nothing acknowledged yet
    # The payload is the telemetry schema's `health` object, field for field.
    assert set(report.payload()) == {
        "reconnects",
        "sensor_errors",
        "storage_errors",
        "outbox_depth",
        "outbox_drops",
        "outbox_oldest_age_s",
        "last_publish_age_s",
    }
