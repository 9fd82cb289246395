"""The Pi's I2C bus for the INA219s: opened on first use and again after a failure, and a
missing or forbidden /dev/i2c-N is an `i2c` fault that says what to do, never a crash.

/dev here is a directory of the test's own (this machine has no I2C bus); the Pi's
opener is replaced by one that hands out the project's simulated bus."""

from __future__ import annotations

import errno
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench_agent.hardware import i2c
from bench_agent.hardware.i2c import I2CBusSupply, check_i2c_device
from bench_agent.hardware.sim.i2c_bus import SimulatedI2CBus

MISSING = "missing — enable I2C (sudo raspi-config nonint do_i2c 0, then reboot)"


class Opener:
    """open_pi_i2c_bus's stand-in: fails with `failures` in turn, then opens a bus."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls: list[int] = []
        self.bus = SimulatedI2CBus()

    def __call__(self, bus_number: int) -> SimulatedI2CBus:
        self.calls.append(bus_number)
        if self.failures:
            raise self.failures.pop(0)
        return self.bus


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    directory = tmp_path / "dev"
    directory.mkdir()
    return directory


def plug(dev: Path, bus_number: int = 1) -> Path:
    """The node the kernel makes once I2C is enabled (a plain file stands in for it)."""
    node = dev / f"i2c-{bus_number}"
    node.touch(mode=0o660)
    return node


def supply_with(
    monkeypatch: pytest.MonkeyPatch, dev: Path, opener: Callable[[int], Any], bus_number: int = 1
) -> I2CBusSupply:
    monkeypatch.setattr(i2c, "open_pi_i2c_bus", opener)
    return I2CBusSupply(bus_number, dev)


def test_a_missing_bus_says_how_to_enable_it_and_is_not_opened(
    dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(OSError) as exc:
        check_i2c_device(1, dev)
    assert str(exc.value) == f"{dev / 'i2c-1'} {MISSING}"
    opener = Opener()
    supply = supply_with(monkeypatch, dev, opener)
    assert supply.error is None  # nothing is tried before a sensor asks
    with pytest.raises(OSError) as exc:
        supply.get()
    assert str(exc.value) == supply.error == f"{dev / 'i2c-1'} {MISSING}"
    assert opener.calls == []


def test_a_bus_the_agent_may_not_open_names_the_group(
    dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = plug(dev, 3)
    node.chmod(0)
    if os.geteuid() == 0:  # root opens anything: answer as for the bench-agent user
        real_access = os.access
        monkeypatch.setattr(
            i2c.os, "access", lambda p, how, **kw: Path(p) != node and real_access(p, how, **kw)
        )
    with pytest.raises(OSError, match=r"i2c-3: permission denied — is bench-agent in group i2c\?"):
        check_i2c_device(3, dev)
    supply = supply_with(monkeypatch, dev, Opener(), bus_number=3)
    with pytest.raises(OSError):
        supply.get()
    assert supply.error == f"{node}: permission denied — is bench-agent in group i2c?"


def test_the_bus_is_opened_once_on_first_use_and_then_shared(
    dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plug(dev)
    opener = Opener()
    supply = supply_with(monkeypatch, dev, opener)
    assert opener.calls == []
    first = supply.get()
    assert first is opener.bus
    assert supply.get() is first and supply.get() is first
    assert opener.calls == [1] and supply.error is None


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (ImportError("No module named 'board'"), "I2C bus: No module named 'board'"),
        (RuntimeError("no I2C on this board"), "I2C bus: no I2C on this board"),
        (ValueError("No Hardware I2C on (scl,sda)=(3, 2)"), "I2C bus: No Hardware I2C on"),
        (OSError(errno.EBUSY, "Device or resource busy"), "[Errno 16] Device or resource busy"),
    ],
)
def test_an_opener_failure_is_an_oserror_and_is_retried_until_it_opens(
    dev: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception, error: str
) -> None:
    plug(dev)
    opener = Opener(failure)
    supply = supply_with(monkeypatch, dev, opener)
    with pytest.raises(OSError) as exc:
        supply.get()  # what a sensor read meets: an OSError, the sampler's fault
    assert exc.value.__cause__ is failure
    assert supply.error is not None and supply.error.startswith(error)
    assert str(exc.value) == supply.error
    # The next read tries again; once it opens, the fault clears.
    assert supply.get() is opener.bus
    assert opener.calls == [1, 1] and supply.error is None


def test_a_bus_enabled_after_start_is_found_by_the_next_read(
    dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = Opener()
    supply = supply_with(monkeypatch, dev, opener)
    with pytest.raises(OSError):
        supply.get()
    assert supply.error is not None and MISSING in supply.error
    plug(dev)
    assert supply.get() is opener.bus
    assert supply.error is None


def test_a_bug_in_the_opener_is_not_disguised_as_a_missing_bus(
    dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plug(dev)
    supply = supply_with(monkeypatch, dev, Opener(KeyError("scl")))
    with pytest.raises(KeyError):
        supply.get()


@pytest.mark.skipif(
    importlib.util.find_spec("adafruit_extended_bus") is not None,
    reason="adafruit-extended-bus is installed: the real opener would open a real bus",
)
def test_a_bus_other_than_1_without_the_pi_extras_says_what_to_install(dev: Path) -> None:
    plug(dev, 2)
    supply = I2CBusSupply(2, dev)  # the real opener
    with pytest.raises(OSError):
        supply.get()
    assert supply.error == (
        "I2C bus: I2C bus 2 needs adafruit-extended-bus: pip install 'bench-agent[pi]'"
    )
