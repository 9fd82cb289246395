"""Translations of the technician's messages (gettext domain ``bench-agent``).

English is the source language; Indonesian (``id``) is the one catalogue, in
``locale/id/LC_MESSAGES/bench-agent.po``. The language comes from the usual
variables, in gettext's order: the first non-empty of ``LANGUAGE``, ``LC_ALL``,
``LC_MESSAGES``, ``LANG``; a ``:``-separated list is tried in order. So
``LANG=id_ID.UTF-8`` gives Indonesian and anything else English.

Why only the ``.po`` is shipped: the catalogue is compiled to ``.mo`` bytes in
memory the first time a language is used (about 1 ms for the ~120 entries of
today, measured in tests/test_i18n.py) and handed to
:class:`gettext.GNUTranslations`. A committed ``.mo`` could silently disagree
with the ``.po`` a translator just edited, and a build step would need GNU
gettext on every developer machine; neither is worth it for one small catalogue.

The language is read from the environment at each call (a few dict look-ups), so
a test or a long-running process sees a change at once; :func:`set_language`
pins it instead.

Mark a string that must be translated later, by whoever displays it (e.g. a
self-test hint produced in the daemon, shown by the CLI in the technician's
language), with :func:`N_`; the catalogue test extracts ``N_`` literals too.
"""

from __future__ import annotations

import functools
import gettext
import io
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DOMAIN: Final = "bench-agent"
LOCALE_DIR: Final = Path(__file__).resolve().parent.parent / "locale"
SOURCE_LANGUAGE: Final = "en"
CATALOGUE_LANGUAGES: Final = ("id",)
ENV_VARIABLES: Final = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_MO_MAGIC: Final = 0x950412DE
_pinned: str | None = None


# --------------------------------------------------------------------------- .po


@dataclass(frozen=True, slots=True)
class PoEntry:
    """One message of a ``.po`` file. ``msgstrs`` has one item, or one per plural form."""

    msgid: str
    msgid_plural: str | None
    msgstrs: tuple[str, ...]
    fuzzy: bool
    line: int  # 1-based line of the msgid, for error messages


class PoSyntaxError(ValueError):
    """The ``.po`` file is malformed (a translator's typo); names the line."""


_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unquote(text: str, line_no: int) -> str:
    text = text.strip()
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        raise PoSyntaxError(f"line {line_no}: expected a quoted string")
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                raise PoSyntaxError(f"line {line_no}: bad escape in {text}")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
            continue
        if char == '"':
            raise PoSyntaxError(f"line {line_no}: unescaped quote in {text}")
        out.append(char)
        i += 1
    return "".join(out)


def parse_po(text: str) -> list[PoEntry]:
    """The entries of a ``.po`` file (the header, msgid "", included). Raises PoSyntaxError."""
    entries: list[PoEntry] = []
    fields: dict[str, str] = {}
    current: str | None = None
    fuzzy = False
    start = 0

    def finish() -> None:
        nonlocal fields, current, fuzzy
        if fields:
            if "msgid" not in fields:
                raise PoSyntaxError(f"line {start}: entry without msgid")
            plural = fields.get("msgid_plural")
            if plural is None:
                msgstrs: tuple[str, ...] = (fields.get("msgstr", ""),)
            else:
                count = sum(1 for key in fields if key.startswith("msgstr["))
                msgstrs = tuple(fields.get(f"msgstr[{n}]", "") for n in range(count))
            entries.append(PoEntry(fields["msgid"], plural, msgstrs, fuzzy, start))
        fields, current, fuzzy = {}, None, False

    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            finish()
            continue
        if line.startswith("#"):
            if line.startswith("#,") and "fuzzy" in line:
                finish()
                fuzzy = True
            continue
        if line.startswith('"'):
            if current is None:
                raise PoSyntaxError(f"line {line_no}: string outside an entry")
            fields[current] += _unquote(line, line_no)
            continue
        keyword, _, rest = line.partition(" ")
        if keyword == "msgid" and "msgid" in fields:
            finish()  # entries not separated by a blank line
        if keyword not in ("msgid", "msgid_plural", "msgstr") and not (
            keyword.startswith("msgstr[") and keyword.endswith("]")
        ):
            raise PoSyntaxError(f"line {line_no}: unknown keyword {keyword!r}")
        if keyword in fields:
            raise PoSyntaxError(f"line {line_no}: {keyword} twice in one entry")
        if keyword == "msgid":
            start = line_no
        current = keyword
        fields[keyword] = _unquote(rest, line_no)
    finish()
    return entries


