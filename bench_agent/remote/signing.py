"""Command signatures: the canonical bytes, Ed25519 signing (ops) and ops' public keys
(the bench). See `commands.py` for the scheme."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.signing import VerifyKey

from bench_agent.clock import iso_utc
from bench_agent.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

from bench_agent.remote.commands import KEY_ID_PATTERN

log = logging.getLogger(__name__)
# ---------------------------------------------------------------------------
# Signatures
# ---------------------------------------------------------------------------


def canonical_bytes(command: Mapping[str, Any]) -> bytes:
    """What is signed: the command without `sig`, as canonical JSON in UTF-8."""
    unsigned = {k: v for k, v in command.items() if k != "sig"}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sign_command(command: Mapping[str, Any], key: Ed25519PrivateKey, key_id: str) -> dict[str, Any]:
    """`command` with `key_id` set and `sig` added."""
    signed = {k: v for k, v in command.items() if k != "sig"}
    signed["key_id"] = key_id
    signed["sig"] = base64.b64encode(key.sign(canonical_bytes(signed))).decode("ascii")
    return signed


def new_command(
    action: str,
    args: Mapping[str, Any],
    *,
    bench: str,
    now: datetime,
    ttl_s: float | None = 120.0,
    command_id: str | None = None,
) -> dict[str, Any]:
    """A fresh, unsigned command (a UUID4 id; expires `ttl_s` seconds after `now`)."""
    cmd: dict[str, Any] = {
        "id": command_id or str(uuid.uuid4()),
        "action": action,
        "args": dict(args),
        "issued_at": iso_utc(now),
        "bench": bench,
    }
    if ttl_s is not None:
        cmd["expires_at"] = iso_utc(datetime.fromtimestamp(now.timestamp() + ttl_s, UTC))
    return cmd


def public_key_text(key: Ed25519PublicKey | VerifyKey) -> str:
    """The one-line base64 form of a public key that `load_trusted_keys` reads."""
    return base64.b64encode(_raw_public_key(key)).decode("ascii")


def _raw_public_key(key: Ed25519PublicKey | VerifyKey) -> bytes:
    if isinstance(key, VerifyKey):
        return bytes(key)
    return key.public_bytes_raw()  # a `cryptography` key (ops' side, tests)


def verify_key(key: Ed25519PublicKey | VerifyKey) -> VerifyKey:
    """A trusted key as the bench verifies with it (PyNaCl), from either library."""
    return key if isinstance(key, VerifyKey) else VerifyKey(_raw_public_key(key))


def parse_public_key(text: str, file: str = "<key>") -> VerifyKey:
    """A raw base64 (32 bytes) or PEM Ed25519 public key. Raises `ConfigError`."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        if "PRIVATE KEY" in text.split("\n", 1)[0]:
            raise ConfigError(file, "<key>", "is a PRIVATE key; install only the .pub file")
        # PEM is the rarer form: `cryptography` parses it, loaded only for it.
        from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )
        from cryptography.hazmat.primitives.serialization import (  # noqa: PLC0415
            load_pem_public_key,
        )

        try:
            key = load_pem_public_key(text.encode("ascii", "replace"))
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ConfigError(file, "<key>", f"not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(file, "<key>", "not an Ed25519 key")
        return verify_key(key)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(file, "<key>", "neither PEM nor base64") from None
    if len(raw) != 32:
        raise ConfigError(file, "<key>", f"an Ed25519 public key is 32 bytes, not {len(raw)}")
    return VerifyKey(raw)


def load_trusted_keys(
    source: Path | str | Iterable[Path | str],
    on_bad_key: Callable[[ConfigError], None] | None = None,
) -> dict[str, VerifyKey]:
    """The trusted keys, by key id (the file name without `.pub`).

    `source` is a directory (every `*.pub` file in it), one file, or several files.
    An unusable key file or a duplicate id raises `ConfigError` naming the file;
    with `on_bad_key`, that file is skipped and the error handed to it instead
    (the bench: one bad file pushed to a fleet must not stop every bench).
    """
    keys: dict[str, VerifyKey] = {}
    for p in _key_files(source):
        try:
            key_id, key = _load_key_file(p, keys)
        except ConfigError as exc:
            if on_bad_key is None:
                raise
            on_bad_key(exc)
            continue
        keys[key_id] = key
    return keys


def _key_files(source: Path | str | Iterable[Path | str]) -> list[Path]:
    paths: list[Path] = []
    sources = [source] if isinstance(source, str | Path) else list(source)
    for item in sources:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(p.glob("*.pub")))
        else:
            paths.append(p)
    return paths


def _load_key_file(p: Path, loaded: Mapping[str, VerifyKey]) -> tuple[str, VerifyKey]:
    key_id = p.name.removesuffix(".pub")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ConfigError(str(p), "<key>", "file name must be <key_id>.pub, key_id A-Za-z0-9._-")
    if key_id in loaded:
        raise ConfigError(str(p), "<key>", f"key id {key_id!r} is defined twice")
    try:
        with p.open("rb") as f:
            data = f.read(8193)
    except OSError as exc:
        raise ConfigError(str(p), "<key>", exc.strerror or str(exc)) from None
    if len(data) > 8192:
        raise ConfigError(str(p), "<key>", "too large for a public key")
    return key_id, parse_public_key(data.decode("ascii", "replace"), str(p))
