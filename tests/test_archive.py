"""`bench-ops archive` and `bench-ops gaps` as real processes, with real agents (the
simulated bench, sped up, on contract 2) and a real mosquitto: every seq of every
bench stored once through two workers sharing the load, a worker kill -9ed mid-burst,
and a bench whose state directory is wiped (a new epoch, not a gap); then `gaps`
against what was removed on purpose: records a lossy relay dropped on the way, and
records a bench dropped itself while its broker was away (and reported).

The broker keeps the workers' sessions (it does not restart here), so a key missing
from the archive is the archive's doing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.byte_proxy import ByteProxy
from bench_agent.ops.archive_db import open_store
from tests.archive_support import ArchiveProcess, Key, LossyRelay, Wire, gaps_json
from tests.support import FAST_AGENT, AgentProcess, Broker, sim_config, wait_until

pytestmark = pytest.mark.integration


class Parts:
    """Everything a test starts, stopped at its end whatever happens."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.tmp_path = tmp_path
        self.port = port
        self.db = str(tmp_path / "archive.sqlite")
        self.archives: list[ArchiveProcess] = []
        self.agents: dict[str, AgentProcess] = {}
        self.closers: list[Any] = []

    def archive(self, client_id: str, *extra: str) -> ArchiveProcess:
        worker = ArchiveProcess(self.port, self.tmp_path, self.db, client_id, extra)
        self.archives.append(worker)
        worker.wait_subscribed()
        return worker

    def agent(self, bench: str, port: int | None = None, **changes: Any) -> AgentProcess:
        workdir = self.tmp_path / bench
        workdir.mkdir(exist_ok=True)
        config = {**FAST_AGENT, **changes, "bench": {"id": bench}}
        config["mqtt"] = {**FAST_AGENT["mqtt"], **changes.get("mqtt", {})}
        agent = AgentProcess(sim_config(workdir, port or self.port, config), workdir)
        self.agents[bench] = agent
        return agent

    def stored(self) -> set[Key]:
        with open_store(self.db) as store:
            return set(store.stored_keys())

    def close(self) -> None:
        for agent in self.agents.values():
            agent.kill()
        for worker in self.archives:
            worker.kill()
        for part in reversed(self.closers):
            part.close()

    def logs(self) -> str:
        return "\n".join(f"--- {w.client_id}:\n{w.log[-2000:]}" for w in self.archives)


@pytest.fixture
def parts(tmp_path: Path, broker: Broker) -> Iterator[Parts]:
    made = Parts(tmp_path, broker.port)
    try:
        yield made
    finally:
        made.close()


def test_three_benches_two_workers_a_kill_9_mid_burst_and_a_wiped_store_every_seq_once(
    parts: Parts,
) -> None:
    # Paced to 300 records/s so that the burst below lasts long enough to be cut.
    pace = ("--max-rate", "300")
    worker_a = parts.archive("archive-a", *pace)
    worker_b = parts.archive("archive-b", *pace)
    wire = Wire(parts.port)
    parts.closers.append(wire)
    for bench in ("bench-a", "bench-b", "bench-c"):
        parts.agent(bench)
    wait_until(lambda: len(parts.stored()) >= 150, 60, "150 records in the archive")

    # Both workers away (their sessions stay at the broker); the benches go on: a burst.
    assert worker_a.stop() == 0 and worker_b.stop() == 0
    time.sleep(1.0)
    # bench-c's state directory is wiped (a new SD card): a new seq epoch from seq 1.
    assert parts.agents["bench-c"].stop() == 0
    shutil.rmtree(parts.tmp_path / "bench-c" / "state")
    parts.agent("bench-c")
    time.sleep(1.5)

    before = len(parts.stored())
    worker_a = parts.archive("archive-a", *pace)
    wait_until(lambda: len(parts.stored()) >= before + 40, 30, "the burst going in")
    worker_a.kill()  # kill -9 mid-burst: what it had not acknowledged comes again
    at_kill = len(parts.stored())
    assert at_kill < len(wire.keys()) - 100, "the burst was over before the kill"
    parts.archive("archive-a", *pace)
    parts.archive("archive-b", *pace)
    for agent in parts.agents.values():
        assert agent.stop() == 0

    sent = wire.keys()
    try:
        wait_until(lambda: parts.stored() == sent, 60, "every key the benches sent")
    except AssertionError:
        missing = sorted(sent - parts.stored())
        raise AssertionError(f"missing {len(missing)}: {missing[:20]}\n{parts.logs()}") from None
    epochs: dict[tuple[str, str], set[int]] = {}
    for bench, epoch, seq in sent:
        epochs.setdefault((bench, epoch), set()).add(seq)
    assert sorted(b for b, _ in epochs) == ["bench-a", "bench-b", "bench-c", "bench-c"]
    for seqs in epochs.values():  # each epoch from seq 1, none missing
        assert seqs == set(range(1, max(seqs) + 1))

    report = gaps_json(parts.db)
    totals = report["totals"]
    assert (totals["lost"], totals["dropped_by_bench"], totals["before_first"]) == (0, 0, 0)
    assert totals["stored"] == len(sent) and totals["epochs"] == 4
    c_epochs = [e for e in report["epochs"] if e["bench"] == "bench-c"]
    assert [e["first_seq"] for e in c_epochs] == [1, 1] and all(not e["missing"] for e in c_epochs)
    logs = parts.logs()
    assert "Traceback" not in logs and "duplicates" in logs, logs


