"""A telemetry record's body as a snapshot; its payload is the contract's record body."""

from __future__ import annotations

import json

from bench_agent.link.health import Health
from bench_agent.link.telemetry import TelemetryRecord
from bench_agent.power.snapshot import BatteryState


def record(**counters: object) -> TelemetryRecord:
    triple = [13.1, 13.2, 13.3]
    return TelemetryRecord(
        interval_s=300.0,
        channels={
            "battery": {"v": triple, "a": triple, "w": triple, "wh": 1.5, "n": 30, "fault": None}
        },
        outputs={"usb1": True, "wifi": None},
        battery=BatteryState(soc_pct=80.0, source="coulomb", confidence=0.9),
        tamper_open=False,
        cpu_temp_c=None,
        charger=None,
        faults=("sensor.solar",),
        health=Health(0, 1, 0, 3, 0, 600.0, None),
        counters={"today": {"day": "2026-12-05"}, **counters},
    )


def test_the_payload_is_the_record_body_in_wire_order_with_snapshots_made_json() -> None:
    body = record().payload()
    assert list(body) == [
        "interval_s",
        "channels",
        "outputs",
        "battery",
        "tamper_open",
        "cpu_temp_c",
        "charger",
        "faults",
        "health",
        "today",
    ]
    assert body["battery"] == {"soc_pct": 80.0, "source": "coulomb", "confidence": 0.9}
    assert body["health"]["outbox_depth"] == 3 and body["faults"] == ["sensor.solar"]
    json.dumps(body)  # nothing but JSON left in it


def test_yesterday_rides_along_once_when_the_counters_give_it() -> None:
    body = record(yesterday={"day": "2026-12-04"}).payload()
    assert body["yesterday"] == {"day": "2026-12-04"} and list(body)[-1] == "yesterday"
