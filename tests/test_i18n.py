"""The Indonesian catalogue is complete and current, and the CLI speaks it under LANG=id."""

from __future__ import annotations

import ast
import gettext
import io
import os
import string
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench_agent.local import i18n
from bench_agent.local.control_server import ControlServer

PACKAGE = Path(i18n.__file__).parents[1]  # bench_agent/: every module's texts
REPO = PACKAGE.parent


@dataclass(frozen=True)
class Literal:
    msgid: str
    msgid_plural: str | None
    where: str


def extract(files: list[Path]) -> list[Literal]:
    """Every literal given to _(), N_() and ngettext() in `files` (what xgettext would find)."""
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            where = f"{file.name}:{node.lineno}"
            args = node.args
            if node.func.id in ("_", "N_"):
                assert args and isinstance(args[0], ast.Constant), f"{where}: _() of a non-literal"
                if isinstance(args[0].value, str):
                    found.append(Literal(args[0].value, None, where))
            elif node.func.id == "ngettext":
                literals = [a.value for a in args[:2] if isinstance(a, ast.Constant)]
                assert len(literals) == 2, f"{where}: ngettext of non-literals"
                found.append(Literal(str(literals[0]), str(literals[1]), where))
    return found


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


@pytest.fixture(scope="module")
def catalogue() -> dict[str, i18n.PoEntry]:
    entries = i18n.parse_po(i18n.po_path("id").read_text(encoding="utf-8"))
    ids = [e.msgid for e in entries]
    duplicates = {m for m in ids if ids.count(m) > 1}
    assert not duplicates, f"msgids twice in the .po: {duplicates}"
    return {e.msgid: e for e in entries if e.msgid}


@pytest.fixture(scope="module")
def literals() -> list[Literal]:
    # _() takes literals only (texts marked N_() elsewhere go through translate_marked).
    found = extract(sorted(PACKAGE.rglob("*.py")))
    assert len(found) > 50  # the extraction itself works
    return found


def test_every_message_has_an_indonesian_translation(
    literals: list[Literal], catalogue: Mapping[str, i18n.PoEntry]
) -> None:
    missing = [f"{lit.where}: {lit.msgid!r}" for lit in literals if lit.msgid not in catalogue]
    assert missing == [], "add these to bench-agent.po:\n" + "\n".join(missing)
    for lit in literals:
        entry = catalogue[lit.msgid]
        assert not entry.fuzzy, f"{lit.where}: fuzzy translation of {lit.msgid!r}"
        assert entry.msgid_plural == lit.msgid_plural, f"{lit.where}: plural differs"
        assert entry.msgstrs and all(s.strip() for s in entry.msgstrs), f"{lit.msgid!r} is empty"
        # Indonesian has one plural form (Plural-Forms: nplurals=1).
        assert len(entry.msgstrs) == 1


def test_translations_keep_every_placeholder(catalogue: Mapping[str, i18n.PoEntry]) -> None:
    for msgid, entry in catalogue.items():
        expected = placeholders(msgid) | placeholders(entry.msgid_plural or "")
        for translated in entry.msgstrs:
            assert placeholders(translated) == expected, f"{msgid!r} -> {translated!r}"
            translated.format(**dict.fromkeys(expected, "x"))  # a valid format string


def test_no_stale_entries(literals: list[Literal], catalogue: Mapping[str, i18n.PoEntry]) -> None:
    used = {lit.msgid for lit in literals}
    stale = sorted(set(catalogue) - used)
    assert stale == [], "no longer in the code; remove from bench-agent.po: " + repr(stale)


def test_the_catalogue_header_declares_utf8_and_one_plural_form() -> None:
    entries = i18n.parse_po(i18n.po_path("id").read_text(encoding="utf-8"))
    header = next(e for e in entries if e.msgid == "").msgstrs[0]
    assert "charset=UTF-8" in header
    assert "Plural-Forms: nplurals=1; plural=0;" in header


# --------------------------------------------------------------------------- language


@pytest.mark.parametrize(
    ("env", "language"),
    [
        ({"LANG": "id_ID.UTF-8"}, "id"),
        ({"LANG": "id_ID"}, "id"),
        ({"LANG": "id"}, "id"),
        ({"LANG": "en_US.UTF-8"}, "en"),
        ({"LANG": "de_DE.UTF-8"}, "en"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({}, "en"),
        ({"LC_MESSAGES": "id_ID.UTF-8", "LANG": "en_US.UTF-8"}, "id"),
        ({"LC_ALL": "C.UTF-8", "LANG": "id_ID.UTF-8"}, "en"),  # LC_ALL wins over LANG
        ({"LC_ALL": "", "LANG": "id_ID.UTF-8"}, "id"),  # an empty variable is skipped
        ({"LANGUAGE": "id", "LANG": "en_US.UTF-8"}, "id"),
        ({"LANGUAGE": "fr:id", "LANG": "en_US.UTF-8"}, "id"),  # no French: next choice
        ({"LANGUAGE": "en:id", "LANG": "id_ID.UTF-8"}, "en"),
        ({"LANGUAGE": "id_ID@latin"}, "id"),
    ],
)
def test_language_from_environment(env: dict[str, str], language: str) -> None:
    assert i18n.language_from_env(env) == language


def test_language_follows_the_environment_unless_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in i18n.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "id_ID.UTF-8")
    assert i18n._("Battery") == "Baterai"
    assert i18n.ngettext("{n} reconnect", "{n} reconnects", 2) == "{n} kali sambung ulang"
    assert i18n.decimal_point() == ","
    monkeypatch.setenv("LANG", "en_GB.UTF-8")
    assert i18n._("Battery") == "Battery"
    assert i18n.ngettext("{n} reconnect", "{n} reconnects", 1) == "{n} reconnect"
    assert i18n.ngettext("{n} reconnect", "{n} reconnects", 2) == "{n} reconnects"
    try:
        i18n.set_language("id")
        assert i18n._("Battery") == "Baterai"
    finally:
        i18n.set_language(None)
    assert i18n._("Battery") == "Battery"
    with pytest.raises(ValueError, match="no catalogue"):
        i18n.set_language("fr")


