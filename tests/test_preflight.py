"""The files a configuration names, checked before a bench is deployed (`config check`) and
before each TLS connection: one Problem per file, naming the config key, errors first."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from bench_agent import preflight
from bench_agent.config import Config
from bench_agent.config_loader import load_config
from bench_agent.preflight import (
    Problem,
    cleartext_password,
    deployment_problems,
    tls_problems,
    unused_settings,
)

SECRET = "s3cret-Bench-pa55"  # noqa: S105 - a test secret, never shown in a warning
ENCLOSURE = "[policy.temperature]\nenclosure_shed_above_c = 60.0\nenclosure_resume_below_c = 50.0\n"


# -- a PKI of our own: a CA, the bench's certificate and key, and a key that is not it --


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    cn: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=cn == issuer, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    bench_key = ec.generate_private_key(ec.SECP256R1())
    (directory / "ca.crt").write_bytes(_certificate("bench-ca", ca_key, "bench-ca", ca_key))
    (directory / "bench.crt").write_bytes(_certificate("b1", bench_key, "bench-ca", ca_key))
    (directory / "bench.key").write_bytes(_pem_key(bench_key))
    (directory / "other.key").write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    (directory / "garbage.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n")
    return directory


def bench_config(tmp_path: Path, mqtt: str = "", extra: str = "", backend: str = "pi") -> Config:
    """A bench whose every named file lives in `tmp_path` (nothing outside it is looked at)."""
    path = tmp_path / "bench.toml"
    sim = '[sim]\nstart = "2026-12-04T05:00:00"\n' if backend == "sim" else ""
    path.write_text(
        f'[bench]\nid = "b1"\n[hardware]\nbackend = "{backend}"\n[sampling]\n'
        f'[mqtt]\nhost = "broker"\n{mqtt}\n'
        f'[storage]\ndir = "{tmp_path / "state"}"\n'
        f'[control]\nsocket = "{tmp_path / "control.sock"}"\n'
        f'[commands]\ntrusted_keys = "{tmp_path / "ops-keys"}"\n'
        f'[charger]\nport = "{tmp_path / "serial" / "ttyVE"}"\n{sim}{extra}'
    )
    return load_config(path)


def tls_mqtt(pki: Path, **files: str) -> str:
    names = {"ca_file": "ca.crt", "cert_file": "bench.crt", "key_file": "bench.key", **files}
    return "".join(f'{key} = "{pki / name}"\n' for key, name in names.items())


def deployable(tmp_path: Path) -> None:
    """What a technician prepares: the ops keys directory with a key, the USB cable in."""
    (tmp_path / "ops-keys").mkdir()
    public = Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ops-keys" / "ops-1.pub").write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "serial").mkdir()


@contextlib.contextmanager
def unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`path` with no permissions. Root reads it anyway, so for root os.access answers
    for `path` as the kernel answers the bench-agent user."""
    mode = path.stat().st_mode
    path.chmod(0)
    if os.geteuid() == 0:
        real_access = os.access

        def access(p: str | Path, how: int, **kwargs: Any) -> bool:
            return False if Path(p) == path else real_access(p, how, **kwargs)

        monkeypatch.setattr(preflight.os, "access", access)
    try:
        yield
    finally:
        path.chmod(mode)


# -- TLS -----------------------------------------------------------------------------


def test_a_prepared_bench_with_good_tls_files_has_no_problem(tmp_path: Path, pki: Path) -> None:
    deployable(tmp_path)
    cfg = bench_config(tmp_path, tls_mqtt(pki))
    assert cfg.mqtt.tls
    assert tls_problems(cfg.mqtt) == []
    assert deployment_problems(cfg) == []


def test_without_tls_the_tls_files_are_not_looked_at(tmp_path: Path, pki: Path) -> None:
    cfg = bench_config(tmp_path, tls_mqtt(pki, ca_file="missing.crt") + "tls = false\n")
    assert tls_problems(cfg.mqtt) == []


def test_a_broker_ca_alone_is_enough(tmp_path: Path, pki: Path) -> None:
    cfg = bench_config(tmp_path, f'ca_file = "{pki / "ca.crt"}"\n')
    assert cfg.mqtt.tls and cfg.mqtt.cert_file is None
    assert tls_problems(cfg.mqtt) == []


