"""Daemon logging: the journal under systemd, stderr elsewhere; structured fields; no secrets.

Callers log with the standard library and may attach bench fields:

    log.warning("over-current, port off", extra={"channel": "usb1", "fault": "overcurrent"})
    port_log = with_fields(log, channel="usb1")   # the same, bound once

Under systemd each field becomes a journal field (`journalctl -u bench-agent
CHANNEL=usb1`); everywhere it is also a `channel=usb1` suffix on the line, so
a technician reading plain `journalctl` output or a terminal sees it.

Secrets registered with `register_secret` (the MQTT password, a private key)
are replaced by `***` in everything a handler emits: message, arguments,
fields and tracebacks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "bench-agent"
# Extra keys that are bench fields: a `key=value` suffix, and KEY= in the journal.
STRUCTURED_FIELDS = ("channel", "output", "fault", "command_id")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
# paho logs every packet at DEBUG (a PINGREQ per keepalive): noise on the SD card.
NOISY_LOGGERS = ("paho", "bench_agent.paho")
REDACTED = "***"
STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(message)s"  # the journal stamps time, level (PRIORITY) and LOGGER itself
_MIN_LINE_SECRET_CHARS = 16  # a line of a PEM body; shorter lines would redact common words
_JOURNAL_FIELD = re.compile(r"[A-Z0-9][A-Z0-9_]*")
# JournalHandler (systemd-python 235) adds these; both can carry secrets the
# message no longer shows (str(args), repr of the exception) and say nothing new.
_JOURNAL_DROPPED = frozenset({"CODE_ARGS", "EXCEPTION_INFO"})
_OURS = "_bench_agent_handler"


# -- secrets --------------------------------------------------------------------


class SecretRegistry:
    """Strings that must never reach a log. Thread-safe; lookups take no lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()  # longest first, so an overlapping shorter one is moot

    def add(self, secret: str) -> None:
        """Register `secret`, and the forms it takes when it is logged indirectly.

        A multi-line secret (a PEM key) is also registered line by line, since a
        repr() shows its newlines as `\\n` and a traceback may show one line. An
        empty or blank secret is ignored: redacting "" would be meaningless.
        """
        if not secret.strip():
            return
        forms = {secret, repr(secret)[1:-1]}
        for raw_line in secret.splitlines():
            line = raw_line.strip()
            if len(line) >= _MIN_LINE_SECRET_CHARS and not line.startswith("-----"):
                forms.add(line)
        with self._lock:
            merged = set(self._secrets) | forms
            self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def clear(self) -> None:
        with self._lock:
            self._secrets = ()

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def contains_secret(self, text: str) -> bool:
        return any(s in text for s in self._secrets)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


SECRETS = SecretRegistry()


def register_secret(secret: str) -> None:
    """Never log `secret` (e.g. the MQTT password, a private key's PEM text), from now on."""
    SECRETS.add(secret)


