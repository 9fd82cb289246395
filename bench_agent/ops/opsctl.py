"""`bench-ops`: city ops' tool to make signing keys, send signed commands to a bench,
and run the bridge from contract v2 to the v1 JSON the city's consumers read.

    bench-ops keygen --out DIR [--key-id NAME]
    bench-ops send --host H [--port P] [--tls-ca CA --tls-cert CERT --tls-key KEY]
                   [--username U --password-file F]
                   --key PRIVATE.key --key-id NAME --bench ID [--prefix smartbench]
                   [--timeout 10] [--ttl 120] ACTION [name=value ...]
    bench-ops bridge --host H [--port P] [--tls-ca CA --tls-cert CERT --tls-key KEY]
                   [--username U --password-file F]
                   [--prefix smartbench] [--v1-prefix smartbench-v1]
                   [--group bench-ops-bridge | --no-share] [--client-id ID]
                   [--session-expiry 86400]
                   [--status-interval 60] [--max-message-bytes 65536] [--debug]
    bench-ops fleet --host H [--port P] [TLS and password flags as above]
                   [--prefix smartbench] [--v1-prefix smartbench-v1]
                   [--batch-s 300] [--once] [--json]

`keygen` writes `DIR/NAME.key` (the PKCS#8 PEM private key, mode 0600, never
overwritten) and `DIR/NAME.pub` (the public key, base64 on one line): install
the `.pub` file in every bench's trusted-keys directory.

`send` builds a command (a UUID4 id, issued now, expiring after `--ttl` seconds,
naming the bench), signs it, subscribes to `<prefix>/<bench>/cmd/reply`, then
publishes on `<prefix>/<bench>/cmd` (QoS 1, not retained) and prints the reply
with the same id as JSON. Argument values are numbers when they parse as one,
else strings: `bench-ops send … usb.set port=usb1 state=off duration_s=1800`.

`bridge` runs until SIGTERM (see `bench_agent/ops/bridge.py` and the README's "The
bridge"): it republishes every bench's v2 batches as v1 telemetry and events under
`--v1-prefix`, and mirrors their retained state and status there.

`fleet` shows every bench under the prefix, the worst first, from the retained status
and state and the newest record (`bench_agent/ops/fleet.py`, README "For city ops"):
`--once` prints once the retained messages have come, `--json` one JSON document.

Exit codes: 0 the bench replied ok (`bridge`: stopped by a signal); 1 it replied with
an error; 2 no reply within `--timeout` seconds; 3 no connection to the broker; 64 a
usage or key-file error; `bridge` only: 77 the broker refused a subscription or a
republished message (its ACL), 70 the MQTT thread ended.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import ssl
import sys
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench_agent.errors import UsageError
from bench_agent.logsetup import register_secret, setup_logging
from bench_agent.ops.bridge import BridgeOptions, check_tls
from bench_agent.ops.bridge_service import run_bridge
from bench_agent.ops.fleet_watch import FleetOptions, run_fleet
from bench_agent.remote.commands import ACTIONS, BENCH_PATTERN, KEY_ID_PATTERN
from bench_agent.remote.signing import new_command, public_key_text, sign_command

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_TIMEOUT = 2
EXIT_NO_CONNECTION = 3
EXIT_USAGE = 64  # EX_USAGE from sysexits.h


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


def keygen(out_dir: Path, key_id: str) -> tuple[Path, Path]:
    """Write `key_id.key` (0600) and `key_id.pub` in `out_dir`; return their paths."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise UsageError(f"key id {key_id!r}: 1-64 characters of A-Za-z0-9._-")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}.key"
    public_path = out_dir / f"{key_id}.pub"
    if private_path.exists() or public_path.exists():
        raise UsageError(f"{private_path} or {public_path} already exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # O_EXCL with mode 0600: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(public_key_text(key.public_key()) + "\n")
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key. Raises `UsageError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


# ---------------------------------------------------------------------------
# Sending
# ---------------------------------------------------------------------------


def parse_args_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """`name=value` words as a dict; values are numbers when they parse as finite ones."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"argument {pair!r}: expected name=value")
        if name in out:
            raise UsageError(f"argument {name!r} given twice")
        value: Any = text
        try:
            value = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                pass
            else:
                if math.isfinite(number):
                    value = number
        out[name] = value
    return out


class _Exchange:
    """One command out, its reply in, over a fresh paho client (network thread)."""

    def __init__(self, command: dict[str, Any], cmd_topic: str) -> None:
        self.command = command
        self.cmd_topic = cmd_topic
        self.reply_topic = cmd_topic + "/reply"
        self.payload = json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode()
        self.done = threading.Event()
        self.reply: dict[str, Any] | None = None
        self.failure: str | None = None

    def on_connect(
        self, client: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if reason.is_failure:
            self.failure = f"broker refused the connection: {reason}"
            self.done.set()
            return
        # Subscribe first: a fast bench could otherwise reply before we listen.
        client.subscribe(self.reply_topic, qos=1)

    def on_subscribe(
        self, client: paho.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.failure = f"cannot subscribe to {self.reply_topic}: {reasons[0]}"
            self.done.set()
            return
        client.publish(self.cmd_topic, self.payload, qos=1, retain=False)

    def on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        try:
            reply = json.loads(message.payload)
        except ValueError:
            return  # someone else's garbage on the reply topic
        if isinstance(reply, dict) and reply.get("id") == self.command["id"]:
            self.reply = reply
            self.done.set()


def send(
    command: dict[str, Any],
    *,
    host: str,
    port: int,
    cmd_topic: str,
    timeout_s: float,
    tls_ca: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    username: str | None = None,
    password: str | None = None,
) -> tuple[int, dict[str, Any] | None, str | None]:
    """Publish `command`, wait for its reply: (exit code, reply or None, failure text)."""
    exchange = _Exchange(command, cmd_topic)
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-ops-{uuid.uuid4().hex[:12]}",
        protocol=paho.MQTTv5,
    )
    if tls_ca or tls_cert:
        client.tls_set(
            ca_certs=str(tls_ca) if tls_ca else None,
            certfile=str(tls_cert) if tls_cert else None,
            keyfile=str(tls_key) if tls_key else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = exchange.on_connect
    client.on_subscribe = exchange.on_subscribe
    client.on_message = exchange.on_message
    try:
        client.connect(host, port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return EXIT_NO_CONNECTION, None, f"cannot connect to {host}:{port}: {exc}"
    client.loop_start()
    try:
        exchange.done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    if exchange.failure is not None:
        return EXIT_NO_CONNECTION, None, exchange.failure
    if exchange.reply is None:
        return EXIT_TIMEOUT, None, f"no reply within {timeout_s:g} s"
    return (EXIT_OK if exchange.reply.get("ok") is True else EXIT_ERROR_REPLY), exchange.reply, None


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would exit 2, our "timeout" code
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench-ops", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    kg = commands.add_parser("keygen", help="make a signing key pair")
    kg.add_argument("--out", type=Path, required=True, help="directory for NAME.key and NAME.pub")
    kg.add_argument("--key-id", default="ops", help="the key's name (default: ops)")

    sd = commands.add_parser("send", help="send a signed command and print the reply")
    _broker_options(sd)
    sd.add_argument("--key", type=Path, required=True, help="Ed25519 signing key (NAME.key)")
    sd.add_argument("--key-id", required=True, help="the name the benches know the key by")
    sd.add_argument("--bench", required=True, help="bench id")
    sd.add_argument("--prefix", default="smartbench", help="topic prefix (default: smartbench)")
    sd.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    sd.add_argument("--ttl", type=float, default=120.0, help="seconds the command stays valid")
    sd.add_argument("action", choices=ACTIONS)
    sd.add_argument("args", nargs="*", metavar="name=value")

    br = commands.add_parser("bridge", help="republish contract v2 batches as v1 JSON (a service)")
    _broker_options(br)
    br.add_argument("--prefix", default="smartbench", help="the benches' topic prefix")
    br.add_argument(
        "--v1-prefix",
        default="smartbench-v1",
        help="where the v1 messages go (default: %(default)s)",
    )
    share = br.add_mutually_exclusive_group()
    share.add_argument(
        "--group",
        default="bench-ops-bridge",
        help="shared subscription group (default: %(default)s)",
    )
    share.add_argument(
        "--no-share",
        action="store_true",
        help="a plain subscription instead (one bridge only; kept over a mosquitto restart)",
    )
    br.add_argument(
        "--client-id",
        default=f"bench-ops-bridge-{socket.gethostname()}",
        help="stable per instance: its persistent session (default: bench-ops-bridge-HOSTNAME)",
    )
    br.add_argument(
        "--session-expiry", type=int, default=86_400, help="seconds the broker keeps the session"
    )
    br.add_argument(
        "--status-interval", type=float, default=60.0, help="seconds between summaries/status"
    )
    br.add_argument(
        "--max-message-bytes", type=int, default=65_536, help="largest v1 telemetry message"
    )
    br.add_argument("--debug", action="store_true", help="log at DEBUG")

    fl = commands.add_parser("fleet", help="every bench at a glance, the worst first")
    _broker_options(fl)
    fl.add_argument("--prefix", default="smartbench", help="the benches' topic prefix")
    fl.add_argument("--v1-prefix", default="smartbench-v1", help="the bridge's v1 prefix")
    fl.add_argument(
        "--batch-s",
        type=float,
        default=300.0,
        help="the benches' batch interval: STALE after two without a record (default: 300)",
    )
    fl.add_argument("--once", action="store_true", help="print once and exit")
    fl.add_argument("--json", action="store_true", help="one JSON document (a list of benches)")
    return parser


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=None, help="1883, or 8883 with TLS")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate of the broker (enables TLS)")
    parser.add_argument("--tls-cert", "--cert", type=Path, help="client certificate (TLS)")
    parser.add_argument("--tls-key", type=Path, help="client certificate's private key (TLS)")
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path)


def _password(opts: argparse.Namespace) -> str | None:
    if opts.password_file is None:
        return None
    try:
        return str(opts.password_file.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opts.password_file}: cannot read ({exc})") from None


def _port(opts: argparse.Namespace) -> int:
    tls = opts.tls_ca is not None or opts.tls_cert is not None
    return int(opts.port or (8883 if tls else 1883))


def _send(opts: argparse.Namespace) -> int:
    if not BENCH_PATTERN.fullmatch(opts.bench):
        raise UsageError(f"bench id {opts.bench!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    if not KEY_ID_PATTERN.fullmatch(opts.key_id):
        raise UsageError(f"key id {opts.key_id!r}: 1-64 characters of A-Za-z0-9._-")
    if not (opts.timeout > 0 and opts.ttl > 0):
        raise UsageError("--timeout and --ttl must be positive")
    key = load_private_key(opts.key)
    password = _password(opts)
    command = new_command(
        opts.action,
        parse_args_pairs(opts.args),
        bench=opts.bench,
        now=datetime.now(UTC),
        ttl_s=opts.ttl,
    )
    signed = sign_command(command, key, opts.key_id)
    code, reply, failure = send(
        signed,
        host=opts.host,
        port=_port(opts),
        cmd_topic=f"{opts.prefix}/{opts.bench}/cmd",
        timeout_s=opts.timeout,
        tls_ca=opts.tls_ca,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        username=opts.username,
        password=password,
    )
    if reply is not None:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if failure is not None:
        print(f"bench-ops: {failure} (command {signed['id']})", file=sys.stderr)
    return code


_TOPIC_PART = re.compile(r"[^+#/\x00]+")


def _bridge(opts: argparse.Namespace) -> int:
    for flag, prefix in (("--prefix", opts.prefix), ("--v1-prefix", opts.v1_prefix)):
        levels = prefix.split("/")
        if prefix.startswith("$") or not all(_TOPIC_PART.fullmatch(level) for level in levels):
            raise UsageError(f"{flag} {prefix!r}: topic levels without + # or a leading $")
    if opts.prefix == opts.v1_prefix:
        raise UsageError("--prefix and --v1-prefix must differ")
    for flag, word in (("--group", opts.group), ("--client-id", opts.client_id)):
        if not _TOPIC_PART.fullmatch(word):
            raise UsageError(f"{flag} {word!r}: one topic level, without + # or /")
    if opts.session_expiry < 0 or opts.status_interval <= 0 or opts.max_message_bytes < 1024:
        raise UsageError(
            "--session-expiry >= 0, --status-interval > 0, --max-message-bytes >= 1024"
        )
    for flag, path in (
        ("--tls-ca", opts.tls_ca),
        ("--tls-cert", opts.tls_cert),
        ("--tls-key", opts.tls_key),
    ):
        if path is not None and not os.access(path, os.R_OK):
            raise UsageError(f"{flag} {path}: cannot read it")
    password = _password(opts)
    options = BridgeOptions(
        host=opts.host,
        port=_port(opts),
        client_id=opts.client_id,
        prefix=opts.prefix,
        v1_prefix=opts.v1_prefix,
        group=None if opts.no_share else opts.group,
        tls_ca=opts.tls_ca,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        username=opts.username,
        password=password,
        session_expiry_s=opts.session_expiry,
        status_interval_s=opts.status_interval,
        max_message_bytes=opts.max_message_bytes,
    )
    check_tls(options)
    setup_logging(opts.debug)
    if password:
        register_secret(password)
    return run_bridge(options)


def _fleet(opts: argparse.Namespace) -> int:
    for flag, prefix in (("--prefix", opts.prefix), ("--v1-prefix", opts.v1_prefix)):
        levels = prefix.split("/")
        if prefix.startswith("$") or not all(_TOPIC_PART.fullmatch(level) for level in levels):
            raise UsageError(f"{flag} {prefix!r}: topic levels without + # or a leading $")
    if not (opts.batch_s > 0 and math.isfinite(opts.batch_s)):
        raise UsageError("--batch-s must be a positive number of seconds")
    options = FleetOptions(
        host=opts.host,
        port=_port(opts),
        prefix=opts.prefix,
        v1_prefix=opts.v1_prefix,
        batch_s=opts.batch_s,
        once=opts.once,
        as_json=opts.json,
        tls_ca=opts.tls_ca,
        tls_cert=opts.tls_cert,
        tls_key=opts.tls_key,
        username=opts.username,
        password=_password(opts),
    )
    check_tls(options)
    return run_fleet(options)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = _parser().parse_args(argv)
        if opts.command == "bridge":
            return _bridge(opts)
        if opts.command == "fleet":
            return _fleet(opts)
        if opts.command == "keygen":
            private_path, public_path = keygen(opts.out, opts.key_id)
            print(f"private key: {private_path} (keep it secret)")
            print(f"public key:  {public_path} (install on benches as {public_path.name})")
            return EXIT_OK
        return _send(opts)
    except UsageError as exc:
        print(f"bench-ops: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