def test_each_missing_file_is_one_error_naming_its_key_and_nothing_is_parsed(
    tmp_path: Path, pki: Path
) -> None:
    mqtt = tls_mqtt(pki, ca_file="garbage.key", cert_file="gone.crt", key_file="gone.key")
    problems = tls_problems(bench_config(tmp_path, mqtt).mqtt)
    # The CA file is garbage, but that is only found once every file is there.
    assert [str(p) for p in problems] == [
        f"mqtt.cert_file: {pki / 'gone.crt'}: no such file",
        f"mqtt.key_file: {pki / 'gone.key'}: no such file",
    ]
    assert all(p.error for p in problems)


def test_a_directory_is_not_a_certificate(tmp_path: Path, pki: Path) -> None:
    (tmp_path / "certs").mkdir()
    cfg = bench_config(tmp_path, tls_mqtt(pki, ca_file=str(tmp_path / "certs")))
    assert tls_problems(cfg.mqtt) == [
        Problem("mqtt.ca_file", f"{tmp_path / 'certs'}: not a regular file")
    ]


def test_a_key_the_agent_cannot_read_is_named_with_the_uid(
    tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "bench.key"
    key.write_bytes((pki / "bench.key").read_bytes())
    cfg = bench_config(tmp_path, tls_mqtt(pki, key_file=str(key)))
    with unreadable(key, monkeypatch):
        problems = tls_problems(cfg.mqtt)
    assert problems == [
        Problem("mqtt.key_file", f"{key}: not readable by this user (uid {os.geteuid()})")
    ]


@pytest.mark.parametrize(
    ("files", "key", "says"),
    [
        ({"ca_file": "bench.key"}, "mqtt.ca_file", "bench.key: not a CA certificate ("),
        ({"key_file": "other.key"}, "mqtt.key_file", "other.key: the key does not match"),
        ({"key_file": "garbage.key"}, "mqtt.key_file", "certificate or key cannot be loaded"),
        ({"cert_file": "bench.key"}, "mqtt.key_file", "certificate or key cannot be loaded"),
    ],
)
def test_a_file_that_is_not_what_its_key_says_is_one_error(
    tmp_path: Path, pki: Path, files: dict[str, str], key: str, says: str
) -> None:
    problems = tls_problems(bench_config(tmp_path, tls_mqtt(pki, **files)).mqtt)
    assert len(problems) == 1, problems
    assert problems[0].key == key and problems[0].error
    assert says in problems[0].message, problems[0].message


# -- the password in clear text ------------------------------------------------------


def with_password(tmp_path: Path) -> str:
    (tmp_path / "mqtt-password").write_text(f"{SECRET}\n")
    return f'username = "b1"\npassword_file = "{tmp_path / "mqtt-password"}"\n'


def test_a_password_without_tls_is_a_warning_on_the_tls_key(tmp_path: Path) -> None:
    deployable(tmp_path)
    cfg = bench_config(tmp_path, with_password(tmp_path))
    assert cfg.mqtt.password == SECRET and not cfg.mqtt.tls
    warning = cleartext_password(cfg.mqtt)
    assert warning is not None and not warning.error
    assert str(warning) == (
        "mqtt.tls: the MQTT password is sent in clear text (no TLS): set ca_file, or tls = true"
    )
    assert SECRET not in str(warning)
    assert deployment_problems(cfg) == [warning]


def test_a_password_over_tls_or_no_password_is_no_warning(tmp_path: Path, pki: Path) -> None:
    over_tls = bench_config(tmp_path, with_password(tmp_path) + tls_mqtt(pki))
    assert over_tls.mqtt.password is not None
    assert cleartext_password(over_tls.mqtt) is None
    anonymous = bench_config(tmp_path)
    assert cleartext_password(anonymous.mqtt) is None
    assert cleartext_password(replace(anonymous.mqtt, username="b1", password="")) is not None


# -- the ops keys and the charger's port ---------------------------------------------


def test_no_ops_keys_directory_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "serial").mkdir()
    assert deployment_problems(bench_config(tmp_path)) == [
        Problem(
            "commands.trusted_keys",
            f"{tmp_path / 'ops-keys'}: no such directory — signed commands from ops will be "
            "refused",
            error=False,
        )
    ]


