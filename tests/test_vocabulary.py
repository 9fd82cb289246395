"""The domain's words in one place: every member has its text, its schema, its docs."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from bench_agent.local import i18n
from bench_agent.local.render import reason_text, reason_texts
from bench_agent.vocabulary import (
    WIFI,
    EventType,
    Reason,
    is_output_name,
    usb_port,
    usb_port_number,
)
from tests.support import REPO


@pytest.fixture
def language() -> Iterator[None]:
    yield
    i18n.set_language(None)


def test_every_reason_has_words_in_english_and_indonesian(language: None) -> None:
    i18n.set_language("en")
    english = reason_texts()
    assert set(english) == set(Reason)
    assert len(set(english.values())) == len(Reason)  # no two reasons read alike
    i18n.set_language("id")
    indonesian = reason_texts()
    untranslated = [r for r in Reason if indonesian[r] == english[r]]
    assert untranslated == []
    assert reason_text("a_reason_from_a_newer_agent") == "a_reason_from_a_newer_agent"


def test_every_event_the_code_records_is_a_member_and_the_readme_names_each() -> None:
    emitted: set[str] = set()
    # A literal where an event is recorded (the code mostly names EventType members,
    # which mypy checks): emit_event, a part's _emit/emit, the fault registry's _on_change.
    pattern = re.compile(r'(?:emit_event|_emit|emit|_on_change)\(\s*"([a-z_]+)"')
    for path in (REPO / "bench_agent").rglob("*.py"):
        emitted.update(pattern.findall(path.read_text()))
    assert emitted <= set(EventType), emitted - set(EventType)
    members = re.compile(r"EventType\.([A-Z_]+)")
    named = set()
    for path in (REPO / "bench_agent").rglob("*.py"):
        named.update(members.findall(path.read_text()))
    assert named, "the pattern found no EventType member in use"
    readme = (REPO / "README.md").read_text()
    contract = readme[readme.index("Event types:") : readme.index("Delivery is at-least-once")]
    assert [e for e in EventType if f"`{e}`" not in contract] == []


def test_output_names() -> None:
    assert usb_port(2) == "usb2" and usb_port_number("usb2") == 2
    assert usb_port_number(WIFI) is None and usb_port_number("usb") is None
    assert usb_port_number("usb123") is None
    assert all(is_output_name(n) for n in ("usb0", "usb1", "usb42", "wifi"))
    assert not any(is_output_name(n) for n in ("usb", "Wifi", "usb1 ", "lamp", "usb100"))
    with pytest.raises(ValueError, match="0-99"):
        usb_port(100)


def test_every_event_type_has_words_in_english_and_indonesian(language: None) -> None:
    from bench_agent.local.render import event_text, event_texts

    i18n.set_language("en")
    english = event_texts()
    assert set(english) == set(EventType)
    i18n.set_language("id")
    indonesian = event_texts()
    assert [e for e in EventType if indonesian[e] == english[e]] == []
    assert event_text("from_a_newer_agent") == "from_a_newer_agent"
