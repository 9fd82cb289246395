"""The files a configuration names, checked before a bench is deployed and when they are used.

`config check` parses the file; that alone said "ok" for a config whose TLS
certificate did not exist, and the agent then ran without an uplink. These
checks look at what the config points to: the TLS CA, certificate and key
(present, readable, parseable, the key matching the certificate), the
trusted-keys directory and the charger port's directory. `config check` prints
one line per problem; the MQTT link runs `tls_problems` before each connection
attempt and turns a problem into a fault and a retry instead of a dead thread.

Errors stop a bench from working as configured (exit 78 from `config check`);
warnings name something a technician should know but that may be fine (a USB
serial cable not plugged in yet).
"""

from __future__ import annotations

import os
import ssl
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench_agent.config import Config, MqttConfig
from bench_agent.remote.signing import load_trusted_keys


@dataclass(frozen=True, slots=True)
class Problem:
    key: str  # the config key that names the file, e.g. "mqtt.cert_file"
    message: str
    error: bool = True  # False: a warning

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _readable_file(key: str, path: Path) -> Problem | None:
    if not path.exists():
        return Problem(key, f"{path}: no such file")
    if not path.is_file():
        return Problem(key, f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        return Problem(key, f"{path}: not readable by this user (uid {os.geteuid()})")
    return None


def tls_problems(mqtt: MqttConfig) -> list[Problem]:
    """What stops a TLS connection before it is tried: missing, unreadable or bad files."""
    if not mqtt.tls:
        return []
    problems = []
    files = {
        "mqtt.ca_file": mqtt.ca_file,
        "mqtt.cert_file": mqtt.cert_file,
        "mqtt.key_file": mqtt.key_file,
    }
    for key, path in files.items():
        if path is not None and (problem := _readable_file(key, path)) is not None:
            problems.append(problem)
    if problems:
        return problems
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mqtt.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(mqtt.ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            problems.append(
                Problem("mqtt.ca_file", f"{mqtt.ca_file}: not a CA certificate ({exc})")
            )
    if mqtt.cert_file is not None and mqtt.key_file is not None:
        try:
            context.load_cert_chain(str(mqtt.cert_file), str(mqtt.key_file))
        except ssl.SSLError as exc:
            reason = (
                "the key does not match the certificate"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else f"certificate or key cannot be loaded ({exc.reason or exc})"
            )
            problems.append(Problem("mqtt.key_file", f"{mqtt.key_file}: {reason}"))
        except OSError as exc:
            problems.append(Problem("mqtt.cert_file", f"{mqtt.cert_file}: {exc}"))
    return problems


def cleartext_password(mqtt: MqttConfig) -> Problem | None:
    """A password configured for a broker without TLS: anyone on the path reads it."""
    if mqtt.password is None or mqtt.tls:
        return None
    return Problem(
        "mqtt.tls",
        "the MQTT password is sent in clear text (no TLS): set ca_file, or tls = true",
        error=False,
    )


def deployment_problems(cfg: Config) -> list[Problem]:
    """Every problem with the files the configuration names, errors first."""
    problems = tls_problems(cfg.mqtt)
    if (cleartext := cleartext_password(cfg.mqtt)) is not None:
        problems.append(cleartext)
    keys = cfg.commands.trusted_keys
    if not keys.is_dir():
        problems.append(
            Problem(
                "commands.trusted_keys",
                f"{keys}: no such directory — signed commands from ops will be refused",
                error=False,
            )
        )
    elif not os.access(keys, os.R_OK | os.X_OK):
        problems.append(Problem("commands.trusted_keys", f"{keys}: not readable by this user"))
    else:
        # The agent skips a bad key file (a fault); before deployment it is an error.
        load_trusted_keys(
            keys,
            on_bad_key=lambda exc: problems.append(
                Problem("commands.trusted_keys", f"{exc.file}: {exc.problem} — it would be skipped")
            ),
        )
    if cfg.charger is not None and cfg.hardware.backend == "pi":
        directory = cfg.charger.port.parent
        if not directory.is_dir():
            problems.append(
                Problem(
                    "charger.port",
                    f"{directory}: no such directory — is the VE.Direct USB cable plugged in?",
                    error=False,
                )
            )
    problems += unused_settings(cfg.source)
    return sorted(problems, key=lambda p: not p.error)


# Accepted (a config that sets them still loads: a bench must never stop over a key
# with no effect) but read by nothing: no bench has an enclosure temperature sensor.
UNUSED_KEYS = (
    ("policy", "temperature", "enclosure_shed_above_c"),
    ("policy", "temperature", "enclosure_resume_below_c"),
)


def unused_settings(source: Path) -> list[Problem]:
    """Warnings for keys the file sets that have no effect on this agent."""
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return []  # the loader already said what is wrong with the file
    problems = []
    for path in UNUSED_KEYS:
        table: object = raw
        for part in path[:-1]:
            table = table.get(part, {}) if isinstance(table, dict) else {}
        if isinstance(table, dict) and path[-1] in table:
            problems.append(
                Problem(
                    ".".join(path),
                    "has no effect: no enclosure temperature sensor is read (the CPU's is)",
                    error=False,
                )
            )
    return problems
