"""The publisher over a real SQLite outbox, with a link that records what it is handed.

The link stands in for `MqttLink` (no broker at this level): it hands out message
ids like a paho client (a new connection is a new client, so ids start again at
1) and checks every payload against the contract's JSON Schemas.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench_agent.link.outbox import Kind, Outbox, OutboxItem
from bench_agent.link.publisher import Publisher
from tests.link_support import RecordingLink
from tests.outbox_support import validate

BENCH = "bench-test-01"
BOOT = "boot-test"
TS = "2026-03-01T10:00:00.000Z"


class Harness:
    """A publisher, its outbox and its link, with the agent's moves as methods."""

    def __init__(self, path: Path, *, max_payload_bytes: int, max_inflight: int) -> None:
        self.box = Outbox(path, max_bytes=10_000_000, boot_id=BOOT).open()
        self.link = RecordingLink()
        self.mono = 100.0
        self.generation = 0
        self.publisher = Publisher(
            self.box,
            self.link,
            bench_id=BENCH,
            topic=lambda leaf: f"smartbench/{BENCH}/{leaf}",
            max_payload_bytes=max_payload_bytes,
            max_inflight=max_inflight,
            now=lambda: self.mono,
        )

    def record(self, kind: Kind = "telemetry", channels: int = 1) -> OutboxItem:
        """Store a record as the agent does, and return it as the agent hands it on."""
        self.mono += 60.0
        body = event_body() if kind == "event" else telemetry_body(channels)
        seq = self.box.put(kind, body, boot_id=BOOT, mono_s=self.mono, ts=TS, time_quality="synced")
        item = self.box.newest(kind)
        assert item is not None and item.seq == seq
        return item

    def connect(self) -> int:
        self.generation += 1
        self.link.connect()
        self.publisher.on_connected(self.generation)
        return self.generation

    def disconnect(self) -> None:
        self.link.disconnect()
        self.publisher.on_disconnected()

    def stored(self) -> list[int]:
        return [item.seq for item in self.box.oldest(10_000, 1 << 30)]


def telemetry_body(channels: int = 1) -> dict[str, Any]:
    """A schema-valid telemetry body; each channel adds about 110 bytes."""
    channel = {"v": [12.1, 12.4, 12.9], "a": [0.1, 0.5, 0.9], "w": [1.2, 6.2, 11.6], "wh": 0.1}
    return {
        "interval_s": 60,
        "channels": {f"ch{i}": {**channel, "n": 60, "fault": None} for i in range(channels)},
        "outputs": {"usb1": True, "wifi": True},
        "faults": [],
        "health": {
            "reconnects": 0,
            "sensor_errors": 0,
            "storage_errors": 0,
            "outbox_depth": 0,
            "outbox_drops": 0,
            "outbox_oldest_age_s": None,
            "last_publish_age_s": None,
        },
    }


def event_body() -> dict[str, Any]:
    return {"type": "tamper", "open": True}


Make = Callable[..., Harness]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    made: list[Harness] = []

    def factory(*, max_payload_bytes: int = 64 * 1024, max_inflight: int = 4) -> Harness:
        harness = Harness(
            tmp_path / f"outbox-{len(made)}.sqlite3",
            max_payload_bytes=max_payload_bytes,
            max_inflight=max_inflight,
        )
        made.append(harness)
        return harness

    yield factory
    for harness in made:
        harness.box.close()


def test_offline_send_live_refuses_and_the_record_waits_in_the_outbox(make: Make) -> None:
    h = make()
    item = h.record()
    assert h.publisher.send_live(item) is False
    assert h.link.sent == [] and h.stored() == [item.seq]
    h.publisher.pump()  # offline: nothing to do, nothing lost
    assert h.link.sent == [] and h.stored() == [item.seq]
    h.connect()
    h.publisher.pump()
    [message] = h.link.sent
    assert message.seqs() == [item.seq]
    assert message.records()[0]["historical"] is True  # sent late, from the backlog


def test_live_record_is_sent_at_once_even_with_every_slot_taken_by_backlog(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=2)
    backlog = [h.record(channels=10).seq for _ in range(10)]  # one record per message
    h.connect()
    h.publisher.pump()
    assert len(h.link.sent) == 2 and h.publisher.inflight_messages == 2
    live = h.record()
    assert h.publisher.send_live(live) is True
    newest = h.link.sent[-1]
    assert newest.seqs() == [live.seq] and "historical" not in newest.records()[0]
    assert len(h.link.sent) == 3  # it did not wait for a PUBACK of the backlog
    # While it is in flight the backlog never sends it again, whatever is acked.
    while not h.publisher.backlog_exhausted:
        for message in h.link.sent:
            if message.seqs() != [live.seq]:
                h.publisher.on_acked(h.generation, message.mid)
        h.publisher.pump()
    drained = [s for m in h.link.sent if m.records()[0].get("historical") for s in m.seqs()]
    assert sorted(drained) == backlog and live.seq not in drained
    assert h.stored() == [live.seq]  # not acked yet: still stored


