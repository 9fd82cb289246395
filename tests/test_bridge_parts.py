"""The bridge's pure parts: the ledger (dedupe, gaps), the acks it owes, its payloads.
The bridge itself, against a real mosquitto, is in test_bridge.py."""

from __future__ import annotations

import json
import random
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.link import contract_v2
from bench_agent.ops.bridge_acks import AckBook, Delivery
from bench_agent.ops.bridge_ledger import Counters, Ledger, SeqTrack
from bench_agent.ops.bridge_payloads import (
    BENCH_MISMATCH,
    Topic,
    Unreadable,
    counters_json,
    key_of,
    parse_topic,
    read_batch,
    status_payload,
    summary_line,
    v1_payloads,
)
from tests.bridge_support import captured_records
from tests.outbox_support import validate

# -- the ledger -------------------------------------------------------------------------


def test_a_seq_is_new_once_and_in_order_costs_one_interval() -> None:
    track = SeqTrack()
    assert all(track.add(seq) for seq in range(1, 10_001))
    assert not track.add(5000)
    assert track.intervals == [(1, 10_000)]
    assert track.missing() == 0


def test_newest_first_then_the_backlog_fills_the_hole_it_opened() -> None:
    """The bench's publisher sends a live record first and its backlog after it."""
    track = SeqTrack()
    for seq in range(1, 51):
        track.add(seq)
    assert track.add(100)  # live, after an outage
    assert track.missing() == 49
    for seq in range(51, 100):
        assert track.add(seq)  # the backlog: new, never a "duplicate" of the live one
    assert track.missing() == 0
    assert track.intervals == [(1, 100)]


def test_seqs_below_the_first_seen_are_new_and_not_gaps() -> None:
    track = SeqTrack()
    track.add(1000)
    assert track.add(999) and track.add(5)
    assert track.missing() == 998 - 5  # between 5 and 999: a hole seen from both sides


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=300), max_size=400))
def test_the_intervals_are_exactly_the_seqs_seen(seqs: list[int]) -> None:
    track = SeqTrack(max_intervals=10_000)
    seen: set[int] = set()
    for seq in seqs:
        assert track.add(seq) == (seq not in seen)
        seen.add(seq)
    assert {s for a, b in track.intervals for s in range(a, b + 1)} == seen
    if seen:
        assert track.missing() == max(seen) - min(seen) + 1 - len(seen)


def test_memory_is_bounded_by_forgetting_the_oldest_never_by_dropping_a_new_seq() -> None:
    track = SeqTrack(max_intervals=4)
    for seq in range(0, 20, 2):  # 10 separate intervals
        track.add(seq)
    assert len(track.intervals) == 4 and track.forgotten == 6
    assert track.add(0)  # forgotten: passes again (a duplicate at worst, never a loss)
    assert track.add(13)  # a hole: always new
    ledger = Ledger(max_tracks=2)
    for bench in ("a", "b", "c"):
        ledger.admit((bench, "e", 1))
    assert not ledger.seen(("a", "e", 1)) and ledger.seen(("c", "e", 1))


def test_gaps_are_per_bench_and_epoch() -> None:
    ledger = Ledger()
    for seq in (1, 2, 5):
        ledger.admit(("b1", "e1", seq))
    for seq in (1, 3):
        ledger.admit(("b1", "e2", seq))
    ledger.admit(("b2", "e1", 7))
    assert ledger.gaps() == {("b1", "e1"): 2, ("b1", "e2"): 1}
    ledger.admit(("b1", "e1", 3))
    ledger.admit(("b1", "e1", 4))
    assert ledger.gaps() == {("b1", "e2"): 1}


def test_undecodable_payloads_are_logged_once_per_bench_per_minute() -> None:
    ledger = Ledger()
    assert ledger.should_log("b1", 0.0)
    assert not ledger.should_log("b1", 59.0)
    assert ledger.should_log("b2", 59.0)
    assert ledger.should_log("b1", 60.5)


# -- the acks ---------------------------------------------------------------------------


def test_a_batch_is_acknowledged_once_everything_it_made_is_acknowledged() -> None:
    book = AckBook()
    book.connected()
    first = book.incoming(mid=1, qos=1)
    delivery = Delivery(keys=[("b", "e", 1)], records=1)
    book.published(delivery, 101)
    book.published(delivery, 102)
    assert book.wait_for(first, [delivery]) == []
    assert book.acknowledged(book.pop(101) or delivery, 101) == []
    assert book.in_flight(("b", "e", 1)) is delivery
    assert book.acknowledged(book.pop(102) or delivery, 102) == [first]
    assert book.in_flight(("b", "e", 1)) is None
    assert book.pop(999) is None  # the bridge's own status: not a delivery


def test_a_copy_of_a_batch_in_flight_waits_for_the_first_delivery() -> None:
    book = AckBook()
    book.connected()
    first, copy = book.incoming(1, 1), book.incoming(2, 1)
    delivery = Delivery(keys=[("b", "e", 1)])
    book.published(delivery, 101)
    book.wait_for(first, [delivery])
    flying = book.in_flight(("b", "e", 1))
    assert flying is delivery
    assert book.wait_for(copy, [flying]) == []  # not acknowledged before the records are safe
    assert book.acknowledged(delivery, 101) == [first, copy]


def test_acks_go_in_the_order_the_messages_came() -> None:
    book = AckBook()
    book.connected()
    slow, fast = book.incoming(1, 1), book.incoming(2, 1)
    d1, d2 = Delivery(), Delivery()
    book.published(d1, 101)
    book.published(d2, 102)
    book.wait_for(slow, [d1])
    book.wait_for(fast, [d2])
    assert book.acknowledged(d2, 102) == []  # ready, but behind `slow`
    assert book.acknowledged(d1, 101) == [slow, fast]
    qos0 = book.incoming(3, 0)
    assert book.wait_for(qos0, []) == []  # QoS 0: no ack exists


