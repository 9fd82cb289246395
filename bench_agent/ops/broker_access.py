"""How every `bench-ops` command reaches the broker: the same flags (`--host`, `--port`,
TLS files, a username and a password file), checked the same way, and one paho client
made from them (MQTT 5, TLS and credentials applied). A new subcommand calls
`add_broker_options` on its parser and `BrokerAccess.from_options` on what it parsed.

The services that consume on a persistent session with manual acknowledgements (the
bridge, the archive) also share how that session is set up: `persistent_client`, then
`connect_persistent`."""

from __future__ import annotations

import argparse
import logging
import re
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench_agent.errors import UsageError

# One topic level a prefix may hold: no wildcard, no separator, no NUL.
TOPIC_LEVEL = re.compile(r"[^+#/\x00]+")


def check_prefix(flag: str, prefix: str) -> None:
    """A topic prefix of whole levels, without wildcards or a leading `$`, or UsageError."""
    levels = prefix.split("/")
    if prefix.startswith("$") or not all(TOPIC_LEVEL.fullmatch(level) for level in levels):
        raise UsageError(f"{flag} {prefix!r}: topic levels without + # or a leading $")


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=None, help="1883, or 8883 with TLS")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of the broker (enables TLS)")
    parser.add_argument("--tls-cert", "--cert", type=Path, help="client certificate (TLS)")
    parser.add_argument("--tls-key", type=Path, help="client certificate's private key (TLS)")
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path)


def read_password(opts: argparse.Namespace) -> str | None:
    if opts.password_file is None:
        return None
    try:
        return str(opts.password_file.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opts.password_file}: cannot read ({exc})") from None


def port_of(opts: argparse.Namespace) -> int:
    tls = opts.tls_ca is not None or opts.tls_cert is not None
    return int(opts.port or (8883 if tls else 1883))


@dataclass(frozen=True)
class BrokerAccess:
    """Where the broker is and how to prove who we are to it."""

    host: str
    port: int
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_options(cls, opts: argparse.Namespace) -> BrokerAccess:
        """From the flags of `add_broker_options`; the TLS files checked. UsageError."""
        access = cls(
            host=opts.host,
            port=port_of(opts),
            tls_ca=opts.tls_ca,
            tls_cert=opts.tls_cert,
            tls_key=opts.tls_key,
            username=opts.username,
            password=read_password(opts),
        )
        access.check_tls()
        return access

    def check_tls(self) -> None:
        """The TLS files load (a CA that parses, a key that matches its certificate), or
        UsageError: a bad file is a one-line error, not a traceback at the first connect."""
        if not (self.tls_ca or self.tls_cert):
            return
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_cert:
                context.load_cert_chain(
                    str(self.tls_cert), str(self.tls_key) if self.tls_key else None
                )
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UsageError(f"TLS files: {exc}") from None

    def client(self, client_id: str) -> paho.Client:
        """A paho MQTT 5 client with TLS and credentials applied, not yet connected."""
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        if self.tls_ca or self.tls_cert:
            client.tls_set(
                ca_certs=str(self.tls_ca) if self.tls_ca else None,
                certfile=str(self.tls_cert) if self.tls_cert else None,
                keyfile=str(self.tls_key) if self.tls_key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        return client


# -- a consumer on a persistent session, acknowledging by hand (the bridge, the archive) --


def persistent_client(access: BrokerAccess, client_id: str, receive_maximum: int) -> paho.Client:
    """A client that acknowledges by hand (`client.ack`), at most `receive_maximum`
    messages in flight each way, reconnecting by itself (1 s, doubling up to 30 s);
    paho logs to `bench_agent.paho` (WARNING unless --debug). Not yet connected."""
    client = access.client(client_id)
    client.manual_ack_set(True)
    client.enable_logger(logging.getLogger("bench_agent.paho"))
    client.suppress_exceptions = True  # a bug in a callback must not end the network thread
    client.max_inflight_messages_set(receive_maximum)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def connect_persistent(
    client: paho.Client,
    access: BrokerAccess,
    *,
    session_expiry_s: int,
    receive_maximum: int,
    keepalive_s: int,
) -> None:
    """Connect in paho's network thread (retried until the broker answers) with clean
    start off: the session, and what it was not acknowledged, outlives a restart."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho 2.2
    properties.SessionExpiryInterval = session_expiry_s
    properties.ReceiveMaximum = receive_maximum
    client.connect_async(
        access.host,
        access.port,
        keepalive=keepalive_s,
        clean_start=False,
        properties=properties,
    )
    client.loop_start()


def refusals(reasons: Sequence[ReasonCode]) -> list[str]:
    """The reason codes of a SUBACK that refuse a subscription, as text."""
    return [str(r) for r in reasons if r.is_failure]


def network_thread_alive(client: paho.Client) -> bool:
    thread = getattr(client, "_thread", None)  # paho's, set by loop_start()
    return isinstance(thread, threading.Thread) and thread.is_alive()
