"""What the link itself costs, against real mosquitto processes on free loopback ports:
TLS session resumption on reconnect (and every way it must not weaken TLS), MQTT 5
topic aliases (subscribers still get full topics), the broker's Server Keep Alive
obeyed, and bench/bench_link_cost.py's quick mode. Bytes are counted by
bench/byte_proxy.py between the link and the broker.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from paho.mqtt.enums import MQTTErrorCode

from bench.byte_proxy import ByteProxy, Flow
from bench_agent.config import MqttConfig
from bench_agent.config_loader import load_config
from bench_agent.link.mqtt import (
    Acked,
    Connected,
    Disconnected,
    LinkEvent,
    MqttLink,
    Refused,
    Will,
)
from bench_agent.link.mqtt_savings import TopicAliases
from tests.support import Broker, Recorder, sim_config, wait_until
from tests.tls_broker import TlsBroker, have_tls_broker, make_pki, revoke

pytestmark = pytest.mark.integration

if not have_tls_broker():
    pytest.skip(
        "mosquitto and openssl are needed (scripts/setup.sh installs them)", allow_module_level=True
    )


class Events:
    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[LinkEvent] = queue.SimpleQueue()
        self.seen: list[LinkEvent] = []

    def next(self, kind: type, timeout_s: float = 10.0) -> LinkEvent:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(event)
            if isinstance(event, kind):
                return event
        raise AssertionError(f"no {kind.__name__} in {timeout_s} s")

    def connected(self, generation: int, timeout_s: float = 10.0) -> None:
        event = self.next(Connected, timeout_s)
        assert isinstance(event, Connected) and event.generation == generation

    def drain(self) -> list[LinkEvent]:
        with suppress(queue.Empty):
            while True:
                self.seen.append(self.queue.get_nowait())
        return self.seen


@contextmanager
def running_link(cfg: MqttConfig, **kwargs: bool) -> Iterator[tuple[MqttLink, Events]]:
    events = Events()
    link = MqttLink(
        cfg,
        will=Will(f"smartbench/{cfg.client_id}/status", b'{"online":false}'),
        subscriptions=[f"smartbench/{cfg.client_id}/cmd"],
        on_event=events.queue.put,
        **kwargs,
    )
    link.start()
    try:
        yield link, events
    finally:
        link.close()


def publish_acked(link: MqttLink, events: Events, topic: str, payload: bytes, **kw: bool) -> None:
    mid = link.publish(topic, payload, **kw)
    assert mid is not None
    while True:
        event = events.next(Acked)
        assert isinstance(event, Acked)
        if event.mid == mid:
            return


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), "bench-a")


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., TlsBroker]]:
    started: list[Broker] = []

    def start(pki: Path, extra: str = "") -> TlsBroker:
        workdir = tmp_path / f"broker-{len(started)}"
        workdir.mkdir()
        broker = TlsBroker(workdir, pki, extra)
        started.append(broker)
        broker.start()
        return broker

    yield start
    for broker in started:
        broker.stop()


@pytest.fixture
def proxies() -> Iterator[Callable[[int], ByteProxy]]:
    made: list[ByteProxy] = []

    def make(port: int) -> ByteProxy:
        made.append(ByteProxy(port))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def connection(proxy: ByteProxy, number: int) -> Flow:
    """The `number`th connection through the proxy once it has gone quiet (CONNACK, SUBACK)."""
    proxy.wait_for_flows(number)
    return proxy.wait_quiet(0.3)[number - 1]


# -- TLS session resumption -----------------------------------------------------


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "no-reuse"])
def test_a_reconnect_resumes_the_tls_session_with_the_benchs_identity(
    pki: Path,
    start_broker: Callable[..., TlsBroker],
    proxies: Callable[[int], ByteProxy],
    reuse: bool,
) -> None:
    broker = start_broker(pki)
    proxy = proxies(broker.port)
    with running_link(broker.link_config("bench-a", proxy.port), reuse_tls_sessions=reuse) as (
        link,
        events,
    ):
        events.connected(1)
        first = connection(proxy, 1)
        proxy.cut()
        events.connected(2)
        second = connection(proxy, 2)
        if reuse:
            # No certificates and no signatures: the broker's flight is a third of a
            # full one, and the whole connection about half (README, Figures).
            assert second.down < first.down / 2, (first, second)
            assert second.total < first.total * 0.6, (first, second)
        else:
            assert second.total > first.total * 0.95, (first, second)
        # The resumed session still carries the bench's certificate: the broker knows it
        # as bench-a (its ACL lets it publish its own topics and nobody else's).
        publish_acked(link, events, "smartbench/bench-a/event", b"{}")
        mid = link.publish("smartbench/bench-b/event", b"{}")
        refused = events.next(Refused)
        assert isinstance(refused, Refused) and refused.mid == mid
        assert link.generation == 2
    log = broker.log.read_text()
    assert log.count("as bench-a (p5, c1, k60, u'bench-a')") == 2


def test_a_ticket_the_broker_no_longer_knows_falls_back_to_a_full_handshake(
    pki: Path, start_broker: Callable[..., TlsBroker], proxies: Callable[[int], ByteProxy]
) -> None:
    """A restarted mosquitto has new ticket keys: the offered session is refused, the
    handshake is a full one, and the link connects; the next reconnect resumes again."""
    broker = start_broker(pki)
    proxy = proxies(broker.port)
    with running_link(broker.link_config("bench-a", proxy.port)) as (link, events):
        events.connected(1)
        full = connection(proxy, 1)
        proxy.cut()
        events.connected(2)
        resumed = connection(proxy, 2)
        assert resumed.total < full.total * 0.6
        broker.restart()  # attempts while it is down reach the proxy and are cut
        events.connected(3, 20)
        after_restart = proxy.wait_quiet(0.3)[-1]
        assert after_restart.down > full.down * 0.95, (full, after_restart)
        proxy.cut()
        events.connected(4)
        again = proxy.wait_quiet(0.3)[-1]
        assert again.total < full.total * 0.6, (full, again)
        publish_acked(link, events, "smartbench/bench-a/event", b"{}")


def test_a_revoked_certificate_cannot_come_back_on_a_resumed_session(
    tmp_path: Path, start_broker: Callable[..., TlsBroker], proxies: Callable[[int], ByteProxy]
) -> None:
    """README's revocation: the CRL is rewritten and mosquitto restarted; the restart
    also voids every ticket, so a stolen bench cannot resume its way back in."""
    own_pki = make_pki(tmp_path / "own-pki", "bench-a")
    broker = start_broker(own_pki)
    proxy = proxies(broker.port)
    with running_link(broker.link_config("bench-a", proxy.port)) as (link, events):
        events.connected(1)
        proxy.cut()
        events.connected(2)  # it holds a session the broker would resume
        revoke(own_pki, "bench-a")
        broker.restart()
        events.next(Disconnected)
        attempts = len(proxy.flows())
        time.sleep(3)  # ~10 attempts at 0.1-0.3 s backoff
        assert len(proxy.flows()) > attempts + 3  # it did try, and try again
        assert not link.connected and link.generation == 2
        assert "certificate verify failed" in broker.log.read_text()


def test_the_brokers_name_is_still_checked(
    pki: Path, start_broker: Callable[..., TlsBroker]
) -> None:
    """The broker's certificate names `localhost` only: a link to 127.0.0.1 is refused
    by the bench (the context of its own, not paho's tls_set, still checks the name)."""
    broker = start_broker(pki)
    cfg = broker.link_config("bench-a", broker.port, host="127.0.0.1")
    with running_link(cfg) as (link, _):
        wait_until(lambda: link.last_error is not None, 10, "the connect error")
        assert "mismatch" in str(link.last_error), link.last_error
        assert not link.connected


def _has_psk_extension(hello: bytes) -> bool:
    """Whether a TLS record holding a ClientHello offers a session (pre_shared_key, 41)."""
    at = 5 + 4 + 2 + 32  # record header, handshake header, version, random
    at += 1 + hello[at]  # session id
    at += 2 + int.from_bytes(hello[at : at + 2])  # cipher suites
    at += 1 + hello[at]  # compression methods
    end = at + 2 + int.from_bytes(hello[at : at + 2])
    at += 2
    while at + 4 <= end:
        kind, size = int.from_bytes(hello[at : at + 2]), int.from_bytes(hello[at + 2 : at + 4])
        if kind == 41:
            return True
        at += 4 + size
    return False


class AlertOnResumption:
    """A stand-in for a broker whose TLS stack fails a resumption attempt (OpenSSL does,
    with an internal_error alert, when a server that verifies client certificates set no
    session id context): a ClientHello that offers a session gets that alert; any other
    connection goes on to the real broker."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.alerts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, suppress(OSError):
            header = client.recv(5, socket.MSG_WAITALL)
            hello = header + client.recv(int.from_bytes(header[3:5]), socket.MSG_WAITALL)
            if _has_psk_extension(hello):
                self.alerts += 1
                client.sendall(bytes([21, 3, 3, 0, 2, 2, 80]))  # fatal internal_error
                return
            with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
                upstream.sendall(hello)
                back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
                back.start()
                self._pipe(client, upstream)
                back.join(5)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def test_a_broker_that_fails_on_resumption_gets_a_full_handshake_next(
    pki: Path, start_broker: Callable[..., TlsBroker], proxies: Callable[[int], ByteProxy]
) -> None:
    broker = start_broker(pki)
    picky = AlertOnResumption(broker.port)
    proxy = proxies(picky.port)
    try:
        with running_link(broker.link_config("bench-a", proxy.port)) as (link, events):
            events.connected(1)
            proxy.cut()
            # The offered session is answered with an alert: that attempt fails, the link
            # forgets the session and its next attempt is a full handshake, which connects.
            events.connected(2)
            assert picky.alerts == 1
            publish_acked(link, events, "smartbench/bench-a/event", b"{}")
    finally:
        picky.close()


# -- topic aliases ------------------------------------------------------------------


def plain_link_config(tmp_path: Path, port: int, **changes: object) -> MqttConfig:
    cfg = load_config(sim_config(tmp_path, port)).mqtt
    return replace(cfg, client_id="t", reconnect_min_s=0.1, reconnect_max_s=0.3, **changes)  # type: ignore[arg-type]


@pytest.fixture
def plain_broker(tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    started: list[Broker] = []

    def start(extra: str = "") -> Broker:
        workdir = tmp_path / f"plain-{len(started)}"
        workdir.mkdir()
        broker = Broker(workdir)
        broker.conf.write_text(broker.conf.read_text() + extra + "\n")
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


def sent_up(proxy: ByteProxy, send: Callable[[], None]) -> int:
    """Bytes the link sent to the broker while `send` ran (its PUBLISH), once quiet."""
    before = proxy.wait_quiet(0.2)[-1]
    send()
    return proxy.wait_quiet(0.2)[-1].minus(before).up


def test_each_topic_goes_once_per_connection_and_subscribers_get_full_topics(
    tmp_path: Path, plain_broker: Callable[[str], Broker], proxies: Callable[[int], ByteProxy]
) -> None:
    broker = plain_broker("")
    recorder = Recorder(broker.port, "smartbench/#")
    proxy = proxies(broker.port)
    telemetry, state = "smartbench/t/telemetry", "smartbench/t/state"
    payload = b'{"records":[' + b"1," * 250 + b"1]}"
    try:
        with running_link(plain_link_config(tmp_path, proxy.port)) as (link, events):
            events.connected(1)
            sizes = [
                sent_up(proxy, lambda: publish_acked(link, events, telemetry, payload))
                for _ in range(3)
            ]
            # The first PUBLISH carries the topic and its alias (3 bytes), the next ones
            # only the alias: the topic's bytes are saved on every message after the first.
            assert sizes[0] - sizes[1] == len(telemetry), sizes
            assert sizes[1] == sizes[2]
            for n in (1, 2):  # a retained message by alias, interleaved with another topic
                publish_acked(link, events, state, b'{"n":%d}' % n, retain=True)
            publish_acked(link, events, telemetry, payload)
            # Aliases live as long as the connection: after a reconnect the topic goes again
            # (were the old alias sent, mosquitto would drop the connection: protocol error).
            proxy.cut()
            events.connected(2)
            again = sent_up(proxy, lambda: publish_acked(link, events, telemetry, payload[::-1]))
            assert again == sizes[0], (again, sizes)
            time.sleep(0.3)
            assert link.generation == 2 and link.connected
        wait_until(lambda: len(recorder.on("telemetry")) == 5, 10, "every telemetry message")
        # (and the Last Will, sent by mosquitto when the proxy cut the connection)
        assert {m.topic for m in recorder.messages} == {telemetry, state, "smartbench/t/status"}
        assert [m.payload for m in recorder.on("telemetry")][-1] == payload[::-1]
        late = Recorder(broker.port, "smartbench/#")  # the retained state, by its full name
        try:
            retained = late.wait_for("state")
            assert retained == {"n": 2}
            assert [m.topic for m in late.on("state")] == [state]
        finally:
            late.close()
    finally:
        recorder.close()


@pytest.mark.parametrize(
    ("protocol", "extra"),
    [("5", "max_topic_alias 0"), ("3.1.1", "")],
    ids=["broker-allows-none", "mqtt-3.1.1"],
)
def test_without_aliases_every_message_carries_its_topic(
    tmp_path: Path,
    plain_broker: Callable[[str], Broker],
    proxies: Callable[[int], ByteProxy],
    protocol: str,
    extra: str,
) -> None:
    broker = plain_broker(extra)
    recorder = Recorder(broker.port, "smartbench/#")
    proxy = proxies(broker.port)
    topic = "smartbench/t/telemetry"
    try:
        cfg = plain_link_config(tmp_path, proxy.port, protocol=protocol)
        with running_link(cfg) as (link, events):
            events.connected(1)
            sizes = [
                sent_up(proxy, lambda: publish_acked(link, events, topic, b"{}")) for _ in range(3)
            ]
            assert sizes[0] == sizes[1] == sizes[2], sizes
            assert link.generation == 1
        wait_until(lambda: len(recorder.on("telemetry")) == 3, 10, "every message")
        assert {m.topic for m in recorder.messages} == {topic}
    finally:
        recorder.close()


def test_aliases_from_several_threads_and_more_topics_than_the_broker_allows(
    tmp_path: Path, plain_broker: Callable[[str], Broker]
) -> None:
    """The broker allows 3 aliases, 8 topics are published from 4 threads at once, often
    more than paho's queue takes (50): the first 3 topics get one, the others go by name,
    no PUBLISH ever names an alias the broker has not seen first (it would drop the
    connection), and every one taken arrives in full."""
    broker = plain_broker("max_topic_alias 3")
    recorder = Recorder(broker.port, "smartbench/#")
    topics = [f"smartbench/t/leaf{n}" for n in range(8)]
    try:
        with running_link(plain_link_config(tmp_path, broker.port)) as (link, events):
            events.connected(1)
            mids: list[int | None] = []

            def burst(start: int) -> None:
                for n in range(40):
                    mids.append(link.publish(topics[(start + n) % 8], b"%d" % n))

            threads = [threading.Thread(target=burst, args=(s,)) for s in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            taken = [m for m in mids if m is not None]
            assert len(taken) >= 50  # (how many more depends on how fast acks come back)
            wait_until(lambda: len(recorder.messages) == len(taken), 15, "every message taken")
            time.sleep(0.2)
            assert len(recorder.messages) == len(taken)
            assert not any(isinstance(e, Disconnected) for e in events.drain())
            assert link.generation == 1
        assert {m.topic for m in recorder.messages} == set(topics)
    finally:
        recorder.close()


class FakeClient:
    """paho's publish as the link sees it: what was sent, and a return code to give."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None]] = []
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, properties: object
    ) -> SimpleNamespace:
        self.sent.append((topic, getattr(properties, "TopicAlias", None)))
        return SimpleNamespace(rc=self.rc, mid=len(self.sent))


