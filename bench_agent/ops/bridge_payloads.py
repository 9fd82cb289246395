"""The bridge's topics and payloads: a v2 batch read and checked, its records as v1
messages (the bench's own v1 encoding, byte for byte), the bridge's status and its
summary line. Pure: no MQTT here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from bench_agent.json_value import Json, JsonObject
from bench_agent.link import contract_v2, payloads
from bench_agent.ops.bridge_ledger import Counters, Key

# What a payload on a v2 topic can be besides a batch: contract_v2's problems, and
# a batch whose bench is not the one its topic names (or a record naming another).
BENCH_MISMATCH: Final = "bench_mismatch"
# A bug of the bridge's own on one payload: counted, logged, acknowledged, never a crash.
INTERNAL_ERROR: Final = "internal_error"
STATUS_BENCH: Final = "_bridge"  # <v1-prefix>/_bridge/<client id>: no bench id starts with _
MIRRORED_LEAVES: Final = ("state", "status")
GAPS_IN_STATUS = 100  # the largest open gaps listed in the status; the total is always there


class Unreadable(Exception):
    """A payload on a v2 topic that is not a batch the bridge can pass on; `problem` names why."""

    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


@dataclass(frozen=True)
class Topic:
    bench: str
    leaf: str


def parse_topic(topic: str, prefix: str) -> Topic | None:
    """`<prefix>/<bench>/<leaf>` -> its bench and leaf; None for anything else."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return Topic(parts[0], parts[1])


def read_batch(bench: str, payload: bytes) -> contract_v2.Batch:
    """The batch on `<prefix>/<bench>/v2`, checked: decoded, for that bench, with keys that
    can be deduped. Raises Unreadable."""
    try:
        batch = contract_v2.decode(payload)
    except contract_v2.DecodeError as exc:
        raise Unreadable(exc.problem, str(exc).removeprefix(f"{exc.problem}: ")) from None
    except RecursionError:  # nesting json.loads takes but expand() cannot
        raise Unreadable("corrupt", "nested too deeply") from None
    if batch.bench != bench:
        raise Unreadable(BENCH_MISMATCH, f"batch of {batch.bench!r} on the topic of {bench!r}")
    for _, record in batch.records:
        named = record.get("bench", bench)
        if named != bench:
            raise Unreadable(BENCH_MISMATCH, f"a record of {named!r} in a batch of {bench!r}")
        seq, epoch = record.get("seq"), record.get("seq_epoch", "")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
            raise Unreadable("corrupt", f"seq {seq!r}")
        if not isinstance(epoch, str):
            raise Unreadable("corrupt", f"seq_epoch {epoch!r}")
    return batch


def key_of(bench: str, record: Mapping[str, Json]) -> Key | None:
    """The dedupe key of a record read by `read_batch`; None when it has no seq (a record
    the bench could not store: sent once, live, `stored: false`)."""
    seq = record.get("seq")
    if not isinstance(seq, int):
        return None
    epoch = record.get("seq_epoch", "")
    return (bench, epoch if isinstance(epoch, str) else "", seq)


def v1_payloads(batch: contract_v2.Batch, max_bytes: int) -> list[tuple[str, bytes, int]]:
    """The v1 messages carrying `batch`'s records, in order: (leaf, payload, records). A
    run of telemetry records longer than `max_bytes` is split into several messages (a
    v1 telemetry message carries any number of records); an event is one message.
    Raises Unreadable ("corrupt") for what has no JSON (NaN from a hostile batch)."""
    out: list[tuple[str, bytes, int]] = []
    try:
        for leaf, message in contract_v2.v1_messages(batch):
            if leaf != "telemetry":
                out.append((leaf, payloads.encode(message), 1))
                continue
            records = message["records"]
            assert isinstance(records, list)
            out.extend(("telemetry", p, n) for p, n in _telemetry(batch.bench, records, max_bytes))
    except ValueError as exc:
        raise Unreadable("corrupt", f"not JSON: {exc}") from None
    return out


def _telemetry(bench: str, records: Sequence[Json], max_bytes: int) -> Iterable[tuple[bytes, int]]:
    head, tail = payloads.telemetry_frame(bench)
    frame = len(head.encode()) + len(tail)
    chunk: list[str] = []
    size = frame
    for record in records:
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        length = len(text.encode())
        if chunk and size + 1 + length > max_bytes:
            yield f"{head}{','.join(chunk)}{tail}".encode(), len(chunk)
            chunk, size = [], frame
        size += length + (1 if chunk else 0)
        chunk.append(text)
    if chunk:
        yield f"{head}{','.join(chunk)}{tail}".encode(), len(chunk)


def status_topic(v1_prefix: str, client_id: str) -> str:
    return f"{v1_prefix}/{STATUS_BENCH}/{client_id}"


def counters_json(counters: Counters, gaps: Mapping[tuple[str, str], int]) -> JsonObject:
    largest = sorted(gaps.items(), key=lambda kv: (-kv[1], kv[0]))[:GAPS_IN_STATUS]
    listed: dict[str, JsonObject] = {}
    for (bench, epoch), missing in largest:
        listed.setdefault(bench, {})[epoch] = missing
    return {
        "batches": counters.batches,
        "records_in": counters.records_in,
        "records_out": counters.records_out,
        "duplicates": counters.duplicates,
        "messages_out": counters.messages_out,
        "retained_mirrored": counters.retained_mirrored,
        "undecodable": dict(sorted(counters.undecodable.items())),
        "refused": dict(sorted(counters.refused.items())),
        "gaps_total": sum(gaps.values()),
        "gaps": listed,
    }


def status_payload(
    client_id: str,
    *,
    online: bool,
    ts: str,
    version: str,
    counters: JsonObject | None = None,
    reason: str | None = None,
) -> bytes:
    """The bridge's retained status (the Last Will is this with online false)."""
    status: JsonObject = {
        "v": 1,
        "bridge": client_id,
        "online": online,
        "ts": ts,
        "version": version,
    }
    if reason is not None:
        status["reason"] = reason
    if counters is not None:
        status["counters"] = counters
    return payloads.encode(status)


def summary_line(
    counters: Counters, previous: Counters, gaps: Mapping[tuple[str, str], int], interval_s: float
) -> str:
    """The minute's log line: rates over the interval, totals since the start."""
    rate = (counters.records_out - previous.records_out) / interval_s if interval_s > 0 else 0.0
    batches = counters.batches - previous.batches
    undecodable = ", ".join(f"{p} {n}" for p, n in sorted(counters.undecodable.items())) or "none"
    worst = sorted(gaps.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    gap_text = f"{sum(gaps.values())} missing"
    if worst:
        gap_text += " (" + ", ".join(f"{b}/{e}: {n}" for (b, e), n in worst) + ")"
    text = (
        f"bridge: {rate:.1f} records/s, {batches} batches in {interval_s:.0f} s;"
        f" since start: {counters.records_out} records out, {counters.duplicates} duplicates"
        f" dropped, undecodable: {undecodable}, gaps: {gap_text},"
        f" {counters.retained_mirrored} state/status mirrored"
    )
    if counters.refused:
        text += ", REFUSED by the broker: " + ", ".join(
            f"{r} {n}" for r, n in sorted(counters.refused.items())
        )
    return text
