"""Logging: where lines go (journal or stderr), the bench fields on them, and secrets kept out."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from systemd.journal import JournalHandler

from bench_agent.logsetup import (
    NOISY_LOGGERS,
    REDACTED,
    SECRETS,
    RedactSecrets,
    SecretRegistry,
    make_handler,
    register_secret,
    setup_logging,
    under_systemd_journal,
    with_fields,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cr3t-Bench-pa55"  # noqa: S105 - a test secret
STDERR_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>\S+): (?P<rest>.*)$"
)


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Put the root logger, the noisy loggers and the secret registry back as they were."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    level = root.level
    noisy = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler, saved in filters.items():
            handler.filters[:] = saved
        root.setLevel(level)
        for name, saved_level in noisy.items():
            logging.getLogger(name).setLevel(saved_level)
        logging.captureWarnings(False)
        SECRETS.clear()


def stream_logger(
    stream: io.StringIO, secrets: SecretRegistry | None = None
) -> tuple[logging.Logger, logging.Handler]:
    """A private logger writing through the handler setup_logging would choose off systemd."""
    handler = make_handler(environ={}, stream=stream, secrets=secrets or SecretRegistry())
    logger = logging.getLogger(f"bench_agent.test.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers[:] = [handler]
    return logger, handler


# -- stderr -------------------------------------------------------------------------


def test_stderr_lines_are_timestamped_with_field_suffixes() -> None:
    out = io.StringIO()
    logger, _ = stream_logger(out)
    logger.warning("port switched off", extra={"channel": "usb1", "fault": "overcurrent"})
    logger.info("command done", extra={"command_id": "c-42", "output": "wifi"})
    logger.info("plain")
    lines = out.getvalue().splitlines()
    matches = [STDERR_LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [(m["level"], m["rest"]) for m in matches if m] == [
        ("WARNING", "port switched off channel=usb1 fault=overcurrent"),
        ("INFO", "command done output=wifi command_id=c-42"),
        ("INFO", "plain"),
    ]


def test_field_values_with_spaces_are_quoted() -> None:
    out = io.StringIO()
    logger, _ = stream_logger(out)
    logger.error("fault", extra={"fault": 'sensor "usb2" absent', "channel": ""})
    assert out.getvalue().rstrip().endswith('fault channel="" fault="sensor \\"usb2\\" absent"')


def test_with_fields_binds_fields_and_merges_the_calls_own() -> None:
    out = io.StringIO()
    logger, _ = stream_logger(out)
    port_log = with_fields(logger, channel="usb2")
    port_log.info("phone plugged in")
    port_log.warning("tripped", extra={"fault": "overcurrent"})
    port_log.info("renamed", extra={"channel": "usb3"})
    rests = [m["rest"] for m in map(STDERR_LINE.match, out.getvalue().splitlines()) if m]
    assert rests == [
        "phone plugged in channel=usb2",
        "tripped channel=usb2 fault=overcurrent",
        "renamed channel=usb3",
    ]


def test_fields_go_on_the_message_line_not_after_the_traceback() -> None:
    out = io.StringIO()
    logger, _ = stream_logger(out)
    try:
        raise OSError(121, "Remote I/O error")
    except OSError:
        logger.exception("read failed", extra={"channel": "solar"})
    first, *rest = out.getvalue().splitlines()
    assert first.endswith("read failed channel=solar")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "OSError: [Errno 121] Remote I/O error"


@pytest.mark.usefixtures("clean_logging")
def test_setup_logging_levels_and_paho_quieted() -> None:
    out = io.StringIO()
    setup_logging(False, environ={}, stream=out)
    logging.getLogger("bench_agent.x").debug("hidden debug")
    logging.getLogger("bench_agent.x").info("shown info")
    logging.getLogger("bench_agent.paho").info("hidden paho info")
    logging.getLogger("paho.mqtt.client").debug("hidden paho debug")
    logging.getLogger("bench_agent.paho").warning("shown paho warning")
    text = out.getvalue()
    assert "shown info" in text
    assert "shown paho warning" in text
    assert "hidden" not in text


@pytest.mark.usefixtures("clean_logging")
def test_setup_logging_debug_shows_everything_and_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(False, environ={}, stream=first)
    setup_logging(True, environ={}, stream=second)  # replaces the first handler
    logging.getLogger("bench_agent.x").debug("debug line")
    logging.getLogger("bench_agent.paho").debug("paho packet")
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 2
    assert "debug line" in lines[0]
    assert "paho packet" in lines[1]


@pytest.mark.usefixtures("clean_logging")
def test_warnings_are_logged_through_the_same_handler() -> None:
    out = io.StringIO()
    setup_logging(False, environ={}, stream=out)
    register_secret(PASSWORD)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"insecure: {PASSWORD}", UserWarning, stacklevel=1)
    assert "insecure: ***" in out.getvalue()
    assert PASSWORD not in out.getvalue()


# -- choosing the journal ---------------------------------------------------------------


def _dev_ino(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"JOURNAL_STREAM": "{match}"}, True),
        ({"JOURNAL_STREAM": "{match}", "INVOCATION_ID": "abc"}, True),
        ({"JOURNAL_STREAM": "{other}", "INVOCATION_ID": "abc"}, False),  # redirected on purpose
        ({"JOURNAL_STREAM": "garbage"}, False),
        ({"JOURNAL_STREAM": ""}, False),
        ({"INVOCATION_ID": "0f9c6a1e2b3d4c5e"}, True),
        ({"INVOCATION_ID": ""}, False),
    ],
)
def test_under_systemd_journal(tmp_path: Path, environ: dict[str, str], expected: bool) -> None:
    stream_file, other_file = tmp_path / "stderr", tmp_path / "other"
    other_file.touch()
    with stream_file.open("w") as stream:
        values = {"match": _dev_ino(stream_file), "other": _dev_ino(other_file)}
        env = {k: v.format(**values) for k, v in environ.items()}
        assert under_systemd_journal(env, stream) is expected


def test_a_stream_without_a_file_descriptor_is_not_the_journal() -> None:
    assert not under_systemd_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO())


class JournalCapture:
    """Stands in for `systemd.journal.send`: keeps what would be sent to journald."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.entries.append({"MESSAGE": message, **fields})


