"""The wire form of records: the stored body is spliced in as text, so the message must be
exactly the JSON the record's dict would give, whatever the body holds."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bench_agent.link import payloads
from bench_agent.link.outbox import OutboxItem

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
# Body keys never collide with the envelope's (the agent's bodies never use them).
ENVELOPE_KEYS = {"seq", "ts", "time_quality", "boot_id", "uptime_s", "historical", "stored"}
bodies = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ENVELOPE_KEYS), json_values, max_size=6
)


def item(body: dict[str, Any], seq: int = 7) -> OutboxItem:
    return OutboxItem.of(
        seq,
        "telemetry",
        body,
        boot_id="b",
        mono_s=12.34,
        ts="2026-01-01T00:00:00.000Z",
        time_quality="synced",
    )


@given(bodies, st.booleans(), st.booleans())
def test_spliced_record_is_the_record_as_json(
    body: dict[str, Any], historical: bool, stored: bool
) -> None:
    stored_item = item(body)
    text = payloads.record_json(stored_item, historical=historical, stored=stored)
    expected = payloads.record(stored_item, historical=historical, stored=stored)
    assert json.loads(text) == expected
    assert list(json.loads(text)) == list(expected)  # envelope first, then the body


@given(st.lists(bodies, min_size=1, max_size=4), st.booleans())
def test_telemetry_and_event_messages_parse_to_their_records(
    many: list[dict[str, Any]], historical: bool
) -> None:
    items = [item(body, seq) for seq, body in enumerate(many, start=1)]
    message = json.loads(payloads.telemetry_message("b-1", items, historical=historical))
    assert message == {
        "v": 1,
        "bench": "b-1",
        "records": [payloads.record(i, historical=historical) for i in items],
    }
    event = json.loads(payloads.event_message("b-1", items[0], historical=historical))
    assert event == {"v": 1, "bench": "b-1", **payloads.record(items[0], historical=historical)}


def test_an_unstored_record_has_no_seq_and_says_so() -> None:
    record = json.loads(payloads.record_json(item({"type": "x"}), historical=False, stored=False))
    assert "seq" not in record and record["stored"] is False and record["type"] == "x"