def test_an_alias_is_learnt_only_from_a_publish_paho_took(tmp_path: Path) -> None:
    """A PUBLISH paho refused (its queue full) never reached the broker: the next one of
    that topic must carry the name again, or the broker would get an alias it never saw."""
    link = MqttLink(
        plain_link_config(tmp_path, 1883),
        will=Will("s/t/status", b""),
        subscriptions=[],
        on_event=lambda _e: None,
    )
    client = FakeClient()
    link._client, link._connected, link._aliases = client, True, TopicAliases(2)  # type: ignore[assignment]
    client.rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
    assert link.publish("s/t/telemetry", b"1") is None
    client.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
    for topic in ("s/t/telemetry", "s/t/telemetry", "s/t/state", "s/t/event", "s/t/event"):
        assert link.publish(topic, b"1") is not None
    link.publish("s/t/state", b"1")
    assert client.sent == [
        ("s/t/telemetry", 1),  # refused
        ("s/t/telemetry", 1),  # so the name goes again
        ("", 1),
        ("s/t/state", 2),
        ("s/t/event", None),  # the broker allows 2: by name, every time
        ("s/t/event", None),
        ("", 2),
    ]


# -- the broker's Server Keep Alive ----------------------------------------------


def test_the_link_pings_at_the_brokers_server_keep_alive(
    pki: Path, start_broker: Callable[..., TlsBroker], proxies: Callable[[int], ByteProxy]
) -> None:
    """Asked for 60 s, mosquitto (max_keepalive 10, the least it takes) answers Server
    Keep Alive 10 in CONNACK: the idle bench's first PINGREQ reaches the broker 10 s
    after its last packet (at 60 s it would come after 60, and mosquitto would have
    dropped it at 15 s, its Last Will telling ops the bench was gone)."""
    broker = start_broker(pki, "max_keepalive 10")
    proxy = proxies(broker.port)
    cfg = broker.link_config("bench-a", proxy.port, keepalive_s=60)
    with running_link(cfg) as (link, events):
        events.connected(1)
        assert link.keepalive_s == 10
        quiet = proxy.wait_quiet(0.3)[-1]
        ping = wait_until(
            lambda: (f := proxy.last()).up > quiet.up and f, 14, "a PINGREQ at the broker"
        )
        assert ping.up - quiet.up == 24  # PINGREQ: 2 bytes in a TLS 1.3 record
        assert 9.5 <= ping.last_up - quiet.last_up <= 11.5, ping.last_up - quiet.last_up
        assert link.connected and link.generation == 1
        assert not any(isinstance(e, Disconnected) for e in events.drain())
        assert len(proxy.flows()) == 1


