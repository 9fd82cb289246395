"""The real pyserial reader against the simulated charger on a pty."""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench_agent.hardware.sim.vedirect_sim import ChargerSnapshot, SimulatedCharger
from bench_agent.hardware.vedirect.framing import VEDirectFramer
from bench_agent.hardware.vedirect.reader import ChargerSample, VEDirectReader
from tests.support import VEDIRECT_CAPTURES

CAPTURES = VEDIRECT_CAPTURES

SNAPSHOT = ChargerSnapshot(
    battery_volts=13.21,
    battery_amps=2.5,
    panel_volts=18.4,
    panel_watts=37,
    load_amps=0.35,
    load_on=True,
    charge_state="bulk",
    mppt_mode="mppt_active",
    error="no_error",
    yield_today_kwh=0.12,
    yield_yesterday_kwh=0.48,
    yield_total_kwh=123.45,
    max_power_today_w=41,
    max_power_yesterday_w=80,
    day_sequence=12,
)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def drain(q: queue.Queue[ChargerSample]) -> list[ChargerSample]:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


@pytest.fixture
def link(tmp_path: Path) -> Path:
    return tmp_path / "ttyVE.Direct"


@pytest.fixture
def live(
    link: Path,
) -> Iterator[tuple[SimulatedCharger, VEDirectReader, queue.Queue[ChargerSample]]]:
    samples: queue.Queue[ChargerSample] = queue.Queue()
    sim = SimulatedCharger(link, lambda: SNAPSHOT, interval_s=0.05, seed=7)
    reader = VEDirectReader(
        str(link), samples, read_timeout_s=0.2, reconnect_initial_s=0.02, reconnect_max_s=0.1
    )
    with sim, reader:
        wait_for(lambda: reader.stats.connected)
        yield sim, reader, samples
    assert not reader.is_alive
    assert not link.exists()


def test_simulated_block_reaches_the_consumer_with_units(
    live: tuple[SimulatedCharger, VEDirectReader, queue.Queue[ChargerSample]],
) -> None:
    _, _, samples = live
    sample = samples.get(timeout=3)
    reading = sample.reading
    assert reading.model == "SmartSolar MPPT 100/20"
    assert reading.battery_volts == pytest.approx(13.21)
    assert reading.battery_amps == pytest.approx(2.5)
    assert reading.panel_volts == pytest.approx(18.4)
    assert reading.panel_watts == 37
    assert reading.load_amps == pytest.approx(0.35)
    assert reading.charge_state == "bulk"
    assert reading.mppt_mode == "mppt_active"
    assert reading.yield_total_kwh == pytest.approx(123.45)
    assert reading.day_sequence == 12
    assert sample.monotonic_s <= time.monotonic()


def test_corrupted_checksums_are_counted_and_never_delivered(
    live: tuple[SimulatedCharger, VEDirectReader, queue.Queue[ChargerSample]],
) -> None:
    sim, reader, samples = live
    wait_for(lambda: reader.stats.blocks_ok >= 2)
    sim.corrupt_checksums(3)
    wait_for(lambda: reader.stats.checksum_errors >= 3)
    wait_for(lambda: reader.stats.blocks_ok >= sim.blocks_written - 4)
    assert reader.stats.checksum_errors == 3
    # Every reading that did get through is exactly what the device sent.
    assert all(s.reading.battery_volts == pytest.approx(13.21) for s in drain(samples))


def test_garbage_is_counted_and_reading_resumes(
    live: tuple[SimulatedCharger, VEDirectReader, queue.Queue[ChargerSample]],
) -> None:
    sim, reader, samples = live
    wait_for(lambda: reader.stats.blocks_ok >= 1)
    sim.inject_garbage(500)
    wait_for(lambda: reader.stats.bytes_discarded >= 300)
    before = reader.stats.blocks_ok
    wait_for(lambda: reader.stats.blocks_ok >= before + 3)
    received = drain(samples)
    assert received
    assert all(s.reading.charge_state == "bulk" for s in received)
    assert all(s.reading.invalid_labels == () for s in received)