def compile_mo(entries: Iterable[PoEntry]) -> bytes:
    """GNU ``.mo`` bytes for `entries` (fuzzy and untranslated entries left out, as msgfmt does).

    Layout: magic, revision 0, N, offset of the originals table, offset of the
    translations table, an empty hash table; then the strings, NUL-terminated.
    """
    catalogue: dict[bytes, bytes] = {}
    for entry in entries:
        header = entry.msgid == ""
        if (entry.fuzzy and not header) or not all(entry.msgstrs):
            continue
        key = entry.msgid if entry.msgid_plural is None else f"{entry.msgid}\0{entry.msgid_plural}"
        catalogue[key.encode()] = "\0".join(entry.msgstrs).encode()
    keys = sorted(catalogue)
    count = len(keys)
    originals_at = 7 * 4
    translations_at = originals_at + 8 * count
    data_at = translations_at + 8 * count
    blob = bytearray()
    originals: list[tuple[int, int]] = []
    translations: list[tuple[int, int]] = []
    for table, strings in ((originals, keys), (translations, [catalogue[k] for k in keys])):
        for string in strings:
            table.append((len(string), data_at + len(blob)))
            blob += string + b"\0"
    head = struct.pack("<7I", _MO_MAGIC, 0, count, originals_at, translations_at, 0, data_at)
    index = b"".join(struct.pack("<2I", *pair) for pair in originals + translations)
    return head + index + bytes(blob)


def po_path(language: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


# --------------------------------------------------------------------------- language


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """ "id" or "en", from LANGUAGE / LC_ALL / LC_MESSAGES / LANG (first non-empty wins)."""
    env = os.environ if environ is None else environ
    for variable in ENV_VARIABLES:
        value = env.get(variable, "")
        if value:
            for item in value.split(":"):
                code = item.split(".")[0].split("@")[0].split("_")[0].lower()
                if code in CATALOGUE_LANGUAGES:
                    return code
                if code in (SOURCE_LANGUAGE, "c", "posix"):
                    return SOURCE_LANGUAGE
            return SOURCE_LANGUAGE
    return SOURCE_LANGUAGE


def set_language(language: str | None) -> None:
    """Pin the language ("en", "id"); None follows the environment again."""
    global _pinned  # noqa: PLW0603 - one process-wide setting, as gettext's own
    if language is not None and language not in (SOURCE_LANGUAGE, *CATALOGUE_LANGUAGES):
        raise ValueError(f"no catalogue for language {language!r}")
    _pinned = language


def current_language() -> str:
    return _pinned if _pinned is not None else language_from_env()


@functools.cache
def translations(language: str) -> gettext.NullTranslations:
    """The translations of `language`; English (or a missing catalogue) is the identity."""
    if language == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    try:
        text = po_path(language).read_text(encoding="utf-8")
    except OSError:
        return gettext.NullTranslations()  # a broken install still speaks English
    return gettext.GNUTranslations(io.BytesIO(compile_mo(parse_po(text))))


def _(message: str) -> str:
    """`message` in the current language."""
    if not message:
        return message  # gettext("") is the catalogue header
    return translations(current_language()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    """The form of `singular`/`plural` for the count `n`, in the current language."""
    return translations(current_language()).ngettext(singular, plural, n)


def translate_marked(message: str) -> str:
    """`message`, a text marked with N_() elsewhere (e.g. a daemon's hint), translated if known.

    ``_()`` itself takes only literals, so the catalogue test can find every one.
    """
    if not message:
        return message
    return translations(current_language()).gettext(message)


def N_(message: str) -> str:
    """Mark `message` for the catalogue without translating it now."""
    return message


def decimal_point() -> str:
    """ "," in Indonesian (13,2 V), "." in English."""
    return "," if current_language() == "id" else "."
