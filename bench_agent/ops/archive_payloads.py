"""What the archive makes of one MQTT message from a bench: the rows to store. Pure.

    <prefix>/<bench>/v2          a contract-2 batch (bridge_payloads.read_batch: decoded,
                                 checked for its bench); each record becomes the v1 JSON a
                                 v1 consumer would have received
    <prefix>/<bench>/telemetry   contract 1: {"v": 1, "bench", "records": [record, …]}
    <prefix>/<bench>/event       contract 1: one event message

A payload that is none of these, or names another bench, raises `Unreadable` with its
problem (counted and acknowledged by the archive, never stored, never a crash).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from bench_agent.json_value import JsonObject
from bench_agent.link import contract_v2
from bench_agent.ops.archive_store import BadRecord, Row
from bench_agent.ops.bridge_payloads import BENCH_MISMATCH, Unreadable, read_batch

V1_LEAVES: Final = ("telemetry", "event")
LEAVES: Final = (contract_v2.LEAF, *V1_LEAVES)
MAX_V1_BYTES: Final = 4 * 1024 * 1024  # a v1 message larger than this is not a bench's


@dataclass(frozen=True, slots=True)
class Rows:
    """The rows of one message, and its records that have no key (sent unstored)."""

    rows: tuple[Row, ...]
    unkeyed: int = 0


def rows_of(bench: str, leaf: str, payload: bytes) -> Rows:
    """The rows carried by `payload` on `<prefix>/<bench>/<leaf>`. Raises Unreadable."""
    if leaf == contract_v2.LEAF:
        batch = read_batch(bench, payload)
        event_head: JsonObject = {"v": 1, "bench": bench}
        records = [
            (kind, {**event_head, **record} if kind == "event" else record)
            for kind, record in batch.records
        ]
    elif leaf in V1_LEAVES:
        records = _v1_records(bench, leaf, payload)
    else:
        raise Unreadable("not_archived", f"topic leaf {leaf!r}")
    rows: list[Row] = []
    unkeyed = 0
    for kind, record in records:
        try:
            row = Row.of(bench, kind, record)
        except BadRecord as exc:
            raise Unreadable("bad_record", str(exc)) from None
        if row is None:
            unkeyed += 1
        else:
            rows.append(row)
    return Rows(tuple(rows), unkeyed)


def _v1_records(
    bench: str, leaf: str, payload: bytes
) -> list[tuple[contract_v2.RecordKind, JsonObject]]:
    if len(payload) > MAX_V1_BYTES:
        raise Unreadable("too_large", f"{len(payload)} bytes")
    if contract_v2.is_v2(payload):
        raise Unreadable("not_v1", f"a v2 batch on {leaf!r}")
    try:
        message = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Unreadable("not_v1", f"JSON: {exc}") from None
    if not isinstance(message, dict) or message.get("v") != 1:
        raise Unreadable("not_v1", "not a v1 message")
    if message.get("bench") != bench:
        raise Unreadable(BENCH_MISMATCH, f"a message of {message.get('bench')!r} for {bench!r}")
    if leaf == "event":
        return [("event", message)]
    records = message.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise Unreadable("not_v1", "telemetry without a list of records")
    return [("telemetry", record) for record in records]
