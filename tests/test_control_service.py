"""The technician's socket kept served: a real ControlServer and ControlClient."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench_agent.config import ControlConfig
from bench_agent.faults import FaultRegistry
from bench_agent.local.control import ControlClient, Peer
from bench_agent.local.control_service import ControlSocketService
from tests.support import wait_until


def handler(method: str, params: Mapping[str, Any], peer: Peer | None = None) -> Any:
    return {"method": method, "uid": None if peer is None else peer.uid}


def registry() -> tuple[FaultRegistry, list[tuple[str, dict[str, Any]]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    return FaultRegistry(lambda kind, data: events.append((kind, data))), events


def test_served_then_served_again_when_its_thread_ends(tmp_path: Path) -> None:
    faults, events = registry()
    path = tmp_path / "control.sock"
    service = ControlSocketService(ControlConfig(path, None), handler, faults)
    service.start()
    try:
        assert ControlClient(path).call("status")["method"] == "status"
        assert service.alive()
        first = service.server
        assert first is not None
        first._selector.close()  # the server loop fails and its thread ends
        first._wake_w.send(b"x")  # type: ignore[union-attr]
        wait_until(lambda: not first.alive(), 10, "the server thread to end")
        assert service.alive()  # served again, at once
        assert service.server is not first
        assert ControlClient(path).call("status")["method"] == "status"
        assert [kind for kind, _ in events] == ["fault_raised", "fault_cleared"]
        assert events[0][1]["fault"] == "thread.control_socket"
    finally:
        service.close()
        service.close()
    assert not path.exists()


def test_a_socket_that_cannot_be_served_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    faults, _ = registry()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the socket's directory should be")
    service = ControlSocketService(ControlConfig(blocked / "control.sock", None), handler, faults)
    service.start()
    assert service.server is None
    assert "control_socket" in faults
    assert service.alive()  # nothing ran, so nothing ended
    service.close()
