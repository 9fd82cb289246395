"""bench-ops report's figures from known inputs (bench_agent/ops/report_data.py), on the
real records of bench/data (a simulated bench's day, as ops received it) and on small
hand-made ones."""

from __future__ import annotations

import dataclasses
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench_agent.ops.report_data import Observation, Period, fleet_figures
from bench_agent.ops.report_input import Skipped, from_message, read_jsonl
from tests.support import REPO

JAKARTA = ZoneInfo("Asia/Jakarta")
DAY_A = REPO / "bench" / "data" / "records-day-a.jsonl.gz"
DAY_B = REPO / "bench" / "data" / "records-day-b.jsonl.gz"
NOW = datetime(2026, 12, 5, tzinfo=UTC)


def period(first: str, days: int = 2) -> Period:
    start = datetime.fromisoformat(first).replace(tzinfo=JAKARTA)
    return Period(start.astimezone(UTC), (start + timedelta(days=days)).astimezone(UTC), JAKARTA)


def lines(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as text:
        return [json.loads(line) for line in text]


def day_a() -> list[Observation]:
    return list(read_jsonl(DAY_A, Skipped()))


def test_energy_per_day_is_the_sum_of_the_records_wh() -> None:
    raw = lines(DAY_A)
    fleet = fleet_figures(day_a(), period("2026-11-27"), NOW)
    (bench,) = fleet.benches
    assert bench.bench == "sim-bench-01"
    for day in bench.days:
        mine = [
            r
            for r in raw
            if r["kind"] == "telemetry"
            and datetime.fromisoformat(r["ts"]).astimezone(JAKARTA).date() == day.day
        ]
        assert day.records == len(mine)
        assert day.harvested_wh == pytest.approx(sum(r["channels"]["solar"]["wh"] for r in mine))
        for load in ("usb1", "usb2", "wifi"):
            assert day.delivered_wh[load] == pytest.approx(
                sum(r["channels"][load]["wh"] for r in mine)
            )
        assert "battery" not in day.delivered_wh and "solar" not in day.delivered_wh
        socs = [r["battery"]["soc_pct"] for r in mine]
        assert (day.soc_min, day.soc_max) == (min(socs), max(socs))
    first = bench.days[0]
    assert first.harvested_wh > 400  # a sunny day in the capture
    # The bench's own count of the day agrees with the records' sum (none were lost).
    assert first.counters is not None and first.counters.final
    assert first.counters.solar_wh == pytest.approx(first.harvested_wh, abs=0.05)
    assert fleet.harvested_wh[first.day] == pytest.approx(first.harvested_wh)
    assert bench.sessions == 9 and bench.hotspot_h == pytest.approx(14.16)


def test_hours_off_carry_the_reason_of_the_switch() -> None:
    (bench,) = fleet_figures(day_a(), period("2026-11-27"), NOW).benches
    assert set(bench.off_hours["usb2"]) == {"overcurrent_latched", "overcurrent_trip"}
    assert set(bench.off_hours["wifi"]) == {"battery_low"}
    records = [r for r in lines(DAY_A) if r["kind"] == "telemetry"]
    for output in ("usb1", "usb2", "wifi"):
        off = sum(r["interval_s"] for r in records if r["outputs"][output] is False) / 3600
        on = sum(r["interval_s"] for r in records if r["outputs"][output] is True) / 3600
        assert sum(bench.off_hours[output].values()) == pytest.approx(off)
        assert bench.on_hours[output] == pytest.approx(on)


def test_a_bench_with_no_data_still_has_its_section() -> None:
    fleet = fleet_figures(day_a(), period("2026-11-27"), NOW, benches=["sim-bench-01", "b-9"])
    empty = next(b for b in fleet.benches if b.bench == "b-9")
    assert (empty.records, empty.events, empty.completeness, empty.uptime) == (0, 0, 0.0, None)
    assert empty.harvested_wh == 0 and empty.sessions is None and empty.soc_min is None
    assert [d.completeness for d in empty.days] == [0.0, 0.0]
    # Nothing at all: a fleet with no bench.
    assert fleet_figures([], period("2026-11-27"), NOW).benches == ()


def test_a_period_with_gaps_shows_lower_completeness_and_lost_records() -> None:
    whole = day_a()
    # Six hours of records lost on the way (local 10:00-16:00 on the 27th).
    cut_from = datetime(2026, 11, 27, 10, tzinfo=JAKARTA)
    cut_to = cut_from + timedelta(hours=6)
    holed = [o for o in whole if not (cut_from <= o.when < cut_to)]
    p = period("2026-11-27", days=1)
    (full,) = fleet_figures(whole, p, NOW).benches
    (gap,) = fleet_figures(holed, p, NOW).benches
    removed = len(whole) - len(holed)
    assert removed > 300 and gap.lost == full.lost + removed
    assert full.completeness - gap.completeness == pytest.approx(6 / 24, abs=0.01)
    assert gap.days[0].completeness == pytest.approx(gap.completeness)
    # The bench recorded them (their seqs are missing): it was up all the same (a gap
    # with missing seqs counts as up, even a quiet stretch it may have held).
    assert gap.uptime is not None and full.uptime is not None
    assert gap.uptime >= full.uptime - 0.001
    assert gap.harvested_wh < full.harvested_wh
    # Its own counters were counted on the bench: whole despite the gap.
    assert gap.days[0].counters == full.days[0].counters


def test_a_stretch_with_no_record_and_no_missing_seq_is_down_time() -> None:
    start = datetime(2026, 11, 27, tzinfo=JAKARTA)
    records = [telemetry(start + timedelta(minutes=m), seq=i + 1) for i, m in enumerate(
        [*range(1, 61), *range(180, 240)]  # an hour, two hours of nothing, an hour
    )]  # fmt: skip
    p = Period(start.astimezone(UTC), (start + timedelta(hours=4)).astimezone(UTC), JAKARTA)
    (bench,) = fleet_figures(records, p, NOW).benches
    assert bench.uptime == pytest.approx(0.5) and bench.completeness == pytest.approx(0.5)
    assert bench.lost == 0
    # The same with the seqs of the gap missing: up, records lost on the way.
    renumbered = [
        dataclasses.replace(o, record={**o.record, "seq": 200 + i}) if i >= 60 else o
        for i, o in enumerate(records)
    ]
    (bench,) = fleet_figures(renumbered, p, NOW).benches
    # Up from the first record to the last (the period's last minute has none).
    assert bench.uptime == pytest.approx(239 / 240) and bench.completeness == pytest.approx(0.5)
    assert bench.lost == 259 - 61 + 1  # seqs 61..259 never came


def test_duplicates_count_once_and_the_future_is_not_missing() -> None:
    start = datetime(2026, 11, 27, tzinfo=JAKARTA)
    records = [telemetry(start + timedelta(minutes=m), seq=m) for m in range(1, 61)]
    p = Period(start.astimezone(UTC), (start + timedelta(days=1)).astimezone(UTC), JAKARTA)
    now = start + timedelta(hours=1)
    (bench,) = fleet_figures(records + records[:30], p, now).benches
    assert bench.records == 60 and bench.harvested_wh == pytest.approx(60 * 1.5)
    assert bench.completeness == pytest.approx(1.0) and bench.uptime == pytest.approx(1.0)


def test_v1_messages_as_the_bench_sends_them() -> None:
    skipped = Skipped()
    when = datetime(2026, 11, 27, 3, tzinfo=UTC)
    message = {"v": 1, "bench": "b1", "records": [telemetry(when, 1).record, {"ts": "x"}]}
    event = {"v": 1, "bench": "b1", "seq": 2, "ts": "2026-11-27T03:00:01.000Z",
             "type": "tamper", "open": True}  # fmt: skip
    found = [*from_message(message, skipped), *from_message(event, skipped)]
    assert [(o.bench, o.kind) for o in found] == [("b1", "telemetry"), ("b1", "event")]
    assert skipped.count == 1  # the record without a readable ts
    for garbage in (None, [], {"v": 1}, {"records": []}, "text"):
        assert list(from_message(garbage, skipped)) == []
    assert skipped.count == 6


def test_two_benches_make_a_fleet() -> None:
    b = [dataclasses.replace(o, bench="sim-bench-02") for o in read_jsonl(DAY_B, Skipped())]
    fleet = fleet_figures(day_a() + b, period("2026-11-27"), NOW)
    assert [x.bench for x in fleet.benches] == ["sim-bench-01", "sim-bench-02"]
    day = fleet.days[0]
    assert fleet.harvested_wh[day] == pytest.approx(
        sum(x.days[0].harvested_wh for x in fleet.benches)
    )


def telemetry(when: datetime, seq: int) -> Observation:
    record = {
        "seq": seq,
        "seq_epoch": "e1",
        "ts": when.astimezone(UTC).isoformat(),
        "time_quality": "synced",
        "boot_id": "boot",
        "interval_s": 60.0,
        "channels": {"solar": {"wh": 1.5}, "usb1": {"wh": 0.25}, "battery": {"wh": 9.0}},
        "outputs": {"usb1": True},
        "battery": {"soc_pct": 50.0},
    }
    return Observation("b1", "telemetry", record, when.astimezone(UTC))