def test_unplug_and_replug_recovers(
    live: tuple[SimulatedCharger, VEDirectReader, queue.Queue[ChargerSample]],
) -> None:
    sim, reader, samples = live
    samples.get(timeout=3)
    old_pty = sim.pty_name
    sim.unplug(0.4)
    assert not sim.link_path.exists()
    wait_for(lambda: not reader.stats.connected, 2.0)
    assert reader.is_stale(time.monotonic() + 0.3, stale_after_s=0.2)
    time.sleep(0.2)
    assert reader.stats.open_failures >= 1  # it kept trying while the cable was out
    wait_for(lambda: reader.stats.connected and reader.stats.reconnects == 1, 5.0)
    assert sim.pty_name is not None and sim.link_path.exists()
    assert old_pty is not None
    drain(samples)
    sample = samples.get(timeout=3)
    assert sample.reading.battery_volts == pytest.approx(13.21)
    assert not reader.is_stale(time.monotonic(), stale_after_s=1.0)


def test_reader_waits_for_a_port_that_is_not_there_yet(link: Path) -> None:
    got: list[ChargerSample] = []
    reader = VEDirectReader(str(link), got.append, reconnect_initial_s=0.02, reconnect_max_s=0.05)
    with reader:
        wait_for(lambda: reader.stats.open_failures >= 3)
        assert not reader.stats.connected
        # What a technician reads in the charger fault and the self-test.
        assert reader.open_error == (
            f"{link}: no such device — is the VE.Direct USB cable plugged in?"
        )
        with SimulatedCharger(link, lambda: SNAPSHOT, interval_s=0.05):
            wait_for(lambda: len(got) >= 2)
        assert reader.stats.reconnects == 0  # the first open is not a reconnect
        assert reader.open_error is None


def test_close_joins_the_thread_quickly_and_is_idempotent(link: Path) -> None:
    with SimulatedCharger(link, lambda: SNAPSHOT, interval_s=0.05):
        reader = VEDirectReader(str(link), queue.Queue(), read_timeout_s=5.0)
        reader.start()
        wait_for(lambda: reader.stats.blocks_ok >= 1)
        started = time.monotonic()
        reader.close()
        assert time.monotonic() - started < 1.0  # cancel_read wakes the 5 s read
        assert not reader.is_alive
        reader.close()
        assert not reader.stats.connected
        with pytest.raises(RuntimeError):
            reader.start()


def test_a_failing_callback_is_counted_and_does_not_kill_the_reader(link: Path) -> None:
    calls: list[int] = []

    def explode(_: ChargerSample) -> None:
        calls.append(1)
        raise RuntimeError("consumer bug")

    with (
        SimulatedCharger(link, lambda: SNAPSHOT, interval_s=0.05),
        VEDirectReader(str(link), explode) as reader,
    ):
        wait_for(lambda: len(calls) >= 3)
        assert reader.is_alive
        assert reader.stats.sink_errors >= 3


def test_a_full_queue_keeps_the_newest(link: Path) -> None:
    samples: queue.Queue[ChargerSample] = queue.Queue(maxsize=1)
    with (
        SimulatedCharger(link, lambda: SNAPSHOT, interval_s=0.02),
        VEDirectReader(str(link), samples) as reader,
    ):
        wait_for(lambda: reader.stats.blocks_ok >= 4)
        assert reader.stats.sink_errors >= 2
        newest = samples.get_nowait()
        assert newest.monotonic_s >= time.monotonic() - 1.0


def test_is_stale_before_start_and_after_silence(link: Path) -> None:
    reader = VEDirectReader(str(link), queue.Queue())
    assert reader.is_stale(time.monotonic(), stale_after_s=10.0)  # never started
    with reader:
        assert not reader.is_stale(time.monotonic(), stale_after_s=10.0)  # grace
        assert reader.is_stale(time.monotonic() + 11.0, stale_after_s=10.0)