def test_a_silent_bench_is_declared_dead_after_one_and_a_half_keepalives(
    tmp_path: Path, plain_broker: Callable[[str], Broker], proxies: Callable[[int], ByteProxy]
) -> None:
    """The product's promise rests on this: a bench that goes silent (power lost: no
    FIN, nothing) gets its Last Will published by mosquitto 1.5 keepalives after the
    last packet it sent. Keepalive 6 s here; 540 s on a bench (README)."""
    broker = plain_broker("")
    recorder = Recorder(broker.port, "smartbench/t/status")
    proxy = proxies(broker.port)
    try:
        cfg = plain_link_config(tmp_path, proxy.port, keepalive_s=6)
        with running_link(cfg) as (_, events):
            events.connected(1)
            proxy.wait_quiet(0.3)
            proxy.freeze()
            last_packet = proxy.last().last_up
            recorder.wait_for("status", lambda p: p == {"online": False}, 20)
            silent_for = recorder.on("status")[-1].received_mono - last_packet
            # 1.5 x 6 = 9 s; mosquitto checks keepalives in whole seconds, up to 5 s
            # apart (at 10 s: 17.0-20.7 s measured), so 9 to 15 s, and a margin
            assert 8.5 <= silent_for <= 16.5, silent_for
            # mosquitto closed it when it sent the Will: the proxy and the subscriber see
            # the two within microseconds of each other, in either order.
            dropped = proxy.last().server_ended
            will_at = recorder.on("status")[-1].received_mono
            assert dropped is not None and abs(dropped - will_at) < 1.0, (dropped, will_at)
    finally:
        recorder.close()


