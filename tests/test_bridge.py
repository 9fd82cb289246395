"""`bench-ops bridge` as a real process against a real mosquitto: a real agent on
contract 2 and a v1 consumer; a broker restart, kill -9, two bridges sharing the load,
hostile payloads, copies and gaps, and a broker that refuses what the bridge publishes.

The broker keeps sessions across a restart and the consumer's session is persistent
(tests/outbox_support.py), so a seq missing at the consumer is the bridge's doing.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench_agent.link import contract_v2
from tests.bridge_support import (
    BENCH,
    PREFIX,
    V1_PREFIX,
    BridgeProcess,
    Publisher,
    V1Consumer,
    batches,
    captured_records,
)
from tests.outbox_support import DurableBroker, DurableRecorder
from tests.support import FAST_AGENT, AgentProcess, Broker, Recorder, sim_config, wait_until

pytestmark = pytest.mark.integration


class Parts:
    """Everything a test starts, stopped at its end whatever happens."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.bridges: list[BridgeProcess] = []
        self.closers: list[Any] = []

    def bridge(self, port: int, client_id: str = "bridge-a", **kwargs: Any) -> BridgeProcess:
        bridge = BridgeProcess(port, self.tmp_path, client_id, **kwargs)
        self.bridges.append(bridge)
        return bridge

    def consumer(self, port: int) -> V1Consumer:
        consumer = V1Consumer(port)
        self.closers.append(consumer)
        return consumer

    def publisher(self, port: int) -> Publisher:
        publisher = Publisher(port)
        self.closers.append(publisher)
        return publisher

    def close(self) -> None:
        for bridge in self.bridges:
            bridge.kill()
        for part in reversed(self.closers):
            part.close()

    def logs(self) -> str:
        return "\n".join(f"--- {b.client_id}:\n{b.log[-3000:]}" for b in self.bridges)


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    made = Parts(tmp_path)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[DurableBroker]:
    broker = DurableBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def contiguous(seqs: set[int]) -> bool:
    return bool(seqs) and seqs == set(range(1, max(seqs) + 1))


def test_a_real_bench_on_v2_reaches_a_v1_consumer_across_a_broker_restart_and_kill_9(
    parts: Parts, durable: DurableBroker, tmp_path: Path
) -> None:
    """One bridge with a plain subscription (`--no-share`): mosquitto 2.0.11 does not
    keep a shared one over its restart (the next test)."""
    consumer = parts.consumer(durable.port)
    wire = DurableRecorder(durable.port, f"{PREFIX}/+/v2")  # what the bench sent, as v1
    parts.closers.append(wire)
    parts.bridge(durable.port, extra=["--no-share"])
    consumer.wait_status("bridge-a")  # subscribed: the shared subscription exists now
    agent = AgentProcess(sim_config(tmp_path, durable.port, FAST_AGENT), tmp_path)
    try:
        wait_until(lambda: len(consumer.seqs()) >= 60, 60, "60 records through the bridge")

        durable.stop()  # the broker restarts: sessions, queues and retained kept
        time.sleep(1)
        durable.start()
        before = max(consumer.seqs())
        wait_until(lambda: max(consumer.seqs()) > before + 60, 60, "records after the restart")

        parts.bridges[0].kill()  # kill -9, mid-stream: acks it owed are never sent
        time.sleep(1)  # the bench goes on; the broker keeps the bridge's share
        parts.bridge(durable.port, extra=["--no-share"])  # the same client id and session
        before = max(consumer.seqs())
        wait_until(lambda: max(consumer.seqs()) > before + 60, 60, "records after kill -9")
        assert agent.stop() == 0
    finally:
        agent.kill()

    sent = wire.all_seqs()
    try:
        wait_until(lambda: consumer.seqs() >= sent, 30, "every seq the bench sent, at v1")
    except AssertionError:
        missing = sorted(sent - consumer.seqs())
        raise AssertionError(f"missing {len(missing)}: {missing[:30]}\n{parts.logs()}") from None
    seqs = consumer.seqs()
    assert contiguous(seqs), sorted(set(range(1, max(seqs) + 1)) - seqs)[:20]
    assert len({epoch for _, epoch, _ in consumer.arrivals()}) == 1
    assert consumer.validate_all() > 20  # telemetry (several records each), events, state
    # The retained state and status are mirrored under the v1 prefix, retained.
    fresh = Recorder(durable.port, f"{V1_PREFIX}/{BENCH}/+")
    try:
        status = fresh.wait_for("status", lambda p: p["online"] is False, 10)
        state = fresh.wait_for("state", timeout_s=10)
        assert all(m.retain for m in fresh.messages)
    finally:
        fresh.close()
    assert status["reason"] == "shutdown" and "outputs" in state
    assert "Traceback" not in parts.logs(), parts.logs()


