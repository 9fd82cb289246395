"""The bridge's unit (deploy/bench-ops-bridge.service) and its example flags
(deploy/bench-ops-bridge.conf): the file itself (exposure, verify, directives), its
ExecStart exactly as written run with the shipped flags through the shipped broker
configuration (TLS, ACL), and the unit under a real systemd in a sandbox: hardened,
and after kill -9 of its main process restarted with nothing lost.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.bridge_support import BridgeProcess, batches, captured_records
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
from tests.test_deploy_unit import directives, needs_analyze, unexplained_directives

UNIT = REPO / "deploy" / "bench-ops-bridge.service"
CONF = REPO / "deploy" / "bench-ops-bridge.conf"
INSTALLED_CONF = "/etc/bench-ops/bridge.conf"
MAX_EXPOSURE = 1.1  # what remains is the network it needs (and ProtectClock's rtc read)
RESTART_SEC = 5  # the unit's RestartSec=


# -- the file ------------------------------------------------------------------------


@needs_analyze
def test_exposure_and_verify(tmp_path: Path) -> None:
    check_exposure_and_verify(UNIT, MAX_EXPOSURE, tmp_path)


def test_key_directives_and_every_one_explained() -> None:
    d = directives(UNIT.read_text())
    unit, service = d["Unit"], d["Service"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} bridge $BRIDGE_ARGS"]
    assert service["EnvironmentFile"] == [INSTALLED_CONF]
    assert service["Type"] == ["notify"]
    assert service["Restart"] == ["always"]
    assert service["RestartPreventExitStatus"] == ["64"]  # a bad flag
    assert unit["StartLimitIntervalSec"] == ["0"]
    assert service["User"] == ["bench-ops"] and "DynamicUser" not in service
    assert service["CapabilityBoundingSet"] == [""]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert service["ProtectSystem"] == ["strict"]
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome", "PrivateUsers"):
        assert service[key] == ["yes"], key
    assert unexplained_directives(UNIT.read_text()) == []
    assert unexplained_directives(CONF.read_text()) == []


# -- the command line, through the shipped broker configuration ------------------------


def test_the_units_command_line_with_the_shipped_flags_bridges_through_the_shipped_broker(
    tmp_path: Path,
) -> None:
    """ExecStart exactly as written, $BRIDGE_ARGS from the shipped example with only its
    host, port and file paths changed; the broker is deploy/broker's (TLS, client
    certificates, the ACL) with certificates from make-pki.sh."""
    pki, persist = tmp_path / "pki", tmp_path / "persist"
    persist.mkdir()
    _pki(pki, "ca")
    _pki(pki, "broker", "localhost", "127.0.0.1")
    for name in ("bench-a", "ops.bridge", "ops.view"):
        _pki(pki, "client", name)
    with _running_broker(tmp_path, pki, persist) as broker:
        args = environment_file(CONF.read_text())["BRIDGE_ARGS"]
        assert "--host mqtt.example.go.id --port 8883" in args
        args = args.replace(
            "--host mqtt.example.go.id --port 8883", f"--host localhost --port {broker.port}"
        )
        args = args.replace("/etc/bench-ops/", f"{pki}/") + " --status-interval 1"
        argv = exec_start(UNIT, {"BRIDGE_ARGS": args})
        view = Client(broker, "ops.view").start()
        bench = Client(broker, "bench-a").start()
        bridge = BridgeProcess(broker.port, tmp_path, "ops.bridge", argv=argv)
        seen: list[tuple[str, bytes]] = []

        def payloads(topic_end: str) -> list[dict[str, Any]]:
            while not view.messages.empty():
                seen.append(view.messages.get())
            return [json.loads(p) for t, p in seen if t.endswith(topic_end)]

        try:
            assert view.connected.wait(5) and bench.connected.wait(5)
            assert view.subscribe("smartbench-v1/#").value < 0x80
            wait_until(lambda: payloads("/_bridge/ops.bridge"), 20, "the bridge online")
            records = []
            for kind, record in captured_records()[:10]:
                if "bench" in record:
                    record["bench"] = "bench-a"
                records.append((kind, record))
            bench.client.publish("smartbench/bench-a/state", b'{"v":1}', qos=1, retain=True)
            for payload in batches(records, "bench-a"):
                bench.client.publish("smartbench/bench-a/v2", payload, qos=1).wait_for_publish(5)

            def seqs() -> set[int]:
                telemetry = payloads("/bench-a/telemetry")
                events = payloads("/bench-a/event")
                return {r["seq"] for m in telemetry for r in m["records"]} | {
                    e["seq"] for e in events
                }

            wait_until(lambda: seqs() == set(range(1, 11)), 20, "the ten records at ops.view")
            assert payloads("/bench-a/state") == [{"v": 1}]
            assert bridge.alive(), bridge.log
        finally:
            bridge.kill()
            view.stop()
            bench.stop()
    assert "refused" not in bridge.log and "Traceback" not in bridge.log, bridge.log


# -- under a real systemd ----------------------------------------------------------------

# Inside the sandbox: a bench stand-in publishing v2 batches (QoS 1, each acknowledged),
# paced so that the bridge is killed mid-stream.
PUBLISHER = textwrap.dedent(
    """
    import sys, time
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    port, path = int(sys.argv[1]), sys.argv[2]
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    for line in open(path):
        info = client.publish("smartbench/sim-bench-01/v2", bytes.fromhex(line.strip()), qos=1)
        info.wait_for_publish(10)
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
    print("published")
    """
)


@pytest.fixture(scope="module")
def bridge_box(city_box: tuple[SystemdSandbox, int]) -> tuple[SystemdSandbox, int]:
    """The city sandbox (the README's install steps, a mosquitto) with the bridge's unit
    byte for byte and its flags file."""
    box, port = city_box
    flags = f"--host 127.0.0.1 --port {port} --client-id sandbox-bridge --no-share"
    install_unit(box, UNIT, INSTALLED_CONF, f"BRIDGE_ARGS={flags} --status-interval 1")
    return box, port


def _state(box: SystemdSandbox) -> dict[str, str]:
    return box.show("bench-ops-bridge.service", "ActiveState", "SubState", "MainPID", "NRestarts")


@pytest.mark.integration
# The city sandbox is one per session (tests/conftest.py): under pytest-xdist this test
# and the other unit's share a worker, so it is set up once, not once per worker.
@pytest.mark.xdist_group("city-sandbox")
@pytest.mark.skipif(
    unavailable_reason() is not None, reason=f"no systemd sandbox: {unavailable_reason()}"
)
def test_under_systemd_it_is_confined_and_a_kill_9_is_restarted_with_nothing_lost(
    bridge_box: tuple[SystemdSandbox, int], tmp_path: Path
) -> None:
    box, port = bridge_box
    # A persistent v1 consumer inside the sandbox (its own network), then the unit.
    consumer_log = tmp_path / "consumer.out"
    consumer = box.start(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-c",
         "-i", "v1-consumer", "-x", "3600", "-q", "1", "-t", "smartbench-v1/+/telemetry",
         "-t", "smartbench-v1/+/event"],
        consumer_log,
    )  # fmt: skip
    publisher: subprocess.Popen[bytes] | None = None
    try:
        box.systemctl("start", "bench-ops-bridge.service")  # Type=notify: READY=1 came
        state = _state(box)
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), state
        pid = state["MainPID"]
        status = box.run(["cat", f"/proc/{pid}/status"]).stdout
        fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.MULTILINE))
        assert fields["Uid"].split()[0] == box.run(["id", "-u", "bench-ops"]).stdout.strip()
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        security = box.run(
            ["systemd-analyze", "security", "bench-ops-bridge.service", "--no-pager"]
        ).stdout
        score = re.search(r"Overall exposure level for \S+: ([\d.]+)", security)
        assert score is not None and float(score.group(1)) <= MAX_EXPOSURE, security

        def journal() -> str:
            return box.run(
                ["journalctl", "-u", "bench-ops-bridge", "--no-pager", "-o", "cat"], check=False
            ).stdout

        wait_until(lambda: "connected to 127.0.0.1" in journal(), 20, "the bridge connected")
        # The TLS files the README installs (0640 root:bench-ops) are readable under the
        # unit's identity (PrivateUsers maps its own group), and nothing else of /etc is.
        key = box.path("/etc/bench-ops/probe.key")
        key.write_text("a key\n")
        box.run(["chgrp", "bench-ops", "/etc/bench-ops/probe.key"])
        box.run(["chmod", "0640", "/etc/bench-ops/probe.key"])
        identity = [
            arg
            for line in UNIT.read_text().splitlines()
            if line.startswith(
                ("User=", "Group=", "PrivateUsers=", "ProtectSystem=", "ProtectHome=")
            )
            for arg in ("-p", line)
        ]

        def read_as_the_unit(name: str, path: str) -> str:
            out = box.path(f"/run/probe-{name}.out")  # opened by systemd before it drops root
            output = ["-p", f"StandardOutput=file:/run/probe-{name}.out"]
            script = ["sh", "-c", f"cat {path} 2>&1; echo probed"]
            box.run(["systemd-run", f"--unit=probe-{name}", *identity, *output, *script])
            wait_until(
                lambda: out.exists() and "probed" in out.read_text(), 10, f"the probe of {path}"
            )
            return out.read_text()

        assert read_as_the_unit("key", "/etc/bench-ops/probe.key") == "a key\nprobed\n"
        assert "Permission denied" in read_as_the_unit("shadow", "/etc/shadow")

        records = captured_records()[:1000]
        payloads = box.path("/root/batches.hex")
        payloads.write_text("\n".join(p.hex() for p in batches(records)) + "\n")
        script = box.path("/root/publisher.py")
        script.write_text(PUBLISHER)
        publisher = box.start(
            [
                "/opt/bench-ops/venv/bin/python",
                "/root/publisher.py",
                str(port),
                "/root/batches.hex",
            ],
            tmp_path / "publisher.out",
        )

        def seqs() -> set[int]:
            found: set[int] = set()
            for line in consumer_log.read_text().splitlines():
                body = json.loads(line)
                if "records" in body:
                    found.update(r["seq"] for r in body["records"])
                else:
                    found.add(body["seq"])
            return found

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
        for refused in (
            "Operation not permitted",
            "Permission denied",
            "Bad system call",
            "Traceback",
        ):
            assert refused not in text, text
        box.systemctl("stop", "bench-ops-bridge.service")
        assert box.show("bench-ops-bridge.service", "Result")["Result"] == "success"
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        consumer.kill()
        consumer.wait()
