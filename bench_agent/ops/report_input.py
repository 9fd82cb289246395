"""What `bench-ops report` reads, as `report_data.Observation`s: v1 messages as the
benches (or the bridge) send them, lines of a capture file, or the archive's rows.

- a v1 `telemetry` message `{"v": 1, "bench", "records": [record, ...]}`: each record;
- a v1 `event` message `{"v": 1, "bench", "type", ...}`: the event;
- a capture line (bench/capture_records.py, bench/data/*.jsonl.gz): one record or event
  with `"kind": "telemetry" | "event"` added (a telemetry record there has no `bench`:
  a capture file is one bench's, named by its events, or by the caller).
Anything else, or a record without a readable `ts`, is skipped and counted.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from bench_agent.json_value import Json
from bench_agent.ops.report_data import Kind, Observation


@dataclass
class Skipped:
    """How many messages or records could not be read."""

    count: int = 0


def parse_ts(value: Json | None) -> datetime | None:
    """An ISO 8601 time with its zone (the bench's `ts`), as an aware UTC datetime."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo is not None else None


def observation(bench: str, kind: Kind, record: Mapping[str, Json]) -> Observation | None:
    when = parse_ts(record.get("ts"))
    return Observation(bench, kind, record, when) if when is not None else None


def from_message(
    message: Json, skipped: Skipped, bench: str | None = None
) -> Iterator[Observation]:
    """The observations in one v1 message or capture line (see the module's text)."""
    if not isinstance(message, Mapping):
        skipped.count += 1
        return
    name = message.get("bench", bench)
    records = message.get("records")
    kind = message.get("kind")
    found: list[tuple[Kind, Json]] = []
    if isinstance(records, list) and kind is None:
        found = [("telemetry", r) for r in records]
    elif kind == "telemetry":
        found = [("telemetry", message)]
    elif kind == "event" or (kind is None and isinstance(message.get("type"), str)):
        found = [("event", message)]
    if not isinstance(name, str) or not found:
        skipped.count += 1
        return
    for record_kind, record in found:
        obs = observation(name, record_kind, record) if isinstance(record, Mapping) else None
        if obs is None:
            skipped.count += 1
        else:
            yield obs


def read_jsonl(path: Path, skipped: Skipped, bench: str | None = None) -> Iterator[Observation]:
    """Every observation of a file of v1 messages or capture lines, one JSON a line
    (gzip when the name ends in .gz). OSError when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        messages: list[Json] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                messages.append(json.loads(line))
            except ValueError:
                skipped.count += 1
    named = (m.get("bench") for m in messages if isinstance(m, Mapping))
    bench = bench or next((n for n in named if isinstance(n, str)), None)
    for message in messages:
        yield from from_message(message, skipped, bench)


class StoredLike(Protocol):
    """What the archive's reader yields (archive_store.StoredRecord)."""

    @property
    def bench(self) -> str: ...
    @property
    def kind(self) -> Kind: ...
    @property
    def body(self) -> dict[str, Json]: ...


def from_stored(rows: Iterable[StoredLike], skipped: Skipped) -> Iterator[Observation]:
    for row in rows:
        obs = observation(row.bench, row.kind, row.body)
        if obs is None:
            skipped.count += 1
        else:
            yield obs
