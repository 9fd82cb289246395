"""The sampler: every channel read each sample, a failing one isolated and retried
with backoff, per-interval statistics and energy.

The sensors here are scripted `PowerSensor`s (the seam the sampler reads through);
the real INA219 driver behind that seam is in test_ina219.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pytest

from bench_agent.errors import SensorAbsent, SensorError
from bench_agent.hardware.ports import PowerSensor
from bench_agent.model import PowerReading
from bench_agent.power.sampler import RETRY_MAX_S, Sampler


def reading(watts: float, volts: float = 12.0) -> PowerReading:
    return PowerReading(volts=volts, amps=watts / volts, watts=watts)


class Scripted:
    """Answers each read() with the next item: a reading, or an exception to raise."""

    def __init__(self, name: str, script: Iterable[PowerReading | Exception]) -> None:
        self._name = name
        self._script = list(script)
        self.reads = 0

    @property
    def name(self) -> str:
        return self._name

    def read(self) -> PowerReading:
        self.reads += 1
        item = self._script.pop(0) if len(self._script) > 1 else self._script[0]
        if isinstance(item, Exception):
            raise item
        return item


def opener(sensor: PowerSensor) -> Any:
    return lambda: sensor


def test_interval_statistics_and_energy() -> None:
    solar = Scripted("solar", [reading(w) for w in (10.0, 20.0, 30.0, 30.0)])
    sampler = Sampler({"solar": opener(solar)}, 1.0)
    for t in range(4):
        sampler.sample(float(t))
    summary = sampler.close_interval()["solar"]
    assert summary["w"] == [10.0, 22.5, 30.0]
    assert summary["n"] == 4 and summary["fault"] is None
    # Left rectangles: 10 W, 20 W and 30 W for one second each.
    assert summary["wh"] == round(60 / 3600, 4)
    assert sampler.close_interval()["solar"]["n"] == 0  # a new interval


def test_a_failing_channel_is_isolated_retried_with_backoff_and_reported_once() -> None:
    faults: list[tuple[str, str | None]] = []
    bad = Scripted("usb1", [SensorError("no answer")])
    good = Scripted("solar", [reading(5.0)])
    sampler = Sampler(
        {"usb1": opener(bad), "solar": opener(good)},
        1.0,
        on_fault=lambda channel, code: faults.append((channel, code)),
    )
    for t in range(200):
        latest = sampler.sample(float(t))
        assert latest["solar"] == reading(5.0)  # never held up by the other
    assert faults == [("usb1", "sensor_no_answer")]
    # Reads at 0, 1, 3, 7, 15, 31, 63, 123 s (the wait doubling), then every
    # RETRY_MAX_S: 183 s.
    assert RETRY_MAX_S == 60.0
    assert bad.reads == 9
    assert sampler.faults() == {"usb1": "sensor_no_answer"}
    assert sampler.errors_total() == 9


def test_a_sensor_that_comes_back_clears_its_fault_and_energy_skips_the_gap() -> None:
    faults: list[tuple[str, str | None]] = []
    script: list[PowerReading | Exception] = [reading(60.0), SensorError("glitch"), reading(60.0)]
    usb = Scripted("usb1", script)
    sampler = Sampler({"usb1": opener(usb)}, 1.0, on_fault=lambda c, f: faults.append((c, f)))
    for t in (0.0, 1.0, 2.0, 3.0):
        sampler.sample(t)
    assert faults == [("usb1", "sensor_no_answer"), ("usb1", None)]
    summary = sampler.close_interval()["usb1"]
    # 0 s and 2-3 s read; only 2->3 s is integrated: nothing across the gap.
    assert summary["n"] == 3 and summary["wh"] == round(60 / 3600, 4)


def test_an_absent_sensor_is_opened_again_and_nonsense_is_a_bad_value() -> None:
    opened: list[int] = []

    def open_absent() -> PowerSensor:
        opened.append(1)
        raise SensorAbsent("no INA219 at 0x41")

    nan = Scripted("battery", [PowerReading(volts=math.nan, amps=0.0, watts=0.0)])
    sampler = Sampler({"usb2": open_absent, "battery": opener(nan)}, 1.0)
    sampler.sample(0.0)
    sampler.sample(1.0)
    assert sampler.faults() == {"usb2": "sensor_absent", "battery": "sensor_bad_value"}
    assert len(opened) == 2  # built again on each retry, not kept broken
    assert sampler.latest() == {"usb2": None, "battery": None}


@pytest.mark.parametrize("error", [OSError(121, "Remote I/O error"), ValueError("bad register")])
def test_driver_errors_never_escape(error: Exception) -> None:
    sampler = Sampler({"x": opener(Scripted("x", [error]))}, 1.0)
    sampler.sample(0.0)
    assert "x" in sampler.faults()
