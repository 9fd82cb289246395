"""A bench installed by `deploy/install.sh` inside a systemd sandbox, with a broker beside it.

The installer runs for real (as root, no `--root`) in the sandbox of
`systemd_sandbox.py`; its only help is the environment a bench behind a local
package mirror would have: pip finds its packages in the wheelhouse that
`scripts/setup.sh` builds for the system Python (the sandbox has no network).
The broker is a mosquitto that systemd runs inside the sandbox, on a port
free in the sandbox's own network namespace; what it delivers is read by a
`mosquitto_sub` inside the sandbox.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from bench_agent.link import contract_v2
from tests.support import REPO, SIM_CONFIG, dump_toml
from tests.systemd_sandbox import SystemdSandbox, unavailable_reason

# For the test modules that need a sandbox: skipped, with the reason printed, only
# where a sandbox cannot be made (no root, no unshare, no systemd, no cgroup2).
NEEDS_SANDBOX = [
    pytest.mark.integration,
    pytest.mark.skipif(
        unavailable_reason() is not None, reason=f"no systemd sandbox: {unavailable_reason()}"
    ),
]
WHEELHOUSE = REPO / ".cache" / "wheelhouse"
INSTALLED_CONFIG = "/etc/bench-agent/bench-agent.toml"
UNIT = "bench-agent.service"
BROKER_UNIT = "test-broker.service"
PASSWORD_FILE = "/etc/bench-agent/secrets/mqtt-password"  # noqa: S105 - a path
# The MQTT password the agent is given: it must never reach the journal.
SECRET_PASSWORD = "correct-horse-battery-staple-7f3a9c"  # noqa: S105 - a test value


def installer_environment() -> list[str]:
    """`env` arguments: pip on the wheelhouse, as behind a local mirror (no network inside)."""
    return ["env", "PIP_NO_INDEX=1", f"PIP_FIND_LINKS={WHEELHOUSE}"]


def wheelhouse_missing() -> str | None:
    if not any(WHEELHOUSE.glob("*.whl")):
        return f"{WHEELHOUSE} is empty: scripts/setup.sh builds it (make test runs it)"
    return None


def run_installer(box: SystemdSandbox, *args: str) -> subprocess.CompletedProcess[str]:
    """`deploy/install.sh` from the checkout, exactly as a technician runs it (as root)."""
    return box.run(
        [*installer_environment(), str(REPO / "deploy" / "install.sh"), *args],
        check=False,
        timeout_s=600,
    )


def sandbox_bench_config(broker_port: int, changes: Mapping[str, Any] | None = None) -> str:
    """The simulated bench at the installed paths (state, socket under the unit's directories)."""
    data = tomllib.loads(SIM_CONFIG.read_text())
    data["mqtt"].update(
        {
            "host": "127.0.0.1",
            "port": broker_port,
            "username": "bench",
            "password_file": PASSWORD_FILE,
        }
    )
    data["storage"]["dir"] = "/var/lib/bench-agent"
    data["control"]["socket"] = "/run/bench-agent/control.sock"
    data["charger"]["port"] = "/run/bench-agent/ttyVE"
    data["sim"].pop("scenario", None)
    data.pop("uplink", None)
    for table, values in (changes or {}).items():
        data.setdefault(table, {}).update(values)
    return dump_toml(data)


class SandboxRecorder:
    """Every message a `mosquitto_sub` inside the sandbox receives on `<prefix>/#`, as a
    v1 consumer sees them: a contract-v2 batch is kept as the v1 messages it carries
    (payloads come hex-encoded: a v2 batch is binary, newlines included)."""

    def __init__(self, box: SystemdSandbox, port: int, log: Path) -> None:
        self.messages: list[tuple[str, bool, str]] = []  # (topic, retained, payload)
        self._cond = threading.Condition()
        self._proc = subprocess.Popen(
            [
                "nsenter", "-t", str(box.pid), "-a",
                "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
                "-t", "smartbench/#", "-F", "%r %t %x",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            retained, topic, hex_payload = line.rstrip("\n").split(" ", 2)
            raw = bytes.fromhex(hex_payload)
            prefix, _, leaf = topic.rpartition("/")
            if leaf == contract_v2.LEAF:
                batch = contract_v2.v1_messages(contract_v2.decode(raw))
                received = [(f"{prefix}/{v1}", False, json.dumps(m)) for v1, m in batch]
            else:
                received = [(topic, retained == "1", raw.decode())]
            with self._cond:
                self.messages.extend(received)
                self._cond.notify_all()

    def payloads(self, suffix: str, *, after: int = 0) -> list[dict[str, Any]]:
        with self._cond:
            return [json.loads(p) for t, _, p in self.messages[after:] if t.endswith("/" + suffix)]

    def wait_for(
        self,
        suffix: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = 30.0,
        *,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first payload on `suffix` matching `predicate`, among messages from index `after`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for topic, _, payload in self.messages[after:]:
                    if topic.endswith("/" + suffix):
                        parsed = json.loads(payload)
                        if predicate(parsed):
                            return dict(parsed)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [t for t, _, _ in self.messages[-20:]]
                    raise AssertionError(f"no matching {suffix} in {timeout_s} s; last: {seen}")
                self._cond.wait(remaining)

    def mark(self) -> int:
        """An index to pass as `after`: only messages received from now on count."""
        with self._cond:
            return len(self.messages)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()


class InstalledBench:
    """A sandbox with the product installed by its installer and a broker running."""

    def __init__(self, box: SystemdSandbox, workdir: Path) -> None:
        self.box = box
        self.workdir = workdir
        self.broker_port = self._free_port()
        self._recorder: SandboxRecorder | None = None

    @property
    def recorder(self) -> SandboxRecorder:
        assert self._recorder is not None, "start_broker() first"
        return self._recorder

    def _free_port(self) -> int:
        probe = (
            "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0));"
            " print(s.getsockname()[1])"
        )
        return int(self.box.run(["python3", "-c", probe]).stdout)

    def start_broker(self) -> None:
        conf = self.box.path("/etc/bench-sandbox/mosquitto.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n")
        self.box.run(
            [
                "systemd-run",
                f"--unit={BROKER_UNIT}",
                "mosquitto",
                "-c",
                "/etc/bench-sandbox/mosquitto.conf",
            ]
        )
        probe = (
            "import socket, time\n"
            "for _ in range(200):\n"
            f"    try: socket.create_connection(('127.0.0.1', {self.broker_port}), 0.1); break\n"
            "    except OSError: time.sleep(0.05)\n"
            "else: raise SystemExit('broker not listening')\n"
        )
        self.box.run(["python3", "-c", probe])
        self._recorder = SandboxRecorder(self.box, self.broker_port, self.workdir / "sub.log")

    def write_config(
        self, changes: Mapping[str, Any] | None = None, *, text: str | None = None
    ) -> None:
        """Replace the installed config's content (its owner and mode stay the installer's)."""
        path = self.box.path(INSTALLED_CONFIG)
        path.write_text(sandbox_bench_config(self.broker_port, changes) if text is None else text)

    def write_password(self) -> None:
        path = self.box.path(PASSWORD_FILE)
        path.write_text(SECRET_PASSWORD + "\n")
        self.box.run(["chown", "bench-agent:bench-agent", PASSWORD_FILE])
        self.box.run(["chmod", "0600", PASSWORD_FILE])

    def show(self, *properties: str) -> dict[str, str]:
        return self.box.show(UNIT, *properties)

    def main_pid(self) -> int:
        return int(self.show("MainPID")["MainPID"])

    def wait_for_state(
        self, active: str, sub: str, timeout_s: float, *, new_pid_than: int = 0
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.show(
                "ActiveState", "SubState", "MainPID", "NRestarts", "Result", "ExecMainStatus"
            )
            pid = int(state["MainPID"])
            if (
                state["ActiveState"] == active
                and state["SubState"] == sub
                and (not new_pid_than or pid not in (0, new_pid_than))
            ):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{UNIT} not {active} ({sub}) in {timeout_s} s: {state}\n{self.journal_text()}"
                )
            time.sleep(0.1)

    def journal_text(self, *args: str) -> str:
        return self.box.run(
            ["journalctl", "-u", UNIT, "--no-pager", "-o", "short-monotonic", *args], check=False
        ).stdout

    def journal_json(self) -> list[dict[str, Any]]:
        out = self.box.run(["journalctl", "-u", UNIT, "--no-pager", "-o", "json"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def cli(self, command: str) -> subprocess.CompletedProcess[str]:
        """A technician's command inside the sandbox, with the installed console script."""
        return self.box.run(
            ["/opt/bench-agent/venv/bin/bench-agent", *shlex.split(command)], check=False
        )

    def close(self) -> None:
        if self._recorder is not None:
            self._recorder.close()


@contextlib.contextmanager
def installed_not_started(workdir: Path) -> Iterator[InstalledBench]:
    """A sandbox with a broker and the product installed by `install.sh --no-start`
    (this machine has no GPIO for the reference config's real backend), the MQTT
    password in place; the caller writes the config it needs and starts the unit."""
    missing = wheelhouse_missing()
    if missing:
        pytest.fail(missing)
    with SystemdSandbox(workdir) as box:
        installed = InstalledBench(box, workdir)
        try:
            installed.start_broker()
            first = run_installer(box, "--no-start")
            assert first.returncode == 0, first.stdout + first.stderr
            installed.write_password()
            yield installed
        finally:
            installed.close()


@contextlib.contextmanager
def city_sandbox(workdir: Path) -> Iterator[tuple[SystemdSandbox, int]]:
    """A sandbox set up as the README's city machine (the `bench-ops` user, the venv of
    `/opt/bench-ops` from the lock and a clean copy of the package, `/etc/bench-ops`)
    with a mosquitto that systemd runs on a free port: (the sandbox, that port). The
    bridge's and the archive's unit tests each install their unit in it; one per
    session (conftest `city_box`), as installing the venv is most of its cost."""
    missing = wheelhouse_missing()
    if missing:
        pytest.fail(missing)
    with SystemdSandbox(workdir) as box:
        port = int(
            box.run(
                ["python3", "-c", "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0));"
                 " print(s.getsockname()[1])"]
            ).stdout
        )  # fmt: skip
        conf = box.path("/etc/bench-sandbox/mosquitto.conf")
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        box.run(["systemd-run", f"--unit={BROKER_UNIT}", "mosquitto", "-c",
                 str(conf.relative_to(box.path("/")))])  # fmt: skip
        box.sh(
            "useradd --system --user-group --no-create-home --home-dir /nonexistent"
            " --shell /usr/sbin/nologin bench-ops"
        )
        package = "/root/bench-ops-src"
        box.run(["mkdir", "-p", package])
        for name in ("pyproject.toml", "README.md", "bench_agent"):
            box.run(["cp", "-a", str(REPO / name), package])
        box.run(
            ["find", package, "-name", "__pycache__", "-prune", "-exec", "rm", "-rf", "{}", "+"]
        )
        pip = "/opt/bench-ops/venv/bin/python -m pip install -q --disable-pip-version-check"
        box.sh(
            f"python3 -m venv /opt/bench-ops/venv && {' '.join(installer_environment()[1:])}"
            f" {pip} --use-pep517 --require-hashes -r {REPO}/deploy/requirements.lock &&"
            f" {pip} --no-deps --no-build-isolation {package}",
            timeout_s=600,
        )
        assert WHEELHOUSE.is_dir()
        box.run(["install", "-d", "-m", "0750", "-g", "bench-ops", "/etc/bench-ops"])
        yield box, port


def install_unit(box: SystemdSandbox, unit: Path, conf: str, flags: str) -> None:
    """`unit` byte for byte in /etc/systemd/system, its flags file `conf` (0640
    root:bench-ops, one `NAME=flags` line), and systemd told."""
    box.path(conf).write_text(f"{flags}\n")
    box.run(["chgrp", "bench-ops", conf])
    box.run(["chmod", "0640", conf])
    box.path(f"/etc/systemd/system/{unit.name}").write_bytes(unit.read_bytes())
    box.systemctl("daemon-reload")
