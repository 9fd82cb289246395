"""The central broker's configuration, proven against a real mosquitto.

A PKI is made with deploy/broker/make-pki.sh, mosquitto runs deploy/broker/
mosquitto.conf (only the port, the loopback bind and the file paths changed)
with deploy/broker/acl, and paho-mqtt 2.x clients with client certificates
show that one bench cannot speak for, or listen to, another, that a stranger
certificate cannot connect, that a stolen certificate takes over nothing but
its own bench, that a revoked one cannot connect, and that ops can watch (ops.view)
or command (ops.command) every bench.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
from paho.mqtt.reasoncodes import ReasonCode  # noqa: E402

pytestmark = pytest.mark.integration

BROKER_DIR = Path(__file__).resolve().parent.parent / "deploy" / "broker"
WAIT_S = 5.0  # upper bound for anything that must happen; never slept through
PREFIX = "smartbench"

if shutil.which("mosquitto") is None or shutil.which("openssl") is None:
    pytest.skip(
        "mosquitto and openssl are needed (scripts/setup.sh installs them)", allow_module_level=True
    )


def _free_loopback_port() -> int:
    """A TCP port the kernel just handed out on 127.0.0.1 (tiny reuse race accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(directory: Path, *args: str) -> None:
    subprocess.run(
        [str(BROKER_DIR / "make-pki.sh"), str(directory), *args],
        check=True,
        capture_output=True,
        text=True,
    )


@dataclass(frozen=True)
class Broker:
    port: int
    pki: Path
    stranger_pki: Path


def _broker_conf(port: int, pki: Path, persist: Path) -> str:
    conf = (BROKER_DIR / "mosquitto.conf").read_text()
    replacements = {
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/etc/mosquitto/smartbench/acl": str(BROKER_DIR / "acl"),
        "/etc/mosquitto/smartbench/": f"{pki}/",
        "/var/lib/mosquitto/": f"{persist}/",
    }
    for old, new in replacements.items():
        assert old in conf, f"mosquitto.conf no longer contains {old!r}"
        conf = conf.replace(old, new)
    # mosquitto started as root drops to user "mosquitto", who cannot read the
    # test's private tmp directory; stay the user running the tests.
    return conf + f"\nuser {getpass.getuser()}\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("broker")
    pki, stranger, persist = base / "pki", base / "stranger-pki", base / "persist"
    persist.mkdir()
    _pki(pki, "ca")
    _pki(pki, "broker", "localhost", "127.0.0.1")
    for name in ("bench-a", "bench-b", "ops.view", "ops.command", "ops.bridge", "ops.archive"):
        _pki(pki, "client", name)
    # Same CN as a real bench, but from a CA the broker does not trust.
    _pki(stranger, "ca")
    _pki(stranger, "client", "bench-b")

    with _running_broker(base, pki, persist, stranger) as running:
        yield running


@contextlib.contextmanager
def _running_broker(
    base: Path, pki: Path, persist: Path, stranger: Path | None = None
) -> Iterator[Broker]:
    """The shipped mosquitto.conf on a free loopback port with this PKI, until the end."""
    port = _free_loopback_port()
    conf = base / "mosquitto.conf"
    conf.write_text(_broker_conf(port, pki, persist))
    log = (base / "mosquitto.log").open("w")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mosquitto exited {proc.returncode}: {(base / 'mosquitto.log').read_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mosquitto did not listen within 5 s")
                time.sleep(0.02)
        yield Broker(port, pki, stranger or pki)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Client:
    """A paho MQTT v5 client with a client certificate, recording what happens."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        *,
        pki: Path | None = None,
        username: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.publish_reasons: dict[int, ReasonCode] = {}
        self.suback_reasons: dict[int, list[ReasonCode]] = {}
        self._acked = threading.Condition()
        certs = pki or broker.pki
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{name}-{id(self)}",
            protocol=mqtt.MQTTv5,
        )
        # The CA that signed the broker is the real one even for a stranger client.
        self.client.tls_set(
            ca_certs=str(broker.pki / "ca.crt"),
            certfile=str(certs / f"{name}.crt"),
            keyfile=str(certs / f"{name}.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        if username is not None:
            self.client.username_pw_set(username)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self._broker = broker

    def _on_connect(
        self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        self.connect_reason = reason
        if not reason.is_failure:
            self.connected.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, _r: object, _p: object) -> None:
        self.disconnected.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.messages.put((msg.topic, msg.payload))

    def _on_publish(
        self, _c: object, _u: object, mid: int, reason: ReasonCode, _p: Properties
    ) -> None:
        with self._acked:
            self.publish_reasons[mid] = reason
            self._acked.notify_all()

    def _on_subscribe(
        self, _c: object, _u: object, mid: int, reasons: list[ReasonCode], _p: Properties
    ) -> None:
        with self._acked:
            self.suback_reasons[mid] = reasons
            self._acked.notify_all()

    def start(self) -> Client:
        self.client.connect("127.0.0.1", self._broker.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload: str) -> ReasonCode:
        """Publish at QoS 1; return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.publish_reasons, WAIT_S)
            return self.publish_reasons[info.mid]

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1; return the broker's SUBACK reason code."""
        _, mid = self.client.subscribe(topic, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.suback_reasons, WAIT_S)
            return self.suback_reasons[mid][0]

    def receive_until(self, topic: str) -> list[tuple[str, bytes]]:
        """All messages received up to and including the first on `topic`.

        The broker delivers one publisher's messages in order, so a control
        message published last proves that nothing published before it is
        still on its way: no sleeping, no flakiness.
        """
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + WAIT_S
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"control message on {topic} never arrived; got {got}"
            item = self.messages.get(timeout=remaining)
            got.append(item)
            if item[0] == topic:
                return got


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    started: dict[str, Client] = {}
    try:
        for name in ("bench-a", "bench-b", "ops.view", "ops.command"):
            started[name] = Client(broker, name).start()
            assert started[name].connected.wait(WAIT_S), f"{name} could not connect"
        yield started
    finally:
        for c in started.values():
            c.stop()


def t(bench: str, leaf: str) -> str:
    return f"{PREFIX}/{bench}/{leaf}"


def test_bench_cannot_publish_as_another_bench(clients: dict[str, Client]) -> None:
    a, ops = clients["bench-a"], clients["ops.view"]
    assert ops.subscribe(f"{PREFIX}/#").value < 0x80

    for leaf in ("status", "v2", "telemetry", "event", "state", "cmd/reply"):
        # MQTT v5 lets the broker say so: PUBACK "Not authorized" (0x87).
        assert a.publish(t("bench-b", leaf), "forged").value == 0x87
    assert a.publish(t("bench-a", "cmd"), "self-command").value == 0x87  # benches never command
    assert a.publish(t("bench-a", "v2"), "own batch").value == 0x00
    assert a.publish(t("bench-a", "telemetry"), "own").value == 0x00

    got = ops.receive_until(t("bench-a", "telemetry"))
    assert got == [(t("bench-a", "v2"), b"own batch"), (t("bench-a", "telemetry"), b"own")]


def test_bench_reads_only_its_own_commands(clients: dict[str, Client]) -> None:
    a, b, ops = clients["bench-a"], clients["bench-b"], clients["ops.command"]
    a.subscribe(t("bench-b", "cmd"))  # accepted or refused, it must never deliver
    assert a.subscribe(t("bench-a", "cmd")).value < 0x80
    assert b.subscribe(t("bench-b", "cmd")).value < 0x80

    # Ops commands both benches; each gets its own command and only that.
    assert ops.publish(t("bench-b", "cmd"), '{"id": "2", "cmd": "usb_off"}').value == 0x00
    assert ops.publish(t("bench-a", "cmd"), '{"id": "1", "cmd": "usb_on"}').value == 0x00

    assert a.receive_until(t("bench-a", "cmd")) == [
        (t("bench-a", "cmd"), b'{"id": "1", "cmd": "usb_on"}')
    ]
    assert b.receive_until(t("bench-b", "cmd")) == [
        (t("bench-b", "cmd"), b'{"id": "2", "cmd": "usb_off"}')
    ]


def test_wildcard_subscription_sees_nothing_of_other_benches(clients: dict[str, Client]) -> None:
    a, b, ops = clients["bench-a"], clients["bench-b"], clients["ops.command"]
    a.subscribe("#")
    a.subscribe(f"{PREFIX}/+/+")

    assert b.publish(t("bench-b", "telemetry"), "b-data").value == 0x00
    assert b.publish(t("bench-b", "status"), '{"online": true}').value == 0x00
    assert ops.publish(t("bench-b", "cmd"), "for-b").value == 0x00
    assert ops.publish(t("bench-a", "cmd"), "for-a").value == 0x00  # the control message

    got = a.receive_until(t("bench-a", "cmd"))
    assert all("bench-b" not in topic for topic, _ in got), got


def test_username_is_the_certificate_not_what_the_client_claims(broker: Broker) -> None:
    # use_identity_as_username: bench-a asking to be ops stays bench-a.
    pretender = Client(broker, "bench-a", username="ops.command").start()
    try:
        assert pretender.connected.wait(WAIT_S)
        assert pretender.publish(t("bench-b", "cmd"), "reboot").value == 0x87
    finally:
        pretender.stop()


def test_certificate_from_another_ca_cannot_connect(broker: Broker) -> None:
    stranger = Client(broker, "bench-b", pki=broker.stranger_pki)
    try:
        try:
            stranger.start()
        except (ssl.SSLError, OSError):
            return  # refused during the handshake: the expected outcome with TLS 1.2
        # With TLS 1.3 the client may finish its side of the handshake before
        # the broker rejects the certificate; then the session must die unconnected.
        assert stranger.disconnected.wait(WAIT_S) or not stranger.connected.is_set()
        assert not stranger.connected.is_set()
    finally:
        stranger.stop()


def test_client_without_certificate_cannot_connect(broker: Broker) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="no-cert", protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(broker.pki / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    connected = threading.Event()

    def on_connect(_c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if not reason.is_failure:
            connected.set()

    c.on_connect = on_connect
    try:
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        assert not connected.wait(1.0)
    except (ssl.SSLError, OSError):
        pass
    finally:
        c.loop_stop()


def test_pki_keys_are_private_and_names_are_checked(tmp_path: Path) -> None:
    _pki(tmp_path, "ca")
    _pki(tmp_path, "client", "bench-7")
    for key in ("ca.key", "bench-7.key"):
        assert (tmp_path / key).stat().st_mode & 0o777 == 0o600
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(tmp_path / "bench-7.crt"), "-noout", "-subject"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "CN = bench-7" in subject or "CN=bench-7" in subject
    # Re-running keeps the existing certificate (a bench's identity must not change).
    before = (tmp_path / "bench-7.crt").read_bytes()
    _pki(tmp_path, "client", "bench-7")
    assert (tmp_path / "bench-7.crt").read_bytes() == before
    # Names that would break ACL substitution or collide are refused, and so are
    # the reserved "ops" and anything that looks like an ops identity but is not one.
    for bad in (
        "a/b",
        "+",
        "#",
        "Bench",
        "ca",
        "crl",
        "-x",
        "ops",
        "ops.admin",
        "ops.view/x",
        "ops.bridger",
    ):
        r = subprocess.run(
            [str(BROKER_DIR / "make-pki.sh"), str(tmp_path), "client", bad],
            check=False,
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0, bad


def test_the_bridge_reads_v2_batches_shared_and_writes_only_under_the_v1_prefix(
    broker: Broker,
) -> None:
    """ops.bridge (`bench-ops bridge`): a bench's v2 batch reaches it through a shared
    subscription; what it writes under smartbench-v1/ reaches ops.view; it can speak
    for no bench, and no bench can write under smartbench-v1/."""
    started = [Client(broker, name).start() for name in ("bench-a", "ops.bridge", "ops.view")]
    a, bridge, view = started
    try:
        for c in started:
            assert c.connected.wait(WAIT_S)
        assert bridge.subscribe(f"$share/bench-ops-bridge/{PREFIX}/+/v2").value < 0x80
        assert view.subscribe("smartbench-v1/#").value < 0x80
        assert a.publish(t("bench-a", "v2"), "batch").value == 0x00
        assert bridge.receive_until(t("bench-a", "v2")) == [(t("bench-a", "v2"), b"batch")]
        assert bridge.publish("smartbench-v1/bench-a/telemetry", "v1").value == 0x00
        assert view.receive_until("smartbench-v1/bench-a/telemetry") == [
            ("smartbench-v1/bench-a/telemetry", b"v1")
        ]
        for leaf in ("telemetry", "v2", "status", "cmd"):
            assert bridge.publish(t("bench-a", leaf), "forged").value == 0x87
        assert a.publish("smartbench-v1/bench-a/telemetry", "forged").value == 0x87
        assert a.publish(t("bench-b", "v2"), "forged").value == 0x87
    finally:
        for c in started:
            c.stop()


def test_the_archive_reads_every_benchs_records_shared_and_writes_nothing(
    broker: Broker,
) -> None:
    """ops.archive (`bench-ops archive`): a bench's v2 batch, contract-1 telemetry and
    event reach it through shared subscriptions; it cannot read commands, nor write."""
    started = [Client(broker, name).start() for name in ("bench-a", "ops.archive")]
    a, archive = started
    try:
        for c in started:
            assert c.connected.wait(WAIT_S)
        for leaf in ("v2", "telemetry", "event"):
            assert archive.subscribe(f"$share/bench-ops-archive/{PREFIX}/+/{leaf}").value < 0x80
        for leaf in ("v2", "telemetry", "event"):
            assert a.publish(t("bench-a", leaf), leaf).value == 0x00
            assert archive.receive_until(t("bench-a", leaf)) == [
                (t("bench-a", leaf), leaf.encode())
            ]
        # Granted (mosquitto checks reads per message), but nothing but records comes.
        assert archive.subscribe(f"{PREFIX}/+/cmd/reply").value < 0x80
        assert archive.subscribe(f"{PREFIX}/+/state").value < 0x80
        assert a.publish(t("bench-a", "cmd/reply"), "reply").value == 0x00
        assert a.publish(t("bench-a", "state"), "state").value == 0x00
        assert a.publish(t("bench-a", "v2"), "marker").value == 0x00
        assert archive.receive_until(t("bench-a", "v2")) == [(t("bench-a", "v2"), b"marker")]
        for topic in (t("bench-a", "v2"), t("bench-a", "cmd"), "smartbench-v1/bench-a/event"):
            assert archive.publish(topic, "forged").value == 0x87
    finally:
        for c in started:
            c.stop()


def test_ops_view_reads_but_cannot_command(clients: dict[str, Client]) -> None:
    view, a = clients["ops.view"], clients["bench-a"]
    assert view.publish(t("bench-a", "cmd"), "reboot").value == 0x87  # not authorized
    assert a.subscribe(t("bench-a", "cmd")).value < 0x80
    assert clients["ops.command"].publish(t("bench-a", "cmd"), "control").value == 0x00
    got = a.receive_until(t("bench-a", "cmd"))
    assert [payload for _, payload in got] == [b"control"]  # never the "reboot"


def test_ops_command_sends_to_a_glob_of_benches_under_the_shipped_acl(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench-ops send --bench 'bench-*'` as ops.command: the wildcard subscriptions it
    makes for a glob (`+/status`, `+/cmd/reply`) are within ops.command's ACL, and each
    bench (its own certificate, the real CommandProcessor) gets its command and answers."""
    from bench_agent.ops.opsctl import main
    from tests.ops_support import FakeControl, Responder, processor_for

    assert main(["keygen", "--out", str(tmp_path), "--key-id", "ops-1"]) == 0
    capsys.readouterr()
    benches = []
    try:
        for name in ("bench-a", "bench-b"):
            processor = processor_for(name, tmp_path / "ops-1.pub", tmp_path, FakeControl())
            tls_client = Client(broker, name).client  # its certificate; Responder's callbacks
            benches.append(Responder(broker.port, processor, client=tls_client))
        argv = ["send", "--host", "127.0.0.1", "--port", str(broker.port)]
        argv += ["--tls-ca", str(broker.pki / "ca.crt")]
        argv += ["--tls-cert", str(broker.pki / "ops.command.crt")]
        argv += ["--tls-key", str(broker.pki / "ops.command.key")]
        argv += ["--key", str(tmp_path / "ops-1.key"), "--key-id", "ops-1"]
        assert main([*argv, "--bench", "bench-*", "--timeout", "5", "--json", "ping"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert [(b["bench"], b["outcome"]) for b in doc["benches"]] == [
            ("bench-a", "ok"),
            ("bench-b", "ok"),
        ]
    finally:
        for bench in benches:
            bench.close()  # clears its retained status: the broker serves the module


def test_a_stolen_certificate_cannot_knock_another_bench_off(broker: Broker) -> None:
    # bench-a online under the client id its agent uses by default.
    victim = Client(broker, "bench-a", client_id="bench-agent-bench-a").start()
    thief = None
    try:
        assert victim.connected.wait(WAIT_S)
        # bench-b's stolen certificate, claiming bench-a's client id.
        thief = Client(broker, "bench-b", client_id="bench-agent-bench-a").start()
        assert thief.connected.wait(WAIT_S)
        # use_username_as_clientid: the thief's session is "bench-b", not bench-a's.
        assert not victim.disconnected.wait(1.5), "bench-a was kicked off"
        assert victim.publish(t("bench-a", "telemetry"), "still here").value < 0x80
    finally:
        victim.stop()
        if thief is not None:
            thief.stop()


def test_a_revoked_certificate_cannot_connect(tmp_path: Path) -> None:
    pki, persist = tmp_path / "pki", tmp_path / "persist"
    persist.mkdir()
    _pki(pki, "ca")
    _pki(pki, "broker", "localhost", "127.0.0.1")
    for name in ("bench-a", "bench-b"):
        _pki(pki, "client", name)
    _pki(pki, "revoke", "bench-b")
    with _running_broker(tmp_path, pki, persist) as broker:
        good = Client(broker, "bench-a").start()
        try:
            assert good.connected.wait(WAIT_S)
        finally:
            good.stop()
        revoked = Client(broker, "bench-b")
        try:
            try:
                revoked.start()
            except (ssl.SSLError, OSError):
                return  # refused in the handshake
            assert not revoked.connected.wait(1.5), "a revoked certificate connected"
        finally:
            revoked.stop()


def test_the_agent_refuses_an_ops_identity_as_its_bench_id(tmp_path: Path) -> None:
    from bench_agent.config_loader import load_config
    from bench_agent.errors import ConfigError
    from tests.support import MINIMAL_CONFIG

    for reserved in ("ops", "ops.view", "ops.command"):
        path = tmp_path / "bench.toml"
        path.write_text(MINIMAL_CONFIG.replace('id = "b1"', f'id = "{reserved}"'))
        with pytest.raises(ConfigError, match=r"bench\.id"):
            load_config(path)