def test_a_live_record_goes_out_before_the_backlog_it_is_newer_than(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=4)
    backlog = [h.record(channels=10).seq for _ in range(6)]
    h.connect()
    live = h.record()
    h.publisher.send_live(live)
    h.publisher.pump()
    assert h.link.sent[0].seqs() == [live.seq]
    # The live message holds one of the four in-flight slots; the backlog gets the rest.
    assert [s for m in h.link.sent[1:] for s in m.seqs()] == backlog[:3]


def test_backlog_batches_fit_the_payload_limit_and_are_flagged_historical(make: Make) -> None:
    limit = 2048
    h = make(max_payload_bytes=limit, max_inflight=1000)
    sizes = [1, 3, 2, 5, 1, 1, 4, 2, 2, 3, 1, 6, 2, 1, 3] * 2  # channels: ~200..800 bytes
    seqs = [h.record(channels=n).seq for n in sizes]
    h.connect()
    h.publisher.pump()
    assert h.publisher.backlog_exhausted
    for message in h.link.sent:
        assert message.leaf == "telemetry"
        assert len(message.payload) <= limit  # the encoded message, envelope included
        assert all(r["historical"] is True for r in message.records())
    sent = [s for m in h.link.sent for s in m.seqs()]
    assert sent == seqs  # oldest first, each once
    assert max(len(m.seqs()) for m in h.link.sent) > 1  # many records per message
    assert len(h.link.sent) < len(seqs)


def test_a_record_larger_than_the_payload_limit_goes_alone_and_does_not_block(
    make: Make,
) -> None:
    limit = 2048
    h = make(max_payload_bytes=limit, max_inflight=10)
    small = h.record().seq
    big = h.record(channels=25).seq  # ~2.8 kB on its own
    after = [h.record().seq for _ in range(3)]
    h.connect()
    h.publisher.pump()
    batches = [m.seqs() for m in h.link.sent]
    assert batches == [[small], [big], after]
    assert len(h.link.sent[1].payload) > limit


def test_at_most_max_inflight_messages_await_their_puback(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=3)
    for _ in range(12):
        h.record(channels=10)
    generation = h.connect()
    h.publisher.pump()
    h.publisher.pump()
    assert len(h.link.sent) == 3 and h.publisher.inflight_messages == 3
    h.publisher.on_acked(generation, h.link.sent[1].mid)
    h.publisher.pump()
    assert len(h.link.sent) == 4 and h.publisher.inflight_messages == 3
    while h.publisher.inflight_messages:
        for message in h.link.sent:
            h.publisher.on_acked(generation, message.mid)
        h.publisher.pump()
        assert h.publisher.inflight_messages <= 3
    assert h.publisher.backlog_exhausted and h.stored() == []
    assert len(h.link.sent) == 12  # one record per message, each sent once


def test_an_ack_deletes_exactly_the_records_its_message_carried(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=3)
    seqs = [h.record(channels=4).seq for _ in range(12)]
    generation = h.connect()
    h.publisher.pump()
    first, second, third = h.link.sent
    assert len(second.seqs()) > 1
    h.publisher.on_acked(generation, second.mid)
    assert h.stored() == [s for s in seqs if s not in second.seqs()]
    assert h.publisher.records_acked == len(second.seqs())
    assert h.publisher.last_ack_mono == h.mono
    h.publisher.on_acked(generation, 999)  # a status or state message: not a record
    h.publisher.on_acked(generation, second.mid)  # a repeated PUBACK changes nothing
    assert h.stored() == [s for s in seqs if s not in second.seqs()]
    assert h.publisher.records_acked == len(second.seqs())
    assert first.seqs()[0] == seqs[0] and third.seqs()[-1] < seqs[-1]


def test_an_ack_from_a_connection_that_is_gone_is_ignored(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=2)
    seqs = [h.record(channels=10).seq for _ in range(4)]
    old = h.connect()
    h.publisher.pump()
    old_first = h.link.sent[0]
    h.disconnect()
    new = h.connect()
    h.publisher.pump()
    new_first = h.link.sent[2]
    assert new_first.mid == old_first.mid  # the new client reuses message ids
    # The old connection's PUBACK arrives late: it says nothing of the new message.
    h.publisher.on_acked(old, old_first.mid)
    assert h.stored() == seqs
    h.publisher.on_acked(new, new_first.mid)
    assert h.stored() == [s for s in seqs if s not in new_first.seqs()]


def test_what_was_in_flight_at_a_disconnect_is_sent_again(make: Make) -> None:
    h = make(max_payload_bytes=2048, max_inflight=3)
    seqs = [h.record(channels=10).seq for _ in range(5)]
    h.connect()
    h.publisher.pump()
    live = h.record()
    h.publisher.send_live(live)
    in_flight = {s for m in h.link.sent for s in m.seqs()}
    assert in_flight == {*seqs[:3], live.seq}
    h.disconnect()
    assert h.publisher.inflight_messages == 0
    h.link.sent.clear()
    generation = h.connect()
    while not h.publisher.backlog_exhausted:
        h.publisher.pump()
        for message in list(h.link.sent):
            h.publisher.on_acked(generation, message.mid)
    resent = [s for m in h.link.sent for s in m.seqs()]
    assert resent == [*seqs, live.seq]  # at least once, oldest first
    assert all(r["historical"] is True for m in h.link.sent for r in m.records())
    assert h.stored() == []


