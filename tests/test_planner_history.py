"""`bench-ops plan --history`: the model checked against a bench's history, and
calibrated to it. The histories are made by the planner's own simulation at known
scale factors (tests/planner_history_support.py), so calibration must find them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench_agent.config_loader import load_config
from bench_agent.ops.archive_db import open_store
from bench_agent.ops.archive_store import Row
from bench_agent.ops.planner.calibrate import scaled_bench, scaled_climate
from bench_agent.ops.planner.climate import DEFAULT_CLIMATE, load_climate
from bench_agent.ops.planner.history import read_history
from bench_agent.ops.planner.model import DEFAULT_USAGE, load_usage, plan_bench
from bench_agent.ops.planner.run import simulate
from bench_agent.ops.planner.workers import map_jobs
from tests.planner_history_support import history_messages, write_history

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "bench-agent.toml"
BENCH = "tgk-alun-alun-01"  # the config's id
BENCH_OPS = Path(sys.executable).with_name("bench-ops")
DAYS = (date(2027, 8, 1), date(2027, 8, 15))  # two weeks of the dry season
TRUE_CLEARNESS, TRUE_USB, TRUE_WIFI = 0.8, 1.5, 1.25


def _simulated(seed: int):
    bench = plan_bench(load_config(CONFIG), load_usage(DEFAULT_USAGE))
    climate = scaled_climate(load_climate(DEFAULT_CLIMATE), {8: TRUE_CLEARNESS})
    truth = scaled_bench(bench, {"usb": TRUE_USB, "wifi": TRUE_WIFI})
    return simulate(truth, climate, seed, *DAYS)


def _simulate_job(seed: int):
    return _simulated(seed)


@pytest.fixture(scope="module")
def records() -> dict[int, list]:
    """The same fortnight under seeds 1 (the plan's own) and 7 (other weather)."""
    return dict(zip((1, 7), map_jobs(_simulate_job, [1, 7]), strict=True))


def _plan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BENCH_OPS), "plan", "-c", str(CONFIG), "--months", "8", "--seeds", "1", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _factors(report: dict) -> tuple[float, float, float, dict]:
    cal = report["history"]["calibrated"]
    (aug,) = cal["clearness"]
    assert aug["month"] == "aug"
    return aug["factor"], cal["demand"]["usb"]["factor"], cal["demand"]["wifi"]["factor"], cal


