"""The fault registry: one place every source reports to; each change is one event."""

from __future__ import annotations

from typing import Any

from bench_agent.faults import (
    Fault,
    FaultRegistry,
    ThreadWatch,
    overcurrent_fault,
    sensor_fault,
    thread_fault,
)


def registry() -> tuple[FaultRegistry, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    return FaultRegistry(lambda kind, data: events.append((kind, data))), events


def test_raise_and_clear_are_events_once_per_change() -> None:
    faults, events = registry()
    assert faults.raise_(Fault.STORAGE, "disk full")
    assert not faults.raise_(Fault.STORAGE, "disk full")  # the same: no event
    assert faults.raise_(Fault.STORAGE, "read-only")  # a new detail is a change
    assert dict(faults) == {"storage": "read-only"}
    assert faults.clear(Fault.STORAGE)
    assert not faults.clear(Fault.STORAGE)
    assert events == [
        ("fault_raised", {"fault": "storage", "detail": "disk full"}),
        ("fault_raised", {"fault": "storage", "detail": "read-only"}),
        ("fault_cleared", {"fault": "storage"}),
    ]


def test_set_raises_or_clears() -> None:
    faults, events = registry()
    faults.set(Fault.OPS_KEYS, "bad.pub: not a key")
    faults.set(Fault.OPS_KEYS, None)
    faults.set(Fault.OPS_KEYS, None)
    assert [kind for kind, _ in events] == ["fault_raised", "fault_cleared"]
    assert len(faults) == 0


def test_sync_clears_only_what_the_source_owns() -> None:
    faults, events = registry()
    faults.raise_(sensor_fault("usb1"), "absent")
    owned = {Fault.GPIO, Fault.I2C}
    assert faults.sync(owned, {"gpio": "/dev/gpiochip0 missing", "i2c": "/dev/i2c-1 missing"})
    assert not faults.sync(owned, {"gpio": "/dev/gpiochip0 missing", "i2c": "/dev/i2c-1 missing"})
    assert faults.sync(owned, {"gpio": "/dev/gpiochip0 missing"})
    assert sorted(faults) == ["gpio", "sensor.usb1"]  # another source's fault stays
    assert events[-1] == ("fault_cleared", {"fault": "i2c"})


def test_payload_form_is_sorted_and_family_names_are_built_in_one_place() -> None:
    faults, _ = registry()
    faults.raise_(thread_fault("charger"), "ended unexpectedly")
    faults.raise_(Fault.CHARGER, "no_valid_block")
    assert faults.as_list() == [
        {"name": "charger", "detail": "no_valid_block"},
        {"name": "thread.charger", "detail": "ended unexpectedly"},
    ]
    assert overcurrent_fault("usb2") == "overcurrent.usb2"
    assert Fault.REPLAY_STORE == "replay_store"  # a str: the payloads carry it as is


def test_a_thread_that_ended_is_a_fault_raised_once() -> None:
    faults, events = registry()
    watch = ThreadWatch(faults)
    alive = {"mqtt": True, "charger": True}
    watch.watch("mqtt", lambda: alive["mqtt"])
    watch.watch("charger", lambda: alive["charger"])
    assert watch.dead() == []
    alive["charger"] = False
    assert watch.dead() == ["charger"]
    assert watch.dead() == ["charger"]  # still dead: still withholding, no second event
    assert dict(faults) == {thread_fault("charger"): "ended unexpectedly; the agent will restart"}
    assert [kind for kind, _ in events] == ["fault_raised"]