def test_over_a_mosquitto_restart_a_plain_subscription_keeps_what_a_shared_one_loses(
    parts: Parts, durable: DurableBroker
) -> None:
    """Measured on mosquitto 2.0.11 (Bookworm's): a persistent session's shared
    subscription is not restored from the broker's persistence file, so a batch
    published after the restart and before the bridge subscribes again reaches no one;
    a plain subscription is restored. Why `--no-share` exists (README, "The bridge").
    If this starts failing, the broker keeps shared subscriptions now: say so there."""
    consumer = parts.consumer(durable.port)
    shared = parts.bridge(durable.port, "bridge-shared")
    consumer.wait_status("bridge-shared")
    plain = parts.bridge(durable.port, "bridge-plain", extra=["--no-share"])
    consumer.wait_status("bridge-plain")
    assert shared.stop() == 0 and plain.stop() == 0  # sessions kept, bridges away
    durable.stop()
    durable.start()
    publisher = parts.publisher(durable.port)
    one, two = batches(captured_records()[:10])
    publisher.publish(one)  # while both bridges are away
    parts.bridge(durable.port, "bridge-shared")
    consumer.wait_status("bridge-shared", after=len(consumer.statuses("bridge-shared")))
    publisher.publish(two)  # after the shared bridge subscribed again
    wait_until(lambda: len(consumer.arrivals()) == 5, 20, "the second batch")
    time.sleep(1)
    assert {seq for _, _, seq in consumer.arrivals()} == {6, 7, 8, 9, 10}  # 1-5: gone
    parts.bridge(durable.port, "bridge-plain", extra=["--no-share"])
    wait_until(lambda: len(consumer.arrivals()) == 10, 20, "the plain session's queue")
    # The plain session kept both batches (6-10 again: this test runs two bridges that
    # do not share, which a real deployment never does).
    assert {seq for _, _, seq in consumer.arrivals()} == set(range(1, 11))


def test_two_bridges_share_the_load_each_record_once_and_a_killed_one_loses_nothing(
    parts: Parts, durable: DurableBroker
) -> None:
    consumer = parts.consumer(durable.port)
    for client_id in ("bridge-a", "bridge-b"):
        parts.bridge(durable.port, client_id)
        consumer.wait_status(client_id)
    publisher = parts.publisher(durable.port)
    records = captured_records()
    payloads = batches(records)  # 292 batches of 5
    steady, rest = payloads[:100], payloads[100:]

    for payload in steady:
        publisher.publish(payload)
    wait_until(lambda: len(consumer.arrivals()) >= 500, 30, "the steady run's 500 records")
    assert set(consumer.arrivals().values()) == {1}, "a duplicate in a steady run"
    mark = {c: len(consumer.statuses(c)) for c in ("bridge-a", "bridge-b")}
    for client_id in ("bridge-a", "bridge-b"):  # both took a share
        status = consumer.wait_status(
            client_id, lambda s: s["counters"]["batches"] > 0, after=mark[client_id]
        )
        assert status["counters"]["batches"] < 100

    def publish_rest() -> None:
        for payload in rest:
            publisher.publish(payload)
            time.sleep(0.01)

    pushing = threading.Thread(target=publish_rest)
    pushing.start()
    wait_until(lambda: len(consumer.arrivals()) >= 700, 30, "the stream under way")
    parts.bridges[1].kill()  # kill -9 of bridge-b mid-stream
    time.sleep(1)
    parts.bridge(durable.port, "bridge-b")
    pushing.join(60)
    wait_until(lambda: len(consumer.arrivals()) == len(records), 30, "every record")
    assert sorted(seq for _, _, seq in consumer.arrivals()) == [r["seq"] for _, r in records]
    assert consumer.validate_all() >= len(payloads)


def bomb() -> bytes:
    """A few kB that inflate past contract_v2.MAX_DECODED_BYTES."""
    shapes = contract_v2.dictionary(1)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, shapes.zdict)
    text = b'{"v":2,"bench":"b","records":["' + b"0" * (40 * 1024 * 1024) + b'"]}'
    return bytes((contract_v2.MAGIC, 1)) + deflate.compress(text) + deflate.flush()