def test_gaps_names_exactly_what_a_lossy_relay_and_the_bench_itself_removed(
    parts: Parts,
) -> None:
    """bench-lossy's records pass a relay that drops every seq = 3 (mod 7) on the way;
    bench-drops keeps its records at most 600 agent seconds (1 s here) and loses its
    broker for 3 s: it drops the oldest waiting and reports how many once back."""
    parts.archive("archive-a")
    relay = LossyRelay(
        parts.port, lambda bench, r: bench == "bench-lossy" and int(r["seq"]) % 7 == 3
    )
    parts.closers.append(relay)
    gate = ByteProxy(parts.port)  # bench-drops' way to its broker, taken away below
    parts.closers.append(gate)
    slow = {
        "sim": {"speed": 600},
        "mqtt": {"topic_prefix": "raw", "telemetry_batch_s": 60},
        "storage": {"outbox_max_age_s": 600},
    }
    parts.agent("bench-lossy", **slow)
    parts.agent("bench-drops", port=gate.port, **slow)
    wait_until(
        lambda: {b for b, _, _ in relay.keys()[0]} == {"bench-lossy", "bench-drops"},
        30,
        "both benches through the relay",
    )
    time.sleep(1.0)
    gate.refuse()  # bench-drops' broker is away for 3 s (3 times its records' age limit)
    time.sleep(3.0)
    gate.admit()
    wait_until(lambda: any(_dropped_report(parts, "bench-drops")), 30, "bench-drops' drop report")
    time.sleep(0.5)
    for agent in parts.agents.values():
        assert agent.stop() == 0
    seen, dropped = relay.keys()
    expected = seen - dropped
    try:
        wait_until(lambda: parts.stored() == expected, 30, "what the relay passed on")
    except AssertionError:
        raise AssertionError(f"{sorted(expected ^ parts.stored())[:20]}\n{parts.logs()}") from None

    report = gaps_json(parts.db)
    (lossy,) = [e for e in report["epochs"] if e["bench"] == "bench-lossy"]
    (drops,) = [e for e in report["epochs"] if e["bench"] == "bench-drops"]

    def missing(epoch: dict[str, Any], cause: str) -> set[int]:
        return {
            seq
            for r in epoch["missing"]
            if r["cause"] == cause
            for seq in range(r["first"], r["last"] + 1)
        }

    # The relay's drops, exactly (those below the last stored seq: above it none can tell).
    relay_dropped = {s for _, _, s in dropped if s < lossy["last_seq"]}
    assert len(relay_dropped) >= 5
    assert missing(lossy, "lost") == relay_dropped
    assert missing(lossy, "dropped_by_bench") == set() and lossy["reported_drops"] == 0
    # The bench's own drops: never on the wire, all reported, named as the bench's.
    never_sent = set(range(1, drops["last_seq"] + 1)) - {
        s for b, _, s in seen if b == "bench-drops"
    }
    assert len(never_sent) > 5
    assert missing(drops, "dropped_by_bench") == never_sent
    assert drops["reported_drops"] == len(never_sent)
    assert missing(drops, "lost") == set() and missing(drops, "before_first") == set()
    assert drops["dropped_by_bench"] == len(never_sent) and drops["lost"] == 0


def _dropped_report(parts: Parts, bench: str) -> list[Any]:
    with open_store(parts.db) as store:
        return list(store.events(["outbox_dropped"], bench=bench))
