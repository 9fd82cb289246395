"""Nothing recorded is ever lost: the agent as a real process on the simulated bench,
a real mosquitto stopped and restarted, a link that swallows what is sent, kill -9,
a full disk, a corrupt outbox file and a wall clock a year wrong.

Every message the recorder receives is checked against the contract's schemas. The
broker keeps its sessions across a restart and the recorder's session is persistent
(tests/outbox_support.py), so whatever the broker acknowledged to the agent reaches
the recorder even when the recorder reconnects after the agent: a missing seq here
is the agent's doing.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bench_agent.link import contract_v2
from bench_agent.link.outbox import SEQ_FLOOR_EVERY
from bench_agent.link.outbox_records import unpack_body
from tests.outbox_support import BlackHoleProxy, DurableBroker, DurableRecorder, validate_all
from tests.support import (
    AgentProcess,
    Broker,
    Message,
    Recorder,
    technician_status,
    wait_until,
)
from tests.support import small_tmpfs as support_small_tmpfs

pytestmark = pytest.mark.integration

SPEED = 2400  # simulated seconds per real second
PUBLISH_S = 60  # agent seconds: a telemetry record every 25 ms of real time
FAST: Mapping[str, Any] = {
    "sim": {"speed": SPEED},
    "sampling": {"sample_interval_s": 30, "publish_interval_s": PUBLISH_S},
    # Real seconds: the agent is back within a second of the broker.
    "mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
}
StartAgent = Callable[..., AgentProcess]


def merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, Mapping):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def agent_log_on_failure(tmp_path: Path) -> Iterator[None]:
    """Printed at teardown: pytest shows it with a failing test's captured output."""
    yield
    for log in (tmp_path / "agent.log", tmp_path / "mosquitto.log"):
        if log.exists():
            tail = log.read_text(errors="replace")[-6000:]
            print(f"--- {log.name} (the last 6000 characters)\n{tail}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DurableBroker]:
    b = DurableBroker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def recorder(broker: DurableBroker) -> Iterator[DurableRecorder]:
    r = DurableRecorder(broker.port)
    try:
        yield r
    finally:
        r.close()


# -- what the recorder holds ----------------------------------------------------------


def records(messages: list[Message]) -> list[dict[str, Any]]:
    """Every telemetry record and event in `messages`, in arrival order."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.topic.endswith("/telemetry"):
            out += message.json()["records"]
        elif message.topic.endswith("/event"):
            out.append(message.json())
    return out


def snapshot(recorder: Recorder) -> list[Message]:
    with recorder._lock:
        return list(recorder.messages)


def events(recorder: Recorder, kind: str) -> list[dict[str, Any]]:
    return [e for e in (m.json() for m in recorder.on("event")) if e["type"] == kind]


def stored_seqs_in(messages: list[Message]) -> set[int]:
    return {r["seq"] for r in records(messages) if "seq" in r}


def stored_seqs(recorder: Recorder) -> set[int]:
    return stored_seqs_in(snapshot(recorder))


def newest_live(recorder: Recorder, after: int = 0) -> int | None:
    """The seq of the newest live telemetry record among the messages from index `after`
    that is newer than anything before `after`, or None. (A broker restart may hand the
    recorder again what it had in flight to it: an old record arriving late is not news.)"""
    messages = snapshot(recorder)
    newer_than = max((r["seq"] for r in records(messages[:after]) if "seq" in r), default=0)
    live = [
        r["seq"]
        for m in messages[after:]
        if m.topic.endswith("/telemetry")
        for r in m.json()["records"]
        if "seq" in r and not r.get("historical") and r["seq"] > newer_than
    ]
    return max(live, default=None)


def drained_up_to_live(recorder: Recorder, after: int = 0) -> bool:
    """A live record arrived (see `newest_live`) and every seq from the first received
    up to it too: the backlog older than it is drained."""
    newest = newest_live(recorder, after)
    seqs = stored_seqs(recorder)
    return newest is not None and set(range(min(seqs), newest + 1)) <= seqs


def settle(recorder: Recorder, after: int = 0, timeout_s: float = 20) -> None:
    """Wait until `drained_up_to_live`; on a timeout, return quietly so that the
    assertions that follow say what is missing."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: drained_up_to_live(recorder, after), timeout_s, "the outbox drained")


def gaps(seqs: set[int]) -> list[range]:
    ordered = sorted(seqs)
    return [range(a + 1, b) for a, b in itertools.pairwise(ordered) if b > a + 1]


def as_sent(record: dict[str, Any]) -> dict[str, Any]:
    """A delivered record without what says how it travelled, not what it is."""
    return {k: v for k, v in record.items() if k not in ("historical", "v", "bench")}


# -- the outbox file ----------------------------------------------------------------------


def read_outbox(state: Path, scratch: Path) -> dict[int, dict[str, Any]]:
    """The records committed in the outbox of a dead (or stopped) agent, seq -> the
    record as it goes on the wire; asserts PRAGMA integrity_check is ok.

    The files are copied first and the copy opened read-only, so reading cannot touch
    what the next agent opens (a read-only open of a WAL file leaves a -shm behind).
    """
    db = state / "outbox.sqlite3"
    if not db.exists():
        return {}
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir()
    for suffix in ("", "-wal"):
        if (src := state / f"outbox.sqlite3{suffix}").exists():
            shutil.copyfile(src, scratch / src.name)
    conn = sqlite3.connect(f"{(scratch / db.name).as_uri()}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute(
            "SELECT seq, boot_id, mono_s, ts, time_quality, body FROM outbox"
        ).fetchall()
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'seq_epoch'").fetchone()[0]
    finally:
        conn.close()
    # The wire form of a record (README, MQTT contract): the envelope, then the body.
    return {
        seq: {
            "seq": seq,
            "seq_epoch": epoch,
            "ts": ts,
            "time_quality": quality,
            "boot_id": boot,
            "uptime_s": round(mono, 1),
            **json.loads(unpack_body(body)),
        }
        for seq, boot, mono, ts, quality, body in rows
    }


# -- a) outage ------------------------------------------------------------------------


@pytest.mark.parametrize("contract", [1, 2])
def test_after_an_outage_every_seq_arrives_backlog_in_batches_live_in_between(
    broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent, contract: int
) -> None:
    payload_limit = 4096  # v1: two or three ~1.6 kB records per backlog message
    # A record every 12.5 ms: ~300 wait for the broker, and their drain (~100
    # messages over loopback) spans several publish intervals.
    changes = {
        "sampling": {"publish_interval_s": 30},
        "storage": {"max_payload_bytes": 4096},
        "mqtt": {"contract": contract},
    }
    agent = start_agent(broker.port, merged(FAST, changes))
    recorder.wait_for("telemetry", lambda p: p["records"][0]["seq"] >= 3)
    broker.stop()
    time.sleep(4.0)
    restart = len(snapshot(recorder))
    broker.start()
    settle(recorder, restart)
    assert agent.stop() == 0
    assert validate_all(recorder) > 0

    seqs = stored_seqs(recorder)
    assert seqs == set(range(1, max(seqs) + 1)), f"gaps: {gaps(seqs)}"
    before, after = snapshot(recorder)[:restart], snapshot(recorder)[restart:]
    # The broker may hand the recorder again what it had in flight to it at the stop:
    # only seqs it had not seen before count as arriving after the restart.
    last_before = max(r["seq"] for r in records(before))
    historical = {r["seq"] for r in records(after) if r.get("historical")} - set(
        range(last_before + 1)
    )
    assert historical, "nothing arrived flagged historical"
    oldest, newest = min(historical), max(historical)
    live_before = max(r["seq"] for r in records(snapshot(recorder)) if r["seq"] < oldest)
    recorded_offline = set(range(live_before + 1, newest + 1))
    assert len(recorded_offline) >= 100, "the outage should span many publish intervals"
    assert recorded_offline <= historical  # every one of them came from the backlog
    if contract == 2:
        # Batches as they went on the wire: within the limit, many records each, and
        # none mixing in records that waited for their batch while connected.
        wire = list({id(m.wire): m.wire for m in after if m.wire is not None}.values())
        backlog = [
            w
            for w in wire
            if any(r.get("historical") for _, r in contract_v2.decode(w.payload).records)
        ]
        assert len(backlog) >= 3 and all(len(w.payload) <= payload_limit for w in backlog)
        sizes = [len(contract_v2.decode(w.payload).records) for w in backlog]
        assert max(sizes) > 10, sizes  # ~100 bytes a record: many in 4 kB
        return

    telemetry_after = [m for m in after if m.topic.endswith("/telemetry")]
    backlog_messages = [
        m
        for m in telemetry_after
        if m.json()["records"][0].get("historical") and m.json()["records"][0]["seq"] >= oldest
    ]
    assert len(backlog_messages) >= 10  # the drain takes many messages
    for message in backlog_messages:
        flags = {bool(r.get("historical")) for r in message.json()["records"]}
        assert flags == {True}, "a backlog message mixes in live records"
        assert len(message.payload) <= payload_limit
    assert max(len(m.json()["records"]) for m in backlog_messages) > 1  # batched

    # Live first: records made during the drain overtook the rest of the backlog.
    first = telemetry_after.index(backlog_messages[0])
    last = telemetry_after.index(backlog_messages[-1])
    overtaking = [
        m
        for m in telemetry_after[first:last]
        if not m.json()["records"][0].get("historical") and m.json()["records"][0]["seq"] > newest
    ]
    assert overtaking, "no live record arrived while the backlog drained"


def test_a_record_leaves_the_outbox_only_on_puback_not_when_sent(
    broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent
) -> None:
    proxy = BlackHoleProxy(broker.port)
    try:
        agent = start_agent(proxy.port, FAST)
        recorder.wait_for("telemetry", lambda p: p["records"][0]["seq"] >= 3)
        proxy.swallow.set()  # published, never acknowledged: ~60 records
        time.sleep(1.5)
        before = len(snapshot(recorder))
        proxy.cut()  # the dead session breaks; the agent connects again
        proxy.swallow.clear()
        settle(recorder, before)
        assert agent.stop() == 0
    finally:
        proxy.close()
    assert validate_all(recorder) > 0
    seqs = stored_seqs(recorder)
    assert seqs == set(range(1, max(seqs) + 1)), (
        f"sent but never acknowledged, then lost: {gaps(seqs)}"
    )
    swallowed = set(range(max(stored_seqs_in(snapshot(recorder)[:before])) + 1, max(seqs) + 1))
    resent = {r["seq"] for r in records(snapshot(recorder)[before:]) if r.get("historical")}
    assert len(resent) >= 20 and resent <= swallowed


# -- b) kill -9 while the broker flaps --------------------------------------------------


def test_kill_9_at_random_moments_with_a_flapping_broker_loses_and_reuses_nothing(
    tmp_path: Path, broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent
) -> None:
    rng = random.Random(f"kill-9 {os.environ.get('PYTEST_SEED', '')}")
    state = tmp_path / "state"
    # seq -> the record as committed. "Same content" is the record as it goes on the
    # wire except `historical` (how it travelled, not what it says). Everything else
    # is frozen when the record is committed: the body with its health figures,
    # boot_id (a new one per agent process on the simulated bench, so a seq reused
    # by a later process cannot compare equal) and uptime. ts and time_quality would
    # change only if a timestamp correction ran, and the clock is synced throughout
    # here, so they must not change either.
    committed: dict[int, dict[str, Any]] = {}
    broker_up = True
    for cycle in range(20):
        agent = start_agent(broker.port, FAST)
        # A random moment of the agent's life, counted from its start (interpreter,
        # imports, the outbox opened: 0.2 s on a quiet machine, 1-2 s when the suite's
        # workers keep both cores busy), not from the fork: from the fork, a busy machine
        # put nearly every kill before the outbox opened, and the run committed too few
        # records to mean anything.
        if rng.random() < 0.15:
            time.sleep(rng.uniform(0.05, 0.2))  # sometimes before it even opened the outbox
        else:
            agent.wait_running()
            time.sleep(rng.uniform(0.0, 0.8))
        if rng.random() < 0.6:  # the broker goes away or comes back
            if broker_up:
                broker.stop()
            else:
                broker.start()
            broker_up = not broker_up
            time.sleep(rng.uniform(0.0, 0.5))
        agent.kill()
        assert agent.proc.returncode == -signal.SIGKILL, f"cycle {cycle}: {agent.log[-2000:]}"
        for seq, record in read_outbox(state, tmp_path / "copy").items():
            assert committed.setdefault(seq, record) == record, f"cycle {cycle}: seq {seq} reused"
    if not broker_up:
        broker.start()
    # A last, clean run with the broker up delivers what the others left behind.
    last_run = len(snapshot(recorder))
    agent = start_agent(broker.port, FAST)
    wait_until(
        lambda: newest_live(recorder, last_run) and set(committed) <= stored_seqs(recorder),
        30,
        "every committed seq",
    )
    assert agent.stop() == 0
    for seq, record in read_outbox(state, tmp_path / "copy").items():
        assert committed.setdefault(seq, record) == record, f"last run: seq {seq} reused"
    assert validate_all(recorder) > 0

    delivered: dict[int, dict[str, Any]] = {}
    for record in records(snapshot(recorder)):
        assert "seq" in record, "the outbox refused a write"
        seq = record["seq"]
        assert delivered.setdefault(seq, as_sent(record)) == as_sent(record), (
            f"seq {seq} was delivered with two different contents"
        )
        if seq in committed:
            assert committed[seq] == as_sent(record), f"seq {seq} differs from what was committed"
    assert set(committed) <= set(delivered)
    # Beyond what we saw in the file: a seq that never arrived was never committed.
    # The only gap the outbox makes on purpose is a jump past its seq floor, when a
    # kill came between writing the floor and committing the record that needed it.
    for gap in gaps(set(delivered)):
        assert gap.start % SEQ_FLOOR_EVERY == 0 and len(gap) == SEQ_FLOOR_EVERY, (
            f"seqs {gap.start}..{gap.stop - 1} never arrived"
        )
    assert min(delivered) == 1 and len(delivered) > 200


# -- c) cap overflow --------------------------------------------------------------------


def test_a_full_outbox_drops_exactly_the_oldest_and_reports_the_count(
    broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent, tmp_path: Path
) -> None:
    broker.stop()  # the recorder's session waits in the broker's store
    cap = 64 * 1024  # the smallest allowed: ~270 records stored deflated (~240 bytes)
    # A record every 6 ms of real time: ~500 in 3 s, about twice what fits.
    changes = {
        "storage": {"outbox_max_bytes": cap},
        "sampling": {"sample_interval_s": 15, "publish_interval_s": 15},
    }
    agent = start_agent(broker.port, merged(FAST, changes))

    def made_twice_what_fits() -> bool:
        status = technician_status(tmp_path / "control.sock")
        outbox = {} if status is None else status["outbox"]
        return bool(outbox) and outbox["drops"] >= outbox["depth"] > 0

    # ~3 s on a quiet machine. Not a fixed 3 s: a busy one makes the records slower
    # (ticks missed in a stall are skipped), and in 3 s some runs dropped none at all.
    wait_until(made_twice_what_fits, 60, "about twice what fits made")
    assert agent.proc.poll() is None
    broker.start()
    settle(recorder)
    assert agent.stop() == 0
    assert validate_all(recorder) > 0

    seqs = stored_seqs(recorder)
    s0, last = min(seqs), max(seqs)
    # A fresh outbox starts at seq 1: the first s0 - 1 records are the ones dropped.
    assert seqs == set(range(s0, last + 1)), f"not only the oldest were dropped: {gaps(seqs)}"
    gap = s0 - 1
    assert gap >= 40
    telemetry = [r for r in records(snapshot(recorder)) if "channels" in r]
    latest = max(telemetry, key=lambda r: r["seq"])
    drop_events = {e["seq"]: e["records"] for e in events(recorder, "outbox_dropped")}
    reported = (latest["health"]["outbox_drops"], sum(drop_events.values()))
    assert reported == (gap, gap), (
        f"missing {gap}; health says {reported[0]}, {len(drop_events)} events say {reported[1]}"
    )


# -- d) full disk -----------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs for the storage dir, when we may mount one (root)."""
    with support_small_tmpfs(tmp_path / "small", "2m") as mnt:
        yield mnt


def fill(directory: Path) -> Path:
    """Fill the file system of `directory` with a ballast file, to the last byte."""
    ballast = directory / "ballast"
    with ballast.open("wb", buffering=0) as out:
        for chunk in (64 * 1024, 4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return ballast


def test_a_full_disk_keeps_live_data_flowing_and_reports_the_fault(
    small_tmpfs: Path, broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent
) -> None:
    agent = start_agent(broker.port, merged(FAST, {"storage": {"dir": str(small_tmpfs)}}))
    try:
        recorder.wait_for("telemetry", lambda p: p["records"][0]["seq"] >= 3)
        ballast = fill(small_tmpfs)

        def unstored(p: dict[str, Any]) -> bool:
            return p["records"][0].get("stored") is False

        record = recorder.wait_for("telemetry", unstored)["records"][0]
        raised = recorder.wait_for(
            "event", lambda p: p["type"] == "fault_raised" and p["fault"] == "storage"
        )
        assert raised["detail"] == "storage_full"
        # Still sampling and publishing: a later unstored record, reporting the fault.
        later = recorder.wait_for(
            "telemetry",
            lambda p: unstored(p) and p["records"][0]["uptime_s"] > record["uptime_s"],
        )["records"][0]
        assert "storage" in later["faults"] and later["health"]["storage_errors"] > 0
        state = recorder.wait_for(
            "state", lambda p: {"name": "storage", "detail": "storage_full"} in p["faults"]
        )
        assert state["bench"] == "sim-bench-01"
        assert agent.proc.poll() is None

        ballast.unlink()
        cleared = recorder.wait_for(
            "event", lambda p: p["type"] == "fault_cleared" and p["fault"] == "storage"
        )
        recorder.wait_for(
            "telemetry",
            lambda p: "seq" in p["records"][0] and p["records"][0]["seq"] > cleared["seq"],
        )
        assert agent.stop() == 0
    finally:
        agent.kill()
    assert validate_all(recorder) > 0
    everything = records(snapshot(recorder))
    unstored_records = [r for r in everything if "seq" not in r]
    assert unstored_records and all(r["stored"] is False for r in unstored_records)
    # No seq was spent on a refused write and none was lost: they simply continue.
    seqs = stored_seqs(recorder)
    assert seqs == set(range(1, max(seqs) + 1)), f"gaps: {gaps(seqs)}"


# -- e) corrupt outbox file -----------------------------------------------------------


def test_a_corrupt_outbox_at_start_is_kept_aside_and_a_fresh_one_used(
    tmp_path: Path, broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent
) -> None:
    first = start_agent(broker.port, FAST)
    recorder.wait_for("telemetry", lambda p: p["records"][0]["seq"] >= 3)
    assert first.stop() == 0
    wait_until(lambda: drained_up_to_live(recorder), 10, "the first run delivered")
    first_run = stored_seqs(recorder)
    db = tmp_path / "state" / "outbox.sqlite3"
    garbage = random.Random(3).randbytes(max(db.stat().st_size, 8192))
    db.write_bytes(garbage)
    restart = len(snapshot(recorder))

    second = start_agent(broker.port, FAST)
    raised = recorder.wait_for(
        "event", lambda p: p["type"] == "fault_raised" and p["fault"] == "storage"
    )
    assert raised["detail"] == "storage_corrupt_replaced"
    # (Not "every seq since the first": the second run's seqs start past a gap.)
    wait_until(lambda: newest_live(recorder, restart), 20, "the second run's telemetry")
    assert second.proc.poll() is None
    assert second.stop() == 0
    assert validate_all(recorder) > 0

    kept = tmp_path / "state" / "outbox.sqlite3.corrupt-1"
    assert kept.read_bytes() == garbage  # for forensics, untouched
    assert read_outbox(tmp_path / "state", tmp_path / "copy") is not None  # integrity ok
    # Each agent process is its own boot on the simulated bench.
    first_boots = {r["boot_id"] for r in records(snapshot(recorder)[:restart])}
    second_run = [r for r in records(snapshot(recorder)) if r["boot_id"] not in first_boots]
    # The lost file held the newest seq; the counter jumped past every seq issued.
    assert min(r["seq"] for r in second_run) > max(first_run)
    telemetry = [r for r in second_run if "channels" in r]
    assert "storage" in min(telemetry, key=lambda r: r["seq"])["faults"]


# -- f) a wall clock a year wrong -------------------------------------------------------

YEAR_S = 365 * 86400
CLOCK_SPEED = 1200
SYNC_AT_S = 6000  # simulated seconds after the start: 5 s of real time


def test_records_made_before_the_clock_synced_are_corrected_and_none_purged(
    tmp_path: Path, broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent
) -> None:
    scenario = tmp_path / "stale-clock.toml"
    scenario.write_text(
        '[[event]]\nat = 0\naction = "clock.jump"\n'
        f'by_s = -{YEAR_S}\nnote = "the Pi boots with last year\'s time"\n'
        f'[[event]]\nat = {SYNC_AT_S}\naction = "clock.sync"\n'
    )
    true_start = datetime.fromisoformat("2026-06-10T08:00:00+07:00")
    agent = start_agent(
        broker.port,
        merged(
            FAST,
            {
                "sim": {
                    "speed": CLOCK_SPEED,
                    "start": true_start.isoformat(),
                    "clock_synced_at_start": False,
                    "scenario": str(scenario),
                },
                # Boot-relative: the outage (~2 h simulated) is far below a day. A purge
                # by wall clock would see the records as a year old at the sync.
                "storage": {"outbox_max_age_s": 86400},
            },
        ),
    )
    recorder.wait_for(
        "telemetry", lambda p: p["records"][0]["seq"] >= 5 and not p["records"][0].get("historical")
    )
    broker.stop()  # records now wait in the outbox until after the sync
    assert not events(recorder, "clock_synced"), "the sync came before the broker went"
    wait_until(lambda: "clock synced" in agent.log, 20, "the clock to sync")
    restart = len(snapshot(recorder))
    broker.start()
    settle(recorder, restart)
    assert agent.stop() == 0
    assert validate_all(recorder) > 0

    everything = records(snapshot(recorder))
    seqs = stored_seqs(recorder)
    assert seqs == set(range(1, max(seqs) + 1)), f"records purged: {gaps(seqs)}"
    assert not events(recorder, "outbox_dropped")
    latest = max((r for r in everything if "channels" in r), key=lambda r: r["seq"])
    assert latest["health"]["outbox_drops"] == 0

    [synced_event] = events(recorder, "clock_synced")
    corrected = {r["seq"]: r for r in everything if r["time_quality"] == "corrected"}
    assert synced_event["corrected_records"] == len(corrected) >= 10
    assert all(seq < synced_event["seq"] for seq in corrected)
    assert all(r.get("historical") for r in corrected.values())

    # Corrected from uptime: every corrected record has wall time minus uptime the same
    # (to the 0.1 s uptime is rounded to), and that of the records taken after the sync,
    # give or take how long making a record takes (~ms of real time, x1200 here).
    def offset_s(record: dict[str, Any]) -> float:
        return float(datetime.fromisoformat(record["ts"]).timestamp() - record["uptime_s"])

    offsets = sorted(offset_s(r) for r in corrected.values())
    assert offsets[-1] - offsets[0] < 0.11  # uptime to 0.1 s, ts to the millisecond
    synced = sorted(
        offset_s(r) for r in everything if r["time_quality"] == "synced" and "channels" in r
    )
    assert abs(offsets[0] - synced[len(synced) // 2]) < 0.1 * CLOCK_SPEED
    assert all(r["ts"].startswith(str(true_start.year)) for r in corrected.values())

    before_outage = records(snapshot(recorder)[:restart])
    live_unsynced = [
        r
        for r in before_outage
        if "channels" in r and r["time_quality"] == "unsynced" and not r.get("historical")
    ]
    assert len(live_unsynced) >= 3
    assert all(r["ts"].startswith(str(true_start.year - 1)) for r in live_unsynced)
    # Everything from the first corrected record up to the sync waited and was
    # corrected (before it: records the broker had acknowledged before it went).
    assert set(corrected) == set(range(min(corrected), synced_event["seq"]))
    after = records(snapshot(recorder)[restart:])
    assert all(r["time_quality"] != "unsynced" for r in after if r.get("historical"))


@pytest.mark.parametrize("contract", [1, 2])
def test_a_broker_refusing_publishes_raises_a_fault_and_the_cap_holds(
    tmp_path: Path, start_agent: StartAgent, contract: int
) -> None:
    # Before: records refused with PUBACK 0x87 stayed "in flight" until the connection
    # dropped, the cap spared them, and the outbox grew to 3x its cap in 45 s, with a
    # warning per record and no fault.
    # v1: telemetry refused (events still go); v2: every record is in a refused batch,
    # so the fault is seen in the retained state, which the broker still takes.
    records_leaf = "telemetry" if contract == 1 else "v2"
    acl = tmp_path / "acl"
    acl.write_text(
        "topic read #\n"
        "topic write smartbench/+/status\ntopic write smartbench/+/state\n"
        "topic write smartbench/+/cmd/reply\n"
        + ("topic write smartbench/+/event\n" if contract == 1 else "")
    )
    broker = Broker(tmp_path)
    broker.conf.write_text(broker.conf.read_text() + f"acl_file {acl}\nuser root\n")
    broker.start()
    recorder = Recorder(broker.port)
    cap = 64 * 1024
    changes = {"storage": {"outbox_max_bytes": cap}, "mqtt": {"contract": contract}}
    agent = start_agent(broker.port, merged(FAST, changes))
    socket_path = tmp_path / "control.sock"

    def outbox() -> dict[str, Any]:
        status = technician_status(socket_path)
        return {} if status is None else dict(status["outbox"])

    try:
        if contract == 1:
            fault = recorder.wait_for(
                "event", lambda p: p["type"] == "fault_raised" and p["fault"] == "broker_refused"
            )
            detail = fault["detail"]
        else:
            state = recorder.wait_for(
                "state", lambda p: "broker_refused" in {f["name"] for f in p["faults"]}
            )
            detail = {f["name"]: f["detail"] for f in state["faults"]}["broker_refused"]
        assert "Not authorized" in detail and "0x87" in detail
        wait_until(lambda: outbox().get("drops", 0) > 40, 60, "the cap dropping the oldest")
        # Full, and it stays full: every new record drops an old one.
        before = outbox()
        wait_until(lambda: outbox()["drops"] > before["drops"] + 40, 60, "more drops")
        # Full by bytes (the cap's unit), the one probe in flight spared. Not by count:
        # records differ in size, and small events (outbox_dropped, on v2 every event)
        # wait among the telemetry, so the count moved by more than 5 under load.
        assert outbox()["bytes"] <= cap + 4096
        assert agent.log.count("refuses publishes") <= 2  # at most one line a minute
        assert not recorder.on("telemetry")
        # The broker is fixed: delivery resumes and the fault clears.
        acl.write_text(acl.read_text() + f"topic write smartbench/+/{records_leaf}\n")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto reads its ACL again
        recorder.wait_for("telemetry", timeout_s=60)
        recorder.wait_for(
            "event", lambda p: p["type"] == "fault_cleared" and p["fault"] == "broker_refused", 60
        )
        assert agent.stop() == 0
    finally:
        agent.kill()
        recorder.close()
        broker.stop()


@pytest.mark.parametrize("contract", [1, 2])
def test_backlog_batches_fit_the_packet_size_the_broker_announces(
    broker: DurableBroker, recorder: DurableRecorder, start_agent: StartAgent, contract: int
) -> None:
    # A broker whose packets are smaller than the configured batch: before, the
    # first backlog message was a protocol error, a disconnect, and the same batch
    # again after the reconnect, for ever.
    limit = 8192
    broker.stop()
    broker.conf.write_text(broker.conf.read_text() + f"max_packet_size {limit}\n")
    changes = {"storage": {"max_payload_bytes": 65536}, "mqtt": {"contract": contract}}
    agent = start_agent(broker.port, merged(FAST, changes))
    time.sleep(3.0)  # a backlog of ~100 records, ~160 kB (v1)
    broker.start()
    settle(recorder)
    assert agent.stop() == 0
    seqs = stored_seqs(recorder)
    assert seqs == set(range(1, max(seqs) + 1)), f"gaps: {gaps(seqs)}"
    batches = [m for m in snapshot(recorder) if m.topic.endswith("/telemetry")]
    assert max(len(m.json()["records"]) for m in batches) > 1  # still batched
    wire = [m if m.wire is None else m.wire for m in batches]
    assert all(len(m.payload) <= limit for m in wire)
    assert "disconnected (connection lost)" not in agent.log, agent.log
