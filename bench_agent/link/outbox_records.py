"""What the outbox stores and hands back: a record (`OutboxItem`) with its body in
the stored form (`encode_body`), the kinds and time qualities a record may have, and
the outbox at a glance (`OutboxStats`).

Values, apart from the store (outbox.py, outbox_file.py): the recorder makes an item
before it is stored, the publisher and the payloads read items and the health block
reads the stats, none of them touching SQLite. `bench_agent.link.outbox` re-exports
every name here: it is the outbox's API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final, Literal

from bench_agent.json_value import JsonObject

Kind = Literal["telemetry", "event"]
KINDS: Final = frozenset({"telemetry", "event"})
TIME_QUALITIES: Final = frozenset({"synced", "unsynced", "corrected"})


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One stored record, as the publisher needs it.

    The body stays the compact JSON text it was stored as: the publisher splices
    it into the message without decoding and re-encoding it, which is most of the
    CPU a backlog drain costs (bench/bench_drain.py). `body` decodes on demand.
    """

    seq: int
    kind: str  # "telemetry" | "event"
    boot_id: str  # kernel boot id of the boot that recorded it
    mono_s: float  # monotonic seconds since that boot, at recording
    ts: str  # ISO 8601 UTC wall time at recording (or corrected afterwards)
    time_quality: str  # "synced" | "unsynced" | "corrected"
    body_json: str  # the record without the envelope: a compact JSON object
    size: int  # bytes of the stored body (UTF-8)
    # The outbox's random id, made with its file: a replaced SD card (or a corrupt
    # file set aside) starts a new epoch, so ops never mistake a new seq 1 for an
    # old one. Ops dedupe on (bench, seq_epoch, seq). Empty before it is stored.
    seq_epoch: str = ""

    @property
    def body(self) -> JsonObject:
        body: JsonObject = json.loads(self.body_json)  # written by encode_body: an object
        return body

    @classmethod
    def of(
        cls,
        seq: int,
        kind: str,
        body: JsonObject,
        *,
        boot_id: str,
        mono_s: float,
        ts: str,
        time_quality: str,
    ) -> OutboxItem:
        """An item from a body dict (a record just made, not read back from the store)."""
        text = encode_body(body)
        return cls(seq, kind, boot_id, mono_s, ts, time_quality, text, len(text.encode()))


def encode_body(body: JsonObject) -> str:
    """The stored form of a body: compact JSON, UTF-8 text, no NaN."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """The outbox at a glance (for telemetry health and the technician's `status`)."""

    depth: int  # records waiting for a PUBACK
    bytes: int  # sum of their body sizes, bytes (what `max_bytes` caps)
    oldest_seq: int | None
    oldest_mono_s: float | None  # monotonic seconds of the oldest record, in its boot
    oldest_boot_id: str | None
    drops_total: int  # records dropped by the cap or age limit, ever (persisted)
    last_seq: int  # the last seq issued (0 before the first record)
    fault: str | None