def journal_logger(
    tmp_path: Path, capture: JournalCapture, secrets: SecretRegistry | None = None
) -> tuple[logging.Logger, logging.Handler]:
    socket_path = tmp_path / "journal.socket"
    socket_path.touch()
    handler = make_handler(
        environ={"INVOCATION_ID": "abc"},
        stream=io.StringIO(),
        journal_socket=socket_path,
        journal_send=capture,
        secrets=secrets or SecretRegistry(),
    )
    logger = logging.getLogger(f"bench_agent.test.journal.{id(capture)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.handlers[:] = [handler]
    return logger, handler


def test_journal_entries_carry_upper_case_bench_fields(tmp_path: Path) -> None:
    capture = JournalCapture()
    logger, handler = journal_logger(tmp_path, capture)
    assert isinstance(handler, JournalHandler)
    logger.warning(
        "port %s off", "usb1", extra={"channel": "usb1", "fault": "overcurrent", "output": None}
    )
    [entry] = capture.entries
    assert entry["MESSAGE"] == "port usb1 off channel=usb1 fault=overcurrent"
    assert entry["CHANNEL"] == "usb1"
    assert entry["FAULT"] == "overcurrent"
    assert "OUTPUT" not in entry
    assert entry["SYSLOG_IDENTIFIER"] == "bench-agent"
    assert entry["PRIORITY"] == "4"
    assert entry["LOGGER"] == logger.name
    # journald drops lower-case names; they are not sent at all, nor args again.
    assert all(re.fullmatch(r"[A-Z0-9][A-Z0-9_]*", key) for key in entry), sorted(entry)
    assert "CODE_ARGS" not in entry
    assert "EXCEPTION_INFO" not in entry


def test_journal_entry_keeps_the_traceback_text(tmp_path: Path) -> None:
    capture = JournalCapture()
    logger, _ = journal_logger(tmp_path, capture)
    try:
        raise TimeoutError("broker unreachable")
    except TimeoutError:
        logger.exception("connect failed")
    [entry] = capture.entries
    assert "TimeoutError: broker unreachable" in entry["EXCEPTION_TEXT"]
    assert entry["PRIORITY"] == "3"


def test_a_failing_journal_send_falls_back_to_the_stream(tmp_path: Path) -> None:
    def refuse(message: str, **fields: Any) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    socket_path = tmp_path / "journal.socket"
    socket_path.touch()
    out = io.StringIO()
    handler = make_handler(
        environ={"INVOCATION_ID": "abc"},
        stream=out,
        journal_socket=socket_path,
        journal_send=refuse,
        secrets=SecretRegistry(),
    )
    logger = logging.getLogger("bench_agent.test.refused")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.error("battery low", extra={"channel": "battery"})
    assert out.getvalue() == "battery low channel=battery\n"


def test_missing_journal_socket_means_stderr(tmp_path: Path) -> None:
    handler = make_handler(
        environ={"INVOCATION_ID": "abc"},
        stream=io.StringIO(),
        journal_socket=tmp_path / "absent",
    )
    assert not isinstance(handler, JournalHandler)
    assert isinstance(handler, logging.StreamHandler)


CHILD = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from bench_agent.logsetup import setup_logging
    kwargs = {"journal_socket": Path(sys.argv[1])} if len(sys.argv) > 1 else {}
    setup_logging(False, **kwargs)
    print(type(logging.getLogger().handlers[-1]).__name__, flush=True)
    logging.getLogger("bench_agent.child").warning("hello", extra={"channel": "usb1"})
    """
)


def _run_child(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Run CHILD with stderr on a file and JOURNAL_STREAM naming that very file."""
    stderr_path = tmp_path / "child-stderr"
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(REPO)
    with stderr_path.open("w") as stderr:
        env["JOURNAL_STREAM"] = _dev_ino(stderr_path)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=30,
            check=True,
        )
    return done.stdout.strip(), stderr_path.read_text()


