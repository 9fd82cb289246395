"""The counter keeper: the daily counters fed from the main loop, saved, reported once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench_agent.model import PowerReading
from bench_agent.power.counter_keeper import SAVE_EVERY_S, CounterKeeper
from bench_agent.power.counters import CountersConfig

TZ = ZoneInfo("Asia/Jakarta")
CFG = CountersConfig(panel_channel="solar", ports=("usb1",), hotspot_output="wifi")
NOON = datetime(2026, 12, 4, 12, 0, tzinfo=TZ)
SOLAR_100W = {"solar": PowerReading(volts=20.0, amps=5.0, watts=100.0)}


class Radio:
    """Counts how often the keeper asks for the Wi-Fi clients (a subprocess on a Pi)."""

    def __init__(self) -> None:
        self.asked = 0

    def __call__(self) -> int:
        self.asked += 1
        return 4


def keeper(tmp_path: Path, radio: Radio) -> CounterKeeper:
    return CounterKeeper(CFG, tmp_path / "daily-counters.json", NOON.date(), 1.0, radio)


def test_a_stalled_loop_is_not_extrapolated_and_clients_are_asked_once_a_minute(
    tmp_path: Path,
) -> None:
    radio = Radio()
    counters = keeper(tmp_path, radio)
    for t in range(0, 120):  # two minutes of one-second samples at 100 W
        counters.count(NOON + timedelta(seconds=t), float(t), SOLAR_100W, {"wifi": True})
    # The loop stalls for an hour: that sample stands for 3 intervals, not 3600 s.
    counters.count(NOON + timedelta(hours=1), 3719.0, SOLAR_100W, {"wifi": True})
    today = counters.today()
    assert today["solar_wh"] == round(100 * (119 + 3) / 3600, 2)
    assert today["wifi_clients_max"] == 4
    assert radio.asked == 3  # at 0 s, 60 s and after the stall


def test_saved_every_15_minutes_so_a_restart_keeps_the_day(tmp_path: Path) -> None:
    counters = keeper(tmp_path, Radio())
    path = tmp_path / "daily-counters.json"
    counters.count(NOON, 0.0, SOLAR_100W, {})
    counters.count(NOON + timedelta(seconds=1), 1.0, SOLAR_100W, {})
    assert not path.exists()  # not before 15 minutes
    counters.count(NOON + timedelta(seconds=SAVE_EVERY_S), SAVE_EVERY_S, SOLAR_100W, {})
    assert json.loads(path.read_text())["today"]["date"] == "2026-12-04"
    again = keeper(tmp_path, Radio())
    assert again.today()["solar_wh"] == counters.today()["solar_wh"] > 0


def test_yesterday_goes_into_the_first_record_after_midnight_only(tmp_path: Path) -> None:
    counters = keeper(tmp_path, Radio())
    counters.count(NOON, 0.0, SOLAR_100W, {})
    assert "yesterday" not in counters.for_telemetry()
    tomorrow = NOON + timedelta(days=1)
    counters.count(tomorrow, 1.0, SOLAR_100W, {})
    first = counters.for_telemetry()
    assert first["yesterday"]["date"] == "2026-12-04"
    assert first["today"]["date"] == "2026-12-05"
    assert "yesterday" not in counters.for_telemetry()


def test_a_garbled_save_starts_the_day_at_zero(tmp_path: Path) -> None:
    (tmp_path / "daily-counters.json").write_text("{not json")
    counters = keeper(tmp_path, Radio())
    assert counters.today()["solar_wh"] == 0
