"""The archive's parts: what it makes of each kind of message (pure), and the console
script against a real mosquitto for what the agents' tests do not reach: a bench on
contract 1, hostile payloads (counted and acknowledged, never a crash, never stored),
the rate limit, retention, a database it cannot open and bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench_agent.link import contract_v2
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_payloads import rows_of
from bench_agent.ops.archive_store import Row
from bench_agent.ops.bridge_payloads import Unreadable
from bench_agent.ops.opsctl import main
from tests.archive_support import ArchiveProcess
from tests.bridge_support import BENCH, BENCH_OPS, Publisher, batches, captured_records
from tests.pg_support import PostgresServer
from tests.support import AgentProcess, Broker, sim_config, wait_until

V1_TELEMETRY = {"v": 1, "bench": BENCH, "records": [r for k, r in captured_records()[3:6]]}
_, EVENT = captured_records()[0]


def test_rows_of_v2_and_v1_give_the_same_rows() -> None:
    records = captured_records()[:6]  # three events, three telemetry records
    from_v2 = rows_of(BENCH, "v2", contract_v2.encode(BENCH, records)).rows
    from_v1 = [
        *rows_of(BENCH, "event", json.dumps(EVENT).encode()).rows,
        *rows_of(BENCH, "event", json.dumps(records[1][1]).encode()).rows,
        *rows_of(BENCH, "event", json.dumps(records[2][1]).encode()).rows,
        *rows_of(BENCH, "telemetry", json.dumps(V1_TELEMETRY).encode()).rows,
    ]
    assert from_v2 == tuple(from_v1)
    assert [r.seq for r in from_v2] == [1, 2, 3, 4, 5, 6]
    assert json.loads(from_v2[0].body) == EVENT  # the v1 event message, v and bench in it


@pytest.mark.parametrize(
    ("leaf", "payload", "problem"),
    [
        ("v2", b"\xb2\x01garbage", "corrupt"),
        ("v2", b'{"v": 1}', "not_v2"),
        ("v2", contract_v2.encode("another-bench", captured_records()[:2]), "bench_mismatch"),
        ("telemetry", b"\xff\xfe", "not_v1"),
        ("telemetry", b"[1, 2]", "not_v1"),
        ("telemetry", json.dumps({**V1_TELEMETRY, "records": "x"}).encode(), "not_v1"),
        ("telemetry", json.dumps({**V1_TELEMETRY, "bench": "other"}).encode(), "bench_mismatch"),
        ("event", json.dumps({**EVENT, "seq": "one"}).encode(), "bad_record"),
        ("event", json.dumps({**EVENT, "ts": 5}).encode(), "bad_record"),
        ("event", contract_v2.encode(BENCH, captured_records()[:1]), "not_v1"),
        ("state", b"{}", "not_archived"),
    ],
)
def test_rows_of_names_what_it_cannot_archive(leaf: str, payload: bytes, problem: str) -> None:
    with pytest.raises(Unreadable) as caught:
        rows_of(BENCH, leaf, payload)
    assert caught.value.problem == problem


def test_a_record_the_bench_could_not_store_has_no_key_and_is_counted() -> None:
    unstored = {k: v for k, v in EVENT.items() if k not in ("seq", "seq_epoch")}
    found = rows_of(BENCH, "event", json.dumps({**unstored, "stored": False}).encode())
    assert found.rows == () and found.unkeyed == 1


# -- the console script ---------------------------------------------------------------


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Any]]:
    started: list[Any] = []
    try:
        yield started
    finally:
        for part in reversed(started):
            part.kill() if hasattr(part, "kill") else part.close()


@pytest.mark.integration
def test_a_contract_1_bench_and_hostile_payloads(
    tmp_path: Path, broker: Broker, workers: list[Any]
) -> None:
    db = str(tmp_path / "a.sqlite")
    worker = ArchiveProcess(broker.port, tmp_path, db)
    workers.append(worker)
    worker.wait_subscribed()
    publisher = Publisher(broker.port)
    workers.append(publisher)
    for leaf, payload in [
        ("v2", b"\xb2\x01garbage"),
        ("v2", b"\xb2\x63unknown dictionary"),
        ("telemetry", b"not json"),
        ("event", json.dumps({**EVENT, "bench": "someone-else"}).encode()),
    ]:
        publisher.publish(payload, bench="bench-v1", leaf=leaf)
    (tmp_path / "v1").mkdir()
    config = {
        "bench": {"id": "bench-v1"},
        "sim": {"speed": 2400},
        "sampling": {"sample_interval_s": 30, "publish_interval_s": 60},
        "mqtt": {"contract": 1},
    }
    agent = AgentProcess(sim_config(tmp_path / "v1", broker.port, config), tmp_path / "v1")
    workers.append(agent)

    def stored() -> list[tuple[str, str, int]]:
        with open_store(db) as store:
            return store.stored_keys()

    wait_until(lambda: len(stored()) >= 40, 30, "40 records of the contract-1 bench")
    assert agent.stop() == 0
    keys = stored()
    assert {b for b, _, _ in keys} == {"bench-v1"}
    seqs = [s for _, _, s in keys]
    assert seqs == list(range(1, len(seqs) + 1))
    wait_until(lambda: "undecodable: bench_mismatch 1, corrupt 1, not_v1 1" in worker.log, 10,
               "the hostile payloads counted")  # fmt: skip
    assert "unknown_dictionary 1" in worker.log
    assert worker.stop() == 0
    # Acknowledged: the same session taken up again gets none of them back.
    again = ArchiveProcess(broker.port, tmp_path, db)
    workers.append(again)
    again.wait_subscribed()
    assert again.stop() == 0
    assert "not archived" not in again.log.split("subscribed:")[-1]
    assert "Traceback" not in worker.log


@pytest.mark.integration
def test_the_rate_limit_spreads_a_burst_and_retention_deletes_what_is_old(
    tmp_path: Path, broker: Broker, workers: list[Any]
) -> None:
    db = str(tmp_path / "a.sqlite")
    old = Row.of(BENCH, "event", {**EVENT, "seq_epoch": "00000000000000aa"})
    assert old is not None
    with open_store(db) as store:
        store.insert([old], "2020-01-01T00:00:00.000Z")
    extra = ["--max-rate", "400", "--batch-records", "100", "--retention-days", "30"]
    worker = ArchiveProcess(broker.port, tmp_path, db, extra=extra)
    workers.append(worker)
    worker.wait_subscribed()
    publisher = Publisher(broker.port)
    workers.append(publisher)
    records = captured_records()[:1000]
    for payload in batches(records, size=50):
        publisher.publish(payload)

    def received() -> list[str]:
        with open_store(db) as store:
            return [r.received_at for r in store.records()]

    wait_until(lambda: len(received()) == 1000, 30, "the burst stored")
    times = sorted(datetime.fromisoformat(t).timestamp() for t in received())
    # 1,000 records at 400/s: the first transaction at once, the rest paced (>= 2.2 s).
    assert times[-1] - times[0] >= 2.0, times[-1] - times[0]
    assert "retention: 1 rows received before" in worker.log
    assert worker.stop() == 0


def test_a_database_it_cannot_open_and_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = [str(BENCH_OPS), "archive", "--host", "127.0.0.1", "--port", "1"]
    done = subprocess.run(
        [*base, "--db", str(tmp_path / "no" / "such" / "dir.sqlite")],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert done.returncode == 75 and "cannot open the archive" in done.stderr, done.stderr
    for flags in (
        ["--max-rate", "-1"],
        ["--batch-records", "0"],
        ["--retention-days", "0"],
        ["--group", "a/b"],
        ["--prefix", "smart/#"],
    ):
        assert main(["archive", "--host", "127.0.0.1", *flags]) == 64, flags
        assert capsys.readouterr().err.count("\n") == 1, flags


def test_without_matplotlib_archive_and_gaps_still_run_and_report_says_what_is_missing(
    tmp_path: Path,
) -> None:
    """The archive's unit venv may hold only what the archive needs: bench-ops must
    start there (matplotlib is imported by report and plan only)."""
    script = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if not installed
        "from bench_agent.ops.opsctl import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def bench_ops(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", script, *argv], capture_output=True, text=True, check=False
        )

    db = tmp_path / "a.sqlite"
    open_store(db).close()
    assert bench_ops("gaps", "--db", str(db)).returncode == 0
    done = bench_ops("report", "--db", str(db), "--out", str(tmp_path / "r.html"))
    assert done.returncode == 69, done.stderr
    assert "needs matplotlib" in done.stderr and "bench-agent[ops]" in done.stderr
    assert "archive" in bench_ops("--help").stdout


@pytest.mark.integration
def test_a_database_outage_exits_75_and_a_restart_loses_nothing(
    tmp_path: Path, broker: Broker, workers: list[Any], postgres_server: PostgresServer
) -> None:
    """PostgreSQL drops the worker's connection mid-stream (what a database restart or
    failover does): the worker exits 75 without acknowledging what it had not
    committed, and the same worker started again stores every record."""
    db = postgres_server.new_database()
    pace = ["--max-rate", "200", "--batch-records", "40"]  # 1,000 records in ~5 s
    worker = ArchiveProcess(broker.port, tmp_path, db, extra=pace)
    workers.append(worker)
    worker.wait_subscribed()
    publisher = Publisher(broker.port)
    workers.append(publisher)
    payloads = batches(captured_records()[:1000], size=20)

    def stored() -> int:
        with open_store(db) as store:
            return store.count()

    for payload in payloads:
        publisher.publish(payload)
    wait_until(lambda: stored() >= 100, 20, "some records stored")
    name = db.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = 'bench-ops'",
            [name],
        )
    assert worker.proc.wait(20) == 75, worker.log
    assert "the archive's database failed" in worker.log
    assert stored() < 1000
    again = ArchiveProcess(broker.port, tmp_path, db, extra=["--max-rate", "0"])
    workers.append(again)
    wait_until(lambda: stored() == 1000, 30, "every record after the restart")
    with open_store(db) as store:
        assert [s for _, _, s in store.stored_keys()] == list(range(1, 1001))