def test_what_cannot_be_decoded_is_counted_by_problem_and_good_batches_keep_flowing(
    parts: Parts, broker: Broker
) -> None:
    consumer = parts.consumer(broker.port)
    bridge = parts.bridge(broker.port)
    consumer.wait_status("bridge-a")
    publisher = parts.publisher(broker.port)
    records = captured_records()[:35]
    good = iter(batches(records))
    hostile = [
        bytes((contract_v2.MAGIC, 77)) + b"a dictionary nobody shipped",  # unknown_dictionary
        b"\x00\xff" + os.urandom(200),  # garbage bytes: not_v2
        bytes((contract_v2.MAGIC, 1)) + os.urandom(200),  # garbage after the header: corrupt
        bomb(),  # too_large
        b'{"v":1,"bench":"sim-bench-01","records":[]}',  # a v1 payload on the v2 topic: not_v2
        contract_v2.encode("other-bench", records[:5]),  # bench_mismatch
    ]
    publisher.publish(next(good))
    for payload in hostile:
        publisher.publish(payload)
        publisher.publish(next(good))
    wait_until(lambda: len(consumer.arrivals()) == 35, 20, "every good record")
    assert set(consumer.arrivals().values()) == {1}
    expected = {
        "unknown_dictionary": 1,
        "not_v2": 2,
        "corrupt": 1,
        "too_large": 1,
        "bench_mismatch": 1,
    }
    status = consumer.wait_status("bridge-a", lambda s: s["counters"]["undecodable"] == expected)
    assert status["counters"]["records_out"] == 35
    assert bridge.alive()
    # Once per bench per minute: six problems on one bench, one log line.
    assert bridge.log.count("not passed on") == 1, bridge.log
    assert "Traceback" not in bridge.log


def test_a_copy_of_a_batch_passes_each_record_once_and_a_gap_is_counted_until_filled(
    parts: Parts, broker: Broker
) -> None:
    consumer = parts.consumer(broker.port)
    parts.bridge(broker.port)
    consumer.wait_status("bridge-a")
    publisher = parts.publisher(broker.port)
    records = captured_records()[:15]
    epoch = records[0][1]["seq_epoch"]
    first, second, third = batches(records)  # seqs 1-5, 6-10, 11-15

    publisher.publish(first)
    publisher.publish(first)  # the bench sent it again (a reconnect before the PUBACK)
    status = consumer.wait_status("bridge-a", lambda s: s["counters"]["batches"] == 2)
    assert status["counters"]["duplicates"] == 5 and status["counters"]["gaps_total"] == 0
    assert set(consumer.arrivals().values()) == {1} and len(consumer.arrivals()) == 5

    publisher.publish(third)  # 6-10 missing
    status = consumer.wait_status("bridge-a", lambda s: s["counters"]["batches"] == 3)
    assert status["counters"]["gaps"] == {BENCH: {epoch: 5}}
    assert status["counters"]["gaps_total"] == 5

    publisher.publish(second)  # the gap is filled
    status = consumer.wait_status("bridge-a", lambda s: s["counters"]["batches"] == 4)
    assert status["counters"]["gaps"] == {} and status["counters"]["gaps_total"] == 0
    wait_until(lambda: len(consumer.arrivals()) == 15, 10, "every record")
    assert set(consumer.arrivals().values()) == {1}


def test_a_republish_the_broker_refuses_stops_the_bridge_and_loses_nothing(
    parts: Parts, tmp_path: Path
) -> None:
    """An ACL that forgot the v1 prefix: the bridge exits 77 without acknowledging the
    batch; with the ACL fixed, the restarted bridge passes it on."""
    broker = Broker(tmp_path)
    acl = tmp_path / "acl"
    acl.write_text(
        f"topic readwrite {PREFIX}/#\ntopic write {V1_PREFIX}/_bridge/#\ntopic read {V1_PREFIX}/#\n"
    )
    # As root mosquitto would switch to its own user, which cannot read the ACL here.
    broker.conf.write_text(broker.conf.read_text() + f"user root\nacl_file {acl}\n")
    broker.start()
    try:
        consumer = parts.consumer(broker.port)
        bridge = parts.bridge(broker.port)
        consumer.wait_status("bridge-a")
        parts.publisher(broker.port).publish(batches(captured_records()[:5])[0])
        assert bridge.proc.wait(20) == 77
        assert "refused a republished message" in bridge.log
        assert consumer.arrivals() == {}
        acl.write_text(f"topic readwrite {PREFIX}/#\ntopic readwrite {V1_PREFIX}/#\n")
        assert broker.proc is not None
        broker.proc.send_signal(1)  # SIGHUP: mosquitto reads its ACL again
        time.sleep(0.5)
        parts.bridge(broker.port)  # the same session: the batch was never acknowledged
        wait_until(lambda: len(consumer.arrivals()) == 5, 20, "the refused batch, once allowed")
    finally:
        broker.stop()