def test_child_on_the_journal_stream_uses_the_journal_handler(tmp_path: Path) -> None:
    # The real systemd.journal.send, with no journald here: must not crash or
    # spill "--- Logging error ---" onto stderr.
    socket_path = tmp_path / "journal.socket"
    socket_path.touch()
    handler_name, stderr = _run_child(tmp_path, str(socket_path))
    assert handler_name == "JournalHandler"
    assert stderr == ""


def test_child_without_journald_falls_back_to_stderr_and_says_so(tmp_path: Path) -> None:
    if Path("/run/systemd/journal/socket").exists():
        pytest.skip("journald runs here; the fallback needs its socket absent")
    handler_name, stderr = _run_child(tmp_path)
    assert handler_name == "StreamHandler"
    lines = stderr.splitlines()
    assert "journal socket /run/systemd/journal/socket missing: logging to stderr" in lines[0]
    assert lines[1].endswith("WARNING bench_agent.child: hello channel=usb1")


# -- secrets -------------------------------------------------------------------------


def test_a_password_passed_as_a_log_arg_never_reaches_the_output() -> None:
    secrets = SecretRegistry()
    secrets.add(PASSWORD)
    out = io.StringIO()
    logger, _ = stream_logger(out, secrets)
    logger.info("connecting as %s with password %s", "bench-001", PASSWORD)
    logger.info("settings %r", {"username": "bench-001", "password": PASSWORD})
    logger.info("password=" + PASSWORD)
    text = out.getvalue()
    assert PASSWORD not in text
    assert "connecting as bench-001 with password ***" in text
    assert "'password': '***'" in text
    assert "password=***" in text


@pytest.mark.usefixtures("clean_logging")
def test_register_secret_protects_setup_logging_output() -> None:
    out = io.StringIO()
    setup_logging(False, environ={}, stream=out)
    logging.getLogger("bench_agent.link.mqtt").warning("auth failed for %s", PASSWORD)
    register_secret(PASSWORD)
    logging.getLogger("bench_agent.link.mqtt").warning("auth failed for %s", PASSWORD)
    first, second = out.getvalue().splitlines()
    assert first.endswith(f"auth failed for {PASSWORD}")  # before registration: nothing to hide
    assert second.endswith("auth failed for ***")


