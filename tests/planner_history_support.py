"""A bench history made by the planner's own simulation, as v1 messages: what a real
bench would have reported on those days (tests of `bench-ops plan --history`).

Each simulated day becomes 24 hourly telemetry records (`interval_s` 3600) carrying a
24th of the day's energies: the `solar` channel at the panel's side of the charge
controller (the planner's harvest / its efficiency), the ports' share of USB and the
access point's. A day the planner shed a load gets an `output_switched` event off for
`battery_low` and that load's outputs off in the evening's records, as the agent
would report it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bench_agent.clock import iso_utc
from bench_agent.hardware.sim.params import BenchParams
from bench_agent.ops.planner.run import DayRecord

EPOCH = "0123456789abcdef"
TZ = ZoneInfo("Asia/Jakarta")
SHED_HOURS = range(19, 22)


def history_messages(
    bench: str, records: Sequence[DayRecord], ports: Sequence[str] = ("usb1", "usb2")
) -> Iterator[dict[str, object]]:
    """v1 messages (telemetry of one record each, and events) for `records`."""
    eff = BenchParams().charger_efficiency
    seq = 0
    for rec in records:
        midnight = datetime.combine(rec.day, datetime.min.time(), TZ)
        shed = rec.cutoff or any(rec.lost_min.values())
        for hour in range(24):
            seq += 1
            end = midnight + timedelta(hours=hour + 1)
            dark = shed and hour in SHED_HOURS
            if shed and hour == SHED_HOURS[0]:
                yield {
                    "v": 1, "bench": bench, "seq": seq, "seq_epoch": EPOCH,
                    "ts": iso_utc(end - timedelta(minutes=59)), "time_quality": "synced",
                    "boot_id": "b", "type": "output_switched", "output": "wifi",
                    "from": "on", "to": "off", "reason": "battery_low",
                }  # fmt: skip
                seq += 1
            channels = {
                "solar": {"wh": rec.harvested_wh / eff / 24},
                "battery": {"wh": 1.0},
                "wifi": {"wh": rec.delivered_wh["wifi"] / 24},
                **{p: {"wh": rec.delivered_wh["usb"] / len(ports) / 24} for p in ports},
            }
            outputs = {p: True for p in ports} | {"wifi": not dark}
            stamp = iso_utc(end - timedelta(seconds=1))  # the hour's own day
            record = {
                "seq": seq, "seq_epoch": EPOCH, "ts": stamp, "time_quality": "synced",
                "boot_id": "b", "interval_s": 3600.0, "channels": channels, "outputs": outputs,
            }  # fmt: skip
            yield {"v": 1, "bench": bench, "records": [record]}


def write_history(path: Path, messages: Iterator[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(m) + "\n" for m in messages), encoding="utf-8")
    return path
