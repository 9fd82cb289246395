"""Fixtures that start real parts: a private mosquitto and the agent as a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.support import AgentProcess, Broker, Recorder, sim_config


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Recorder]:
    r = Recorder(broker.port)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(port: int, changes: Mapping[str, Any] | None = None) -> AgentProcess:
        agent = AgentProcess(sim_config(tmp_path, port, changes), tmp_path)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()
