"""The MQTT contract's payloads (v1), built in one place.

JSON Schemas for each payload are in `bench_agent/schemas/`; the tests validate
payloads actually published to a broker against them. A field is never renamed
without bumping `CONTRACT_VERSION`.

Payloads are compact JSON (no spaces): the bench pays for every byte it sends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

CONTRACT_VERSION = 1


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
    def body(self) -> dict[str, Any]: ...


def encode(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def iso_utc(when: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a Z."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(item: Recorded, *, historical: bool, stored: bool = True) -> dict[str, Any]:
    """One telemetry record or event as it goes on the wire: envelope fields, then body.

    A record the outbox could not store (storage fault) has no seq -- a seq is
    only ever issued by a commit, so that a gap means lost data -- and is
    flagged `"stored": false` instead.
    """
    out: dict[str, Any] = {"seq": item.seq} if stored else {}
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
    out.update(item.body)
    return out


def telemetry_message(
    bench_id: str, items: Iterable[Recorded], *, historical: bool, stored: bool = True
) -> bytes:
    records = [record(item, historical=historical, stored=stored) for item in items]
    return encode({"v": CONTRACT_VERSION, "bench": bench_id, "records": records})


def event_message(bench_id: str, item: Recorded, *, historical: bool, stored: bool = True) -> bytes:
    body = record(item, historical=historical, stored=stored)
    return encode({"v": CONTRACT_VERSION, "bench": bench_id, **body})


def status_message(
    bench_id: str,
    *,
    online: bool,
    boot_id: str,
    ts: str,
    version: str,
    reason: str | None = None,
) -> bytes:
    """The retained `status`. The Last Will is this with online false, prepared at connect."""
    payload: dict[str, Any] = {
        "v": CONTRACT_VERSION,
        "bench": bench_id,
        "online": online,
        "ts": ts,
        "boot_id": boot_id,
        "agent_version": version,
    }
    if reason is not None:
        payload["reason"] = reason
    return encode(payload)
