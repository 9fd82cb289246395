"""What the outbox stores and hands back: a record (`OutboxItem`) with its body as
compact JSON (`encode_body`) and its stored, deflated form (`pack_body`), the kinds
and time qualities a record may have, and the outbox at a glance (`OutboxStats`).

Stored bodies are compact JSON deflated against contract v2's dictionary (~1,430
bytes of JSON to ~235 on a simulated day): with contract 2 several records wait in
the outbox for their batch, and a 1.5 kB row needs a 2 kB page of its own, so every
commit rewrote several pages (13 MB a day of SQLite writes, against 3 MB with one
row waiting at a time). Deflated, the waiting rows share one page. A body stored as text
(before deflated bodies) is read as it is; `size` counts stored bytes, what the
cap (`max_bytes`) counts.

Values, apart from the store (outbox.py, outbox_file.py): the recorder makes an item
before it is stored, the publisher and the payloads read items and the health block
reads the stats, none of them touching SQLite. `bench_agent.link.outbox` re-exports
every name here: it is the outbox's API.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Final, Literal

from bench_agent.json_value import JsonObject
from bench_agent.link import contract_v2

# The stored form: one byte, the contract-v2 dictionary whose preset bytes deflate
# the body, then raw deflate. A row written as text is JSON (it starts with "{").
STORE_DICTIONARY: Final = contract_v2.CURRENT_DICTIONARY

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
    size: int  # bytes of the stored body (deflated; what the cap counts)
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
    """A body as the wire has it: compact JSON, UTF-8 text, no NaN."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def pack_body(text: str, dictionary_id: int = STORE_DICTIONARY) -> bytes:
    """`text` (from `encode_body`) as the outbox stores it: compact JSON (contract v2's
    shapes: the keys of known objects left out), deflated against the same
    dictionary's preset bytes, after one byte naming the dictionary."""
    shapes = contract_v2.dictionary(dictionary_id)
    compact = json.dumps(
        contract_v2.compact(json.loads(text), shapes),
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, shapes.zdict)
    return bytes((dictionary_id,)) + deflate.compress(compact.encode()) + deflate.flush()


def unpack_body(stored: bytes | str) -> str:
    """The JSON text of a stored body, exactly as `encode_body` made it; ValueError
    when it cannot be read (the outbox treats that as a corrupt file)."""
    if isinstance(stored, str):
        return stored  # stored as text, before bodies were deflated
    if not stored:
        raise ValueError("an empty stored body")
    try:
        shapes = contract_v2.dictionary(stored[0])
    except KeyError:
        raise ValueError(f"a body deflated with unknown dictionary {stored[0]}") from None
    try:
        inflate = zlib.decompressobj(-15, zdict=shapes.zdict)
        compact = json.loads(inflate.decompress(stored[1:]) + inflate.flush())
        body = contract_v2.read_compact(compact, shapes)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"a stored body that does not inflate: {exc}") from None
    except contract_v2.DecodeError as exc:
        raise ValueError(f"a stored body with a broken shape: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("a stored body that is not an object")
    return encode_body(body)


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
