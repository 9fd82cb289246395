"""`bench-ops send`: one signed command to a bench and its reply, over MQTT.

The command (a UUID4 id, issued now, expiring after `--ttl` seconds, naming the bench)
is signed with ops' Ed25519 key; the tool subscribes to `<prefix>/<bench>/cmd/reply`
first, then publishes on `<prefix>/<bench>/cmd` (QoS 1, not retained) and prints the
reply with the same id as JSON."""

from __future__ import annotations

import argparse
import json
import math
import ssl
import sys
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from bench_agent.errors import UsageError
from bench_agent.ops.broker_access import BrokerAccess, add_broker_options
from bench_agent.ops.keys import load_private_key
from bench_agent.remote.commands import ACTIONS, BENCH_PATTERN, KEY_ID_PATTERN
from bench_agent.remote.signing import new_command, sign_command

EXIT_OK = 0
EXIT_ERROR_REPLY = 1
EXIT_TIMEOUT = 2
EXIT_NO_CONNECTION = 3


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
    access: BrokerAccess,
    cmd_topic: str,
    timeout_s: float,
) -> tuple[int, dict[str, Any] | None, str | None]:
    """Publish `command`, wait for its reply: (exit code, reply or None, failure text)."""
    exchange = _Exchange(command, cmd_topic)
    client = access.client(f"bench-ops-{uuid.uuid4().hex[:12]}")
    client.on_connect = exchange.on_connect
    client.on_subscribe = exchange.on_subscribe
    client.on_message = exchange.on_message
    try:
        client.connect(access.host, access.port, keepalive=30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return EXIT_NO_CONNECTION, None, f"cannot connect to {access.host}:{access.port}: {exc}"
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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sd = commands.add_parser("send", help="send a signed command and print the reply")
    add_broker_options(sd)
    sd.add_argument("--key", type=Path, required=True, help="Ed25519 signing key (NAME.key)")
    sd.add_argument("--key-id", required=True, help="the name the benches know the key by")
    sd.add_argument("--bench", required=True, help="bench id")
    sd.add_argument("--prefix", default="smartbench", help="topic prefix (default: smartbench)")
    sd.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the reply")
    sd.add_argument("--ttl", type=float, default=120.0, help="seconds the command stays valid")
    sd.add_argument("action", choices=ACTIONS)
    sd.add_argument("args", nargs="*", metavar="name=value")
    sd.set_defaults(run=_run)


def _run(opts: argparse.Namespace) -> int:
    if not BENCH_PATTERN.fullmatch(opts.bench):
        raise UsageError(f"bench id {opts.bench!r}: must match [a-z0-9][a-z0-9-]{{0,62}}")
    if not KEY_ID_PATTERN.fullmatch(opts.key_id):
        raise UsageError(f"key id {opts.key_id!r}: 1-64 characters of A-Za-z0-9._-")
    if not (opts.timeout > 0 and opts.ttl > 0):
        raise UsageError("--timeout and --ttl must be positive")
    key = load_private_key(opts.key)
    access = BrokerAccess.from_options(opts)
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
        access=access,
        cmd_topic=f"{opts.prefix}/{opts.bench}/cmd",
        timeout_s=opts.timeout,
    )
    if reply is not None:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    if failure is not None:
        print(f"bench-ops: {failure} (command {signed['id']})", file=sys.stderr)
    return code
