"""The acknowledgements the bridge owes the broker: an incoming message is acknowledged
only once the broker has acknowledged everything published because of it. Pure: the
bridge feeds it packet ids and does what it says.

- A *delivery* is what one incoming message made the bridge publish (a batch's v1
  messages, a mirrored state); it is done when every one of its messages has its
  PUBACK.
- An incoming message waits for its own delivery and for the deliveries of records it
  carries that are still in flight from another message (the same batch published
  twice, or delivered again after a reconnect): acknowledging it sooner would let a
  kill lose records the broker then has no copy of.
- An incoming message is acknowledged only on the connection it came on. After a
  reconnect the broker sends what it did not get an ack for again, with the same packet
  id, and that copy is the one acknowledged: an old ack sent on the new connection
  could acknowledge another message that reuses the id.
- Acks go in the order the messages came (MQTT 5, 4.6: PUBACKs in the order of the
  PUBLISHes): one that is ready waits for those before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench_agent.ops.bridge_ledger import Key


@dataclass(eq=False)
class Incoming:
    generation: int  # the connection it came on
    mid: int
    qos: int
    waiting: int = 0  # deliveries not yet done
    ready: bool = False  # nothing left to wait for: acknowledged in its turn


@dataclass(eq=False)
class Delivery:
    keys: list[Key] = field(default_factory=list)  # records passed on (in flight until done)
    records: int = 0
    retained: int = 0  # state/status mirrored
    pending: set[int] = field(default_factory=set)  # packet ids without a PUBACK yet
    waiters: list[Incoming] = field(default_factory=list)


class AckBook:
    def __init__(self) -> None:
        self.generation = 0  # one per connection
        self._out: dict[int, Delivery] = {}  # packet id -> its delivery
        self._inflight: dict[Key, Delivery] = {}
        self._order: deque[Incoming] = deque()  # this connection's, not yet acknowledged

    def connected(self) -> None:
        """A new connection: what came on the earlier ones is never acknowledged now."""
        self.generation += 1
        self._order.clear()

    def incoming(self, mid: int, qos: int) -> Incoming:
        """A message from the broker, in the order they come (QoS 0 needs no ack)."""
        message = Incoming(self.generation, mid, qos)
        if qos > 0:
            self._order.append(message)
        return message

    def in_flight(self, key: Key) -> Delivery | None:
        """The delivery carrying this record, while the broker has not acknowledged it."""
        return self._inflight.get(key)

    def published(self, delivery: Delivery, mid: int) -> None:
        """One of `delivery`'s messages went out as packet `mid`."""
        delivery.pending.add(mid)
        self._out[mid] = delivery
        for key in delivery.keys:
            self._inflight[key] = delivery

    def wait_for(self, incoming: Incoming, deliveries: Iterable[Delivery]) -> list[Incoming]:
        """`incoming` waits for `deliveries` (none: it is done); the acks to send now."""
        waits = [d for d in dict.fromkeys(deliveries) if d.pending]
        incoming.waiting = len(waits)
        for delivery in waits:
            delivery.waiters.append(incoming)
        return [] if waits else self.done(incoming)

    def done(self, incoming: Incoming) -> list[Incoming]:
        """Nothing more to wait for: the acks to send now, in the order the messages came."""
        incoming.ready = True
        acks = []
        while self._order and self._order[0].ready:
            acks.append(self._order.popleft())
        return acks

    def pop(self, mid: int) -> Delivery | None:
        """The delivery a PUBACK is for (None: not one of ours, e.g. the bridge's status)."""
        return self._out.pop(mid, None)

    def acknowledged(self, delivery: Delivery, mid: int) -> list[Incoming]:
        """The broker acknowledged packet `mid` of `delivery` (from `pop`): the acks to
        send now. `delivery` is done when this empties its `pending`."""
        delivery.pending.discard(mid)
        if delivery.pending:
            return []
        for key in delivery.keys:
            if self._inflight.get(key) is delivery:
                del self._inflight[key]
        acks = []
        for incoming in delivery.waiters:
            incoming.waiting -= 1
            if incoming.waiting == 0:
                acks += self.done(incoming)
        delivery.waiters.clear()
        return acks

    @property
    def unacknowledged(self) -> int:
        """Messages of this connection not acknowledged yet."""
        return len(self._order)
