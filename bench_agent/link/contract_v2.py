"""Contract v2: the same records as v1, batched, without their keys, deflated
against a dictionary that ships with the product.

One message carries a batch of records (telemetry and events, in seq order) on
`<prefix>/<bench>/v2`:

    byte 0      MAGIC (0xB2): a v2 payload (a v1 payload starts with "{")
    byte 1      the dictionary's id (1-255): which shapes and preset dictionary
    bytes 2…    raw deflate (zlib, wbits -15) of compact JSON, with that preset
                dictionary: {"v":2,"bench":…,"records":[…]}

Compact JSON is v1's JSON with the keys of known objects left out: an object
whose keys, in order, are one of the dictionary's shapes is written
`{"":[shape index, value, value, …]}` (no v1 object has an empty key). Values
are v1's values, to the digit (the scales and rounding are v1's, fixed by its
schemas), so a v2 batch decodes to exactly the v1 records: `decode()` gives the
records a v1 consumer would have received, and `bench-ops bridge` republishes
them as v1 JSON. Each record carries its `kind` ("telemetry" or "event").

Why this and not zstd: measured on a simulated day of the agent's own records
(bench/bench_encoding.py, README "Figures"), deflate with a preset dictionary
over compact JSON takes a 5-record batch to ~91 bytes per record (v1: ~1,600);
zstd with a trained dictionary gets ~74, but needs a C extension on every
bench for ~1 kB an hour that the budget does not need. zlib is in the standard
library.

Dictionaries are never changed once shipped (a test pins their hashes): a
better one gets a new id, ships to the bridge first, then to benches. The
bridge keeps every dictionary it ever knew.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final, Literal

from bench_agent.json_value import Json, JsonObject

MAGIC: Final = 0xB2
CONTRACT_VERSION: Final = 2
LEAF: Final = "v2"  # the topic leaf: <prefix>/<bench>/v2
CONTENT_TYPE: Final = "application/vnd.smartbench.v2"  # the MQTT 5 content type
CURRENT_DICTIONARY: Final = 1  # what a bench encodes with
# A decoded batch larger than this is refused (a deflate bomb must not take the
# bridge's memory); a real batch is tens of kilobytes at most.
MAX_DECODED_BYTES: Final = 16 * 1024 * 1024
SHAPE_KEY: Final = ""

RecordKind = Literal["telemetry", "event"]
DecodeProblem = Literal["not_v2", "unknown_dictionary", "corrupt", "too_large"]


class DecodeError(ValueError):
    """A payload that is not a v2 batch this code can read; `problem` says which way."""

    def __init__(self, problem: DecodeProblem, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem: DecodeProblem = problem


@dataclass(frozen=True)
class Dictionary:
    """Shapes (key lists of known objects) and a preset deflate dictionary."""

    id: int
    shapes: tuple[tuple[str, ...], ...]
    zdict: bytes
    _index: dict[tuple[str, ...], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.id <= 255:
            raise ValueError(f"a dictionary id is 1-255, got {self.id}")
        object.__setattr__(self, "_index", {keys: i for i, keys in enumerate(self.shapes)})

    @property
    def sha256(self) -> str:
        """Identity of the content: pinned by the tests, so a shipped one never changes."""
        text = json.dumps([self.id, self.shapes], separators=(",", ":")).encode()
        return hashlib.sha256(text + self.zdict).hexdigest()

    def shape_of(self, keys: tuple[str, ...]) -> int | None:
        return self._index.get(keys)


@cache
def dictionary(dictionary_id: int) -> Dictionary:
    """A shipped dictionary (bench_agent/link/dictionaries/); KeyError when unknown."""
    folder = resources.files("bench_agent.link").joinpath("dictionaries")
    shapes_file = folder.joinpath(f"{dictionary_id}.json")
    if not shapes_file.is_file():
        raise KeyError(dictionary_id)
    shapes = json.loads(shapes_file.read_text())["shapes"]
    zdict = folder.joinpath(f"{dictionary_id}.zdict").read_bytes()
    return Dictionary(dictionary_id, tuple(tuple(keys) for keys in shapes), zdict)


def shipped_dictionaries() -> list[int]:
    folder = resources.files("bench_agent.link").joinpath("dictionaries")
    return sorted(int(f.name[:-5]) for f in folder.iterdir() if f.name.endswith(".json"))


# -- compact JSON -------------------------------------------------------------


def compact(value: Json, shapes: Dictionary) -> Json:
    """`value` with the keys of known objects left out (see the module's docstring)."""
    if isinstance(value, Mapping):
        if SHAPE_KEY in value:
            raise ValueError("an object with an empty key cannot be written in v2")
        index = shapes.shape_of(tuple(value))
        if index is not None:
            return {SHAPE_KEY: [index, *(compact(v, shapes) for v in value.values())]}
        return {k: compact(v, shapes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [compact(v, shapes) for v in value]
    return value


def read_compact(value: Any, shapes: Dictionary) -> Any:
    """The inverse of `compact`, for what a batch read from the wire holds;
    DecodeError ("corrupt") for what compact never wrote."""
    if isinstance(value, dict):
        if SHAPE_KEY not in value:
            return {k: read_compact(v, shapes) for k, v in value.items()}
        packed = value[SHAPE_KEY]
        if len(value) != 1 or not isinstance(packed, list) or not packed:
            raise DecodeError("corrupt", "a malformed shaped object")
        index, *values = packed
        if not isinstance(index, int) or isinstance(index, bool):
            raise DecodeError("corrupt", f"shape index {index!r}")
        if not 0 <= index < len(shapes.shapes) or len(shapes.shapes[index]) != len(values):
            raise DecodeError("corrupt", f"shape {index} does not fit {len(values)} values")
        return {
            k: read_compact(v, shapes) for k, v in zip(shapes.shapes[index], values, strict=True)
        }
    if isinstance(value, list):
        return [read_compact(v, shapes) for v in value]
    return value


# -- a batch ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Batch:
    bench: str
    dictionary_id: int
    records: tuple[tuple[RecordKind, JsonObject], ...]  # (kind, the v1 record), seq order


def encode(
    bench: str,
    records: Iterable[tuple[RecordKind, Mapping[str, Json]]],
    dictionary_id: int = CURRENT_DICTIONARY,
) -> bytes:
    """One v2 message for `records` (each the v1 record: envelope fields, then body)."""
    shapes = dictionary(dictionary_id)
    doc: JsonObject = {
        "v": CONTRACT_VERSION,
        "bench": bench,
        "records": [compact({"kind": kind, **record}, shapes) for kind, record in records],
    }
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, shapes.zdict)
    return bytes((MAGIC, shapes.id)) + deflate.compress(text.encode()) + deflate.flush()


def is_v2(payload: bytes) -> bool:
    return len(payload) >= 2 and payload[0] == MAGIC


def decode(payload: bytes) -> Batch:
    """The records of a v2 message; DecodeError says why when it is not one."""
    if not is_v2(payload):
        raise DecodeError("not_v2", f"first byte {payload[:1]!r}")
    try:
        shapes = dictionary(payload[1])
    except KeyError:
        raise DecodeError("unknown_dictionary", f"dictionary {payload[1]}") from None
    inflate = zlib.decompressobj(-15, zdict=shapes.zdict)
    try:
        text = inflate.decompress(payload[2:], MAX_DECODED_BYTES)
    except zlib.error as exc:
        raise DecodeError("corrupt", f"deflate: {exc}") from None
    if inflate.unconsumed_tail:
        raise DecodeError("too_large", f"more than {MAX_DECODED_BYTES} bytes decoded")
    if not inflate.eof or inflate.unused_data:
        raise DecodeError("corrupt", "truncated or trailing bytes")
    try:
        doc = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DecodeError("corrupt", f"JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("v") != CONTRACT_VERSION:
        raise DecodeError("corrupt", "not a v2 document")
    bench, records = doc.get("bench"), doc.get("records")
    if not isinstance(bench, str) or not isinstance(records, list):
        raise DecodeError("corrupt", "no bench or no records")
    return Batch(bench, shapes.id, tuple(_read_record(read_compact(r, shapes)) for r in records))


def _read_record(record: Any) -> tuple[RecordKind, JsonObject]:
    if not isinstance(record, dict):
        raise DecodeError("corrupt", "a record that is not an object")
    kind = record.pop("kind", None)
    if kind not in ("telemetry", "event"):
        raise DecodeError("corrupt", f"record kind {kind!r}")
    return kind, record


def v1_messages(batch: Batch) -> Sequence[tuple[str, JsonObject]]:
    """The v1 messages (topic leaf, payload) carrying the batch's records, in order:
    each run of telemetry records in one `telemetry` message, each event alone."""
    messages: list[tuple[str, JsonObject]] = []
    run: list[Json] = []
    for kind, record in batch.records:
        if kind == "telemetry":
            run.append(record)
            continue
        if run:
            messages.append(("telemetry", {"v": 1, "bench": batch.bench, "records": run}))
            run = []
        messages.append(("event", {"v": 1, "bench": batch.bench, **record}))
    if run:
        messages.append(("telemetry", {"v": 1, "bench": batch.bench, "records": run}))
    return messages