def test_an_ops_keys_directory_the_agent_cannot_read_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployable(tmp_path)
    cfg = bench_config(tmp_path)
    with unreadable(tmp_path / "ops-keys", monkeypatch):
        problems = deployment_problems(cfg)
    assert problems == [
        Problem("commands.trusted_keys", f"{tmp_path / 'ops-keys'}: not readable by this user")
    ]


def test_a_bad_ops_key_is_an_error_naming_the_file_and_the_good_ones_pass(tmp_path: Path) -> None:
    deployable(tmp_path)
    (tmp_path / "ops-keys" / "ops-2.pub").write_text("not a key\n")
    (tmp_path / "ops-keys" / "README").write_text("not a .pub: not a key file\n")
    problems = deployment_problems(bench_config(tmp_path))
    assert len(problems) == 1, problems
    assert problems[0].key == "commands.trusted_keys" and problems[0].error
    assert str(tmp_path / "ops-keys" / "ops-2.pub") in problems[0].message
    assert problems[0].message.endswith("— it would be skipped")


def test_a_missing_serial_directory_is_a_warning_on_a_pi_only(tmp_path: Path) -> None:
    deployable(tmp_path)
    (tmp_path / "serial").rmdir()
    pi = bench_config(tmp_path)
    assert deployment_problems(pi) == [
        Problem(
            "charger.port",
            f"{tmp_path / 'serial'}: no such directory — is the VE.Direct USB cable plugged in?",
            error=False,
        )
    ]
    # The simulated bench makes its own port.
    assert deployment_problems(bench_config(tmp_path, backend="sim")) == []


def test_errors_come_before_warnings_each_in_the_order_found(tmp_path: Path) -> None:
    deployable(tmp_path)
    (tmp_path / "serial").rmdir()
    (tmp_path / "ops-keys" / "ops-2.pub").write_text("not a key\n")
    cfg = bench_config(tmp_path, with_password(tmp_path), ENCLOSURE)
    found = [(p.error, p.key) for p in deployment_problems(cfg)]
    assert found == [
        (True, "commands.trusted_keys"),
        (False, "mqtt.tls"),
        (False, "charger.port"),
        (False, "policy.temperature.enclosure_shed_above_c"),
        (False, "policy.temperature.enclosure_resume_below_c"),
    ]


# -- settings with no effect ---------------------------------------------------------


def test_enclosure_limits_load_but_are_warned_of_one_by_one(tmp_path: Path) -> None:
    deployable(tmp_path)
    cfg = bench_config(tmp_path, extra=ENCLOSURE)  # still a valid config: the bench runs
    problems = deployment_problems(cfg)
    assert [str(p) for p in problems] == [
        "policy.temperature.enclosure_shed_above_c: has no effect: no enclosure temperature "
        "sensor is read (the CPU's is)",
        "policy.temperature.enclosure_resume_below_c: has no effect: no enclosure temperature "
        "sensor is read (the CPU's is)",
    ]
    assert not any(p.error for p in problems)
    one = tmp_path / "one.toml"
    one.write_text("[policy.temperature]\nenclosure_resume_below_c = 50.0\ncpu_shed_above_c = 80\n")
    assert [p.key for p in unused_settings(one)] == ["policy.temperature.enclosure_resume_below_c"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[policy]\n",
        "policy = 5\n",  # not a table: the loader refuses it, this must not crash
        "[policy]\ntemperature = [1, 2]\n",
        "[policy.temperature]\ncpu_shed_above_c = 80\n",
        "[policy.temperature\nenclosure_shed_above_c = 60\n",  # not TOML
        "[a]\nb = " + "[" * 5000 + "]" * 5000 + "\n",  # tomllib's RecursionError
    ],
)
def test_a_file_without_them_or_that_is_not_toml_has_no_such_warning(
    tmp_path: Path, text: str
) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(text)
    assert unused_settings(path) == []


def test_an_unreadable_or_missing_file_has_no_such_warning(tmp_path: Path) -> None:
    assert unused_settings(tmp_path / "gone.toml") == []
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n" + ENCLOSURE.encode())
    assert unused_settings(tmp_path / "latin1.toml") == []
