"""The archive's unit (deploy/bench-ops-archive.service) and its example flags
(deploy/bench-ops-archive.conf): the file itself (exposure, verify, directives), its
ExecStart exactly as written run with the shipped flags through the shipped broker
configuration (TLS, the ops.archive ACL), and the unit under a real systemd in a
sandbox: hardened, its SQLite archive in its own state directory, and after kill -9
of its main process restarted with nothing lost.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench_agent.ops.archive_db import open_store
from tests.archive_support import ArchiveProcess
from tests.bridge_support import batches, captured_records
from tests.deploy_support import install_unit
from tests.ops_unit_support import (
    INSTALLED_EXEC,
    check_exposure_and_verify,
    environment_file,
    exec_start,
)
from tests.support import REPO, wait_until
from tests.systemd_sandbox import SystemdSandbox, unavailable_reason
from tests.test_broker_acl import Client, _pki, _running_broker
from tests.test_deploy_bridge import PUBLISHER
from tests.test_deploy_unit import directives, needs_analyze, unexplained_directives

UNIT = REPO / "deploy" / "bench-ops-archive.service"
CONF = REPO / "deploy" / "bench-ops-archive.conf"
INSTALLED_CONF = "/etc/bench-ops/archive.conf"
STATE_DIR = "/var/lib/bench-ops-archive"
MAX_EXPOSURE = 1.1  # as the bridge: what remains is the network it needs
RESTART_SEC = 5


# -- the file ------------------------------------------------------------------------


@needs_analyze
def test_exposure_and_verify(tmp_path: Path) -> None:
    check_exposure_and_verify(UNIT, MAX_EXPOSURE, tmp_path)


def test_key_directives_and_every_one_explained() -> None:
    d = directives(UNIT.read_text())
    unit, service = d["Unit"], d["Service"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} archive $ARCHIVE_ARGS"]
    assert service["EnvironmentFile"] == [INSTALLED_CONF]
    assert service["Type"] == ["notify"] and service["Restart"] == ["always"]
    assert service["RestartPreventExitStatus"] == ["64"]
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert service["User"] == ["bench-ops"] and "DynamicUser" not in service
    assert service["StateDirectory"] == ["bench-ops-archive"]
    assert service["StateDirectoryMode"] == ["0700"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["ProtectSystem"] == ["strict"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "PrivateUsers"):
        assert service[key] == ["yes"], key
    assert unexplained_directives(UNIT.read_text()) == []
    assert unexplained_directives(CONF.read_text()) == []
    # The shipped flags keep the SQLite archive where the unit may write.
    args = environment_file(CONF.read_text())["ARCHIVE_ARGS"]
    assert f"--db {STATE_DIR}/archive.sqlite" in args


# -- the command line, through the shipped broker configuration ------------------------


def test_the_units_command_line_with_the_shipped_flags_archives_through_the_shipped_broker(
    tmp_path: Path,
) -> None:
    """ExecStart exactly as written, $ARCHIVE_ARGS from the shipped example with only
    its host, port and file paths changed; the broker is deploy/broker's (TLS, client
    certificates, the ACL's ops.archive) with certificates from make-pki.sh."""
    pki, persist = tmp_path / "pki", tmp_path / "persist"
    persist.mkdir()
    _pki(pki, "ca")
    _pki(pki, "broker", "localhost", "127.0.0.1")
    for name in ("bench-a", "ops.archive"):
        _pki(pki, "client", name)
    db = tmp_path / "archive.sqlite"
    with _running_broker(tmp_path, pki, persist) as broker:
        args = environment_file(CONF.read_text())["ARCHIVE_ARGS"]
        args = args.replace(
            "--host mqtt.example.go.id --port 8883", f"--host localhost --port {broker.port}"
        )
        args = args.replace("/etc/bench-ops/", f"{pki}/").replace(f"{STATE_DIR}/", f"{tmp_path}/")
        argv = exec_start(UNIT, {"ARCHIVE_ARGS": args + " --status-interval 1"})
        bench = Client(broker, "bench-a").start()
        archive = ArchiveProcess(broker.port, tmp_path, str(db), "ops.archive", argv=argv)
        try:
            assert bench.connected.wait(5)
            archive.wait_subscribed()
            records = []
            for kind, record in captured_records()[:10]:
                if "bench" in record:
                    record["bench"] = "bench-a"
                records.append((kind, record))
            for payload in batches(records, "bench-a"):
                bench.client.publish("smartbench/bench-a/v2", payload, qos=1).wait_for_publish(5)

            def seqs() -> list[int]:
                with open_store(db) as store:
                    return [s for _, _, s in store.stored_keys("bench-a")]

            wait_until(lambda: seqs() == list(range(1, 11)), 20, "the ten records archived")
            assert archive.stop() == 0
        finally:
            archive.kill()
            bench.stop()
    assert "refused" not in archive.log and "Traceback" not in archive.log, archive.log


