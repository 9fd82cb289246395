"""The publisher on contract 2 over a real SQLite outbox: batches on a cadence, urgent
events at once, the backlog at once, a probe of one record after a refusal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench_agent.link import contract_v2
from bench_agent.link.outbox import Kind, Outbox
from bench_agent.link.publisher import Publisher
from tests.link_support import RecordingLink, Sent
from tests.test_publisher import BOOT, TS, event_body, telemetry_body

BENCH = "bench-test-01"
BATCH_S = 300.0


class V2:
    def __init__(self, path: Path, *, cap: int = 10_000_000, max_inflight: int = 4) -> None:
        self.box = Outbox(path, max_bytes=cap, boot_id=BOOT).open()
        self.link = RecordingLink()
        self.mono = 1000.0
        self.publisher = Publisher(
            self.box,
            self.link,
            bench_id=BENCH,
            topic=lambda leaf: f"smartbench/{BENCH}/{leaf}",
            max_payload_bytes=64 * 1024,
            max_inflight=max_inflight,
            now=lambda: self.mono,
            contract=2,
            batch_s=BATCH_S,
        )
        self.link.connect()
        self.publisher.on_connected(1)

    def record(self, kind: Kind = "telemetry", body: dict[str, object] | None = None) -> int:
        """As the agent's turn does: store, hand on live, pump at the end of the turn."""
        body = body or (event_body() if kind == "event" else telemetry_body(3))
        seq = self.box.put(
            kind,
            body,  # type: ignore[arg-type]
            boot_id=BOOT,
            mono_s=self.mono,
            ts=TS,
            time_quality="synced",
            in_flight=self.publisher.inflight_seqs,
        )
        item = self.box.newest(kind)
        assert item is not None and item.seq == seq
        self.publisher.send_live(item)
        self.publisher.pump()
        return seq

    def ack_all(self) -> None:
        for sent in self.batches():
            self.publisher.on_acked(1, sent.mid)

    def batches(self) -> list[Sent]:
        return [s for s in self.link.wire if s.leaf == "v2"]

    def seqs(self, sent: Sent) -> list[int]:
        return [r["seq"] for _, r in contract_v2.decode(sent.payload).records]


@pytest.fixture
def v2(tmp_path: Path) -> Iterator[V2]:
    made = V2(tmp_path / "outbox.sqlite3")
    yield made
    made.box.close()


def test_one_batch_per_interval_on_a_cadence(v2: V2) -> None:
    for _ in range(16):  # a record every 60 s for 15 minutes
        v2.record()
        v2.mono += 60.0
    assert [v2.seqs(s) for s in v2.batches()] == [
        [1, 2, 3, 4, 5, 6],  # the sixth was recorded just as the first batch went
        [7, 8, 9, 10, 11],
        [12, 13, 14, 15, 16],
    ]
    assert v2.publisher.waiting() == (0, None)
    assert all(s.payload[0] == contract_v2.MAGIC for s in v2.batches())


def test_an_urgent_event_flushes_at_the_end_of_the_turn_a_plain_one_waits(v2: V2) -> None:
    v2.record()
    v2.mono += 60.0
    v2.record("event", {"type": "config_reloaded", "tables": ["policy"]})
    assert v2.batches() == [] and v2.publisher.waiting()[0] == 2
    v2.mono += 10.0
    v2.record("event")  # tamper: goes at once, with the two before it
    assert [v2.seqs(s) for s in v2.batches()] == [[1, 2, 3]]
    assert v2.publisher.waiting() == (0, None)


def test_the_backlog_goes_at_once_flagged_historical(v2: V2) -> None:
    v2.link.disconnect()
    v2.publisher.on_disconnected()
    for _ in range(30):
        v2.record()
        v2.mono += 60.0
    assert v2.batches() == []
    v2.link.connect()
    v2.publisher.on_connected(2)
    v2.publisher.pump()
    [batch] = v2.batches()
    records = [r for _, r in contract_v2.decode(batch.payload).records]
    assert [r["seq"] for r in records] == list(range(1, 31))
    assert all(r["historical"] for r in records)


def test_a_waiting_record_the_cap_dropped_is_forgotten(tmp_path: Path) -> None:
    small = V2(tmp_path / "small.sqlite3", cap=2000)
    try:
        for _ in range(20):
            small.record()
            small.mono += 10.0
        assert small.box.stats().drops_total > 0
        waiting, _ = small.publisher.waiting()
        assert waiting == 20  # the cap dropped some of them: still counted, until…
        small.mono += BATCH_S
        small.publisher.pump()  # …the batch goes: what is left goes, the rest forgotten
        assert small.publisher.waiting() == (0, None)
        [batch] = small.batches()
        assert small.seqs(batch) == [item.seq for item in small.box.oldest(100, 1 << 30)]
    finally:
        small.box.close()


def test_the_stop_flushes_even_with_every_slot_in_flight(tmp_path: Path) -> None:
    one_slot = V2(tmp_path / "o.sqlite3", max_inflight=1)
    try:
        one_slot.link.disconnect()
        one_slot.publisher.on_disconnected()
        one_slot.record()  # backlog
        one_slot.link.connect()
        one_slot.publisher.on_connected(2)
        one_slot.publisher.pump()  # the backlog takes the only slot
        one_slot.record()  # waits for its batch
        assert len(one_slot.batches()) == 1
        one_slot.publisher.flush()
        assert [one_slot.seqs(s) for s in one_slot.batches()] == [[1], [2]]
    finally:
        one_slot.box.close()


def test_after_a_refusal_one_record_probes_the_broker(v2: V2) -> None:
    v2.link.disconnect()
    v2.publisher.on_disconnected()
    for _ in range(10):
        v2.record()
    v2.link.connect()
    v2.publisher.on_connected(2)
    v2.publisher.pump()
    [first] = v2.batches()
    v2.publisher.on_refused(2, first.mid, "Not authorized (0x87)")
    v2.mono += 3600  # past the backoff
    v2.publisher.pump()
    probe = v2.batches()[-1]
    assert len(v2.seqs(probe)) == 1 and v2.seqs(probe) == [1]
