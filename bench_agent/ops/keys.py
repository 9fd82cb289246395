"""Ops' signing keys: `bench-ops keygen` writes a key pair; `send` loads the private key."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from bench_agent.errors import UsageError
from bench_agent.remote.commands import KEY_ID_PATTERN
from bench_agent.remote.signing import public_key_text

EXIT_OK = 0


def keygen(out_dir: Path, key_id: str) -> tuple[Path, Path]:
    """Write `key_id.key` (0600) and `key_id.pub` in `out_dir`; return their paths."""
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise UsageError(f"key id {key_id!r}: 1-64 characters of A-Za-z0-9._-")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{key_id}.key"
    public_path = out_dir / f"{key_id}.pub"
    if private_path.exists() or public_path.exists():
        raise UsageError(f"{private_path} or {public_path} already exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    # O_EXCL with mode 0600: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(public_key_text(key.public_key()) + "\n")
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An unencrypted PKCS#8 PEM Ed25519 private key. Raises `UsageError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path}: not an Ed25519 key")
    return key


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kg = commands.add_parser("keygen", help="make a signing key pair")
    kg.add_argument("--out", type=Path, required=True, help="directory for NAME.key and NAME.pub")
    kg.add_argument("--key-id", default="ops", help="the key's name (default: ops)")
    kg.set_defaults(run=_keygen)


def _keygen(opts: argparse.Namespace) -> int:
    private_path, public_path = keygen(opts.out, opts.key_id)
    print(f"private key: {private_path} (keep it secret)")
    print(f"public key:  {public_path} (install on benches as {public_path.name})")
    return EXIT_OK
