"""The MQTT contract's payloads (v1), built in one place.

JSON Schemas for each payload are in `bench_agent/schemas/`; the tests validate
payloads actually published to a broker against them. A field is never renamed
without bumping `CONTRACT_VERSION`.

Payloads are compact JSON (no spaces): the bench pays for every byte it sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Protocol

from bench_agent.json_value import Json, JsonObject
from bench_agent.link import contract_v2
from bench_agent.vocabulary import EventType

CONTRACT_VERSION = 1
# What cannot wait for the next batch (README, "MQTT contract"): someone at the box,
# something broken, a load shed, the uplink power-cycled, a command's trace.
URGENT_EVENTS = frozenset(
    {
        EventType.TAMPER,
        EventType.FAULT_RAISED,
        EventType.OVERCURRENT_LATCHED,
        EventType.BATTERY_SHED,
        EventType.OVER_TEMPERATURE,
        EventType.UPLINK_RECOVERY,
        EventType.COMMAND,
    }
)


class Recorded(Protocol):
    """What the publisher knows of a stored record (an outbox item)."""

    @property
    def seq(self) -> int: ...
    @property
    def boot_id(self) -> str: ...
    @property
    def mono_s(self) -> float: ...
    @property
    def ts(self) -> str: ...
    @property
    def time_quality(self) -> str: ...
    @property
    def body(self) -> JsonObject: ...
    @property
    def body_json(self) -> str: ...
    @property
    def seq_epoch(self) -> str: ...
    @property
    def kind(self) -> str: ...


def _text(obj: Mapping[str, Json]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(obj: Mapping[str, Json]) -> bytes:
    return _text(obj).encode()


def _envelope(item: Recorded, *, historical: bool, stored: bool) -> JsonObject:
    """A record's envelope fields. A record the outbox could not store (storage fault)
    has no seq -- a seq is only ever issued by a commit, so that a gap means lost
    data -- and is flagged `"stored": false` instead."""
    out: JsonObject = {"seq": item.seq, "seq_epoch": item.seq_epoch} if stored else {}
    out.update(
        ts=item.ts,
        time_quality=item.time_quality,
        boot_id=item.boot_id,
        uptime_s=round(item.mono_s, 1),
    )
    if historical:
        out["historical"] = True
    if not stored:
        out["stored"] = False
    return out


def record(item: Recorded, *, historical: bool, stored: bool = True) -> JsonObject:
    """One telemetry record or event as a dict: envelope fields, then body."""
    return {**_envelope(item, historical=historical, stored=stored), **item.body}


def record_json(item: Recorded, *, historical: bool, stored: bool = True) -> str:
    """`record` as compact JSON, spliced from the stored body text without decoding it
    (the body's keys never collide with the envelope's)."""
    envelope = _text(_envelope(item, historical=historical, stored=stored))
    body = item.body_json
    return envelope if body == "{}" else f"{envelope[:-1]},{body[1:]}"


def telemetry_frame(bench_id: str) -> tuple[str, str]:
    """The text around a telemetry message's records: prefix + ",".join(records) + suffix."""
    head = _text({"v": CONTRACT_VERSION, "bench": bench_id})
    return head[:-1] + ',"records":[', "]}"


def telemetry_message(
    bench_id: str, items: Iterable[Recorded], *, historical: bool, stored: bool = True
) -> bytes:
    prefix, suffix = telemetry_frame(bench_id)
    records = ",".join(record_json(i, historical=historical, stored=stored) for i in items)
    return f"{prefix}{records}{suffix}".encode()


def event_message(bench_id: str, item: Recorded, *, historical: bool, stored: bool = True) -> bytes:
    head = _text({"v": CONTRACT_VERSION, "bench": bench_id})
    return f"{head[:-1]},{record_json(item, historical=historical, stored=stored)[1:]}".encode()


def is_urgent(item: Recorded) -> bool:
    """An event ops must see at once (contract v2 sends it without waiting for the batch)."""
    return item.kind == "event" and item.body.get("type") in URGENT_EVENTS


def v2_batch(
    bench_id: str, items: Iterable[tuple[Recorded, bool]], *, stored: bool = True
) -> bytes:
    """One contract-v2 message for `items` ((record, historical) in seq order)."""

    def kind(item: Recorded) -> contract_v2.RecordKind:
        return "event" if item.kind == "event" else "telemetry"

    return contract_v2.encode(
        bench_id, ((kind(i), record(i, historical=h, stored=stored)) for i, h in items)
    )


def status_message(
    bench_id: str,
    *,
    online: bool,
    boot_id: str,
    ts: str,
    version: str,
    reason: str | None = None,
    config_hash: str | None = None,
) -> bytes:
    """The retained `status`. The Last Will is this with online false, prepared at connect.
    `config_hash`: the first 12 hex digits of the SHA-256 of the configuration file."""
    payload: JsonObject = {
        "v": CONTRACT_VERSION,
        "bench": bench_id,
        "online": online,
        "ts": ts,
        "boot_id": boot_id,
        "agent_version": version,
    }
    if config_hash is not None:
        payload["config_hash"] = config_hash
    if reason is not None:
        payload["reason"] = reason
    return encode(payload)
