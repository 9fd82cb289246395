"""`bench-ops send` on the network: signed commands to one bench or many over ONE MQTT
connection, at most `concurrency` waiting for their reply at a time.

1. Connect and subscribe (one SUBSCRIBE): to each named bench's `<prefix>/<bench>/cmd/reply`;
   with a glob, to `<prefix>/+/status` and `<prefix>/+/cmd/reply` instead.
2. With a glob, learn the benches from their retained `status` (read as `bench-ops
   fleet` reads it, `fleet.Fleet`) and wait as `fleet --once` does: until no new bench
   for `SETTLE_S`, at most `max(ONCE_MAX_S, timeout)` (a warning if still arriving).
   Then expand the globs (`bulk_targets.expand`: no match is a UsageError).
3. Send: a command is made and signed for each bench just before it goes out (its own
   id, `bench` bound into the signature, `--ttl` counted from then), published QoS 1 on
   `<prefix>/<bench>/cmd`; a slot is freed by the reply with its id on that bench's reply
   topic, or by `timeout_s` passing since the publish (the bench then "did not answer").

A reply's round trip is publish -> reply here (`time.monotonic`), the bench's queueing
and the broker included. A reply that comes after its timeout is not counted: the bench
may still run a command it receives late, until the command expires (`--ttl`).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench_agent.errors import BenchAgentError
from bench_agent.json_value import JsonObject
from bench_agent.ops.broker_access import BrokerAccess
from bench_agent.ops.bulk_targets import Targets, expand
from bench_agent.ops.fleet import Fleet
from bench_agent.ops.fleet_watch import ONCE_MAX_S, SETTLE_S

log = logging.getLogger(__name__)

MakeCommand = Callable[[str], Mapping[str, object]]  # bench id -> a signed command
Kind = Literal["ok", "error", "no_answer"]


class NoConnection(BenchAgentError, ConnectionError):
    """The broker could not be reached, refused us, or refused a subscription."""


@dataclass
class Outcome:
    """One bench's command and what came back."""

    bench: str
    command_id: str | None = None  # None: never sent (the run ended first)
    reply: JsonObject | None = None
    round_trip_ms: float | None = None
    online: bool | None = None  # its retained status, when a glob made us read it

    @property
    def kind(self) -> Kind:
        if self.reply is None:
            return "no_answer"
        return "ok" if self.reply.get("ok") is True else "error"


@dataclass
class Run:
    """Every bench's outcome, in the order they were sent."""

    outcomes: list[Outcome]
    elapsed_s: float  # connect -> the last reply or timeout
    discovery_s: float = 0.0  # of which waiting for the retained statuses (a glob)
    disconnects: int = 0  # the connection dropped (paho reconnects) this many times
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Pending:
    bench: str
    sent_at: float


def _reply_object(payload: bytes) -> JsonObject | None:
    try:
        reply = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # someone else's garbage on a reply topic
    return reply if isinstance(reply, dict) else None