def test_a_silent_port_is_reopened(link: Path) -> None:
    with (
        SimulatedCharger(link, None),  # a port that never says anything
        VEDirectReader(
            str(link),
            queue.Queue(),
            read_timeout_s=0.05,
            reopen_after_silence_s=0.2,
            reconnect_initial_s=0.02,
        ) as reader,
    ):
        wait_for(lambda: reader.stats.reconnects >= 2, 5.0)


def capture_readings(path: Path) -> int:
    return len(VEDirectFramer().feed(path.read_bytes()))


def test_capture_replayed_at_line_speed(link: Path, tmp_path: Path) -> None:
    # 5 kB of the SmartSolar capture at 19200 baud takes ~2.6 s, as on the real wire.
    head = tmp_path / "head.dump"
    head.write_bytes((CAPTURES / "smartsolar_1.39.dump").read_bytes()[:5000])
    expected = capture_readings(head)
    samples: queue.Queue[ChargerSample] = queue.Queue()
    with SimulatedCharger(link) as sim, VEDirectReader(str(link), samples) as reader:
        wait_for(lambda: reader.stats.connected)
        started = time.monotonic()
        done = sim.replay(head, speed=1.0)
        assert done.wait(10)
        elapsed = time.monotonic() - started
        wait_for(lambda: reader.stats.blocks_ok == expected)
    assert 5000 / 1920 * 0.9 < elapsed < 5000 / 1920 + 1.5
    received = drain(samples)
    assert len(received) == expected
    assert reader.stats.checksum_errors == 0
    assert reader.stats.hex_frames == 0
    # Blocks arrive spread over the replay, not in one burst at the end.
    assert received[-1].monotonic_s - received[0].monotonic_s > 1.5


@pytest.mark.parametrize(
    ("name", "hex_frames"),
    [("smartsolar_1.39.dump", 2), ("bluesolar_1.23.dump", 7), ("bvm702.dump", 0)],
)
def test_captures_replayed_fast_give_every_block(link: Path, name: str, hex_frames: int) -> None:
    path = CAPTURES / name
    expected = capture_readings(path)
    samples: queue.Queue[ChargerSample] = queue.Queue()
    with SimulatedCharger(link) as sim, VEDirectReader(str(link), samples) as reader:
        wait_for(lambda: reader.stats.connected)
        assert sim.replay(path, speed=math.inf).wait(10)
        wait_for(lambda: reader.stats.blocks_ok == expected)
        stats = reader.stats
    assert stats.checksum_errors == 0
    assert stats.hex_frames == hex_frames
    assert stats.value_errors == 0
    received = drain(samples)
    assert len(received) == expected
    if name.startswith("bvm"):
        # The BMV alternates live and history blocks; every merged reading has both.
        assert all(s.reading.state_of_charge_pct is not None for s in received[1:])
        assert all(s.reading.charge_cycles is not None for s in received[1:])
        assert received[-1].reading.model == "BMV-700"
    else:
        assert all(s.reading.battery_volts is not None for s in received)


def test_snapshot_is_validated() -> None:
    with pytest.raises(ValueError, match="charge_state"):
        _replace(charge_state="napping")
    with pytest.raises(ValueError, match="panel_watts"):
        _replace(panel_watts=float("nan"))
    with pytest.raises(ValueError, match="load_amps"):
        _replace(load_amps=-1.0)


def _replace(**changes: object) -> ChargerSnapshot:
    return dataclasses.replace(SNAPSHOT, **changes)  # type: ignore[arg-type]


def test_simulator_survives_a_failing_snapshot(link: Path) -> None:
    calls = threading.Event()

    def broken() -> ChargerSnapshot:
        calls.set()
        raise RuntimeError("bench model bug")

    with SimulatedCharger(link, broken, interval_s=0.02) as sim:
        assert calls.wait(2)
        wait_for(lambda: sim.snapshot_errors >= 2)
    assert not link.exists()