def test_calibration_recovers_the_clearness_and_demand_a_history_was_made_with(
    records: dict[int, list], tmp_path: Path
) -> None:
    history = write_history(tmp_path / "h.jsonl", history_messages(BENCH, records[1]))
    out = tmp_path / "plan.html"
    done = _plan("--history", str(history), "--calibrate", "--json", "--out", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    clearness, usb, wifi, cal = _factors(report)
    # Same seed, same weather: only the search's tolerance is left.
    assert clearness == pytest.approx(TRUE_CLEARNESS, rel=0.03)
    assert usb == pytest.approx(TRUE_USB, rel=0.05)
    assert wifi == pytest.approx(TRUE_WIFI, rel=0.01)
    before, shipped = cal["clearness"][0]["clear_sky_index"]
    assert shipped == pytest.approx(before * TRUE_CLEARNESS, rel=0.03)
    assert cal["demand"]["wifi"]["watts"] == [6.0, 7.5]
    h = report["history"]
    assert (h["days_used"], h["days_with_records"]) == (14, 14)
    # Before: the shipped model sees too much sun and too little demand; after: a match.
    (month,) = h["check"]["months"]
    assert month["delivered_wh_per_day"]["wifi"]["model_over_bench"] < 0.9
    after = cal["check"]["months"][0]["solar_wh_per_day"]["model_over_bench"]
    assert after == pytest.approx(1.0, abs=0.02)
    # The plan itself ran on the calibrated inputs: the check table is in the page.
    html = out.read_text(encoding="utf-8")
    assert "Model vs this bench" in html and "After calibration" in html
    assert "clearness aug ×" in html and "14 full days used of 14" in html


def test_other_weather_gives_the_factors_within_the_spread_of_a_fortnight(
    records: dict[int, list], tmp_path: Path
) -> None:
    history = write_history(tmp_path / "h.jsonl", history_messages(BENCH, records[7]))
    done = _plan("--history", str(history), "--calibrate", "--json")
    assert done.returncode == 0, done.stderr
    clearness, usb, wifi, _ = _factors(json.loads(done.stdout))
    assert clearness == pytest.approx(TRUE_CLEARNESS, rel=0.1)
    assert usb == pytest.approx(TRUE_USB, rel=0.15)
    assert wifi == pytest.approx(TRUE_WIFI, rel=0.01)


def test_a_history_with_gaps_counts_only_full_days_and_reads_the_archive(
    records: dict[int, list], tmp_path: Path
) -> None:
    """Two days lose records (one hour; ten hours): they are left out and counted.
    The same history from the archive gives the same check as from the file."""
    messages = list(history_messages(BENCH, records[1]))
    holed = [
        m for m in messages
        if not any(r["ts"].startswith(("2027-08-03T05", "2027-08-09T0"))
                   for r in m.get("records", []))
    ]  # fmt: skip
    assert len(holed) < len(messages)
    file = write_history(tmp_path / "h.jsonl", iter(holed))
    db = tmp_path / "archive.sqlite"
    with open_store(db) as store:
        rows = []
        for m in holed:
            for r in m.get("records", [m]):
                body = {k: v for k, v in r.items() if k not in ("v", "bench")}
                kind = "telemetry" if "records" in m else "event"
                rows.append(Row.of(BENCH, kind, body if kind == "telemetry" else m))
        store.insert([r for r in rows if r is not None], "2027-09-01T00:00:00.000Z")
    cfg = load_config(CONFIG)
    read = [
        read_history([source], BENCH, ("usb1", "usb2"), ZoneInfo(cfg.bench.timezone))
        for source in (str(file), str(db))
    ]
    assert read[0].days == read[1].days
    assert (len(read[0].days), read[0].days_with_records) == (12, 14)
    assert {date(2027, 8, 3), date(2027, 8, 9)}.isdisjoint(d.day for d in read[0].days)
    # The figures are the report's: a full day's solar Wh is the day's simulated one.
    (day,) = [d for d in read[1].days if d.day == date(2027, 8, 5)]
    (sim,) = [r for r in records[1] if r.day == date(2027, 8, 5)]
    assert day.solar_wh == pytest.approx(sim.harvested_wh / 0.97)
    assert day.delivered_wh["wifi"] == pytest.approx(sim.delivered_wh["wifi"])
    assert day.delivered_wh["usb"] == pytest.approx(sim.delivered_wh["usb"])


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "no such file"),
        ("garbage", "no records of bench 'tgk-alun-alun-01'"),
        ("other-bench", "no records of bench 'tgk-alun-alun-01' (benches in it: sim-bench-01)"),
        ("no-full-day", "no full day of records (1 days with some)"),
        ("bad-id", "'Not A Bench' is not a bench id"),
        ("not-an-archive", "unreadable archive"),
        ("calibrate-alone", "--calibrate: needs --history"),
    ],
)
def test_bad_history_is_one_line_and_exit_78(case: str, expect: str, tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    args = ["--history", str(path)]
    if case == "garbage":
        path.write_bytes(b"\x00not json\n{]\n")
    elif case == "other-bench":
        capture = ROOT / "bench" / "data" / "records-day-a.jsonl.gz"
        args = ["--history", str(capture)]
    elif case == "no-full-day":
        record = {
            "seq": 1, "seq_epoch": "e", "ts": "2027-08-01T03:00:00.000Z",
            "time_quality": "synced", "interval_s": 3600.0, "channels": {"solar": {"wh": 1}},
        }  # fmt: skip
        path.write_text(json.dumps({"v": 1, "bench": BENCH, "records": [record]}) + "\n")
    elif case == "bad-id":
        path.write_text("")
        args += ["--bench", "Not A Bench"]
    elif case == "not-an-archive":
        path = tmp_path / "broken.sqlite"
        sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
        args = ["--history", str(path)]
    elif case == "calibrate-alone":
        args = ["--calibrate"]
    done = _plan(*args)
    assert done.returncode == 78, (done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and expect in lines[0], lines
