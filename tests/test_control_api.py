"""The socket's methods, called directly on a running agent (the simulated bench, a
real broker): parameters checked before the loop, answers from the loop, the status
object against its schema. The socket itself is in test_control.py and the CLI over
it in test_cli_daemon.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bench_agent.config_loader import load_config
from bench_agent.local.control import ControlError, Peer
from bench_agent.local.control_api import LocalControl, build_status
from bench_agent.service import Agent
from tests.support import Broker, Recorder, sim_config, wait_until

pytestmark = pytest.mark.integration


def schema(name: str) -> dict[str, Any]:
    text = resources.files("bench_agent.schemas").joinpath(f"{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@pytest.fixture
def running(broker: Broker, recorder: Recorder, tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(load_config(sim_config(tmp_path, broker.port)))
    thread = threading.Thread(target=agent.run, name="agent-under-test")
    thread.start()
    try:
        recorder.wait_for("status", lambda p: p["online"] is True, 30)
        wait_until(lambda: hasattr(agent, "control"), 10, "the agent's parts")
        yield agent
    finally:
        agent.request_stop()
        thread.join(30)
    assert not thread.is_alive()


def test_status_is_what_the_schema_defines(running: Agent) -> None:
    status = LocalControl(running).handle("status", {})
    jsonschema.validate(status, schema("control-status"))
    assert status["bench"] == running.cfg.bench.id
    assert set(status["outputs"]) == {"usb1", "usb2", "wifi"}
    # The same function, on the loop: what the method answers is build_status.
    assert running.run_on_loop(lambda: build_status(running), 3)["bench"] == status["bench"]


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("status", {"x": 1}, "bad_params"),
        ("override.set", {"output": "usb1", "state": "maybe"}, "bad_params"),
        ("override.set", {"output": "usb1", "state": "on", "duration_s": -5}, "bad_params"),
        ("override.set", {"output": "usb1", "state": "on", "colour": "red"}, "bad_params"),
        ("fault.reset", {"name": 7}, "bad_params"),
        ("events", {"limit": 0}, "bad_params"),
        ("events", {"since_s": True}, "bad_params"),
        ("reboot", {}, "unknown_method"),
    ],
)
def test_a_bad_request_is_refused_before_it_reaches_the_loop(
    running: Agent, method: str, params: dict[str, Any], code: str
) -> None:
    with pytest.raises(ControlError) as refused:
        LocalControl(running).handle(method, params)
    assert refused.value.code == code


def test_an_override_names_the_local_user_and_is_refused_for_an_unknown_output(
    running: Agent, recorder: Recorder
) -> None:
    control = LocalControl(running)
    assert control.handle("override.set", {"output": "usb9", "state": "on"}) == {
        "accepted": False,
        "reason": "unknown_output: usb9",
    }
    budi = Peer(pid=1, uid=0, gid=0)
    answer = control.handle("override.set", {"output": "usb1", "state": "off"}, budi)
    assert answer == {"accepted": True}
    command = recorder.wait_for("event", lambda p: p["type"] == "command", 30)
    assert command["source"] == f"technician:{budi.user()}"
    assert control.handle("fault.reset", {"name": "usb1"}) == {"reset": []}
    events = control.handle("events", {"limit": 5})["events"]
    assert 1 <= len(events) <= 5


def test_the_selftest_names_each_part(running: Agent) -> None:
    checks = LocalControl(running).handle("selftest", {})["checks"]
    names = [c["name"] for c in checks]
    assert names[0] == "config" and "broker" in names and "storage" in names
    assert all(set(c) == {"name", "ok", "detail", "hint"} for c in checks)
