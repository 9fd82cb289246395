"""The charger feed: the real reader on a pty with real captures, as the main loop uses it."""

from __future__ import annotations

import queue
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench_agent.faults import FaultRegistry
from bench_agent.hardware.sim.vedirect_sim import SimulatedCharger
from bench_agent.hardware.vedirect.reader import ChargerSample, VEDirectReader
from bench_agent.power.charger_feed import TELEMETRY_FIELDS, ChargerFeed
from tests.support import VEDIRECT_CAPTURES, wait_until


def faults() -> tuple[FaultRegistry, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    return FaultRegistry(lambda kind, data: events.append((kind, data))), events


def test_a_battery_monitors_soc_reaches_the_estimator_and_a_bad_one_is_ignored(
    tmp_path: Path,
) -> None:
    link = tmp_path / "ttyVE"
    samples: queue.Queue[ChargerSample] = queue.Queue()
    registry, _ = faults()
    taken: list[float] = []

    def take_soc(pct: float) -> None:
        if not 0 <= pct <= 100:
            raise ValueError(f"state of charge out of range: {pct}")
        taken.append(pct)

    with SimulatedCharger(link) as sim, VEDirectReader(str(link), samples) as reader:
        feed = ChargerFeed(reader, 30.0, registry, take_soc)
        wait_until(lambda: reader.stats.connected, 5, "the reader on the pty")
        assert sim.replay(VEDIRECT_CAPTURES / "bvm702.dump", speed=50.0).wait(20)
        sample = samples.get(timeout=5)
        feed.take(sample)
        summary = feed.for_telemetry()
        assert summary is not None
        assert set(summary) == {*TELEMETRY_FIELDS, "bad_fields"}
        assert 80 < summary["state_of_charge_pct"] < 90  # the capture's BMV says 83.7-83.9 %
        assert taken == [summary["state_of_charge_pct"]]
        assert "charger" not in registry
        # A garbled value that passed the checksum: logged, the estimate keeps its own.
        bad = replace(sample.reading, state_of_charge_pct=250.0)
        feed.take(ChargerSample(bad, sample.monotonic_s))
        assert taken == [summary["state_of_charge_pct"]]


def test_no_valid_block_is_the_charger_fault_with_why_the_port_does_not_open(
    tmp_path: Path,
) -> None:
    samples: queue.Queue[ChargerSample] = queue.Queue()
    registry, events = faults()
    clock = [time.monotonic()]
    missing = tmp_path / "ttyUSB9"
    with VEDirectReader(str(missing), samples, reconnect_initial_s=0.05) as reader:
        feed = ChargerFeed(reader, 30.0, registry, lambda _pct: None, monotonic=lambda: clock[0])
        assert feed.for_telemetry() is None  # within the grace of a reader just started
        assert "charger" not in registry
        wait_until(lambda: reader.open_error is not None, 5, "the open error")
        clock[0] += 31.0
        assert feed.summary() is None
        assert feed.for_telemetry() is None
        assert registry["charger"].startswith("no_valid_block: ")
        assert str(missing) in registry["charger"]
    assert [kind for kind, _ in events] == ["fault_raised"]