def test_secrets_are_redacted_from_fields_and_tracebacks() -> None:
    secrets = SecretRegistry()
    secrets.add(PASSWORD)
    out = io.StringIO()
    logger, _ = stream_logger(out, secrets)
    try:
        raise ConnectionRefusedError(f"mqtt://bench:{PASSWORD}@broker refused")
    except ConnectionRefusedError:
        logger.exception("connect failed", extra={"command_id": f"x{PASSWORD}"})
    text = out.getvalue()
    assert PASSWORD not in text
    assert "command_id=x***" in text
    assert "ConnectionRefusedError: mqtt://bench:***@broker refused" in text


def test_secrets_never_reach_journal_fields(tmp_path: Path) -> None:
    secrets = SecretRegistry()
    secrets.add(PASSWORD)
    capture = JournalCapture()
    logger, _ = journal_logger(tmp_path, capture, secrets)
    logger.info("password %s", PASSWORD, extra={"fault": PASSWORD})
    try:
        raise ValueError(PASSWORD)
    except ValueError:
        logger.exception("bad")
    assert len(capture.entries) == 2
    for entry in capture.entries:
        assert PASSWORD not in repr(entry)
    assert capture.entries[0]["MESSAGE"] == "password *** fault=***"


def test_a_private_key_is_redacted_whole_and_line_by_line() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    body_lines = [line for line in pem.splitlines() if not line.startswith("-----")]
    secrets = SecretRegistry()
    secrets.add(pem)
    out = io.StringIO()
    logger, _ = stream_logger(out, secrets)
    logger.info("key file: %s", pem)
    logger.info("key repr: %r", pem)
    logger.info("one line: %s", body_lines[1])
    text = out.getvalue()
    for line in body_lines:
        assert line not in text
    assert "key file: ***" in text
    assert "one line: ***" in text


def test_a_secret_with_quotes_is_redacted_in_its_repr_too() -> None:
    secret = "it's\\a\tpass"  # noqa: S105 - a test secret
    secrets = SecretRegistry()
    secrets.add(secret)
    out = io.StringIO()
    logger, _ = stream_logger(out, secrets)
    logger.info("%r", secret)
    logger.info("%r", {"password": secret})
    assert out.getvalue().count(REDACTED) == 2
    assert repr(secret)[1:-1] not in out.getvalue()
    assert "a\\tpass" not in out.getvalue()


def test_blank_secrets_are_ignored() -> None:
    secrets = SecretRegistry()
    secrets.add("")
    secrets.add("   ")
    assert not secrets
    assert secrets.redact("plain text") == "plain text"


def test_the_filter_leaves_clean_records_alone_and_never_raises() -> None:
    secrets = SecretRegistry()
    secrets.add(PASSWORD)
    redact = RedactSecrets(secrets)
    clean = logging.LogRecord("x", logging.INFO, __file__, 1, "reading %s", ("usb1",), None)
    assert redact.filter(clean)
    assert clean.msg == "reading %s"
    assert clean.args == ("usb1",)
    broken = logging.LogRecord("x", logging.INFO, __file__, 1, "%d %s", (PASSWORD,), None)
    assert redact.filter(broken)  # bad %-args: the handler reports them, the filter copes
    assert PASSWORD not in str(broken.msg)
    assert broken.args is None


def test_a_redacted_exception_cannot_be_rendered_again() -> None:
    secrets = SecretRegistry()
    secrets.add(PASSWORD)
    try:
        raise PermissionError(f"bad password {PASSWORD}")
    except PermissionError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "auth", None, sys.exc_info())
    assert RedactSecrets(secrets).filter(record)
    # Another handler or formatter must not re-render the raw exception.
    assert record.exc_info is None
    assert record.exc_text is not None
    assert record.exc_text.endswith("PermissionError: bad password ***")