def test_without_a_server_keep_alive_the_configured_one_holds(
    pki: Path, start_broker: Callable[..., TlsBroker]
) -> None:
    broker = start_broker(pki)
    with running_link(broker.link_config("bench-a", broker.port, keepalive_s=540)) as (
        link,
        events,
    ):
        events.connected(1)
        assert link.keepalive_s == 540
        assert "(p5, c1, k540, u'bench-a')" in broker.log.read_text()


# -- the benchmark keeps working ------------------------------------------------------


def test_the_link_cost_benchmark_quick_mode() -> None:
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "bench" / "bench_link_cost.py"
    spec = importlib.util.spec_from_file_location("bench_link_cost", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_link_cost"] = module
    spec.loader.exec_module(module)
    r = module.measure(scale=30, intervals=1, quick=True)
    assert r["reconnect_resumed"].total < r["reconnect_full"].total * 0.6
    assert r["tls_resumed"].total < r["tls_full"].total * 0.6
    assert r["keepalive"].up == r["keepalive"].down == 2 + 22  # a 2-byte packet, TLS 1.3 record
    alias = r["messages_alias"]
    assert alias[0].up - alias[1].up == len(module.TOPIC)
    assert {c.up for c in r["messages_no_alias"]} == {alias[0].up - 3}
    assert "| reconnect, TLS session resumed (now) |" in module.report(r)
