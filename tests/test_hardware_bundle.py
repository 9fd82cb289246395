"""The hardware bundle: built through an ExitStack, closed once, outputs first."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from bench_agent.clock import SystemClock
from bench_agent.config_loader import load_config
from bench_agent.hardware.backend import build_hardware
from bench_agent.hardware.bundle import Hardware
from bench_agent.hardware.gpio import GpioSwitch, TamperSwitch
from bench_agent.hardware.pi import build_pi_hardware
from tests.support import REPO


def test_the_pi_bench_closes_outputs_before_the_tamper_input_and_survives_a_bad_part(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    factory = MockFactory()
    monkeypatch.setattr("bench_agent.hardware.pi.open_lgpio_factory", lambda: factory)
    closed: list[str] = []
    switch_close, tamper_close = GpioSwitch.close, TamperSwitch.close

    def close_switch(self: GpioSwitch) -> None:
        closed.append(self.name)
        switch_close(self)
        if self.name == "usb1":
            raise OSError("stuck relay")

    def close_tamper(self: TamperSwitch) -> None:
        closed.append("tamper")
        tamper_close(self)

    monkeypatch.setattr(GpioSwitch, "close", close_switch)
    monkeypatch.setattr(TamperSwitch, "close", close_tamper)
    cfg = load_config(REPO / "config" / "bench-agent.toml")
    hardware = build_pi_hardware(cfg, on_tamper=lambda _open: None)
    assert hardware.faults() == {}  # the mock factory stands in for lgpio
    with caplog.at_level(logging.ERROR):
        hardware.close()
        hardware.close()  # idempotent: nothing is closed twice
    # Every output (to its safe state) before the tamper input, and usb1's error
    # did not keep the others from closing.
    assert closed == ["wifi", "usb2", "usb1", "tamper"]
    assert "error while closing output usb1" in caplog.text


def test_the_simulated_bench_is_chosen_by_the_config_alone(tmp_path: Path) -> None:
    from tests.support import sim_config

    cfg = load_config(sim_config(tmp_path, 1883))
    with build_hardware(cfg, on_tamper=lambda _open: None) as hardware:
        assert hardware.simulation is not None
        assert hardware.boot_id is not None and hardware.boot_id.startswith("sim-")
        assert set(hardware.outputs) == {o.name for o in cfg.outputs}


class CountingHotspot:
    """Counts its clients; reading whether it is on would be a NetworkManager call."""

    name = "wifi"
    safe_state_on = False
    fault = None

    def set(self, on: bool) -> None:
        raise AssertionError("not switched here")

    @property
    def is_on(self) -> bool:
        raise AssertionError("wifi_clients must not ask NetworkManager whether it is on")

    def close(self) -> None:
        pass

    def client_count(self) -> int | None:
        return 3


def test_wifi_clients_come_from_the_hotspot_port_and_a_gpio_access_point_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = CountingHotspot()
    bundle = Hardware(
        clock=SystemClock(),
        channels={},
        outputs={"wifi": counting},
        tamper=None,
        read_cpu_temperature=lambda: None,
        hotspot=counting,
    )
    assert bundle.wifi_clients() == 3
    monkeypatch.setattr("bench_agent.hardware.pi.open_lgpio_factory", MockFactory)
    cfg = load_config(REPO / "config" / "bench-agent.toml")  # wifi on a GPIO load switch
    with build_pi_hardware(cfg, on_tamper=lambda _open: None) as hardware:
        assert hardware.hotspot is None and hardware.wifi_clients() is None
