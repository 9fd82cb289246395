"""How every `bench-ops` command reaches the broker: the same flags (`--host`, `--port`,
TLS files, a username and a password file), checked the same way, and one paho client
made from them (MQTT 5, TLS and credentials applied). A new subcommand calls
`add_broker_options` on its parser and `BrokerAccess.from_options` on what it parsed."""

from __future__ import annotations

import argparse
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench_agent.errors import UsageError

# One topic level a prefix may hold: no wildcard, no separator, no NUL.
TOPIC_LEVEL = re.compile(r"[^+#/\x00]+")


class TlsFiles(Protocol):
    """The TLS files of a tool's options (the bridge's, the fleet view's, `BrokerAccess`)."""

    @property
    def tls_ca(self) -> Path | None: ...
    @property
    def tls_cert(self) -> Path | None: ...
    @property
    def tls_key(self) -> Path | None: ...


class Credentials(TlsFiles, Protocol):
    """TLS files and a username/password: what `new_client` applies."""

    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...


def new_client(credentials: Credentials, client_id: str) -> paho.Client:
    """A paho MQTT 5 client with TLS and credentials applied, not yet connected."""
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=paho.MQTTv5,
    )
    if credentials.tls_ca or credentials.tls_cert:
        client.tls_set(
            ca_certs=str(credentials.tls_ca) if credentials.tls_ca else None,
            certfile=str(credentials.tls_cert) if credentials.tls_cert else None,
            keyfile=str(credentials.tls_key) if credentials.tls_key else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if credentials.username is not None:
        client.username_pw_set(credentials.username, credentials.password)
    return client


def check_tls(options: TlsFiles) -> None:
    """The TLS files load (a CA that parses, a key that matches its certificate), or
    UsageError: a bad file is a one-line error, not a traceback at the first connect."""
    if not (options.tls_ca or options.tls_cert):
        return
    try:
        context = ssl.create_default_context(cafile=str(options.tls_ca) if options.tls_ca else None)
        if options.tls_cert:
            context.load_cert_chain(
                str(options.tls_cert), str(options.tls_key) if options.tls_key else None
            )
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UsageError(f"TLS files: {exc}") from None


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
        check_tls(access)
        return access

    def client(self, client_id: str) -> paho.Client:
        """A paho MQTT 5 client with TLS and credentials applied, not yet connected."""
        return new_client(self, client_id)