# -- under a real systemd ----------------------------------------------------------------


@pytest.fixture(scope="module")
def archive_box(city_box: tuple[SystemdSandbox, int]) -> tuple[SystemdSandbox, int]:
    """The city sandbox (the README's install steps, a mosquitto) with the archive's
    unit byte for byte and its flags file."""
    box, port = city_box
    flags = f"--host 127.0.0.1 --port {port} --client-id sandbox-archive --no-share"
    flags += f" --status-interval 1 --max-rate 2000 --db {STATE_DIR}/archive.sqlite"
    install_unit(box, UNIT, INSTALLED_CONF, f"ARCHIVE_ARGS={flags}")
    return box, port


def _state(box: SystemdSandbox) -> dict[str, str]:
    return box.show("bench-ops-archive.service", "ActiveState", "SubState", "MainPID", "NRestarts")


@pytest.mark.integration
# The city sandbox is one per session (tests/conftest.py): under pytest-xdist this test
# and the other unit's share a worker, so it is set up once, not once per worker.
@pytest.mark.xdist_group("city-sandbox")
@pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no systemd sandbox: {unavailable_reason()}"
)
def test_under_systemd_it_is_confined_and_a_kill_9_is_restarted_with_nothing_lost(
    archive_box: tuple[SystemdSandbox, int], tmp_path: Path
) -> None:
    box, port = archive_box
    publisher: subprocess.Popen[bytes] | None = None

    def journal() -> str:
        return box.run(
            ["journalctl", "-u", "bench-ops-archive", "--no-pager", "-o", "cat"], check=False
        ).stdout

    # Read inside the sandbox: SQLite resolves /proc/PID/root, the host's way in, to "/".
    count = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=10);"
        " print(*(s for (s,) in c.execute('SELECT seq FROM bench_records')))"
    )

    def seqs() -> set[int]:
        if not box.path(f"{STATE_DIR}/archive.sqlite").exists():
            return set()
        out = box.run(["python3", "-c", count, f"{STATE_DIR}/archive.sqlite"]).stdout
        return {int(s) for s in out.split()}

    try:
        started = box.systemctl("start", "bench-ops-archive.service", check=False)
        assert started.returncode == 0, journal()  # Type=notify: READY=1 came
        state = _state(box)
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        pid = state["MainPID"]
        status = box.run(["cat", f"/proc/{pid}/status"]).stdout
        fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.MULTILINE))
        uid = box.run(["id", "-u", "bench-ops"]).stdout.strip()
        assert fields["Uid"].split()[0] == uid
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        security = box.run(
            ["systemd-analyze", "security", "bench-ops-archive.service", "--no-pager"]
        ).stdout
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", security)
        assert score is not None and float(score.group(1)) <= MAX_EXPOSURE, security
        wait_until(lambda: "subscribed:" in journal(), 20, "the archive subscribed")
        # Its state directory: its own, 0700; the archive file in it.
        listing = box.run(["stat", "-c", "%a %U", STATE_DIR, f"{STATE_DIR}/archive.sqlite"])
        assert listing.stdout.split("\n")[:2] == ["700 bench-ops", "600 bench-ops"], listing.stdout

        payloads = box.path("/root/batches.hex")
        payloads.write_text("\n".join(p.hex() for p in batches(captured_records()[:1000])) + "\n")
        box.path("/root/publisher.py").write_text(PUBLISHER)
        publisher = box.start(
            ["/opt/bench-ops/venv/bin/python", "/root/publisher.py", str(port),
             "/root/batches.hex"],
            tmp_path / "publisher.out",
        )  # fmt: skip
        wait_until(lambda: len(seqs()) >= 200, 30, "records through the unit")
        box.run(["kill", "-9", pid])  # mid-stream
        wait_until(
            lambda: (
                _state(box)["MainPID"] not in ("0", pid) and _state(box)["SubState"] == "running"
            ),
            RESTART_SEC + 30,
            "the unit restarted",
        )
        assert int(_state(box)["NRestarts"]) == int(state["NRestarts"]) + 1
        assert publisher.wait(120) == 0, (tmp_path / "publisher.out").read_text()
        wait_until(lambda: seqs() == set(range(1, 1001)), 60, "every record after kill -9")
        text = journal()
        for refused in ("Operation not permitted", "Permission denied", "Bad system call",
                        "Traceback"):  # fmt: skip
            assert refused not in text, text
        box.systemctl("stop", "bench-ops-archive.service")
        assert box.show("bench-ops-archive.service", "Result")["Result"] == "success"
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
