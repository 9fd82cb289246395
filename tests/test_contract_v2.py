"""Contract v2: a batch decodes to exactly the v1 records it was made from; what is
not a v2 batch this code can read is named, never a crash."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_agent.link import contract_v2
from bench_agent.link.contract_v2 import DecodeError, decode, encode, v1_messages
from tests.outbox_support import validate
from tests.support import REPO

RECORDS = REPO / "bench" / "data" / "records-day-a.jsonl.gz"
# A shipped dictionary never changes (benches in the field encode with it): a new
# one gets a new id. Update this list only by adding to it.
SHIPPED = {
    1: "43f48ae35f6defd52cb6961956243bdae5fa58c3ba749ac9996a9873a865674b",
}


def captured() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for line in gzip.decompress(RECORDS.read_bytes()).decode().splitlines():
        record = json.loads(line)
        out.append((record.pop("kind"), record))
    return out


def test_a_simulated_day_of_real_records_comes_back_exactly_and_as_valid_v1() -> None:
    records = captured()
    assert len(records) > 1000
    for start in range(0, len(records), 5):
        batch = records[start : start + 5]
        payload = encode("sim-bench-01", batch)
        decoded = decode(payload)
        assert decoded.bench == "sim-bench-01" and decoded.dictionary_id == 1
        assert list(decoded.records) == batch  # every field, every digit
        # Byte for byte the v1 JSON: key order kept.
        assert [json.dumps(r) for _, r in decoded.records] == [json.dumps(r) for _, r in batch]
        for leaf, message in v1_messages(decoded):
            validate(leaf, message)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["telemetry", "event"]),
            st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=8),
        ),
        max_size=6,
    )
)
def test_any_records_decode_to_exactly_what_was_encoded(
    records: list[tuple[str, dict[str, Any]]],
) -> None:
    records = [(kind, {k: v for k, v in r.items() if k != "kind"}) for kind, r in records]
    decoded = decode(encode("b1", records))  # type: ignore[arg-type]
    assert json.dumps(list(decoded.records)) == json.dumps(records)


def test_known_objects_lose_their_keys_and_a_batch_compresses_to_a_fraction() -> None:
    batch = captured()[100:105]
    v1_bytes = sum(len(json.dumps(r, separators=(",", ":"))) for _, r in batch)
    payload = encode("sim-bench-01", batch)
    assert payload[0] == contract_v2.MAGIC and payload[1] == contract_v2.CURRENT_DICTIONARY
    assert len(payload) < v1_bytes / 8, (len(payload), v1_bytes)


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b'{"v":1,"bench":"b1","records":[]}', "not_v2"),
        (b"", "not_v2"),
        (bytes((contract_v2.MAGIC, 200)) + b"\x00", "unknown_dictionary"),
        (bytes((contract_v2.MAGIC, 1)) + b"garbage bytes, not deflate", "corrupt"),
    ],
)
def test_what_is_not_a_readable_batch_is_named(payload: bytes, problem: str) -> None:
    with pytest.raises(DecodeError) as error:
        decode(payload)
    assert error.value.problem == problem


def deflated(text: bytes) -> bytes:
    shapes = contract_v2.dictionary(1)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, shapes.zdict)
    return bytes((contract_v2.MAGIC, 1)) + deflate.compress(text) + deflate.flush()


@pytest.mark.parametrize(
    "text",
    [
        b"[1,2]",  # not a document
        b'{"v":3,"bench":"b1","records":[]}',
        b'{"v":2,"bench":"b1","records":[{"kind":"telemetry","":[999]}]}',  # no such shape
        b'{"v":2,"bench":"b1","records":[{"":[0]}]}',  # a shape with too few values
        b'{"v":2,"bench":"b1","records":[{"kind":"other"}]}',
        b'{"v":2,"bench":"b1","records":[7]}',
        b"\xff\xfe not utf-8",
    ],
)
def test_a_well_deflated_document_that_is_not_a_batch_is_corrupt(text: bytes) -> None:
    with pytest.raises(DecodeError) as error:
        decode(deflated(text))
    assert error.value.problem == "corrupt"


def test_a_truncated_batch_is_corrupt_and_a_deflate_bomb_is_refused() -> None:
    payload = encode("sim-bench-01", captured()[:5])
    with pytest.raises(DecodeError) as truncated:
        decode(payload[:-10])
    assert truncated.value.problem == "corrupt"
    bomb = deflated(b'{"v":2,"bench":"b1","records":["' + b"0" * (20 * 1024 * 1024) + b'"]}')
    assert len(bomb) < 100_000
    with pytest.raises(DecodeError) as large:
        decode(bomb)
    assert large.value.problem == "too_large"


def test_an_object_with_an_empty_key_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="empty key"):
        encode("b1", [("event", {"type": "x", "data": {"": 1}})])


def test_shipped_dictionaries_never_change() -> None:
    assert contract_v2.shipped_dictionaries() == sorted(SHIPPED)
    for dictionary_id, sha in SHIPPED.items():
        assert contract_v2.dictionary(dictionary_id).sha256 == sha
    assert contract_v2.CURRENT_DICTIONARY in SHIPPED
