"""Fixtures that start real parts: a private mosquitto and the agent as a process."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.deploy_support import city_sandbox
from tests.pg_support import PostgresServer
from tests.support import AgentProcess, Broker, Recorder, sim_config
from tests.systemd_sandbox import SystemdSandbox


def pytest_configure(config: pytest.Config) -> None:
    """A run started in the background by a script (`make test &` in a non-interactive
    shell) inherits SIGINT ignored, as POSIX has it, and so does every process its tests
    start: the tests that check Ctrl-C ends a CLI cleanly (`status --watch`, `bench-ops
    fleet`) then wait in vain. Take back Python's usual handler, as a run from a
    terminal has it; the processes started from here get SIGINT's default again."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# Why a test of an xdist_group mark cannot run as asked (see the hook below).
UNGROUPED = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `make test` (pytest-xdist, `--dist loadgroup`) the tests of one xdist_group
    mark must really run on one worker. xdist says so by suffixing each one's node id
    with `@group` on the worker; where it cannot (pytest-dev/pytest-xdist#1386: pytest
    9.2's node ids) the marks would be ignored without a word: fail those tests instead."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers only
        return
    for item in items:
        marks = item.iter_markers("xdist_group")
        names = sorted(
            {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks}
        )
        if names and not item.nodeid.endswith("@" + "_".join(names)):
            item.stash[UNGROUPED] = (
                f"--dist loadgroup does not keep xdist_group {names} on one worker here:"
                " this pytest-xdist cannot tag node ids of this pytest"
                " (pytest-dev/pytest-xdist#1386; see the pin in pyproject.toml)"
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if problem := item.stash.get(UNGROUPED, None):
        pytest.fail(problem, pytrace=False)


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


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One real PostgreSQL for the whole session (started on first use)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def archive_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty archive's --db: a SQLite file, or a fresh database on the session's
    PostgreSQL (each test its own)."""
    if request.param == "sqlite":
        return str(tmp_path / "archive.sqlite")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture(scope="session")
def city_box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SystemdSandbox, int]]:
    """One sandbox for the city's units (the bridge's, the archive's): see
    deploy_support.city_sandbox."""
    with city_sandbox(tmp_path_factory.mktemp("city-units")) as made:
        yield made