class RedactSecrets(logging.Filter):
    """A handler filter that replaces registered secrets by `***` in the record it passes.

    It sits on handlers, not loggers: a logger's filters do not see records
    propagated from child loggers. When a secret is found the record is
    rewritten in place (message formatted and args dropped), so every handler
    after this one, and the journal fields built from `args`, see it redacted.
    """

    def __init__(self, registry: SecretRegistry = SECRETS) -> None:
        super().__init__()
        self.registry = registry

    def filter(self, record: logging.LogRecord) -> bool:
        registry = self.registry
        if not registry:
            return True
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: the handler reports it; we must not raise here
            message = f"{record.msg!r} % {record.args!r}"
        if registry.contains_secret(message) or registry.contains_secret(repr(record.args)):
            record.msg = registry.redact(message)
            record.args = None
        for key, value in list(vars(record).items()):
            if key != "msg" and isinstance(value, str) and registry.contains_secret(value):
                setattr(record, key, registry.redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and registry.contains_secret(record.exc_text):
            record.exc_text = registry.redact(record.exc_text)
            # Formatters reuse exc_text; the raw exception must not be rendered again.
            record.exc_info = None
        return True


# -- structured fields ------------------------------------------------------------


def _logfmt_value(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def structured_suffix(record: logging.LogRecord) -> str:
    """` channel=usb1 fault=overcurrent` for the bench fields set on `record`, else ''."""
    parts = [
        f"{key}={_logfmt_value(value)}"
        for key in STRUCTURED_FIELDS
        if (value := getattr(record, key, None)) is not None
    ]
    return " " + " ".join(parts) if parts else ""


class StructuredFormatter(logging.Formatter):
    """A formatter that appends the bench fields to the message line (before any traceback)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + structured_suffix(record)


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter


class FieldsAdapter(_Adapter):
    """A logger with bench fields bound; a call's own `extra` adds to them (and wins)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        # The stdlib adapter (before 3.13) replaces the call's extra with its own.
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def with_fields(logger: logging.Logger, **fields: object) -> FieldsAdapter:
    """`logger` with bench fields bound, e.g. `with_fields(log, channel="usb1")`."""
    return FieldsAdapter(logger, fields)


# -- choosing the destination ------------------------------------------------------


def stream_is_journal(environ: Mapping[str, str], stream: IO[str]) -> bool:
    """True when `stream` is the journal stream systemd connected (JOURNAL_STREAM="dev:ino").

    As systemd.exec(5) advises, compare with the stream's own device and inode:
    the variable is inherited by children whose stderr may be redirected.
    """
    raw = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in raw.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def under_systemd_journal(environ: Mapping[str, str], stream: IO[str]) -> bool:
    """Whether to log to the journal rather than to `stream`.

    JOURNAL_STREAM, when present, decides: if it does not match, someone
    redirected stderr on purpose and wants the lines there. Without it,
    INVOCATION_ID says systemd started us (e.g. StandardError=file:...).
    """
    if "JOURNAL_STREAM" in environ:
        return stream_is_journal(environ, stream)
    return bool(environ.get("INVOCATION_ID"))


JournalSend = Callable[..., object]


def _journal_sender(send: JournalSend, fallback: IO[str]) -> Callable[..., None]:
    """The `sender_function` for JournalHandler: proper field names, nothing superfluous.

    systemd-python 235's JournalHandler passes every LogRecord attribute as a
    field under its own lower-case name (`channel`, `msg`, `args`, ...), and
    journald drops lower-case field names. So bench fields are upper-cased here
    and the other lower-case attributes, which the message already renders, are
    not sent.
    """

    def sender(message: str, /, **fields: Any) -> None:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key in STRUCTURED_FIELDS:
                if value is not None:
                    out[key.upper()] = value
            elif key not in _JOURNAL_DROPPED and _JOURNAL_FIELD.fullmatch(key):
                out[key] = value
        try:
            send(message, **out)
        except OSError:
            # journald busy or gone: the line is still worth more on stderr
            # (which systemd also collects) than lost.
            fallback.write(message + "\n")
            fallback.flush()

    return sender


def make_handler(
    *,
    environ: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
    journal_send: JournalSend | None = None,
    secrets: SecretRegistry = SECRETS,
) -> logging.Handler:
    """The one handler for the daemon's logs: journal or stream, with redaction and fields.

    The journal needs its socket: libsystemd silently drops every message when
    it is missing (measured: `journal.send` returns without error), so without
    it we fall back to the stream rather than log into the void.
    """
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    handler: logging.Handler
    if under_systemd_journal(env, out) and journal_socket.exists():
        from systemd import journal  # noqa: PLC0415 - only a daemon under systemd needs it

        send = journal.send if journal_send is None else journal_send
        handler = journal.JournalHandler(
            sender_function=_journal_sender(send, out), SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER
        )
        handler.setFormatter(StructuredFormatter(JOURNAL_FORMAT))
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(StructuredFormatter(STDERR_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    setattr(handler, _OURS, True)
    return handler


def setup_logging(
    debug: bool,
    *,
    environ: Mapping[str, str] | None = None,
    stream: IO[str] | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> None:
    """Route the root logger to the journal (under systemd) or stderr; INFO, or DEBUG if `debug`.

    Idempotent: a second call replaces the handler of the first. Every handler
    on the root logger gets the secret filter, whoever added it.
    """
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    root = logging.getLogger()
    _remove_ours(root.handlers)
    root.addHandler(make_handler(environ=env, stream=out, journal_socket=journal_socket))
    for handler in root.handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if debug else logging.WARNING)
    logging.captureWarnings(True)  # warnings.warn() goes through the same handler and filter
    if under_systemd_journal(env, out) and not journal_socket.exists():
        log.warning("journal socket %s missing: logging to stderr", journal_socket)


def _remove_ours(handlers: Iterable[logging.Handler]) -> None:
    root = logging.getLogger()
    for handler in list(handlers):
        if getattr(handler, _OURS, False):
            root.removeHandler(handler)
            handler.close()