def test_unknown_and_empty_messages_pass_through() -> None:
    i18n.set_language("id")
    try:
        assert i18n._("a message nobody translated") == "a message nobody translated"
        assert i18n._("") == ""  # not the catalogue's header
        assert i18n.N_("marked for later") == "marked for later"
        # A text another module marked with N_() is translated where it is shown.
        assert i18n.translate_marked("Battery") == "Baterai"
        assert i18n.translate_marked("") == ""
    finally:
        i18n.set_language(None)


# --------------------------------------------------------------------------- .po → .mo


SAMPLE_PO = r"""
# a comment
msgid ""
msgstr ""
"Language: id\n"
"Content-Type: text/plain; charset=UTF-8\n"
"Plural-Forms: nplurals=2; plural=(n != 1);\n"

msgid "Battery"
msgstr "Baterai"

msgid ""
"a long message "
"on two lines"
msgstr "pesan panjang "
"di dua baris"

msgid "tab\there \"quoted\" back\\slash\nnewline"
msgstr "tab\tdi sini \"dikutip\" garis\\miring\nbaris"

#, fuzzy
msgid "unsure"
msgstr "ragu"

msgid "untranslated"
msgstr ""

msgid "{n} apple"
msgid_plural "{n} apples"
msgstr[0] "{n} apel"
msgstr[1] "{n} apel-apel"
msgid "no blank line before me"
msgstr "tanpa baris kosong"
"""


def test_compiled_catalogue_reads_back_through_gettext() -> None:
    entries = i18n.parse_po(SAMPLE_PO)
    assert [e.msgid for e in entries][:3] == ["", "Battery", "a long message on two lines"]
    translations = gettext.GNUTranslations(io.BytesIO(i18n.compile_mo(entries)))
    assert translations.gettext("Battery") == "Baterai"
    assert translations.gettext("a long message on two lines") == "pesan panjang di dua baris"
    assert (
        translations.gettext('tab\there "quoted" back\\slash\nnewline')
        == 'tab\tdi sini "dikutip" garis\\miring\nbaris'
    )
    assert translations.gettext("unsure") == "unsure"  # fuzzy: left out, as msgfmt does
    assert translations.gettext("untranslated") == "untranslated"
    assert translations.ngettext("{n} apple", "{n} apples", 1) == "{n} apel"
    assert translations.ngettext("{n} apple", "{n} apples", 5) == "{n} apel-apel"
    assert translations.gettext("no blank line before me") == "tanpa baris kosong"
    assert translations.info()["language"] == "id"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('msgid "a"\nmsgstr "b', 2),
        ('msgid "a"\nmsgstr "b\\q"', 2),
        ('msgid "a"\nmsgtxt "b"', 2),
        ('"floating"\n', 1),
        ('msgid "a"\nmsgstr "b"\nmsgstr "c"', 3),
        ('msgid "a" b"\nmsgstr ""', 1),
    ],
)
def test_a_broken_po_names_the_line(text: str, line: int) -> None:
    with pytest.raises(i18n.PoSyntaxError, match=f"line {line}"):
        i18n.parse_po(text)


def test_compiling_the_real_catalogue_is_fast() -> None:
    import time

    text = i18n.po_path("id").read_text(encoding="utf-8")
    started = time.perf_counter()
    for _ in range(10):
        i18n.compile_mo(i18n.parse_po(text))
    per_compile_ms = (time.perf_counter() - started) * 100
    assert per_compile_ms < 50  # measured ~1 ms on a laptop; the CLI pays it once


# --------------------------------------------------------------------------- the CLI


def status(method: str, params: Mapping[str, Any], _peer: object = None) -> Any:
    from tests.test_techcli import STATUS

    return STATUS


@pytest.fixture
def live_socket(tmp_path: Path) -> Iterator[Path]:
    with ControlServer(tmp_path / "control.sock", status) as srv:
        yield srv.path


def run_cli(socket_path: Path, lang: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in i18n.ENV_VARIABLES}
    env["LANG"] = lang
    return subprocess.run(
        [sys.executable, "-m", "bench_agent.local.techcli", "--socket", str(socket_path), *argv],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_speaks_indonesian_under_lang_id(live_socket: Path) -> None:
    done = run_cli(live_socket, "id_ID.UTF-8", "status")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Bangku tgx-alun-alun-01 · agen 0.1.0 · aktif 3 hari 4 jam")
    for word in ("Baterai", "Keluaran", "Gangguan", "NYALA", "MATI", "tersinkron"):
        assert word in done.stdout
    english = run_cli(live_socket, "C.UTF-8", "status")
    assert english.returncode == 0
    assert "Battery" in english.stdout
    assert "Baterai" not in english.stdout


def test_cli_no_daemon_in_indonesian(tmp_path: Path) -> None:
    done = run_cli(tmp_path / "none.sock", "id_ID.UTF-8", "status")
    assert done.returncode == 69
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"bench-agent: daemon tidak berjalan (tidak ada yang menjawab di {tmp_path}/none.sock). "
        "Jalankan: sudo systemctl start bench-agent"
    ]


def test_cli_bad_duration_in_indonesian(live_socket: Path) -> None:
    done = run_cli(live_socket, "id_ID.UTF-8", "wifi", "off", "--for", "2 jam")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "bench-agent: durasi '2 jam' tidak valid: gunakan mis. 90s, 30m, 2h atau 1h30m"
    ]