def test_an_ack_never_crosses_a_reconnect() -> None:
    book = AckBook()
    book.connected()
    old = book.incoming(7, 1)
    delivery = Delivery(keys=[("b", "e", 1)])
    book.published(delivery, 101)
    book.wait_for(old, [delivery])
    book.connected()  # the broker sends message 7 again, as packet 7, on the new connection
    again = book.incoming(7, 1)
    flying = book.in_flight(("b", "e", 1))
    assert flying is delivery  # paho sends the republished message again too
    book.wait_for(again, [flying])
    assert book.acknowledged(delivery, 101) == [again]  # not `old`: one ack, this connection's


# -- payloads ---------------------------------------------------------------------------

RECORDS = captured_records()


def test_topics() -> None:
    assert parse_topic("smartbench/b1/v2", "smartbench") == Topic("b1", "v2")
    assert parse_topic("city/x/smartbench/b1/state", "city/x/smartbench") == Topic("b1", "state")
    for topic in ("smartbench/b1", "smartbench/b1/v2/x", "other/b1/v2", "smartbench//v2"):
        assert parse_topic(topic, "smartbench") is None


def test_a_batch_becomes_the_benchs_own_v1_messages() -> None:
    records = RECORDS[:40]
    batch = read_batch("sim-bench-01", contract_v2.encode("sim-bench-01", records))
    out = v1_payloads(batch, 65_536)
    assert sum(n for _, _, n in out) == 40
    for leaf, payload, _ in out:
        validate(leaf, json.loads(payload))
        compact = json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False)
        assert payload == compact.encode()  # as the bench encodes v1
    keys = [key_of("sim-bench-01", r) for _, r in batch.records]
    assert keys[0] == ("sim-bench-01", records[0][1]["seq_epoch"], 1)


def test_a_long_run_of_telemetry_is_split_to_fit() -> None:
    telemetry = [r for r in RECORDS if r[0] == "telemetry"][:60]
    batch = read_batch("sim-bench-01", contract_v2.encode("sim-bench-01", telemetry))
    out = v1_payloads(batch, 10_000)
    assert len(out) > 5
    assert all(len(p) <= 10_000 for _, p, _ in out)
    seqs = [r["seq"] for _, p, _ in out for r in json.loads(p)["records"]]
    assert seqs == [r["seq"] for _, r in telemetry]
    one = v1_payloads(batch, 1024)  # a record larger than the limit still goes, alone
    assert [n for _, _, n in one] == [1] * 60


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"garbage", "not_v2"),
        (b'{"v":1,"bench":"b1","records":[]}', "not_v2"),
        (bytes((contract_v2.MAGIC, 99)) + b"x", "unknown_dictionary"),
        (bytes((contract_v2.MAGIC, 1)) + b"\xff" * 50, "corrupt"),
        (contract_v2.encode("b2", [("event", {"seq": 1, "type": "tamper"})]), BENCH_MISMATCH),
        (contract_v2.encode("b1", [("event", {"bench": "b2", "seq": 1})]), BENCH_MISMATCH),
        (contract_v2.encode("b1", [("event", {"seq": "1"})]), "corrupt"),
        (contract_v2.encode("b1", [("event", {"seq": True})]), "corrupt"),
        (contract_v2.encode("b1", [("event", {"seq": 1, "seq_epoch": 5})]), "corrupt"),
    ],
)
def test_what_cannot_be_passed_on_is_named(payload: bytes, problem: str) -> None:
    with pytest.raises(Unreadable) as error:
        read_batch("b1", payload)
    assert error.value.problem == problem


def test_nan_from_a_hostile_batch_is_corrupt_not_a_crash() -> None:
    shapes = contract_v2.dictionary(1)
    text = b'{"v":2,"bench":"b1","records":[{"kind":"telemetry","seq":1,"x":NaN}]}'
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, shapes.zdict)
    payload = bytes((contract_v2.MAGIC, 1)) + deflate.compress(text) + deflate.flush()
    batch = read_batch("b1", payload)
    with pytest.raises(Unreadable) as error:
        v1_payloads(batch, 65_536)
    assert error.value.problem == "corrupt"


def test_the_status_and_the_summary_line() -> None:
    counters = Counters(batches=10, records_in=50, records_out=48, duplicates=2)
    counters.undecodable["corrupt"] += 1
    gaps = {("b1", "e1"): 3}
    status = json.loads(
        status_payload(
            "br-1", online=True, ts="t", version="0", counters=counters_json(counters, gaps)
        )
    )
    assert status["counters"]["gaps"] == {"b1": {"e1": 3}}
    assert status["counters"]["gaps_total"] == 3
    assert status["counters"]["undecodable"] == {"corrupt": 1}
    line = summary_line(counters, Counters(records_out=18), gaps, 60.0)
    assert "0.5 records/s" in line and "corrupt 1" in line and "b1/e1: 3" in line


def test_random_order_and_copies_still_pass_each_record_once() -> None:
    """The ledger as the bridge uses it: whatever order and copies, each key once."""
    ledger = Ledger(max_intervals=1000)
    keys = [("b1", "e", s) for s in range(1, 500)] * 3
    random.Random(7).shuffle(keys)
    passed = [k for k in keys if not ledger.seen(k) and ledger.admit(k)]
    assert sorted(passed) == sorted(set(keys))
    assert ledger.gaps() == {}
