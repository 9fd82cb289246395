"""`bench-ops fleet`'s rows, pure: messages in, rows out (bench_agent/ops/fleet.py), and
their rendering (fleet_view.py). The real-process tests are in test_fleet_cli.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from bench_agent.ops.fleet import Fleet
from bench_agent.ops.fleet_view import WIDTH, render_json, render_table

P, V1 = "smartbench", "smartbench-v1"


def status(bench: str, *, online: bool = True, **extra: Any) -> bytes:
    body = {"v": 1, "bench": bench, "online": online, "ts": "2026-12-05T04:00:00.000Z"}
    body.update(boot_id="b", agent_version="0.1.0", config_hash="0123456789ab")
    body.update(extra)
    return json.dumps(body).encode()


def state(
    bench: str, soc: float | None = 80.0, faults: tuple[str, ...] = (), **extra: Any
) -> bytes:
    body = {
        "v": 1,
        "bench": bench,
        "ts": "2026-12-05T04:00:00.000Z",
        "outputs": {
            "usb1": {"on": True, "reason": "schedule_on", "detail": "", "override": None},
            "wifi": {"on": False, "reason": "battery_low", "detail": "", "override": None},
        },
        "latched_faults": [],
        "battery": {"soc_pct": soc, "source": "coulomb", "confidence": 0.9},
        "battery_protection": {"wifi_shed": True, "usb_shed": False, "over_temperature": False},
        "tamper_open": False,
        "faults": [{"name": f, "detail": "x"} for f in faults],
        **extra,
    }
    return json.dumps(body).encode()


def telemetry(bench: str, soc: float | None = 50.0, historical: bool = False) -> bytes:
    record: dict[str, Any] = {
        "seq": 7,
        "battery": {"soc_pct": soc, "source": "bmv", "confidence": 1.0},
        "health": {"outbox_depth": 3},
        "today": {"solar_wh": 120.5, "sessions": {"usb1": 2, "usb2": 1}},
    }
    if historical:
        record["historical"] = True
    return json.dumps({"v": 1, "bench": bench, "records": [record]}).encode()


def by_bench(fleet: Fleet, now: float) -> dict[str, dict[str, Any]]:
    return {str(row["bench"]): row for row in fleet.rows(now)}


def test_a_bench_from_its_retained_messages_and_newest_record() -> None:
    fleet = Fleet(P, V1, batch_s=300, started_at=0)
    assert fleet.feed(f"{P}/b1/status", status("b1"), 0)
    assert fleet.feed(f"{P}/b1/state", state("b1"), 0)
    row = by_bench(fleet, 1)["b1"]
    assert row["online"] is True and row["problem"] == "ok"
    assert row["agent_version"] == "0.1.0" and row["config_hash"] == "0123456789ab"
    assert (row["soc_pct"], row["soc_source"]) == (80.0, "coulomb")  # state's, no record yet
    assert row["outputs_on"] == ["usb1"] and row["outputs_off"] == {"wifi": "battery_low"}
    assert row["record_age_s"] is None and row["solar_wh_today"] is None
    assert fleet.feed(f"{V1}/b1/telemetry", telemetry("b1", soc=55), 10)
    row = by_bench(fleet, 12)["b1"]
    assert (row["soc_pct"], row["soc_source"]) == (55.0, "bmv")  # the record is fresher
    assert row["record_age_s"] == 2.0
    assert (row["solar_wh_today"], row["usb_sessions_today"], row["outbox_depth"]) == (120.5, 3, 3)
    # A late record from the backlog is old news: neither its age nor its figures count.
    assert fleet.feed(f"{V1}/b1/telemetry", telemetry("b1", soc=10, historical=True), 20)
    assert by_bench(fleet, 20)["b1"]["soc_pct"] == 55.0
    assert by_bench(fleet, 20)["b1"]["record_age_s"] == 10.0
    # A contract-1 bench sends its own telemetry under the benches' prefix; events count too.
    assert fleet.feed(f"{P}/b1/telemetry", telemetry("b1", soc=60), 30)
    assert fleet.feed(f"{V1}/b1/event", b'{"v":1,"bench":"b1","seq":9,"type":"tamper"}', 40)
    row = by_bench(fleet, 41)["b1"]
    assert row["soc_pct"] == 60.0 and row["record_age_s"] == 1.0


def test_stale_offline_and_the_worst_first() -> None:
    fleet = Fleet(P, V1, batch_s=10, started_at=0)
    for bench in ("ok-low", "ok-high", "ok-unknown", "faulty", "stale", "off", "never"):
        fleet.feed(f"{P}/{bench}/status", status(bench, online=bench != "off"), 0)
    fleet.feed(f"{P}/ok-low/state", state("ok-low", soc=20), 0)
    fleet.feed(f"{P}/ok-high/state", state("ok-high", soc=90), 0)
    fleet.feed(f"{P}/ok-unknown/state", state("ok-unknown", soc=None), 0)
    fleet.feed(f"{P}/faulty/state", state("faulty", soc=5, faults=("sensor.usb2", "storage")), 0)
    fleet.feed(f"{P}/stale/state", state("stale", soc=1), 0)
    for bench in ("faulty", "off"):
        fleet.feed(f"{V1}/{bench}/telemetry", telemetry(bench, soc=50), 25)
    fleet.feed(f"{V1}/ok-unknown/telemetry", telemetry("ok-unknown", soc=None), 25)
    fleet.feed(f"{V1}/ok-low/telemetry", telemetry("ok-low", soc=20), 25)
    fleet.feed(f"{V1}/ok-high/telemetry", telemetry("ok-high", soc=90), 25)
    fleet.feed(f"{V1}/stale/telemetry", telemetry("stale", soc=1), 4)  # then nothing
    rows = fleet.rows(30)
    assert [r["bench"] for r in rows] == [
        "off", "never", "stale", "faulty", "ok-unknown", "ok-low", "ok-high",
    ]  # fmt: skip
    assert [r["problem"] for r in rows] == [
        "offline", "stale", "stale", "faults", "ok", "ok", "ok",
    ]  # fmt: skip
    rows_by = {r["bench"]: r for r in rows}
    assert rows_by["stale"]["record_age_s"] == 26.0 and rows_by["stale"]["stale"] is True
    assert rows_by["never"]["record_age_s"] is None and rows_by["never"]["quiet_s"] == 30.0
    assert rows_by["off"]["stale"] is False  # offline says more than stale
    assert rows_by["faulty"]["faults"] == ["sensor.usb2", "storage"]
    assert rows_by["faulty"]["fault_count"] == 2
    # Within two batch intervals of the watch's start, a bench not heard from yet is not stale.
    assert by_bench(fleet, 15)["never"]["stale"] is False


def test_offline_since_when_and_a_cleared_status() -> None:
    fleet = Fleet(P, V1, batch_s=300, started_at=0)
    fleet.feed(f"{P}/b1/status", status("b1", online=False, reason="shutdown"), 0)
    fleet.feed(f"{P}/b2/status", status("b2", online=False, reason="connection_lost"), 0)
    rows = by_bench(fleet, 1)
    assert rows["b1"]["since"] == "2026-12-05T04:00:00.000Z"
    assert rows["b2"]["since"] is None  # a Last Will's ts is the session's start, not its end
    assert rows["b2"]["reason"] == "connection_lost"
    assert fleet.feed(f"{P}/b1/status", b"", 1)  # an empty retained payload clears it
    assert "b1" not in by_bench(fleet, 1)


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (f"{P}/b1/status", b"not json"),
        (f"{P}/b1/status", b"\xff\xfe"),
        (f"{P}/b1/status", b"null"),
        (f"{P}/b1/status", b"[1, 2]"),
        (f"{P}/b1/status", b'{"bench": "b1", "online": "yes"}'),
        (f"{P}/b1/status", b'{"bench": "b2", "online": true}'),  # another bench's
        (f"{P}/b1/state", b'{"online": true}'),  # no bench
        (f"{P}/b1/state", b"[" * 100_000),  # nested too deep for the parser
        (f"{P}/b1/state", b'{"bench": "b1", "x": NaN'),
        (f"{V1}/b1/telemetry", b'{"bench": "b1", "records": 5}'),
        (f"{V1}/b1/event", b'{"bench": "b1"}'),
        (f"{P}/B 1/status", status("B 1")),  # not a bench id
        (f"{P}/b1/cmd", b'{"bench": "b1"}'),  # not a topic it reads
        ("other/b1/status", status("b1")),
        ("status", status("b1")),
        (f"{V1}/b1/status", status("b1")),  # the bridge's mirror: read from the source
    ],
)
def test_garbage_is_skipped_never_a_crash(topic: str, payload: bytes) -> None:
    fleet = Fleet(P, V1, batch_s=300, started_at=0)
    assert fleet.feed(topic, payload, 0) is False
    assert fleet.skipped == 1 and fleet.rows(1) == []


def test_fields_of_the_wrong_type_give_an_empty_cell_not_a_crash() -> None:
    fleet = Fleet(P, V1, batch_s=300, started_at=0)
    fleet.feed(f"{P}/b1/status", status("b1", agent_version=3, config_hash=None), 0)
    weird = {"outputs": "x", "faults": 5, "battery": [], "tamper_open": "no", "latched_faults": 1}
    assert fleet.feed(f"{P}/b1/state", json.dumps({"bench": "b1", **weird}).encode(), 0)
    record = {"battery": {"soc_pct": "high"}, "today": {"sessions": [], "solar_wh": "x"}}
    assert fleet.feed(
        f"{V1}/b1/telemetry", json.dumps({"bench": "b1", "records": [record, 4]}).encode(), 0
    )
    row = by_bench(fleet, 1)["b1"]
    assert row["soc_pct"] is None and row["faults"] == [] and row["outputs_on"] == []
    assert row["agent_version"] is None and row["solar_wh_today"] is None
    assert row["usb_sessions_today"] is None and row["tamper_open"] is None
    render_table(fleet.rows(1), datetime.now(UTC))
    json.loads(render_json(fleet.rows(1)))


def test_the_table_fits_80_columns_and_says_what_is_wrong() -> None:
    fleet = Fleet(P, V1, batch_s=10, started_at=0)
    long = "a-very-long-bench-name-indeed-" + "x" * 30
    fleet.feed(f"{P}/{long}/status", status(long, agent_version="10.20.30-rc1+build.5"), 0)
    fleet.feed(f"{P}/{long}/state", state(long, faults=("sensor.usb2",) * 9, tamper_open=True), 0)
    fleet.feed(f"{P}/gone/status", status("gone", online=False, reason="shutdown"), 0)
    wall = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
    table = render_table(fleet.rows(100), wall)
    lines = table.splitlines()
    assert all(len(line) <= WIDTH for line in lines), table
    assert lines[0].startswith("2 benches: 1 offline, 1 stale, 0 with faults")
    assert lines[2].startswith("gone ") and "OFF 2h" in lines[2]
    assert "offline: shutdown" in lines[3]
    assert lines[4].startswith("a-very-long-b~ STALE")
    assert "no record for 1m" in lines[5] and "off: wifi battery_low" in lines[5]
    assert json.loads(render_json(fleet.rows(100)))[0]["bench"] == "gone"