class BulkSender:
    """One run: `run()` connects, learns the benches if it must, sends, returns the Run."""

    def __init__(
        self,
        access: BrokerAccess,
        *,
        prefix: str,
        targets: Targets,
        make_command: MakeCommand,
        timeout_s: float,
        concurrency: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.access = access
        self.prefix = prefix
        self.targets = targets
        self.make_command = make_command
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.clock = clock
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.failure: str | None = None
        self.fleet = Fleet(prefix=prefix)  # the retained statuses, when a glob needs them
        self.subscribed_at = self.last_new_bench = clock()
        self.inflight: dict[str, _Pending] = {}  # command id -> bench, when sent
        self.outcomes: dict[str, Outcome] = {}
        self.disconnects = 0
        self.closing = False

    def topics(self) -> list[str]:
        if self.targets.globs:
            return [f"{self.prefix}/+/status", f"{self.prefix}/+/cmd/reply"]
        return [f"{self.prefix}/{bench}/cmd/reply" for bench in self.targets.ids]

    # -- paho's thread ---------------------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self.failure = f"broker refused the connection: {reason}"
            self.subscribed.set()
            return
        # Subscribe before anything is sent: a fast bench could otherwise reply unheard.
        client.subscribe([(topic, 1) for topic in self.topics()])

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: object,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        for topic, reason in zip(self.topics(), reasons, strict=False):
            if reason.is_failure and self.failure is None:
                self.failure = f"cannot subscribe to {topic}: {reason}"
        with self.cond:
            if not self.subscribed.is_set():
                self.subscribed_at = self.last_new_bench = self.clock()
        self.subscribed.set()

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: paho.DisconnectFlags,
        _reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if not self.closing:
            self.disconnects += 1

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        head, _, leaf = msg.topic.rpartition("/")
        if leaf == "status":
            with self.cond:
                known = len(self.fleet.benches)
                self.fleet.feed(msg.topic, bytes(msg.payload), self.clock())
                if len(self.fleet.benches) > known:
                    self.last_new_bench = self.clock()
                    self.cond.notify_all()
            return
        reply = _reply_object(bytes(msg.payload))
        bench = head.removesuffix("/cmd").removeprefix(self.prefix + "/")
        if reply is None or not isinstance(reply.get("id"), str):
            return
        with self.cond:
            pending = self.inflight.get(str(reply["id"]))
            # Only the bench it was sent to answers for a command (the broker's ACL lets
            # a bench write its own reply topic only).
            if pending is None or pending.bench != bench:
                return  # another console's, or a reply after its timeout
            del self.inflight[str(reply["id"])]
            outcome = self.outcomes[bench]
            outcome.reply = reply
            outcome.round_trip_ms = (self.clock() - pending.sent_at) * 1000.0
            self.cond.notify_all()

    # -- the caller's thread -----------------------------------------------------

    def run(self) -> Run:
        """Connect, learn, send, wait. NoConnection; UsageError for a glob without a match."""
        client = self.access.client(f"bench-ops-{uuid.uuid4().hex[:12]}")
        client.suppress_exceptions = True  # a bug on one message must not end the thread
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        host, port = self.access.host, self.access.port
        started = self.clock()
        try:
            client.connect(host, port, keepalive=30)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise NoConnection(f"cannot connect to {host}:{port}: {exc}") from None
        client.loop_start()
        try:
            if not self.subscribed.wait(self.timeout_s):
                raise NoConnection(f"no subscription within {self.timeout_s:g} s")
            if self.failure is not None:
                raise NoConnection(self.failure)
            learning = self.clock()
            warnings = self._learn() if self.targets.globs else []
            discovery_s = self.clock() - learning if self.targets.globs else 0.0
            benches = self._benches()
            self._send_all(client, benches)
        finally:
            self.closing = True
            client.disconnect()
            client.loop_stop()
        outcomes = [self.outcomes[bench] for bench in benches]
        return Run(outcomes, self.clock() - started, discovery_s, self.disconnects, warnings)

    def _learn(self) -> list[str]:
        """Wait for the retained statuses: until no new bench for SETTLE_S, at most
        max(ONCE_MAX_S, timeout) after the subscription."""
        limit = max(ONCE_MAX_S, self.timeout_s)
        with self.cond:
            began = self.subscribed_at
            while True:
                now = self.clock()
                if now - self.last_new_bench >= SETTLE_S:
                    return []
                if now - began >= limit:
                    count = len(self.fleet.benches)
                    return [
                        f"statuses still arriving after {limit:g} s: "
                        f"the globs matched among the {count} benches seen"
                    ]
                self.cond.wait(min(self.last_new_bench + SETTLE_S, began + limit) - now)

    def _benches(self) -> list[str]:
        with self.cond:
            statuses = {b: v.status for b, v in self.fleet.benches.items() if v.status}
        benches = expand(self.targets, statuses, self.prefix)
        for bench in benches:
            status = statuses.get(bench)
            online = status.get("online") if status else None
            self.outcomes[bench] = Outcome(
                bench, online=online if isinstance(online, bool) else None
            )
        return benches

    def _send_all(self, client: paho.Client, benches: list[str]) -> None:
        waiting = deque(benches)
        while True:
            with self.cond:
                self._expire()
                free = self.concurrency - len(self.inflight)
                if not waiting and not self.inflight:
                    return
                if free <= 0 or not waiting:
                    soonest = min(p.sent_at for p in self.inflight.values()) + self.timeout_s
                    self.cond.wait(max(0.0, soonest - self.clock()))
                    continue
            batch = [waiting.popleft() for _ in range(min(free, len(waiting)))]
            commands = [(bench, self.make_command(bench)) for bench in batch]  # signed here
            with self.cond:
                now = self.clock()
                for bench, command in commands:
                    command_id = str(command["id"])
                    self.outcomes[bench].command_id = command_id
                    self.inflight[command_id] = _Pending(bench, now)
            for bench, command in commands:
                payload = json.dumps(command, separators=(",", ":"), ensure_ascii=False)
                client.publish(f"{self.prefix}/{bench}/cmd", payload.encode(), qos=1)

    def _expire(self) -> None:
        """Free the slots of commands unanswered for timeout_s (they stay "no_answer")."""
        now = self.clock()
        for command_id, pending in list(self.inflight.items()):
            if now - pending.sent_at >= self.timeout_s:
                del self.inflight[command_id]