def test_events_are_never_batched_with_telemetry(make: Make) -> None:
    h = make(max_payload_bytes=64 * 1024, max_inflight=100)
    kinds: list[Kind] = ["telemetry", "telemetry", "event", "telemetry", "event", "event"]
    kinds += ["telemetry", "telemetry", "telemetry", "event", "telemetry"]
    items = [h.record(kind) for kind in kinds]
    h.connect()
    h.publisher.pump()
    shapes = [(m.leaf, m.seqs()) for m in h.link.sent]
    seq = [item.seq for item in items]
    assert shapes == [
        ("telemetry", seq[0:2]),
        ("event", [seq[2]]),
        ("telemetry", [seq[3]]),
        ("event", [seq[4]]),
        ("event", [seq[5]]),
        ("telemetry", seq[6:9]),
        ("event", [seq[9]]),
        ("telemetry", [seq[10]]),
    ]
    for message in h.link.sent:
        if message.leaf == "event":
            event = json.loads(message.payload)
            assert event["type"] == "tamper" and event["historical"] is True


def test_a_live_event_goes_to_the_event_topic_on_its_own(make: Make) -> None:
    h = make()
    h.connect()
    event = h.record("event")
    assert h.publisher.send_live(event) is True
    [message] = h.link.sent
    payload = json.loads(message.payload)
    assert message.leaf == "event" and payload["seq"] == event.seq
    assert payload["bench"] == BENCH and "historical" not in payload


@pytest.mark.parametrize("kind", ["telemetry", "event"])
def test_an_unstored_record_goes_once_without_seq_flagged_not_stored(
    make: Make, kind: Kind
) -> None:
    h = make()
    waiting = h.record()  # an older record still in the outbox
    # What the agent hands over when the outbox refused the record: no seq of its own.
    refused = h.record(kind)
    h.box.ack([refused.seq])
    unstored = dataclasses.replace(refused, seq=0, mono_s=777.0, time_quality="unsynced")
    assert h.publisher.send_unstored(unstored) is False  # offline: nowhere to go
    generation = h.connect()
    assert h.publisher.send_unstored(unstored) is True
    [message] = h.link.sent
    assert message.leaf == kind
    validate(kind, json.loads(message.payload))  # also checked by the link
    [record] = message.records()
    assert "seq" not in record and record["stored"] is False
    assert "historical" not in record
    assert record["time_quality"] == "unsynced" and record["uptime_s"] == 777.0
    # Untracked: nothing waits for its PUBACK and its PUBACK deletes nothing.
    assert h.publisher.inflight_messages == 0
    h.publisher.on_acked(generation, message.mid)
    assert h.stored() == [waiting.seq]


def test_a_broker_refusal_releases_the_records_and_backs_off(make: Make) -> None:
    h = make(max_payload_bytes=600, max_inflight=4)  # one record a message
    for _ in range(6):
        h.record()
    generation = h.connect()
    h.publisher.pump()
    assert len(h.link.sent) == 4 and len(h.publisher.inflight_seqs) == 4
    # The broker refuses them all (MQTT 5 PUBACK 0x87): none is in flight any more,
    # so the outbox's cap and age limit apply to them again; all are still stored.
    for sent in list(h.link.sent):
        h.publisher.on_refused(generation, sent.mid, "Not authorized (0x87)")
    assert h.publisher.inflight_seqs == frozenset()
    assert h.publisher.refused_reason == "Not authorized (0x87)"
    assert len(h.stored()) == 6
    # Nothing more is sent during the backoff, live or backlog.
    h.publisher.pump()
    now = h.mono
    live = h.record()  # (recording moves the harness clock on a minute)
    h.mono = now
    assert not h.publisher.send_live(live)
    assert len(h.link.sent) == 4
    # After it, a single message probes the broker.
    h.mono += 6.0
    h.publisher.pump()
    assert len(h.link.sent) == 5 and len(h.publisher.inflight_seqs) == 1
    # Refused again: the backoff doubles (10 s).
    h.publisher.on_refused(generation, h.link.sent[-1].mid, "Not authorized (0x87)")
    h.mono += 6.0
    h.publisher.pump()
    assert len(h.link.sent) == 5
    h.mono += 5.0
    h.publisher.pump()
    assert len(h.link.sent) == 6
    # Accepted: the refusal is over, the backlog flows at full width again.
    h.publisher.on_acked(generation, h.link.sent[-1].mid)
    assert h.publisher.refused_reason is None
    h.publisher.pump()
    assert len(h.publisher.inflight_seqs) == 4
